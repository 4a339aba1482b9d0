"""Input images of queued jobs, kept out of the queue row.

A request's images (init, mask, each ControlNet image) are megabytes of base64 next to
a few hundred bytes of parameters. Inline in the ``request`` column they were parsed by
every claim (for up to 64 candidates), every ``GET /v1/jobs/{id}`` and every listed row.
Instead each image sits once in ``input_images``, keyed by its SHA-256 (a batch of
prompts × seeds over one init image stores it once), and the job row names the ids in
its ``inputs`` column. Only a claim loads them, for the jobs it actually took.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from pixelmill.core.types import GenerationRequest
from pixelmill.db import tables as t
from pixelmill.db.tables import input_images


def input_image_id(data: bytes) -> str:
    """Id of an image in ``input_images``: its SHA-256, so each one is stored once."""
    return hashlib.sha256(data).hexdigest()


def split_inputs(request: GenerationRequest) -> tuple[GenerationRequest, dict | None, dict[str, bytes]]:
    """``(stored, inputs, images)``: the request without its images, their ids, id → bytes.

    ``stored`` has ``init_image``/``mask_image`` None and every ControlNet image empty;
    ``inputs`` is ``{"init_image": id|None, "mask_image": id|None, "controlnets": [id, …]}``,
    or None when the request has no images. :func:`attach_inputs` undoes it.
    """
    images: dict[str, bytes] = {}

    def ref(data: bytes | None) -> str | None:
        if not data:
            return None
        images[image_id := input_image_id(data)] = data
        return image_id

    inputs = {"init_image": ref(request.init_image), "mask_image": ref(request.mask_image),
              "controlnets": [ref(control.image) for control in request.controlnets]}
    if not images:
        return request, None, {}
    stored = request.model_copy(update={
        "init_image": None, "mask_image": None,
        "controlnets": tuple(control.model_copy(update={"image": b""}) for control in request.controlnets),
    })
    return stored, inputs, images


def input_ids(inputs: Mapping[str, Any] | None) -> set[str]:
    """Every image id an ``inputs`` column value names."""
    if not inputs:
        return set()
    named = (inputs.get("init_image"), inputs.get("mask_image"), *inputs.get("controlnets", ()))
    return {image_id for image_id in named if image_id}


def attach_inputs(
    stored: GenerationRequest, inputs: Mapping[str, Any] | None, images: Mapping[str, bytes]
) -> GenerationRequest:
    """The full request: ``stored`` with the images ``inputs`` names, taken from ``images``."""
    if not inputs:
        return stored
    refs = list(inputs.get("controlnets", ()))
    refs += [None] * (len(stored.controlnets) - len(refs))
    controls = tuple(
        control.model_copy(update={"image": images[image_id]}) if image_id else control
        for control, image_id in zip(stored.controlnets, refs)
    )
    init, mask = inputs.get("init_image"), inputs.get("mask_image")
    return stored.model_copy(update={
        "init_image": images[init] if init else stored.init_image,
        "mask_image": images[mask] if mask else stored.mask_image,
        "controlnets": controls,
    })


def new_job_row(
    request: GenerationRequest, key_of: Callable[[GenerationRequest], Hashable], **fields: Any
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The ``jobs`` row of a new job (``fields`` as for :func:`~pixelmill.db.tables.new_job`)
    and the input images (id → bytes) to store with it."""
    stored, inputs, images = split_inputs(request)
    key = t.batch_key_digest(key_of(request))
    return t.new_job(request, stored=stored, inputs=inputs, batch_key=key, **fields), images


def store_images(conn: sa.Connection, images: Mapping[str, bytes], now: datetime) -> None:
    """Insert the images not stored yet (ids are content hashes: an existing one is the same)."""
    if not images:
        return
    # ON CONFLICT DO NOTHING: two submits of one image may race (PostgreSQL READ COMMITTED).
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    rows = [{"id": image_id, "data": data, "created_at": now} for image_id, data in images.items()]
    conn.execute(insert(input_images).on_conflict_do_nothing(index_elements=["id"]), rows)


def load_images(conn: sa.Connection, ids: Iterable[str]) -> dict[str, bytes]:
    """id → bytes of the stored images among ``ids`` (missing ones are left out)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    if conn.dialect.name == "postgresql":
        # In binary format: as text, bytea travels hex-encoded (twice the bytes, then decoded),
        # 5× slower for a batch of photo-sized images. SQLAlchemy cannot ask for it per query;
        # the driver's cursor runs in the same transaction.
        with conn.connection.driver_connection.cursor(binary=True) as cursor:
            cursor.execute("SELECT id, data FROM input_images WHERE id = ANY(%s)", (wanted,))
            return {image_id: bytes(data) for image_id, data in cursor}
    stmt = sa.select(input_images.c.id, input_images.c.data).where(input_images.c.id.in_(wanted))
    return {row.id: bytes(row.data) for row in conn.execute(stmt)}
