"""``Guard``: the checks a request passes before the app reads anything of it, and its metrics.

A plain ASGI middleware, in this order: the token (401), the declared ``Content-Length`` against the upload
limit (413 before a byte of the body is read), a compressed body (415); then the body is counted as it streams
in and refused at the limit (:class:`BodyTooLarge`, answered 413, for bodies without a length).
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from fastapi.responses import Response

from torchkeep.serving._state import ServingState, error_response, too_large

__all__ = ["BodyTooLarge", "Guard"]

_MODEL_PATH = re.compile(r"^/v[12]/models/([^/]+)")
_PROTECTED = ("/v1/", "/v2/models")


class BodyTooLarge(Exception):
    """A body without a declared length that grew past the upload limit while it streamed in."""


class Guard:
    """Token, upload size and request metrics, before the app reads anything (see the module docstring)."""

    def __init__(self, app: Any, state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        st = self.state
        path: str = scope.get("path", "")
        match = _MODEL_PATH.match(path)
        label = (match.group(1) if match.group(1) in st.models else "<unknown>") if match else None
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        st.in_flight.inc()
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
                return
            seen = 0

            async def limited_receive() -> dict:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > st.max_upload:
                        raise BodyTooLarge
                return message

            await self.app(scope, limited_receive, send_wrapper)
        finally:
            st.in_flight.dec()
            if label is not None:
                st.requests.labels(model=label, code=str(status["code"])).inc()
                st.seconds.labels(model=label).observe(time.perf_counter() - start)

    def _refusal(self, scope: dict, path: str) -> Response | None:
        st = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if st.token is not None and path.startswith(_PROTECTED):
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), st.token.encode()):
                return error_response(
                    401, "unauthorized",
                    ("a wrong token was given" if given else "this server needs a token")
                    + "; send the header 'Authorization: Bearer TOKEN' (the --token of torchkeep serve)",
                    {"WWW-Authenticate": "Bearer"}, path=path)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "bad Content-Length", f"Content-Length {length!r} is not a number of "
                                      "bytes", path=path)
            if int(length) > st.max_upload:
                return error_response(413, "upload too large", too_large(int(length), st.max_upload), path=path)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return error_response(415, "unsupported content encoding",
                                  f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed",
                                  path=path)
        return None
