"""Database engines for the job store: SQLite (one host) or PostgreSQL (several hosts).

Everything backend-specific about *connecting* lives here: URL normalisation, SQLite
pragmas, how a write transaction takes its lock, and running the Alembic migrations that
ship inside the package. The store itself issues portable SQL.

SQLite notes. The stdlib driver normally decides on its own when to ``BEGIN`` (and never
does for a ``SELECT``), which breaks "read, decide, write" transactions. We switch that
off on every new connection and emit ``BEGIN`` ourselves from SQLAlchemy's ``begin``
event: ``BEGIN IMMEDIATE`` for write transactions (see :func:`write_transaction`), so the
write lock is taken up front and two claimers can never both read the same queued row;
plain deferred ``BEGIN`` for reads, so readers never wait for writers (WAL).

Writers of one process also queue on a lock of their own before ``BEGIN IMMEDIATE``.
SQLite's busy handler polls with growing sleeps (1, 2, 5, 10, 15, 20, 25 … ms), so a
burst of submissions racing the worker's claims could each lose tens of milliseconds
asleep while the lock was already free; a process-local lock hands it over at once.
Writers in other processes (separate workers) still meet at SQLite's lock.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
"""How long a SQLite connection waits for another writer before giving up."""

WRITE_OPTION = "pixelmill_write"
"""Execution option marking a connection whose transactions will write (SQLite: IMMEDIATE)."""

MIGRATIONS = "pixelmill.db:migrations"
"""Where Alembic finds env.py and versions/: package data of ``pixelmill.jobs``."""

SCHEMA_LOCK_KEY = 0x706978_6D696C6C  # "pixmill": any constant shared by all processes
"""PostgreSQL advisory-lock key serialising concurrent schema upgrades."""

_WRITE_LOCKS: weakref.WeakKeyDictionary[sa.Engine, threading.RLock] = weakref.WeakKeyDictionary()
"""SQLite engines → the lock their write transactions take in this process (see above)."""

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def normalise_url(url_or_path: str) -> str:
    """A SQLAlchemy URL for a store location.

    Accepts ``sqlite:///path``, a bare file path (→ SQLite), and ``postgresql://`` or
    ``postgres://`` URLs (→ the psycopg 3 driver). An explicit driver is kept.
    """
    text = url_or_path.strip()
    if not text:
        raise ValueError("empty database URL or path")
    if not _SCHEME.match(text):
        return f"sqlite:///{Path(text).expanduser()}"
    scheme, rest = text.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    if scheme.startswith(("postgresql+", "sqlite")):
        return text
    raise ValueError(f"unsupported database URL scheme {scheme!r}: use sqlite:/// or postgresql://")


def create_db_engine(url: str) -> sa.Engine:
    """An engine for ``url`` (normalised first), configured for the job store."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    return sa.create_engine(parsed, pool_pre_ping=True)


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        # A private in-memory database per pooled connection would silently lose jobs.
        raise ValueError("the job store needs a SQLite file, not an in-memory database")
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    _WRITE_LOCKS[engine] = threading.RLock()
    return engine


def _sqlite_on_connect(dbapi_connection, _connection_record) -> None:
    # Take transaction control away from the driver; _sqlite_on_begin emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL on a fresh file may have to wait for a lock.
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        # FULL: a job acknowledged to a client survives power loss, not just a crash.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    # Switching a fresh file to WAL while another connection does the same can fail with
    # "database is locked" at once: SQLite does not call the busy handler there. Retry.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    if mode != "wal":  # e.g. a filesystem without shared memory: works, but readers block
        log.warning("SQLite refused WAL mode (journal_mode=%s); expect more lock waits", mode)


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # A deferred transaction that later writes can fail with SQLITE_BUSY at once (its
    # snapshot is stale); IMMEDIATE takes the write lock first, waiting up to busy_timeout.
    writes = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


@contextmanager
def write_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection inside a transaction that will write; commits on success.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (the database's single
    write lock is held from the first statement); on PostgreSQL it is an ordinary
    READ COMMITTED transaction and callers lock rows explicitly.
    """
    with _WRITE_LOCKS.get(engine) or nullcontext(), engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection inside a read-only (deferred on SQLite) transaction."""
    with engine.connect() as conn, conn.begin():
        yield conn


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    return config


def upgrade_schema(engine: sa.Engine) -> None:
    """Bring the database schema to the newest revision; safe to call concurrently.

    Runs inside one write transaction: on SQLite ``BEGIN IMMEDIATE`` makes concurrent
    callers queue behind each other; on PostgreSQL a transaction-scoped advisory lock
    does the same (DDL is transactional there, and the lock is released at commit or
    rollback, even if the upgrade fails). A caller that waited then finds the schema at
    head and does nothing.
    """
    config = alembic_config()
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
