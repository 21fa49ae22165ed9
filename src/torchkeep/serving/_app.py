"""``create_app(...)``: the ASGI app behind ``torchkeep serve`` (FastAPI).

Routes: the page (``/``, ``/static/*``), ``/healthz``, ``/readyz``, ``/metrics``, ``/v1/models[/{name}]``,
``/v1/models/{name}/predict`` and the Open Inference Protocol v2 under ``/v2``. Every refusal is a 4xx JSON
``{"error": ..., "detail": ...}`` whose detail says how to fix it; a bad request never takes the server down.

Order of checks for a request (``_Guard``, a plain ASGI middleware, so nothing is read before them): the token
(401), the declared ``Content-Length`` against ``max_upload_mb`` (413 before a byte of the body is read), a
compressed body (415); then the body is counted as it streams in and refused at the limit (413, for bodies
without a length).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchkeep._version import __version__
from torchkeep.errors import InputError
from torchkeep.serving._batcher import Batcher
from torchkeep.serving._model import ServedModel, parse_model_args
from torchkeep.serving._oip import OipError, encode_response, model_metadata, parse_request

__all__ = ["ServeError", "ServingState", "create_app"]

MB = 1024 * 1024
_MODEL_PATH = re.compile(r"^/v[12]/models/([^/]+)")
_PROTECTED = ("/v1/", "/v2/models")
_BYTESIO = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class ServeError(Exception):
    """A refused request: ``status`` with ``{"error": error, "detail": detail}``."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


class _BodyTooLarge(Exception):
    pass


def _error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None, *,
           path: str = "") -> JSONResponse:
    if path.startswith("/v2"):  # OIP clients (tritonclient) show only "error": it carries the detail too
        error = f"{error}: {detail}"
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=dict(headers or {}))


@dataclass
class ServingState:
    """What the app serves and counts (``app.state.torchkeep``)."""

    models: dict[str, ServedModel]
    batchers: dict[str, Batcher]
    max_batch: int
    max_upload: int
    max_images: int
    token: str | None
    registry: CollectorRegistry
    requests: Counter
    seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    in_flight: Gauge
    decoder: ThreadPoolExecutor
    warmed: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        return all(m.state == "ready" for m in self.models.values())

    def model(self, name: str, *, need_ready: bool = True) -> ServedModel:
        m = self.models.get(name)
        if m is None:
            raise ServeError(404, "unknown model", f"no model named {name!r}; served: {', '.join(self.models)} "
                             "(GET /v1/models lists them)")
        if need_ready and m.state != "ready":
            why = f"it failed to warm up: {m.error}" if m.state == "failed" else "it is still warming up"
            raise ServeError(503, "model not ready", f"{name!r} is not ready: {why}; GET /readyz says when it is")
        return m


# ----------------------------------------------------------------------------------------- middleware
class _Guard:
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
                        raise _BodyTooLarge
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
                return _error(401, "unauthorized",
                              ("a wrong token was given" if given else "this server needs a token")
                              + "; send the header 'Authorization: Bearer TOKEN' (the --token of torchkeep serve)",
                              {"WWW-Authenticate": "Bearer"}, path=path)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error(400, "bad Content-Length", f"Content-Length {length!r} is not a number of bytes", path=path)
            if int(length) > st.max_upload:
                return _error(413, "upload too large", _too_large(int(length), st.max_upload), path=path)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return _error(415, "unsupported content encoding",
                          f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed", path=path)
        return None


def _too_large(size: int | None, limit: int) -> str:
    got = f"the request body is {size / MB:.1f} MB" if size is not None else "the request body is over the limit"
    return f"{got}; the limit is {limit / MB:g} MB: send fewer or smaller images, or start the server with a " \
           "larger --max-upload-mb"


# ----------------------------------------------------------------------------------------- the app
def create_app(
    models: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]],
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

    from torchkeep._runtime import resolve_device

    # Pillow only warns between 1x and 2x its pixel limit; a server refuses those too (load_image does it per
    # call, with a filter that is not thread-safe: set it once for the process)
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    if isinstance(models, Mapping):
        pairs = [(str(k), Path(os.fspath(v))) for k, v in models.items()]
        parse_model_args([f"{n}={p}" for n, p in pairs])  # the same name rules
    else:
        items = [models] if isinstance(models, (str, os.PathLike)) else list(models)
        pairs = parse_model_args([os.fspath(m) for m in items])
    dev = resolve_device(device)
    served = {name: ServedModel.open(name, path, backend=backend, device=dev, trust=trust) for name, path in pairs}

    registry = CollectorRegistry()
    state = ServingState(
        models=served,
        batchers={},
        max_batch=max(1, max_batch),
        max_upload=int(max_upload_mb * MB),
        max_images=max(1, max_images),
        token=token or None,
        registry=registry,
        requests=Counter("torchkeep_requests", "Requests to a model's endpoints, by model and HTTP status.",
                         ["model", "code"], registry=registry),
        seconds=Histogram("torchkeep_request_seconds", "Time to answer a request to a model's endpoints.",
                          ["model"], registry=registry,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
        batch_size=Histogram("torchkeep_batch_size", "Images per forward pass.", ["model"], registry=registry,
                             buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
        queue_depth=Gauge("torchkeep_queue_depth", "Images waiting for a forward pass.", ["model"],
                          registry=registry),
        in_flight=Gauge("torchkeep_requests_in_flight", "Requests being answered.", registry=registry),
        decoder=ThreadPoolExecutor(max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="torchkeep-decode"),
    )
    for name, m in served.items():
        state.batchers[name] = Batcher(
            m.probabilities, max_batch=state.max_batch, max_wait=max(0.0, max_wait_ms) / 1000,
            on_batch=state.batch_size.labels(model=name).observe, name=name,
        )
        state.queue_depth.labels(model=name).set_function(_depth_of(state.batchers[name]))

    def warm_all() -> None:
        for m in served.values():
            m.warm_up(state.max_batch)
        state.warmed.set()
        if on_warmed is not None:
            on_warmed(list(served.values()))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
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

    app = FastAPI(
        title="torchkeep serve",
        version=__version__,
        description="Image classification from torchkeep model files: v1 JSON API, Open Inference Protocol v2, "
        "a web page at /. Errors are {\"error\", \"detail\"}.",
        lifespan=lifespan,
    )
    app.state.torchkeep = state
    _routes(app, state)
    _errors(app)
    app.add_middleware(_Guard, state=state)
    return app


def _depth_of(batcher: Batcher) -> Callable[[], float]:
    return lambda: float(batcher.depth)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail, path=request.url.path)

    @app.exception_handler(OipError)
    async def oip_error(request: Request, exc: OipError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail, path=request.url.path)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(request: Request, exc: _BodyTooLarge) -> JSONResponse:
        return _error(413, "upload too large", _too_large(None, request.app.state.torchkeep.max_upload),
                      path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return _error(400, "invalid request", "; ".join(parts) or "the request does not fit this endpoint",
                      path=request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug: still JSON, and logged
        return _error(500, "internal error", f"{type(exc).__name__}: {str(exc)[:200]}; please report it",
                      path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error(404, "not found", f"no endpoint {request.url.path}; see /docs for the API",
                          path=request.url.path)
        if exc.status_code == 405:
            return _error(405, "method not allowed", f"{request.method} is not accepted by {request.url.path}",
                          exc.headers, path=request.url.path)
        return _error(exc.status_code, "bad request", str(exc.detail), path=request.url.path)


def _static_dir() -> Path:
    return Path(str(resources.files("torchkeep.serving") / "static"))


async def _read_body(request: Request) -> bytes:
    return await request.body()  # bounded by _Guard


def _decode_b64(text: Any, k: int) -> bytes:
    if not isinstance(text, str):
        raise ServeError(400, "bad image", f"images[{k}] must be a base64 string, not {type(text).__name__}")
    if text.startswith("data:") and "," in text:  # a data URL, as a browser's FileReader gives it
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(400, "bad base64", f"images[{k}] is not valid base64; encode each image file with "
                         "base64 (e.g. `base64 -w0 cat.jpg`)") from None


async def _images_of(request: Request, max_images: int) -> list[tuple[str, bytes]]:
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
            doc = json.loads(await _read_body(request))
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
        return [(str(names[k]) if names else f"<image {k}>", _decode_b64(v, k)) for k, v in enumerate(images)]
    raise ServeError(415, "unsupported content type",
                     f"Content-Type {ctype or '(none)'!r}: send multipart/form-data with 'file' fields, or "
                     'application/json {"images": [base64, ...]}')


async def _decode(state: ServingState, model: ServedModel, images: list[tuple[str, bytes]]) -> list[Any]:
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


def _routes(app: FastAPI, state: ServingState) -> None:
    static = _static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/healthz", summary="Liveness: 200 while the process serves")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once every model is loaded and warmed up, else 503")
    async def readyz() -> JSONResponse:
        models = {n: m.state for n, m in state.models.items()}
        if state.ready:
            return JSONResponse({"status": "ready", "models": models})
        failed = [f"{n}: {m.error}" for n, m in state.models.items() if m.state == "failed"]
        detail = ("warm-up failed: " + "; ".join(failed)) if failed else "warming up: " + ", ".join(
            n for n, s in models.items() if s != "ready")
        return JSONResponse({"error": "not ready", "detail": detail, "models": models}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="The served models")
    async def list_models() -> dict[str, Any]:
        return {"models": [m.describe() for m in state.models.values()]}

    @app.get("/v1/models/{name}", summary="One model: classes, input size, preprocessing, backend, sha256")
    async def describe(name: str) -> dict[str, Any]:
        return state.model(name, need_ready=False).describe()

    predict_body = {
        "requestBody": {
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                "application/json": {"schema": {"type": "object", "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                    "filenames": {"type": "array", "items": {"type": "string"}}}}},
            },
            "required": True,
        }
    }

    @app.post("/v1/models/{name}/predict", summary="Classify images (multipart 'file' fields or JSON base64)",
              openapi_extra=predict_body)
    async def predict(request: Request, name: str,
                      topk: int = Query(5, ge=1, le=1000, description="classes per image")) -> JSONResponse:
        model = state.model(name)
        batcher = state.batchers[name]
        with batcher.expect() as ticket:
            images = await _images_of(request, state.max_images)
            tensors = await _decode(state, model, images)
            rows = await batcher.submit(tensors, ticket)
        predictions = []
        for (filename, _), row in zip(images, rows):
            scores = model.rank(row, topk)
            best = scores[0]
            predictions.append({
                "filename": filename, "label": best.label, "index": best.index, "probability": best.probability,
                "topk": [{"label": s.label, "index": s.index, "probability": s.probability} for s in scores],
            })
        return JSONResponse({"model": name, "backend": model.backend, "predictions": predictions})

    # ------------------------------------------------------------------------ Open Inference Protocol v2
    @app.get("/v2", summary="OIP v2 server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": "torchkeep", "version": __version__, "extensions": ["binary_data"]}

    @app.get("/v2/health/live", summary="OIP v2 liveness")
    async def v2_live() -> dict[str, Any]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="OIP v2 readiness (503 until every model is warmed up)")
    async def v2_ready() -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    def v2_metadata(name: str) -> dict[str, Any]:
        m = state.model(name, need_ready=False)
        platform = {"onnxruntime": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}.get(m.backend, "pytorch")
        return model_metadata(name, m.input_shape, len(m.class_names()), platform)

    def v2_model_ready(name: str) -> JSONResponse:
        m = state.model(name, need_ready=False)
        ok = m.state == "ready"
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def v2_infer(request: Request, name: str) -> Response:
        model = state.model(name)
        batcher = state.batchers[name]
        with batcher.expect() as ticket:
            body = await _read_body(request)
            req = parse_request(body, request.headers.get("inference-header-content-length"),
                                input_shape=model.input_shape, max_images=state.max_images)
            if req.images is not None:
                tensors = await _decode(state, model, [(f"image[{k}]", d) for k, d in enumerate(req.images)])
            else:
                import torch

                tensors = list(torch.from_numpy(req.tensor))
            rows = await batcher.submit(tensors, ticket)
        import torch

        probs = torch.stack(rows)
        names = model.class_names()
        labels = [names[int(i)] if int(i) < len(names) else f"class {int(i)}" for i in probs.argmax(dim=1)]
        content, headers = encode_response(name, req, probs.numpy(), labels)
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, _drop_version(v2_metadata), methods=["GET"], summary="OIP v2 model metadata")
        app.add_api_route(prefix + "/ready", _drop_version(v2_model_ready), methods=["GET"],
                          summary="OIP v2 model readiness")
        app.add_api_route(prefix + "/infer", _drop_version(v2_infer), methods=["POST"],
                          summary="OIP v2 inference: 'image' (BYTES [N]) or 'input' (FP32 [N,C,H,W])")


def _drop_version(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """The same handler for ``/v2/models/{name}`` and ``/v2/models/{name}/versions/{version}`` (one version)."""
    import inspect

    takes_request = "request" in inspect.signature(fn).parameters

    async def handler(request: Request, name: str, version: str = "1") -> Any:
        if version != "1":
            raise ServeError(404, "unknown version", f"{name!r} has one version, '1', not {version!r}")
        if takes_request:
            return await fn(request, name)
        return fn(name)

    handler.__name__ = fn.__name__
    return handler
