"""Export a model to TorchScript, ONNX, safetensors or a plain state_dict, with a parity check.

``export(model, fmt, out) -> ExportResult``. After writing, the exported file is loaded back and run
side by side with the eager model on real sample inputs (images put through the model's own
preprocessing); the maximum absolute difference of the logits and the top-1 / top-k agreement are
reported, and the export fails (``torchkeep.ParityError``, exit 4) beyond the tolerance. The file is renamed
into place only once the check passes, so a failed export never leaves a bad file at ``out``.

The spec (class names, preprocessing) travels with the export: TorchScript ``_extra_files``
(``torchkeep_spec.json``), ONNX ``metadata_props`` (key ``torchkeep.spec``), safetensors metadata.
``torchkeep predict`` runs an exported file alone, without torchkeep's model registry.

The runners (:mod:`torchkeep._runners`), tracers (:mod:`torchkeep._exporters`) and export readers
(:mod:`torchkeep._runtime`) are shared with ``predict`` and the server; the parity check is
:mod:`torchkeep._parity`.
"""


from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._atomic import atomic_path
from torchkeep._detect import Detected, detect
from torchkeep._dtypes import torch_dtype
from torchkeep._exporters import (
    ONNX_SPEC_KEY,
    TORCHSCRIPT_SPEC_FILE,
    embed_onnx_spec,
    quiet,
    to_onnx_bytes,
    to_torchscript,
)
from torchkeep._gate import check_file
from torchkeep._modelfile import load, save
from torchkeep._modelpath import InputContract, open_model, run_model_file
from torchkeep._parity import ParityReport, parity, sample_inputs
from torchkeep._runners import EagerRunner, Runner, TorchScriptRunner
from torchkeep._runtime import export_spec, load_exported
from torchkeep._spec import ModelSpec
from torchkeep.errors import ParityError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep stays cheap
    import torch
    from torch import nn

__all__ = [
    "FORMATS",
    "ONNX_SPEC_KEY",
    "TORCHSCRIPT_SPEC_FILE",
    "ExportResult",
    "ParityError",
    "ParityReport",
    "export",
    "sample_inputs",
]

FORMATS = ("torchscript", "onnx", "safetensors", "state-dict")


@dataclass
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        source: the model exported (a path, or ``"<module>"``).
        output: the file written.
        format: one of ``FORMATS``.
        size: bytes written.
        dtype: ``"float32"`` or ``"float16"``.
        dynamic_batch: whether the batch dimension is dynamic (ONNX; TorchScript traces are checked at batch 1 and N).
        spec_embedded: whether the spec travels in the file (False only for ``state-dict``).
        exporter: how it was produced ("torch.jit.trace", "torch.onnx.export(dynamo=True) opset 18"...).
        parity: the parity check (None when skipped with ``check=False``).
        seconds: wall time of export + check.
        notes: things the user should know (fp16 on CPU, legacy ONNX exporter used...).
    """

    source: str
    output: Path
    format: str
    size: int = 0
    dtype: str = "float32"
    dynamic_batch: bool = False
    spec_embedded: bool = True
    exporter: str = ""
    parity: ParityReport | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)



@dataclass
class _Job:
    """What every step of one export needs besides the model: the options of :func:`export`, the output and
    when it started."""

    fmt: str
    out: Path
    dynamic_batch: bool
    half: bool
    samples: Sequence[str | os.PathLike[str]] | None
    tolerance: float | None
    topk: int
    check: bool
    opset: int | None
    trust: bool
    start: float = field(default_factory=time.perf_counter)


def export(
    model: Any,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    dynamic_batch: bool = False,
    half: bool = False,
    samples: Sequence[str | os.PathLike[str]] | None = None,
    tolerance: float | None = None,
    topk: int = 5,
    check: bool = True,
    opset: int | None = None,
    spec: ModelSpec | None = None,
    trust: bool = False,
    contract: InputContract | None = None,
) -> ExportResult:
    """Export a model and check that the export computes what the eager model computes.

    Args:
        model: a torchkeep model file (path), a training run (its best model file), an ``nn.Module`` carrying
            ``torchkeep_spec``, or a TorchScript / ONNX file: TorchScript becomes TorchScript or ONNX, ONNX
            becomes ONNX, each carrying the spec (for a file torchkeep did not write, made from ``contract``),
            so that ``predict`` runs it alone.
        fmt: "torchscript", "onnx", "safetensors" (a torchkeep model file) or "state-dict" (a plain
            ``torch.save(model.state_dict())`` ``.pt``; the spec does not travel with it).
        out: the file to write (atomically, only if the parity check passes).
        dynamic_batch: ONNX: make the batch dimension dynamic (default: batch 1, static). TorchScript
            traces accept any batch; with this flag the check also runs at batch N.
        half: export in float16 (on CPU, float16 kernels are slow and some ops are missing).
        samples: image files or folders for the parity check (default: scikit-learn's sample photos).
        tolerance: allowed max abs logit difference relative to ``max(1, max |logit|)``
            (default 1e-3 for float32, 5e-2 for float16).
        topk: k of the top-k agreement.
        check: run the parity check (default True).
        opset: ONNX opset (default: the exporter's).
        spec: the spec, when ``model`` is a module without ``torchkeep_spec``.
        trust: allow a model file whose spec names a user class to import it (as ``torchkeep.load``), load a
            TorchScript / ONNX file whatever its scan says.
        contract: input size, normalisation, channels and class names for a TorchScript / ONNX file that does
            not carry them; for other models they override the spec's.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ParityError: outputs differ beyond the tolerance (nothing is written; ``exc.result`` has the report).
        UsageError: unknown format, or one a TorchScript / ONNX file cannot become.
        InputError: a foreign export without the facts it needs (each named with its flag); a file that is not
            a model file (a full pickled model: what to do).
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    job = _Job(fmt, Path(out), dynamic_batch=dynamic_batch, half=half, samples=samples, tolerance=tolerance,
               topk=topk, check=check, opset=opset, trust=trust)
    if isinstance(model, (str, os.PathLike)):
        model = run_model_file(model)
        det = detect(model)
        if det.format in ("torchscript", "onnx"):
            return _export_file(det, spec, contract, job)
    module, spec, label = open_model(model, spec, trust=trust, contract=contract)
    return _export_module(module.eval(), spec, label, job)


def _export_module(module: nn.Module, spec: ModelSpec, label: str, job: _Job) -> ExportResult:
    """Export a module (eager is the reference of the parity check)."""
    import torch

    dtype = "float16" if job.half else "float32"
    result = ExportResult(source=label, output=job.out, format=job.fmt, dtype=dtype,
                          dynamic_batch=job.dynamic_batch, spec_embedded=job.fmt != "state-dict")
    if job.half:
        result.notes.append("float16: on CPU, half-precision kernels are slow and a few ops are unsupported")
    x, inputs = sample_inputs(spec, job.samples)
    with torch.inference_mode():
        reference = module(x).float()
    work = module if not job.half else copy.deepcopy(module).half()
    traced_warnings: list[str] = []
    with atomic_path(job.out) as tmp:
        runner, batch_sizes = _write_module(work, spec, x, tmp, result, job, traced_warnings)
        result.notes += [f"the tracer warned: {w}" for w in traced_warnings[:3]]
        if job.check:
            _check(result, reference, runner, x, inputs, batch_sizes, traced_warnings, job)
    return _done(result, job)


def _write_module(work: nn.Module, spec: ModelSpec, x: torch.Tensor, tmp: Path, result: ExportResult, job: _Job,
                  traced_warnings: list[str]) -> tuple[Runner, list[int]]:
    """Write ``work`` in ``job.fmt`` at ``tmp``; returns a runner of what was written and the batch sizes the
    parity check runs it with."""
    import torch

    example = (x[:2] if job.dynamic_batch else x[:1]).to(torch_dtype(result.dtype))
    spec_json = spec.to_json()
    if job.fmt == "torchscript":
        traced = to_torchscript(work, example, tracer_warnings=traced_warnings)
        with quiet():
            torch.jit.save(traced, os.fspath(tmp), _extra_files={TORCHSCRIPT_SPEC_FILE: spec_json})
        result.exporter = "torch.jit.trace + torch.jit.save"
        # a trace is batch-agnostic unless the model bakes N in
        return load_exported(tmp)[0], [x.shape[0], 1]
    if job.fmt == "onnx":
        import onnx

        data, result.exporter = to_onnx_bytes(work, example, dynamic_batch=job.dynamic_batch, opset=job.opset,
                                              tracer_warnings=traced_warnings)
        onnx.save(embed_onnx_spec(data, spec_json), os.fspath(tmp))
        return load_exported(tmp)[0], [x.shape[0], 1] if job.dynamic_batch else [1]
    if job.fmt == "safetensors":
        save(work, tmp, spec=spec)
        result.exporter = "torchkeep.save (safetensors + spec)"
        return EagerRunner(load(tmp, device="cpu"), dtype=result.dtype), [x.shape[0]]
    torch.save({k: v.detach().clone() for k, v in work.state_dict().items()}, tmp)
    result.exporter = "torch.save(model.state_dict())"
    result.notes.append(
        "a plain state_dict carries no spec: rebuild the model before loading it "
        "(--format safetensors keeps the spec)"
    )
    return EagerRunner(_reload_state_dict(spec, tmp, result.dtype), dtype=result.dtype), [x.shape[0]]


def _check(
    result: ExportResult,
    reference: torch.Tensor,
    runner: Runner,
    x: torch.Tensor,
    inputs: str,
    batch_sizes: list[int],
    traced_warnings: list[str],
    job: _Job,
) -> None:
    """The parity check of a written export (still at its temporary name): ParityError beyond the tolerance."""
    result.parity = parity(reference, runner, x, inputs=inputs, tolerance=job.tolerance, k=job.topk,
                           batch_sizes=batch_sizes)
    if result.parity.passed:
        return
    result.seconds = time.perf_counter() - job.start
    raise ParityError(
        f"parity check failed: {result.parity.summary}; nothing was written",
        path=result.output,
        fix=(
            "the model takes Python decisions on tensor values, which a trace records as one "
            "fixed path; express them with torch.where, or use --format safetensors"
        )
        if traced_warnings
        else "raise --tolerance if the difference is acceptable, or try another --format"
        + (" or drop --half" if result.dtype == "float16" else ""),
        result=result,
    )


def _done(result: ExportResult, job: _Job) -> ExportResult:
    result.size = job.out.stat().st_size
    result.seconds = time.perf_counter() - job.start
    return result


# What a TorchScript / ONNX file can become: the same format with the spec embedded, or (TorchScript) ONNX.
_FROM_EXPORT = {"torchscript": ("torchscript", "onnx"), "onnx": ("onnx",)}


def _export_file(det: Detected, spec: ModelSpec | None, contract: InputContract | None, job: _Job) -> ExportResult:
    """Export a TorchScript / ONNX file: embed its input contract (the spec) and, for TorchScript, convert
    it to ONNX if asked; the reference for the parity check is the file itself."""
    path = det.path
    check_file(path, trust=job.trust)  # a dangerous file is refused before anything else is said of it
    spec, ours = export_spec(det, spec, contract)  # names every missing fact before anything is loaded
    _refuse_impossible(det, spec, ours, job)
    source, _, _ = load_exported(path, trust=job.trust, spec=spec, scanned=True)
    result = ExportResult(source=os.fspath(path), output=job.out, format=job.fmt, dtype=source.dtype,
                          dynamic_batch=job.dynamic_batch)
    if not ours:
        result.notes.append(
            f"{path} was not written by torchkeep: the spec embedded is the input contract given "
            f"({spec.preprocessing.describe()})"
        )
    x, inputs = sample_inputs(spec, job.samples)
    reference = source(x)
    traced: list[str] = []
    with atomic_path(job.out) as tmp:
        runner, batch_sizes = _write_file(det, source, spec, x, tmp, result, job, traced)
        if job.check:
            _check(result, reference, runner, x, inputs, batch_sizes, traced, job)
            assert result.parity is not None
            result.parity.reference = "source file"
    return _done(result, job)


def _refuse_impossible(det: Detected, spec: ModelSpec, ours: bool, job: _Job) -> None:
    """UsageError for what a TorchScript / ONNX file cannot become, naming what to do instead."""
    path = det.path
    if job.fmt not in _FROM_EXPORT[det.format]:
        what = "TorchScript" if det.format == "torchscript" else "an ONNX model"
        if job.fmt in ("safetensors", "state-dict"):
            arch = spec.arch if ours else "NAME"
            raise UsageError(
                f"{what} holds no module torchkeep can rebuild, so it cannot become a {job.fmt} model file here",
                path=path,
                fix=f"`torchkeep adapt {path} --arch {arch} -o model.safetensors` loads its weights into an "
                f"architecture; `torchkeep convert {path} weights.safetensors` keeps the weights alone",
            )
        raise UsageError(
            "an ONNX model cannot become TorchScript: there is no PyTorch module to trace",
            path=path,
            fix="--format onnx embeds the input contract in the ONNX file itself",
        )
    if job.half:
        raise UsageError(
            f"--half converts a model torchkeep builds; this is a {det.format} file",
            path=path,
            fix="export the original model file with --half, or drop --half",
        )


def _write_file(det: Detected, source: Runner, spec: ModelSpec, x: torch.Tensor, tmp: Path, result: ExportResult,
                job: _Job, traced: list[str]) -> tuple[Runner, list[int]]:
    """Write the file ``det`` (opened as ``source``) with ``spec`` embedded at ``tmp``; returns a runner of what
    was written and the batch sizes the parity check runs it with."""
    import torch

    spec_json = spec.to_json()
    if job.fmt == "torchscript":
        assert isinstance(source, TorchScriptRunner)
        with quiet():
            torch.jit.save(source.module, os.fspath(tmp), _extra_files={TORCHSCRIPT_SPEC_FILE: spec_json})
        result.exporter = "torch.jit.save (the archive's code and weights as they were, with the spec)"
        return load_exported(tmp, trust=job.trust)[0], [x.shape[0], 1]
    import onnx

    if det.format == "torchscript":
        assert isinstance(source, TorchScriptRunner)
        example = x[:2] if job.dynamic_batch else x[:1]
        data, result.exporter = to_onnx_bytes(source.module, example, dynamic_batch=job.dynamic_batch,
                                              opset=job.opset, tracer_warnings=traced)
        onnx.save(embed_onnx_spec(data, spec_json), os.fspath(tmp))
        return load_exported(tmp)[0], [x.shape[0], 1] if job.dynamic_batch else [1]
    proto = onnx.load(os.fspath(det.path))  # external data from the model's folder (checked by the scan)
    onnx.save(embed_onnx_spec(proto.SerializeToString(), spec_json), os.fspath(tmp))
    result.exporter = "the ONNX graph as it was, with the spec in metadata_props"
    runner = load_exported(tmp, trust=job.trust)[0]
    result.dynamic_batch = runner.fixed_batch is None
    if job.dynamic_batch or job.opset is not None:
        result.notes.append("the ONNX graph is kept as it was: --dynamic-batch and --opset do not apply")
    return runner, [x.shape[0]]


def _reload_state_dict(spec: ModelSpec, path: Path, dtype: str) -> nn.Module:
    """Rebuild the model from its spec and load a state_dict ``.pt`` into it, as a user would."""
    import torch

    from torchkeep.models import build_from_spec

    module = build_from_spec(spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.to(torch_dtype(dtype)).eval()
