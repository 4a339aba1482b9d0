"""A fresh, throw-away PostgreSQL database per test.

``postgres_url()`` creates a database with a random name on the server given by
``PIXELMILL_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth), yields its SQLAlchemy URL, and drops it afterwards. The ``pg_url`` fixture
wraps it: when no server is reachable the test is skipped with the reason shown, except
under ``CI=true``, where a missing database is a failure and not a silent skip.

Use it from any test module or conftest with ``from tests.support.postgres import pg_url``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ADMIN_URL = os.environ.get("PIXELMILL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server answered at :data:`ADMIN_URL`."""


def _admin_connection():
    import psycopg

    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        raise PostgresUnavailable(f"PostgreSQL not reachable at {ADMIN_URL}: {exc}".strip()) from exc


def _database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return base.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "postgres://", "postgresql+psycopg://", 1
    ) + f"/{name}"


@contextmanager
def postgres_url() -> Iterator[str]:
    """Create a randomly named database, yield its ``postgresql+psycopg://`` URL, drop it."""
    name = f"pixelmill_test_{secrets.token_hex(6)}"
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(name)
    finally:
        with _admin_connection() as admin:
            # FORCE: pooled connections of the code under test may still be open.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def unavailable(reason: str) -> None:
    """Skip the test because PostgreSQL is missing, or fail it when running in CI."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must not be skipped)", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> None:
    """Skip the calling test (fail it under CI=true) unless PostgreSQL answers."""
    try:
        _admin_connection().close()
    except PostgresUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, dropped after the test (skipped if unreachable)."""
    require_postgres()
    with postgres_url() as url:
        yield url
