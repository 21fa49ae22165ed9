"""Serving model files over HTTP: ``create_app(models, ...)`` returns the ASGI app of ``torchkeep serve``.

Needs the ``serve`` extra (``pip install 'torchkeep[serve]'``: FastAPI, uvicorn, prometheus_client,
python-multipart). See ``docs/serve.md`` for the endpoints.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import python_multipart  # noqa: F401  # FastAPI's form parser
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from torchkeep.errors import UsageError

    raise UsageError(
        f"serving needs the 'serve' extra ({exc.name} is not installed)",
        fix="pip install 'torchkeep[serve]'",
    ) from None

from torchkeep.serving._app import create_app
from torchkeep.serving._model import BackendTrial, ServedModel, parse_model_args
from torchkeep.serving._server import Server, ServeResult, run, serve
from torchkeep.serving._state import ServeError, ServingState

__all__ = [
    "BackendTrial",
    "ServeError",
    "ServeResult",
    "ServedModel",
    "Server",
    "ServingState",
    "create_app",
    "parse_model_args",
    "run",
    "serve",
]
