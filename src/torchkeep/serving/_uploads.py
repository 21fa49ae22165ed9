"""The images of a request: multipart ``file`` fields or JSON base64, decoded off the event loop.

Every failure is the upload's (a 4xx :class:`~torchkeep.serving._state.ServeError` saying what to send),
never the server's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchkeep.errors import InputError
from torchkeep.serving._model import ServedModel
from torchkeep.serving._state import ServeError, ServingState

__all__ = ["decode", "decode_b64", "images_of", "read_body"]

_BYTESIO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


async def read_body(request: Request) -> bytes:
    return await request.body()  # bounded by _Guard


def decode_b64(text: Any, k: int) -> bytes:
    if not isinstance(text, str):
        raise ServeError(400, "bad image", f"images[{k}] must be a base64 string, not {type(text).__name__}")
    if text.startswith("data:") and "," in text:  # a data URL, as a browser's FileReader gives it
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, "bad base64", f"images[{k}] is not valid base64; encode each image file with "
                         "base64 (e.g. `base64 -w0 cat.jpg`)") from None


async def images_of(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """The uploaded images of a v1 predict request: multipart ``file`` fields or JSON base64."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images, max_fields=max_images + 16)
        except StarletteHTTPException as exc:
            text = str(exc.detail)
            if "Too many files" in text:
                raise ServeError(400, "too many images",
                                 f"more than {max_images} images in one request (--max-images); split it") from None
            raise ServeError(400, "bad multipart body", f"{text}; send images as multipart 'file' fields") from None
        uploads = [(str(v.filename or f"<image {i}>"), v) for i, (_, v) in enumerate(form.multi_items())
                   if isinstance(v, UploadFile)]
        if not uploads:
            raise ServeError(400, "no images", "no file field in the form; send one or more images as 'file' "
                             "(curl -F file=@cat.jpg)")
        out = [(name, await up.read()) for name, up in uploads]
        await form.close()
        return out
    if ctype == "application/json":
        try:
            doc = json.loads(await read_body(request))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ServeError(400, "malformed JSON", f"the body is not valid JSON ({exc})") from None
        images = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(images, list) or not images:
            raise ServeError(400, "no images", 'send {"images": ["<base64 of an image file>", ...]}')
        if len(images) > max_images:
            raise ServeError(400, "too many images",
                             f"{len(images)} images in one request; the limit is {max_images} (--max-images)")
        names = doc.get("filenames")
        names = names if isinstance(names, list) and len(names) == len(images) else None
        return [(str(names[k]) if names else f"<image {k}>", decode_b64(v, k)) for k, v in enumerate(images)]
    raise ServeError(415, "unsupported content type",
                     f"Content-Type {ctype or '(none)'!r}: send multipart/form-data with 'file' fields, or "
                     'application/json {"images": [base64, ...]}')


async def decode(state: ServingState, model: ServedModel, images: list[tuple[str, bytes]]) -> list[Any]:
    """The images put through the model's preprocessing on the decoder threads; an unreadable one is a 400."""
    loop = asyncio.get_running_loop()

    def one(name: str, data: bytes) -> Any:
        try:
            return model.preprocess(data)
        except InputError as exc:
            what = _BYTESIO.sub("the upload", exc.what)  # Pillow names the in-memory file by its repr
            raise ServeError(400, "unreadable image", f"{name}: {what}; {exc.fix or 'send a PNG or JPEG'}") from None
        except Exception as exc:  # any decoder failure is the upload's, never the server's
            raise ServeError(400, "unreadable image", f"{name}: cannot read the image ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); send a PNG, JPEG, BMP, GIF, TIFF or WebP file") from None

    futures = [loop.run_in_executor(state.decoder, one, n, d) for n, d in images]
    return list(await asyncio.gather(*futures))
