"""A module as TorchScript or ONNX: tracing, ONNX export in memory, and where the spec goes in each.

The spec (class names, preprocessing) travels inside an export: TorchScript ``_extra_files``
(:data:`TORCHSCRIPT_SPEC_FILE`), ONNX ``metadata_props`` (:data:`ONNX_SPEC_KEY`, the key of safetensors
metadata too). ``export`` writes with these; ``prepare`` traces with them for the torchscript and onnxruntime
backends; :mod:`torchkeep._runtime` reads the spec back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torchkeep._spec import METADATA_KEY
from torchkeep.errors import TorchkeepError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep stays cheap
    import torch
    from torch import nn

__all__ = ["INPUT_NAME", "ONNX_SPEC_KEY", "OUTPUT_NAME", "TORCHSCRIPT_SPEC_FILE", "embed_onnx_spec", "quiet",
           "to_onnx_bytes", "to_torchscript"]

#: Name of the spec JSON inside a TorchScript archive (``torch.jit.save(_extra_files=...)``).
TORCHSCRIPT_SPEC_FILE = "torchkeep_spec.json"
#: ``metadata_props`` key of the spec JSON in an ONNX model (the same key as in safetensors metadata).
ONNX_SPEC_KEY = METADATA_KEY
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@contextlib.contextmanager
def quiet(record: list[str] | None = None) -> Iterator[None]:
    """Silence torch's deprecation chatter (jit, legacy ONNX) and the dynamo exporter's progress prints.

    Tracer warnings ("converting a tensor to a Python float might cause the trace to be incorrect")
    matter to the user: with ``record``, their first lines are appended to it.
    """
    # torch.export logs failed guards (whole graphs) through logging; the fallback handles them
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.filterwarnings("always", message=r".*(trace|Trace).*")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    if record is not None:
        for w in caught:
            if type(w.message).__name__ == "TracerWarning":
                line = str(w.message).split(". ")[0].splitlines()[0]
                if line not in record:
                    record.append(line)



def to_torchscript(
    module: nn.Module,
    example: torch.Tensor,
    *,
    optimize: bool = False,
    tracer_warnings: list[str] | None = None,
) -> torch.jit.ScriptModule:
    """Trace ``module`` (eval mode) on ``example``; with ``optimize``, freeze and ``optimize_for_inference``.

    Tracing (not scripting) because it accepts any torchvision model; classifiers have no
    data-dependent control flow, and the parity check catches the rare one that does.
    """
    import torch

    module = module.eval()
    with quiet(tracer_warnings), torch.inference_mode(False), torch.no_grad():
        try:
            traced = torch.jit.trace(module, example, check_trace=False)
        except Exception as exc:
            raise TorchkeepError(
                f"torch.jit.trace failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                fix="export to ONNX instead (--format onnx), or pass a model without data-dependent Python",
            ) from exc
        if optimize:
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    return traced


def to_onnx_bytes(
    module: nn.Module,
    example: torch.Tensor,
    *,
    dynamic_batch: bool,
    opset: int | None = None,
    tracer_warnings: list[str] | None = None,
) -> tuple[bytes, str]:
    """Export ``module`` to ONNX in memory; returns (serialized ModelProto, exporter description).

    torch's ``dynamo=True`` exporter (torch.export + onnxscript, the default since torch 2.9) is tried
    first; the legacy TorchScript-based exporter is the fallback for models torch.export rejects.
    Everything stays in memory (no ``.onnx.data`` side file) so the write stays a single atomic file.
    """
    import torch

    module = module.eval()
    errors: list[str] = []
    with quiet(tracer_warnings), torch.inference_mode(False), torch.no_grad():
        for label, exporter in (("dynamo exporter", _onnx_dynamo), ("legacy exporter", _onnx_legacy)):
            try:
                return exporter(module, example, dynamic_batch, opset)
            except Exception as exc:  # torch.export rejects some models; the legacy exporter may not
                errors.append(f"{label}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}")
    raise TorchkeepError(
        "ONNX export failed; " + "; ".join(errors),
        fix="export to TorchScript (--format torchscript), or re-run with --debug for the traceback",
    )


def _onnx_dynamo(module: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int | None
                 ) -> tuple[bytes, str]:
    """torch.export + onnxscript (``dynamo=True``, the default since torch 2.9)."""
    import torch

    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1)},)
    if opset is not None:
        kwargs["opset_version"] = opset
    program = torch.onnx.export(
        module,
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamo=True,
        external_data=False,
        verbose=False,
        **kwargs,
    )
    if program is None:  # pragma: no cover - only when f= is given
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    if opset is not None and _opset_of(proto) != opset:
        # it converts only between some opsets and keeps its own when it cannot, with a warning
        raise RuntimeError(f"asked for opset {opset}, it wrote opset {_opset_of(proto)}")
    return proto.SerializeToString(), f"torch.onnx.export(dynamo=True), opset {_opset_of(proto)}"


def _onnx_legacy(module: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int | None
                 ) -> tuple[bytes, str]:
    """The TorchScript-based exporter, for models torch.export rejects."""
    import onnx
    import torch

    buf = io.BytesIO()
    legacy: dict[str, Any] = {}
    if dynamic_batch:
        legacy["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    torch.onnx.export(
        module,
        (example,),
        buf,  # type: ignore[arg-type]  # the legacy exporter writes to file objects
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamo=False,
        opset_version=opset or 17,
        **legacy,
    )
    data = buf.getvalue()
    return data, f"torch.onnx.export(dynamo=False, legacy), opset {_opset_of(onnx.load_from_string(data))}"


def _opset_of(proto: Any) -> int | str:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return "?"


def embed_onnx_spec(data: bytes, spec_json: str | None) -> Any:
    import onnx

    proto = onnx.load_from_string(data)
    if spec_json is not None:
        props = {p.key: p.value for p in proto.metadata_props}
        props[ONNX_SPEC_KEY] = spec_json
        onnx.helper.set_model_props(proto, props)
    return proto
