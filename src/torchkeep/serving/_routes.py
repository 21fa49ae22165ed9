"""The routes of the app: the page, health and metrics; the v1 JSON API; the Open Inference Protocol v2.

Each handler checks the model (:meth:`ServingState.model`), reads the images (:mod:`torchkeep.serving._uploads`),
waits for its rows from the model's batcher and formats them; refusals are raised as ``ServeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from torchkeep._version import __version__
from torchkeep.serving._oip import HEADER_LENGTH, encode_response, model_metadata, parse_request
from torchkeep.serving._state import ServeError, ServingState
from torchkeep.serving._uploads import decode, images_of, read_body

__all__ = ["service_routes", "v1_routes", "v2_routes"]


def _static_dir() -> Path:
    return Path(str(resources.files("torchkeep.serving") / "static"))


def service_routes(app: FastAPI, state: ServingState) -> None:
    """The page, liveness, readiness and metrics."""
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


#: the OpenAPI form of a v1 predict body (FastAPI cannot infer it: the handler reads the request itself)
_PREDICT_BODY = {
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


def v1_routes(app: FastAPI, state: ServingState) -> None:
    """``/v1/models``, ``/v1/models/{name}`` and ``/v1/models/{name}/predict``."""

    @app.get("/v1/models", summary="The served models")
    async def list_models() -> dict[str, Any]:
        return {"models": [m.describe() for m in state.models.values()]}

    @app.get("/v1/models/{name}", summary="One model: classes, input size, preprocessing, backend, sha256")
    async def describe(name: str) -> dict[str, Any]:
        return state.model(name, need_ready=False).describe()

    @app.post("/v1/models/{name}/predict", summary="Classify images (multipart 'file' fields or JSON base64)",
              openapi_extra=_PREDICT_BODY)
    async def predict(request: Request, name: str,
                      topk: int = Query(5, ge=1, le=1000, description="classes per image")) -> JSONResponse:
        model = state.model(name)
        batcher = state.batchers[name]
        with batcher.expect() as ticket:
            images = await images_of(request, state.max_images)
            tensors = await decode(state, model, images)
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


def v2_routes(app: FastAPI, state: ServingState) -> None:
    """The Open Inference Protocol v2 under ``/v2`` (server, health, model metadata, readiness, inference)."""

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
            body = await read_body(request)
            req = parse_request(body, request.headers.get(HEADER_LENGTH),
                                input_shape=model.input_shape, max_images=state.max_images)
            if req.images is not None:
                tensors = await decode(state, model, [(f"image[{k}]", d) for k, d in enumerate(req.images)])
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
    takes_request = "request" in inspect.signature(fn).parameters

    async def handler(request: Request, name: str, version: str = "1") -> Any:
        if version != "1":
            raise ServeError(404, "unknown version", f"{name!r} has one version, '1', not {version!r}")
        if takes_request:
            return await fn(request, name)
        return fn(name)

    handler.__name__ = fn.__name__
    return handler
