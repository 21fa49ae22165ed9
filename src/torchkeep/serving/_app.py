"""``create_app(...)``: the ASGI app behind ``torchkeep serve`` (FastAPI).

Routes (:mod:`torchkeep.serving._routes`): the page (``/``, ``/static/*``), ``/healthz``, ``/readyz``,
``/metrics``, ``/v1/models[/{name}]``, ``/v1/models/{name}/predict`` and the Open Inference Protocol v2 under
``/v2``. Every refusal is a 4xx JSON ``{"error": ..., "detail": ...}`` whose detail says how to fix it; a bad
request never takes the server down. Before the app reads anything of a request, ``Guard``
(:mod:`torchkeep.serving._guard`) checks the token, the upload size and the content encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchkeep._runners import resolve_device
from torchkeep._version import __version__
from torchkeep.serving._guard import BodyTooLarge, Guard
from torchkeep.serving._model import ServedModel, parse_model_args
from torchkeep.serving._oip import OipError
from torchkeep.serving._routes import service_routes, v1_routes, v2_routes
from torchkeep.serving._state import ServeError, ServingState, error_response, new_state, too_large

__all__ = ["create_app"]

ModelArgs = str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]]


def create_app(
    models: ModelArgs,
    *,
    backend: str = "auto",
    device: str = "cpu",
    trust: bool = False,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 20.0,
    max_images: int = 64,
    token: str | None = None,
    on_warmed: Callable[[list[ServedModel]], None] | None = None,
) -> FastAPI:
    """The ASGI app serving ``models``; run it with uvicorn (``torchkeep serve`` does).

    Every model file is scanned and loaded here (a refused file raises before anything is served); warm-up
    (backend conversion, ``backend="auto"``'s race) runs in the background once the app starts, and
    ``/readyz`` answers 200 when it is done.

    Args:
        models: a model file, a list of files or ``"NAME=FILE"`` strings, or a mapping name -> file. A model's
            name is its file stem unless given.
        backend: "auto" (measure eager, TorchScript and ONNX Runtime at warm-up, keep the fastest that passes
            the parity check), "eager", "torchscript" or "onnxruntime". Exports run on their own.
        device: "cpu", "cuda", "auto"...
        trust: load files whose scan found custom code (user classes, TorchScript code that is not safe).
        max_batch: the most images in one forward pass.
        max_wait_ms: how long the oldest image may wait for others to fill a batch.
        max_upload_mb: the largest request body (413 beyond, refused before it is read).
        max_images: the most images in one request.
        token: when set, ``/v1/*`` and ``/v2/models/*`` need ``Authorization: Bearer TOKEN``.
        on_warmed: called (from the warm-up thread) with the models once every warm-up has finished.

    Raises:
        UnsafeFileError: a model file can execute code when loaded.
        UntrustedCodeError: a model file imports custom code and ``trust`` is False.
        InputError: a file is not a model file or an export carrying a spec.
        UsageError: bad names or arguments.
    """
    from PIL import Image

    # Pillow only warns between 1x and 2x its pixel limit; a server refuses those too (load_image does it per
    # call, with a filter that is not thread-safe: set it once for the process)
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    dev = resolve_device(device)
    served = {name: ServedModel.open(name, path, backend=backend, device=dev, trust=trust)
              for name, path in _named(models)}
    state = new_state(served, max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb,
                      max_images=max_images, token=token)
    app = FastAPI(
        title="torchkeep serve",
        version=__version__,
        description="Image classification from torchkeep model files: v1 JSON API, Open Inference Protocol v2, "
        "a web page at /. Errors are {\"error\", \"detail\"}.",
        lifespan=_lifespan(state, on_warmed),
    )
    app.state.torchkeep = state
    service_routes(app, state)
    v1_routes(app, state)
    v2_routes(app, state)
    _errors(app)
    app.add_middleware(Guard, state=state)
    return app


def _named(models: ModelArgs) -> list[tuple[str, Path]]:
    """(name, file) for each model, with the name rules of ``NAME=FILE`` arguments."""
    if isinstance(models, Mapping):
        pairs = [(str(k), Path(os.fspath(v))) for k, v in models.items()]
        parse_model_args([f"{n}={p}" for n, p in pairs])  # the same name rules
        return pairs
    items = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    return parse_model_args([os.fspath(m) for m in items])


def _lifespan(state: ServingState, on_warmed: Callable[[list[ServedModel]], None] | None
              ) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the batchers and warm every model up in the background; at shutdown, stop them in order."""
    served = state.models

    def warm_all() -> None:
        for m in served.values():
            m.warm_up(state.max_batch)
        state.warmed.set()
        if on_warmed is not None:
            on_warmed(list(served.values()))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for b in state.batchers.values():
            b.start()
        warmer = threading.Thread(target=warm_all, name="torchkeep-warmup", daemon=True)
        warmer.start()
        try:
            yield
        finally:
            for b in state.batchers.values():
                await b.stop()
            state.decoder.shutdown(wait=True, cancel_futures=True)
            # a thread still in torch when the interpreter exits aborts the process (std::terminate)
            await asyncio.get_running_loop().run_in_executor(None, warmer.join)

    return lifespan


def _errors(app: FastAPI) -> None:
    """Every error, the app's bugs included, answered as JSON ``{"error", "detail"}``."""
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, path=request.url.path)

    @app.exception_handler(OipError)
    async def oip_error(request: Request, exc: OipError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, path=request.url.path)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "upload too large", too_large(None, request.app.state.torchkeep.max_upload),
                              path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return error_response(400, "invalid request", "; ".join(parts) or "the request does not fit this endpoint",
                              path=request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: still JSON, and logged
        return error_response(500, "internal error", f"{type(exc).__name__}: {str(exc)[:200]}; please report it",
                              path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, "not found", f"no endpoint {request.url.path}; see /docs for the API",
                                  path=request.url.path)
        if exc.status_code == 405:
            return error_response(405, "method not allowed", f"{request.method} is not accepted by {request.url.path}",
                                  exc.headers, path=request.url.path)
        return error_response(exc.status_code, "bad request", str(exc.detail), path=request.url.path)
