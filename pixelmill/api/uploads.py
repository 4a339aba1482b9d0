"""Reading uploaded images from multipart forms, with the server's limits.

Decoding runs in the API's CPU pool (:mod:`pixelmill.api.offload`), never on the event
loop, and is charged to the request's pixel budget (:mod:`pixelmill.images.budget`).
"""

from __future__ import annotations

from PIL import Image
from starlette.datastructures import FormData, UploadFile

from pixelmill.api.offload import run_cpu
from pixelmill.images.codecs import decode_upload, reencode_png
from pixelmill.images.masks import flatten, is_outpaint, prepare_inpaint
from pixelmill.core.errors import InvalidRequest
from pixelmill.settings import Settings


def form_fields(form: FormData) -> dict[str, str]:
    """The plain (non-file) fields of a form; array-style names ``x[]`` become ``x``."""
    return {key.removesuffix("[]"): value for key, value in form.multi_items() if isinstance(value, str)}


async def read_image(form: FormData, name: str, settings: Settings, *, required: bool = True) -> Image.Image | None:
    """Decode the uploaded file ``name`` (or ``name[]``) with the upload limits applied."""
    upload = form.get(name) or form.get(f"{name}[]")
    if upload is None:
        if required:
            raise InvalidRequest(f"{name} is required: upload a PNG, JPEG or WebP file", param=name)
        return None
    if not isinstance(upload, UploadFile):
        raise InvalidRequest(f"{name} must be an uploaded file, not a text field", param=name)
    data = await upload.read()
    return await run_cpu(decode_upload, data, param=name, max_pixels=settings.max_upload_pixels)


async def inpaint_pngs(
    image: Image.Image, mask: Image.Image | None, mask_mode: str,
    size: tuple[int | None, int | None] | None = None,
) -> tuple[bytes, bytes]:
    """The inpaint image and its binary mask as clean PNGs (prepared and encoded in the CPU pool).

    ``size`` is the requested output size, if any: larger than the image, the job
    outpaints, and its new border is an edit even when the mask keeps the whole image.
    """
    outpaint = is_outpaint(image.size, size)  # before the pool: a bad size is a plain 400

    def prepare() -> tuple[bytes, bytes]:
        prepared, binary = prepare_inpaint(image, mask, mask_mode=mask_mode, outpaint=outpaint)
        return reencode_png(prepared), reencode_png(binary)

    return await run_cpu(prepare)


async def variation_png(image: Image.Image) -> bytes:
    """A variation's input flattened to RGB, as a clean PNG (encoded in the CPU pool)."""
    return await run_cpu(lambda: reencode_png(flatten(image)))
