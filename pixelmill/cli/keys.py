"""``pixelmill keys``: create, list and revoke API keys in the job store.

``create`` prints the key on standard output and nothing else there, so
``KEY=$(pixelmill keys create --name ci)`` works; everything else goes to standard error.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pixelmill.cli.options import STORE, App, with_settings
from pixelmill.settings import Settings

app = App(help="Manage API keys (stored hashed in the job store).", no_args_is_help=True)
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
@with_settings(*STORE)
def create(
    settings: Settings,
    name: Annotated[str, typer.Option(help="Who the key is for, e.g. team-a.")],
    scope: Annotated[str, typer.Option(help="generate (images, own jobs) or admin (all).")] = "generate",
    rate: Annotated[str | None, typer.Option(help="Submissions per period, e.g. 60/min, 5/s.")] = None,
    max_running: Annotated[int | None, typer.Option(help="Queued+running jobs this key may have.")] = None,
) -> None:
    """Create a key and print it ONCE (only its hash is stored).

    The first key turns authentication on for every client of the server: unlike
    ``POST /v1/keys`` this needs no confirmation (whoever runs it owns the data
    directory), but it says so on standard error.
    """
    from pixelmill.core.errors import PixelmillError

    store = _key_store(settings)
    try:
        first = not store.has_active()
        key, token = store.create(name, scope=scope, rate=rate, max_running=max_running)
    except (PixelmillError, ValueError) as exc:
        raise _fail(exc) from None
    if first:
        console.print("[yellow]note:[/] this is the server's first API key: authentication is now on, "
                      "and every request without a valid key gets 401", soft_wrap=True)
    console.print(f"created {key.id} ({key.name}, scope {key.scope.value}); the key is shown once:")
    print(token)


@app.command("list")
@with_settings(*STORE)
def list_keys(
    settings: Settings,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys: id, name, prefix, scope, limits (never the key itself)."""
    keys = _key_store(settings).list(include_revoked=all_keys)
    table = Table(title="API keys")
    for column in ("id", "name", "prefix", "scope", "rate", "max running", "created", "revoked"):
        table.add_column(column)
    # An id is copied into `keys revoke`: a narrow terminal squeezes the other columns, never it.
    whole = max((len(key.id) for key in keys), default=2)
    table.columns[0].no_wrap, table.columns[0].min_width = True, whole
    for key in keys:
        table.add_row(
            key.id, key.name, key.prefix + "…", key.scope.value, key.rate or "-",
            str(key.max_running or "-"), f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    # Piped (scripts, CI logs): wide enough for whole rows, not the 80 columns rich assumes.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@app.command("revoke")
@with_settings(*STORE)
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
