"""Run the app with uvicorn so that SIGTERM (or Ctrl-C) finishes the requests in flight and exits 0.

uvicorn >= 0.29 re-raises a captured SIGTERM after its graceful shutdown, so ``uvicorn.run`` ends with -15;
here the signals only start the graceful shutdown (requests in flight are answered, the batchers stop).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from torchkeep.serving._app import create_app
from torchkeep.serving._model import ServedModel

__all__ = ["ServeResult", "Server", "run", "serve"]

logger = logging.getLogger("torchkeep.serve")


class Server(uvicorn.Server):
    """A uvicorn server whose stop by signal is a normal end (exit status 0)."""

    exit_code = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def stop(self, exit_code: int = 0) -> None:
        """Begin a graceful shutdown from any thread."""
        self.exit_code = exit_code
        self.should_exit = True


def run(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
        access_log: bool = False, server: Server | None = None) -> int:
    """Serve ``app`` until a signal; returns the exit status (0 after a graceful stop)."""
    if server is None:
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                                timeout_graceful_shutdown=30, lifespan="on")
        server = Server(config)
    server.run()
    if not server.started and server.exit_code == 0:
        return 1  # the port could not be bound (uvicorn logged why)
    return server.exit_code


@dataclass
class ServeResult:
    """How a ``serve`` run ended.

    Attributes:
        url: where it served.
        models: the models' descriptions (``GET /v1/models/{name}``) at the end.
        exit_code: 0 after a graceful stop; 1 when a model failed to warm up or the port was taken.
    """

    url: str
    models: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = 0


def serve(
    models: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str, list[ServedModel]], None] | None = None,
    log_level: str = "warning",
    **options: Any,
) -> ServeResult:
    """Serve model files until SIGTERM / Ctrl-C (``torchkeep serve``).

    Args:
        models: what :func:`create_app` takes.
        host: the address to bind (loopback unless told otherwise).
        port: the TCP port.
        on_ready: called once every model has warmed up, with the URL and the models.
        log_level: uvicorn's log level.
        **options: the other arguments of :func:`create_app` (backend, max_batch, token...).

    Returns:
        A :class:`ServeResult`; a model that fails to warm up stops the server (exit code 1).
    """
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    holder: dict[str, Server] = {}

    def warmed(served: list[ServedModel]) -> None:
        failed = [m for m in served if m.state != "ready"]
        if failed:
            for m in failed:
                logger.error("torchkeep: error: %s (%s) failed to warm up: %s", m.name, m.path, m.error)
            holder["server"].stop(1)
        elif on_ready is not None:
            on_ready(url, served)

    # a stop while the models load (before uvicorn handles signals) is a normal end too
    previous = signal.signal(signal.SIGTERM, _exit_now)
    try:
        app = create_app(models, on_warmed=warmed, **options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=30, lifespan="on")
    holder["server"] = server = Server(config)
    code = run(app, server=server)
    return ServeResult(url, [m.describe() for m in app.state.torchkeep.models.values()], code)


def _exit_now(signum: int, frame: Any) -> None:
    raise SystemExit(0)
