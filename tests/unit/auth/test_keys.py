"""Key tokens, hashing, the key store and the bind-address rule."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pixelmill.auth.bind import is_loopback, open_refusal
from pixelmill.auth.keys import Principal, Rate, Scope, hash_token, looks_like_token, new_token, parse_rate
from pixelmill.auth.store import KeyStore
from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.jobs.store import JobStore


@pytest.fixture()
def keys(tmp_path) -> KeyStore:
    return KeyStore(JobStore.open(f"sqlite:///{tmp_path / 'jobs.db'}").engine)


def test_tokens_are_prefixed_high_entropy_and_distinct():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("pm_") and len(t) == 46 and looks_like_token(t) for t in tokens)


def test_only_the_hash_is_stored(keys: KeyStore):
    key, token = keys.create("team-a", rate="60/min", max_running=4)
    with keys.engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM api_keys")) for v in row)
    assert token not in dump and token[3:] not in dump
    assert hash_token(token) in dump and key.prefix == token[:11]


def test_lookup_finds_active_keys_only(keys: KeyStore):
    key, token = keys.create("team-a", scope="admin")
    assert keys.lookup(token) == key and key.scope is Scope.admin
    assert keys.lookup(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert keys.lookup("pm_short") is None and keys.lookup("") is None
    keys.revoke(key.id)
    assert keys.lookup(token) is None and not keys.has_active()


def test_names_are_unique_among_active_keys_and_revocable_by_name(keys: KeyStore):
    keys.create("team-a")
    with pytest.raises(InvalidRequest):
        keys.create("team-a")
    revoked = keys.revoke("team-a")
    assert revoked.revoked_at is not None
    keys.create("team-a")  # rotation: same name after revoking
    assert [k.name for k in keys.list()] == ["team-a"] and len(keys.list(include_revoked=True)) == 2
    with pytest.raises(NotFound):
        keys.revoke("nobody")


@pytest.mark.parametrize("bad", ["", " ", "x" * 101, "tab\there"])
def test_bad_names_are_refused(keys: KeyStore, bad: str):
    with pytest.raises(InvalidRequest):
        keys.create(bad)


def test_rates_parse_and_bad_ones_are_refused():
    assert parse_rate("60/min") == Rate(60, 60.0) and str(parse_rate("5 / s")) == "5/s"
    assert parse_rate("1000/hour") == Rate(1000, 3600.0)
    for bad in ("60", "0/min", "-1/s", "60/fortnight", "1e3/s"):
        with pytest.raises(InvalidRequest):
            parse_rate(bad)


def test_principal_visibility(keys: KeyStore):
    mine, _ = keys.create("a")
    admin, _ = keys.create("b", scope="admin")
    caller = Principal(mine)
    assert caller.owns(mine.id) and not caller.owns("key_other") and not caller.owns(None)
    assert caller.list_filter == mine.id and not caller.is_admin
    assert Principal(admin).owns("key_other") and Principal(admin).list_filter is None
    assert Principal().is_admin and Principal().submit_args() == {"api_key_id": None, "max_active": None}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.4", False), ("myhost", False)],
)
def test_loopback_detection(host: str, loopback: bool):
    assert is_loopback(host) is loopback


def test_bind_rule():
    assert open_refusal("127.0.0.1", has_keys=False, insecure_no_auth=False) is None
    assert open_refusal("0.0.0.0", has_keys=True, insecure_no_auth=False) is None
    assert open_refusal("0.0.0.0", has_keys=False, insecure_no_auth=True) is None
    message = open_refusal("0.0.0.0", has_keys=False, insecure_no_auth=False)
    assert "pixelmill keys create" in message and "--insecure-no-auth" in message


def test_keys_create_on_the_cli_needs_no_confirmation_but_says_auth_turns_on(tmp_path):
    # issue 19 §8: over HTTP the first key needs confirm_enable_keys (see
    # tests/integration/test_hostile_inputs.py); the CLI is the operator's own tool.
    from typer.testing import CliRunner

    from pixelmill.cli.main import app

    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    first = runner.invoke(app, ["keys", "create", "--name", "root", "--scope", "admin", *data])
    assert first.exit_code == 0, first.output
    assert "first API key" in first.output and "authentication is now on" in first.output
    second = runner.invoke(app, ["keys", "create", "--name", "team-a", *data])
    assert second.exit_code == 0 and "first API key" not in second.output
    duplicate = runner.invoke(app, ["keys", "create", "--name", "team-a", *data])
    assert duplicate.exit_code == 2 and "team-a" in duplicate.output
