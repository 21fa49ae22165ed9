"""torchkeep: the whole life of a PyTorch model file, without running untrusted code.

Flat verbs, each returning a dataclass::

    torchkeep.inspect(path)              -> Inspection      describe any model file (no code runs, no tensor bytes read)
    torchkeep.scan(path)                 -> ScanReport      safe / custom-code / dangerous, with findings
    torchkeep.load_state_dict(path)      -> dict[str, Tensor]   weights from any format, without running code
    torchkeep.convert(src, out)          -> ConvertResult   any file -> weights-only safetensors / .pt
    torchkeep.save(model, path, spec)    -> Path            a self-describing model file (safetensors + spec)
    torchkeep.load(path, device=...)     -> nn.Module       rebuilt from its spec, eval mode, no pickle
    torchkeep.read_spec(path)            -> ModelSpec | None  the spec alone (header only, no torch)
    torchkeep.load_image(path, model)    -> Tensor          an image preprocessed exactly as the spec says
    torchkeep.load_into(model, source)   -> LoadReport      weights into a compatible model, with a report
    torchkeep.adapt(src, arch=..., out=...) -> AdaptResult
    torchkeep.train(config)              -> TrainResult
    torchkeep.evaluate(model, data)      -> EvalReport
    torchkeep.predict(model, inputs)     -> list[Prediction]
    torchkeep.export(model, fmt, out)    -> ExportResult
    torchkeep.diff(a, b)                 -> DiffReport
    torchkeep.identify(path_or_state_dict) -> Identification  the architecture, from names and shapes alone
    torchkeep.explain_error(exc_or_text) -> str | None   the fix for a classic PyTorch loading error

Subpackages are attributes too: ``torchkeep.models.build(...)`` / ``list_models()``, ``torchkeep.data``,
``torchkeep.training``. Errors (``torchkeep.errors``) are all exported here.

Importing torchkeep is cheap: nothing (torch included) is imported until a verb is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torchkeep._version import __version__
from torchkeep.errors import (
    CheckpointWriteError,
    CompatibilityError,
    InputError,
    ParityError,
    TorchkeepError,
    TorchkeepWarning,
    TrainingInterrupted,
    UnknownFormatError,
    UnsafeFileError,
    UntrustedCodeError,
    UsageError,
)

# public name -> private module that defines it
_LAZY: dict[str, str] = {
    "detect": "torchkeep._detect",
    "inspect": "torchkeep._inspect",
    "Inspection": "torchkeep._inspect",
    "scan": "torchkeep._scan",
    "ScanReport": "torchkeep._scan",
    "load_state_dict": "torchkeep._load",
    "convert": "torchkeep._convert",
    "ConvertResult": "torchkeep._convert",
    "ModelSpec": "torchkeep._spec",
    "save": "torchkeep._modelfile",
    "load": "torchkeep._modelfile",
    "read_spec": "torchkeep._spec",
    "transform_for": "torchkeep._preprocess",
    "load_image": "torchkeep._preprocess",
    "scan_paths": "torchkeep._scan",
    "load_into": "torchkeep._match",
    "LoadReport": "torchkeep._match",
    "adapt": "torchkeep._adapt",
    "explain_error": "torchkeep._explain",
    "AdaptResult": "torchkeep._adapt",
    "train": "torchkeep.training",
    "TrainConfig": "torchkeep.training",
    "TrainResult": "torchkeep.training",
    "evaluate": "torchkeep._evaluate",
    "EvalReport": "torchkeep._evaluate",
    "predict": "torchkeep._predict",
    "Prediction": "torchkeep._predict",
    "InputContract": "torchkeep._modelpath",
    "export": "torchkeep._export",
    "ExportResult": "torchkeep._export",
    "diff": "torchkeep._diff",
    "DiffReport": "torchkeep._diff",
    "identify": "torchkeep._identify",
    "Identification": "torchkeep._identify",
}

__all__ = [
    "AdaptResult",
    "CheckpointWriteError",
    "CompatibilityError",
    "ConvertResult",
    "DiffReport",
    "EvalReport",
    "ExportResult",
    "Identification",
    "InputContract",
    "InputError",
    "Inspection",
    "LoadReport",
    "ModelSpec",
    "ParityError",
    "Prediction",
    "ScanReport",
    "TorchkeepError",
    "TorchkeepWarning",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "UnknownFormatError",
    "UnsafeFileError",
    "UntrustedCodeError",
    "UsageError",
    "__version__",
    "adapt",
    "convert",
    "detect",
    "diff",
    "evaluate",
    "explain_error",
    "export",
    "identify",
    "inspect",
    "load",
    "load_image",
    "load_into",
    "load_state_dict",
    "predict",
    "read_spec",
    "save",
    "scan",
    "scan_paths",
    "train",
    "transform_for",
]


# subpackages reachable as attributes (``torchkeep.models.build(...)``, like ``torchvision.models``), imported on
# first use: ``torchkeep.models`` needs no torch to list, ``data`` and ``training`` import it; ``serving`` needs the
# ``serve`` extra
_SUBPACKAGES = ("data", "models", "serving", "training")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"torchkeep.{name}")  # the import binds it in globals() too
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torchkeep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from torchkeep._adapt import AdaptResult, adapt
    from torchkeep._convert import ConvertResult, convert
    from torchkeep._detect import detect
    from torchkeep._diff import DiffReport, diff
    from torchkeep._evaluate import EvalReport, evaluate
    from torchkeep._explain import explain_error
    from torchkeep._export import ExportResult, export
    from torchkeep._identify import Identification, identify
    from torchkeep._inspect import Inspection, inspect
    from torchkeep._load import load_state_dict
    from torchkeep._match import LoadReport, load_into
    from torchkeep._modelfile import load, save
    from torchkeep._modelpath import InputContract
    from torchkeep._predict import Prediction, predict
    from torchkeep._preprocess import load_image, transform_for
    from torchkeep._scan import ScanReport, scan, scan_paths
    from torchkeep._spec import ModelSpec, read_spec
    from torchkeep.training import TrainConfig, TrainResult, train
