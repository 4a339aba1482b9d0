"""Reading uploaded images from multipart forms, with the server's limits."""

from __future__ import annotations

from PIL import Image
from starlette.datastructures import FormData, UploadFile

from pixelmill.images.codecs import decode_upload
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
    return decode_upload(data, param=name, max_pixels=settings.max_upload_pixels)
