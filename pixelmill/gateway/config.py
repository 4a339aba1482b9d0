"""The gateway's configuration file (``--backends backends.toml``): upstream backends and routes.

::

    [[backend]]
    name = "hosted"                      # how routes, job records and the ledger name it
    kind = "replicate"                   # "replicate" or "openai" (Images API); another
                                         # pixelmill speaks both (/replicate/v1 and /v1)
    url = "https://api.replicate.com/v1" # base URL; requests only ever go here
    api_key_env = "REPLICATE_API_TOKEN"  # the credential's environment variable (optional)
    models = { "flux-schnell" = "black-forest-labs/flux-schnell" }  # local name = upstream name
    price_per_image = 0.003              # or price_per_megapixel, as in cost/prices.toml
    checked = 2026-11-30                 # when the price was compared with its source
    allow_private = false                # true: the URL may be loopback/private (a LAN pixelmill)
    concurrency = 8                      # upstream jobs in flight at once
    timeout_s = 60                       # per HTTP request
    max_retries = 4                      # on 429/5xx and connection errors, honouring Retry-After
    poll_interval_s = 1.0                # between status polls of an asynchronous prediction

    [[route]]
    model = "flux-schnell"               # the model name clients send (after alias resolution)
    policy = "upstream"                  # local | upstream | local-then-upstream | shadow
    backend = "hosted"                   # for every policy but local
    overflow_wait_s = 30                 # local-then-upstream: overflow past this expected wait
    sample = 0.1                         # shadow: the fraction also sent upstream

The file holds no secret: only the *name* of the variable that does. The value is read
from the environment when the gateway starts (a missing variable is an error naming it)
and kept in memory only; nothing writes it to a log, a job or an error.
Every problem is a :class:`GatewayConfigError` naming the file and the key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from pixelmill.cost.prices import CostConfigError, HostedOffer, parse_offer

KINDS = ("openai", "replicate")
POLICIES = ("local", "upstream", "local-then-upstream", "shadow")
LOCAL = "local"
"""The route of jobs run by this fleet's own workers (not a backend name)."""
_BACKEND_KEYS = {"name", "kind", "url", "api_key_env", "models", "price_per_image", "price_per_megapixel",
                 "checked", "source", "allow_private", "concurrency", "timeout_s", "max_retries",
                 "poll_interval_s", "max_wait_s"}
_ROUTE_KEYS = {"model", "policy", "backend", "overflow_wait_s", "sample"}


class GatewayConfigError(ValueError):
    """A backends file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Backend:
    """One upstream: where it is, how it speaks, what it serves and what it costs."""

    name: str
    kind: str
    url: str
    models: Mapping[str, str]
    """Local model name → the name the upstream knows it by."""
    offer: HostedOffer
    api_key_env: str | None = None
    allow_private: bool = False
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    poll_interval_s: float = 1.0
    max_wait_s: float = 600.0
    """How long one upstream job may run before it fails with ``upstream_timeout``."""
    api_key: str | None = field(default=None, repr=False, compare=False)
    """The credential, read from ``api_key_env`` at load; never printed (``repr=False``)."""

    def price(self, width: int | None, height: int | None, images: int) -> float:
        """What ``images`` images of ``width`` × ``height`` cost on this backend."""
        return self.offer.price(width, height) * images


@dataclass(frozen=True)
class Route:
    """How requests for one model name are served (see the module docstring)."""

    model: str
    policy: str
    backend: str | None = None
    overflow_wait_s: float = 30.0
    sample: float = 0.0


@dataclass(frozen=True)
class GatewayConfig:
    """The parsed file: backends by name and routes by model name."""

    backends: Mapping[str, Backend]
    routes: Mapping[str, Route]
    source: str = ""

    def route(self, model: str | None) -> Route:
        """The route of ``model``: its ``[[route]]``, else ``upstream`` on the backend that
        serves it (a model no local worker has), else ``local``."""
        if model is None:
            return Route(model="", policy=LOCAL)
        if model in self.routes:
            return self.routes[model]
        for backend in self.backends.values():
            if model in backend.models:
                return Route(model=model, policy="upstream", backend=backend.name)
        return Route(model=model, policy=LOCAL)

    def upstream_models(self) -> set[str]:
        """Every model name some backend serves (the catalog accepts them)."""
        return {name for backend in self.backends.values() for name in backend.models}


def _fail(where: str, key: str, message: str) -> GatewayConfigError:
    return GatewayConfigError(f"{where}: {key}: {message}")


def _number(raw: dict, key: str, where: str, default: float, *, low: float, high: float | None = None) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, key, f"must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(where, key, f"must be {bound}, got {value!r}")
    return float(value)


def _backend(raw: Any, index: int, source: str, environ: Mapping[str, str] | None) -> Backend:
    if not isinstance(raw, dict):
        raise _fail(source, f"backend[{index}]", "must be a table")
    name = raw.get("name")
    where = f"{source}: backend {name!r}" if isinstance(name, str) else f"{source}: backend[{index}]"
    if not isinstance(name, str) or not name or name == LOCAL or not name.replace("-", "").replace("_", "").isalnum():
        raise _fail(where, "name", f"must be letters, digits, '-' or '_' and not {LOCAL!r}, got {name!r}")
    unknown = sorted(set(raw) - _BACKEND_KEYS)
    if unknown:
        raise _fail(where, unknown[0], f"unknown key (known: {', '.join(sorted(_BACKEND_KEYS))})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(where, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise _fail(where, "url", f"must be an http(s) URL, got {url!r}")
    models = raw.get("models")
    if isinstance(models, list) and all(isinstance(m, str) for m in models):
        models = {m: m for m in models}
    if not isinstance(models, dict) or not models or not all(isinstance(v, str) for v in models.values()):
        raise _fail(where, "models", "must be a non-empty list of names or a table of local = upstream names")
    env = raw.get("api_key_env")
    if env is not None and (not isinstance(env, str) or not env):
        raise _fail(where, "api_key_env", "must name an environment variable")
    if env is not None and environ is not None and not environ.get(env):
        raise _fail(where, "api_key_env", f"the environment variable {env} is not set (the key is read from it)")
    price = {k: raw[k] for k in ("price_per_image", "price_per_megapixel", "checked", "source") if k in raw}
    try:
        offer = parse_offer({"provider": name, "model": ",".join(models), **price}, where)
    except CostConfigError as exc:
        raise GatewayConfigError(f"{exc} (price: price_per_image or price_per_megapixel, and checked)") from None
    allow_private = raw.get("allow_private", False)
    if not isinstance(allow_private, bool):
        raise _fail(where, "allow_private", "must be true or false")
    return Backend(
        name=name, kind=kind, url=url.rstrip("/"), models=dict(models), offer=offer, api_key_env=env,
        allow_private=allow_private,
        concurrency=int(_number(raw, "concurrency", where, 8, low=1, high=1024)),
        timeout_s=_number(raw, "timeout_s", where, 60.0, low=0.1),
        max_retries=int(_number(raw, "max_retries", where, 4, low=0, high=20)),
        poll_interval_s=_number(raw, "poll_interval_s", where, 1.0, low=0.01),
        max_wait_s=_number(raw, "max_wait_s", where, 600.0, low=1),
        api_key=environ.get(env) if env and environ is not None else None,
    )


def _route(raw: Any, index: int, source: str, backends: Mapping[str, Backend]) -> Route:
    if not isinstance(raw, dict):
        raise _fail(source, f"route[{index}]", "must be a table")
    model = raw.get("model")
    where = f"{source}: route {model!r}" if isinstance(model, str) else f"{source}: route[{index}]"
    unknown = sorted(set(raw) - _ROUTE_KEYS)
    if unknown:
        raise _fail(where, unknown[0], f"unknown key (known: {', '.join(sorted(_ROUTE_KEYS))})")
    if not isinstance(model, str) or not model:
        raise _fail(where, "model", "must be a model name")
    policy = raw.get("policy")
    if policy not in POLICIES:
        raise _fail(where, "policy", f"must be one of {', '.join(POLICIES)}, got {policy!r}")
    backend = raw.get("backend")
    if policy != LOCAL:
        if backend not in backends:
            raise _fail(where, "backend", f"must name a [[backend]] ({', '.join(backends) or 'none'}), got {backend!r}")
        if model not in backends[backend].models:
            raise _fail(where, "backend", f"backend {backend!r} does not list {model!r} in its models")
    sample = _number(raw, "sample", where, 0.0, low=0.0, high=1.0)
    if policy == "shadow" and "sample" not in raw:
        raise _fail(where, "sample", "a shadow route needs the fraction to sample (0 to 1)")
    return Route(model=model, policy=policy, backend=backend if policy != LOCAL else None,
                 overflow_wait_s=_number(raw, "overflow_wait_s", where, 30.0, low=0.0), sample=sample)


def parse_config(
    text: str, source: str, environ: Mapping[str, str] | None = None, *, credentials: bool = True,
) -> GatewayConfig:
    """The config in ``text`` (``source`` names it in errors); credentials from ``environ``
    (default: the process environment). ``credentials=False`` reads none (the cost report
    needs prices and routes only)."""
    environ = None if not credentials else os.environ if environ is None else environ
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GatewayConfigError(f"{source}: {exc}") from None
    unknown = sorted(set(data) - {"backend", "route"})
    if unknown:
        raise _fail(source, unknown[0], "unknown table (known: [[backend]], [[route]])")
    backends: dict[str, Backend] = {}
    for index, raw in enumerate(data.get("backend", [])):
        backend = _backend(raw, index, source, environ)
        if backend.name in backends:
            raise _fail(source, f"backend {backend.name!r}", "name used twice")
        backends[backend.name] = backend
    routes: dict[str, Route] = {}
    for index, raw in enumerate(data.get("route", [])):
        route = _route(raw, index, source, backends)
        if route.model in routes:
            raise _fail(source, f"route {route.model!r}", "model routed twice")
        routes[route.model] = route
    return GatewayConfig(backends=backends, routes=routes, source=source)


def load_config(path: Path, environ: Mapping[str, str] | None = None, *, credentials: bool = True) -> GatewayConfig:
    """Read and parse the backends file at ``path`` (see :func:`parse_config`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise GatewayConfigError(f"cannot read backends file {path}: {exc.strerror}") from None
    return parse_config(text, str(path), environ, credentials=credentials)
