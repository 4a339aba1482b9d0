"""``pixelmill keys``: create, list and revoke API keys in the job store.

``create`` prints the key on standard output and nothing else there, so
``KEY=$(pixelmill keys create --name ci)`` works; everything else goes to standard error.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pixelmill.cli.options import with_settings
from pixelmill.settings import Settings

app = typer.Typer(help="Manage API keys (stored hashed in the job store).", no_args_is_help=True)
console = Console(stderr=True)


def _key_store(settings: Settings):
    from pixelmill.auth.store import KeyStore
    from pixelmill.jobs.store import JobStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return KeyStore(JobStore.open(settings.db_url).engine)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {getattr(exc, 'message', exc)}")
    return typer.Exit(2)


@app.command("create")
@with_settings
def create(
    settings: Settings,
    name: Annotated[str, typer.Option(help="Who the key is for, e.g. team-a.")],
    scope: Annotated[str, typer.Option(help="generate (images, own jobs) or admin (all).")] = "generate",
    rate: Annotated[str | None, typer.Option(help="Submissions per period, e.g. 60/min, 5/s.")] = None,
    max_running: Annotated[int | None, typer.Option(help="Queued+running jobs this key may have.")] = None,
) -> None:
    """Create a key and print it ONCE (only its hash is stored)."""
    from pixelmill.core.errors import PixelmillError

    try:
        key, token = _key_store(settings).create(name, scope=scope, rate=rate, max_running=max_running)
    except (PixelmillError, ValueError) as exc:
        raise _fail(exc) from None
    console.print(f"created {key.id} ({key.name}, scope {key.scope.value}); the key is shown once:")
    print(token)


@app.command("list")
@with_settings
def list_keys(
    settings: Settings,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys: id, name, prefix, scope, limits (never the key itself)."""
    table = Table(title="API keys")
    for column in ("id", "name", "prefix", "scope", "rate", "max running", "created", "revoked"):
        table.add_column(column)
    for key in _key_store(settings).list(include_revoked=all_keys):
        table.add_row(
            key.id, key.name, key.prefix + "…", key.scope.value, key.rate or "-",
            str(key.max_running or "-"), f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    Console().print(table)


@app.command("revoke")
@with_settings
def revoke(
    settings: Settings,
    key: Annotated[str, typer.Argument(help="The key's id (key_…) or name.")],
) -> None:
    """Revoke a key: requests with it get 401 from then on."""
    from pixelmill.core.errors import PixelmillError

    try:
        revoked = _key_store(settings).revoke(key)
    except PixelmillError as exc:
        raise _fail(exc) from None
    console.print(f"revoked {revoked.id} ({revoked.name})")


def check_bind_address(settings: Settings) -> None:
    """Stop ``serve`` before it listens on a network address with no keys (see auth.bind)."""
    from pixelmill.auth.bind import is_loopback, open_refusal

    if is_loopback(settings.host) or settings.insecure_no_auth:
        return  # no need to open the store here
    refusal = open_refusal(settings.host, has_keys=_key_store(settings).has_active(), insecure_no_auth=False)
    if refusal:
        console.print(f"[red]error:[/] {refusal}", soft_wrap=True)
        raise typer.Exit(2)
