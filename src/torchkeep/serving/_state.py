"""What a served app holds and counts (``app.state.torchkeep``), and the form of every refusal.

A refused request is a :class:`ServeError` (status, error, detail), answered as JSON ``{"error": ...,
"detail": ...}`` whose detail says how to fix it (:func:`error_response`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from torchkeep.serving._batcher import Batcher
from torchkeep.serving._model import ServedModel

__all__ = ["MB", "ServeError", "ServingState", "error_response", "new_state", "too_large"]

MB = 1024 * 1024


class ServeError(Exception):
    """A refused request: ``status`` with ``{"error": error, "detail": detail}``."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def error_response(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None, *,
                   path: str = "") -> JSONResponse:
    """The JSON answer of a refusal (an OIP path carries the detail in ``error`` too)."""
    if path.startswith("/v2"):  # OIP clients (tritonclient) show only "error": it carries the detail too
        error = f"{error}: {detail}"
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=dict(headers or {}))


def too_large(size: int | None, limit: int) -> str:
    """The detail of a 413: the body's size (when declared), the limit, and how to fit under it."""
    got = f"the request body is {size / MB:.1f} MB" if size is not None else "the request body is over the limit"
    return f"{got}; the limit is {limit / MB:g} MB: send fewer or smaller images, or start the server with a " \
           "larger --max-upload-mb"


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


def new_state(
    served: dict[str, ServedModel],
    *,
    max_batch: int,
    max_wait_ms: float,
    max_upload_mb: float,
    max_images: int,
    token: str | None,
) -> ServingState:
    """The state of an app serving ``served``: its metrics (in a registry of its own) and a batcher per model
    (started and stopped with the app)."""
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
    return state


def _depth_of(batcher: Batcher) -> Callable[[], float]:
    return lambda: float(batcher.depth)
