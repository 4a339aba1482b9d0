"""Fixtures of the job-store tests, each backend in turn: a SQLite file and PostgreSQL.

Creating a PostgreSQL database costs ~0.2 s, so the store tests share one migrated
database per session and empty its tables before each test; the schema tests, which
need a database nobody has touched, get a fresh one from ``fresh_db_url``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from pixelmill.db.engine import create_db_engine, upgrade_schema
from pixelmill.jobs.store import JobStore
from tests.support.postgres import pg_url, postgres_url, require_postgres  # noqa: F401

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def shared_pg_url() -> Iterator[str]:
    """One migrated PostgreSQL database for the whole session."""
    require_postgres()
    with postgres_url() as url:
        engine = create_db_engine(url)
        upgrade_schema(engine)
        engine.dispose()
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of an empty, migrated database (SQLite given as a bare path on purpose)."""
    if request.param == "sqlite":
        return str(tmp_path / "nested" / "jobs.db")
    url = request.getfixturevalue("shared_pg_url")
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE jobs, job_previews, batches, blobs, input_images"))
    engine.dispose()
    return url


@pytest.fixture(params=BACKENDS)
def fresh_db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of a database that has never been used (no schema at all)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh/jobs.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    """A job store with its schema in place and no jobs."""
    job_store = JobStore.open(db_url)
    yield job_store
    job_store.engine.dispose()
