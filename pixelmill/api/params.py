"""Path and query parameters shared by the routes, checked at the API edge.

Ids and cursors come from the outside world and end up in SQL comparisons. A string the
server could never have issued (a NUL byte, which PostgreSQL refuses in text, a path
fragment, 10 kB of junk) is answered here, before any query runs:

* an id that does not have the shape of an id the server makes cannot name anything,
  so it is **404** naming the parameter, exactly like a well-formed id that is unknown;
* a malformed page cursor is **400** naming ``cursor``: the caller should pass back the
  ``next_cursor`` of a previous page, unchanged.

The shapes mirror how ids are made: :func:`pixelmill.db.tables.new_job_id` and
``new_batch_id`` (a prefix and ``secrets.token_urlsafe(16)``: 22 URL-safe characters),
result files (:data:`pixelmill.jobs.results.FILE_ID`, also the blob store's ids) and
:func:`pixelmill.db.tables.encode_cursor`. ``tests/unit/test_hostile_inputs.py`` checks
freshly made ids against these patterns, so a change of id format cannot drift silently.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from pixelmill.core.errors import InvalidRequest, NotFound
from pixelmill.db.tables import decode_cursor, utc
from pixelmill.jobs.results import FILE_ID

JOB_ID = re.compile(r"^job_[A-Za-z0-9_-]{22}$")
BATCH_ID = re.compile(r"^batch_[A-Za-z0-9_-]{22}$")
KEY_ID = re.compile(r"^key_[0-9a-f]{12}$")
CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
"""A cursor is unpadded URL-safe base64 of ``<ISO timestamp>|<job id>`` (about 80 characters)."""
MAX_KEY_NAME = 100  # as pixelmill.auth.store.MAX_NAME_CHARS


def _shown(value: str) -> str:
    """``value`` for an error message: quoted, escaped, and short however long it was."""
    return repr(value[:64]) + ("…" if len(value) > 64 else "")


def _id_path(pattern: re.Pattern[str], description: str):
    # The pattern is documented, not enforced by FastAPI: enforcing it there would make a
    # malformed id a 400, and an id that cannot exist is simply not found (404).
    return Path(description=description, json_schema_extra={"pattern": pattern.pattern})


def job_id_param(job_id: Annotated[str, _id_path(JOB_ID, "A job id, as returned by POST /v1/jobs.")]) -> str:
    """The ``job_id`` path parameter; 404 for anything that is not a job id's shape."""
    if not JOB_ID.fullmatch(job_id):
        raise NotFound(f"job {_shown(job_id)} does not exist", param="job_id")
    return job_id


def batch_id_param(
    batch_id: Annotated[str, _id_path(BATCH_ID, "A batch id, as returned by POST /v1/batches.")],
) -> str:
    """The ``batch_id`` path parameter; 404 for anything that is not a batch id's shape."""
    if not BATCH_ID.fullmatch(batch_id):
        raise NotFound(f"batch {_shown(batch_id)} does not exist", param="batch_id")
    return batch_id


def file_id_param(
    file_id: Annotated[str, _id_path(FILE_ID, "A result file id, from a result URL.")],
) -> str:
    """The ``file_id`` path parameter; 404 for anything that is not a file id's shape."""
    if not FILE_ID.fullmatch(file_id):
        raise NotFound(f"file {_shown(file_id)} does not exist or has expired", param="file_id")
    return file_id


def key_ref_param(
    key_id: Annotated[str, Path(description="A key's id (key_…) or its name.")],
) -> str:
    """The ``key_id`` path parameter: a key id or a key name; 404 for anything else.

    Names are 1-100 printable characters (see ``pixelmill.auth.store``), so a NUL or a
    control character cannot name a key and never reaches the database.
    """
    if not (KEY_ID.fullmatch(key_id) or (0 < len(key_id) <= MAX_KEY_NAME and key_id.isprintable())):
        raise NotFound(f"no active key with id or name {_shown(key_id)}", param="key_id")
    return key_id


def page_cursor_param(
    cursor: Annotated[str | None, Query(
        min_length=1, description="The next_cursor of the previous page, passed back unchanged.",
        json_schema_extra={"pattern": CURSOR.pattern, "maxLength": 128},
    )] = None,
) -> str | None:
    """The ``cursor`` query parameter, decoded once here so only a cursor the server made gets through.

    The pattern is checked here rather than by FastAPI so that every bad cursor gets the
    same message, one that says what to send instead.
    """
    if cursor is None:
        return None
    job_id = ""
    if CURSOR.fullmatch(cursor):
        try:
            _, job_id = decode_cursor(cursor)
        except (InvalidRequest, OverflowError):  # OverflowError: a time that leaves the range when made UTC
            pass
    if not JOB_ID.fullmatch(job_id):
        raise InvalidRequest(
            f"invalid page cursor {_shown(cursor)}: pass back next_cursor from the previous page",
            param="cursor")
    return cursor


def since_param(
    since: Annotated[datetime | None, Query(
        description="Only jobs created at or after this time (RFC 3339 date-time; no zone: UTC).")] = None,
) -> datetime | None:
    """The ``since`` query parameter as UTC; 400 for a time that has no UTC equivalent.

    ``0001-01-01T00:00:00+05:00`` parses, but is before year 1 in UTC: converting it
    overflows, which must not surface as a server error.
    """
    if since is None:
        return None
    try:
        return utc(since)
    except OverflowError:
        raise InvalidRequest(f"since {since.isoformat()} is out of range once made UTC",
                             param="since") from None


JobId = Annotated[str, Depends(job_id_param)]
BatchId = Annotated[str, Depends(batch_id_param)]
FileId = Annotated[str, Depends(file_id_param)]
KeyRef = Annotated[str, Depends(key_ref_param)]
PageCursor = Annotated[str | None, Depends(page_cursor_param)]
Since = Annotated[datetime | None, Depends(since_param)]


def reject_unknown_query(request: Request) -> None:
    """Refuse a query parameter the route does not take (400 naming it).

    A misspelt ``?limt=5`` would otherwise be ignored and the caller would silently get
    the default; the native API says so instead. The names come from the route's own
    declared parameters (sub-dependencies included), so there is no list to keep in step.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    known = set(_query_names(dependant))
    for name in request.query_params:
        if name not in known:
            accepted = ", ".join(sorted(known)) or "none"
            raise InvalidRequest(f"unknown query parameter {_shown(name)}; this route takes: {accepted}",
                                 param=name)


def _query_names(dependant) -> list[str]:
    """The query parameter names a FastAPI dependant declares, its sub-dependencies included."""
    names = [param.alias for param in dependant.query_params]
    for sub in dependant.dependencies:
        names += _query_names(sub)
    return names
