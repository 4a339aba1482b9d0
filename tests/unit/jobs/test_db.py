"""Engines, URLs, schema migrations and database-kept result bytes."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pixelmill.core.errors import NotFound
from pixelmill.jobs.blobs import DatabaseResultStore, StoredResult
from pixelmill.db.engine import create_db_engine, normalise_url, upgrade_schema
from pixelmill.jobs.results import ResultStore
from pixelmill.jobs.store import JobStore
from pixelmill.db.tables import Base


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/jobs.db", "sqlite:///data/jobs.db"),
        ("data/jobs.db", "sqlite:///data/jobs.db"),
        ("/var/lib/pixelmill/jobs.db", "sqlite:////var/lib/pixelmill/jobs.db"),
        ("postgresql://u:p@db:5432/pm", "postgresql+psycopg://u:p@db:5432/pm"),
        ("postgres://db/pm", "postgresql+psycopg://db/pm"),
        ("postgresql+psycopg://db/pm", "postgresql+psycopg://db/pm"),
    ],
)
def test_normalise_url(given: str, expected: str):
    assert normalise_url(given) == expected


@pytest.mark.parametrize("bad", ["", "mysql://db/pm", "sqlite://", "sqlite:///:memory:"])
def test_unsupported_locations_are_refused(bad: str):
    with pytest.raises(ValueError):
        create_db_engine(bad)


def test_sqlite_pragmas_are_really_set(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path}/new/dir/jobs.db")
    try:
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        # synchronous 2 = FULL
        assert pragmas == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 10_000}
    finally:
        engine.dispose()
    assert (tmp_path / "new" / "dir" / "jobs.db").is_file()


def test_sqlite_write_transactions_take_the_lock_up_front(tmp_path):
    store = JobStore.open(str(tmp_path / "jobs.db"))
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    store.claim("w1", lease_s=10)
    store.count("queued")
    store.engine.dispose()
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE", "BEGIN"]


def _schema_diff(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def _head() -> str:
    from alembic.script import ScriptDirectory

    from pixelmill.db.engine import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_upgrade_is_idempotent_and_matches_the_models(fresh_db_url: str):
    engine = create_db_engine(fresh_db_url)
    try:
        upgrade_schema(engine)
        upgrade_schema(engine)
        assert _schema_diff(engine) == []
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [_head()]
    finally:
        engine.dispose()


def test_concurrent_upgrades_on_a_fresh_database(fresh_db_url: str):
    engines = [create_db_engine(fresh_db_url) for _ in range(2)]
    barrier, errors = threading.Barrier(2), []

    def upgrade(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            upgrade_schema(engine)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert errors == [] and _schema_diff(engines[0]) == []
        assert JobStore(engines[1]).count("queued") == 0
    finally:
        for engine in engines:
            engine.dispose()


def test_blobs_put_get_expiry_and_sweep(store: JobStore):
    blobs = DatabaseResultStore(store.engine, retention_s=60)
    (blob_id,) = blobs.put_many([(b"\x89PNG-bytes", "image/png")])
    assert len(blob_id) == 32
    stored = blobs.get(blob_id)
    assert stored == StoredResult(blob_id, "image/png", data=b"\x89PNG-bytes", path=None)
    assert stored.read() == b"\x89PNG-bytes"
    short = DatabaseResultStore(store.engine, retention_s=0)
    (expired_id,) = short.put_many([(b"gone", "image/webp")])
    with pytest.raises(NotFound) as info:
        short.get(expired_id)
    assert info.value.param == "file_id"
    assert blobs.sweep() == 1
    assert blobs.sweep(now=datetime.now(timezone.utc) + timedelta(minutes=2)) == 1
    with pytest.raises(NotFound):
        blobs.get(blob_id)
    for bad in ("../../etc/passwd", "*", "a" * 31, ""):
        with pytest.raises(NotFound):
            blobs.get(bad)


@pytest.mark.parametrize("kind", ["directory", "database"])
def test_put_many_stores_every_file_in_order(kind: str, store: JobStore, tmp_path):
    results = ResultStore(tmp_path / "files", 60) if kind == "directory" else DatabaseResultStore(store.engine, 60)
    files = [(b"first", "image/png"), (b"second", "image/webp"), (b"third", "image/jpeg")]
    ids = results.put_many(files)
    assert len(set(ids)) == 3
    assert [(results.get(file_id).read(), results.get(file_id).media_type) for file_id in ids] == files
    assert results.put_many([]) == []
