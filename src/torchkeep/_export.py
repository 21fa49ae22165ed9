"""Export a model to TorchScript, ONNX, safetensors or a plain state_dict, with a parity check.

``export(model, fmt, out) -> ExportResult``. After writing, the exported file is loaded back and run
side by side with the eager model on real sample inputs (images put through the model's own
preprocessing); the maximum absolute difference of the logits and the top-1 / top-k agreement are
reported, and the export fails (``torchkeep.ParityError``, exit 4) beyond the tolerance. The file is renamed
into place only once the check passes, so a failed export never leaves a bad file at ``out``.

The spec (class names, preprocessing) travels with the export: TorchScript ``_extra_files``
(``torchkeep_spec.json``), ONNX ``metadata_props`` (key ``torchkeep.spec``), safetensors metadata.
``torchkeep predict`` runs an exported file alone, without torchkeep's model registry.

The runners, tracers and export readers it uses live in ``torchkeep._runtime`` (shared with ``predict``); the
parity inputs come from ``torchkeep._inputs``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._atomic import atomic_path
from torchkeep._detect import Detected, detect
from torchkeep._gate import check_file
from torchkeep._inputs import collect_inputs
from torchkeep._modelfile import load, save
from torchkeep._modelpath import InputContract, open_model, run_model_file
from torchkeep._runtime import (
    ONNX_SPEC_KEY,
    TORCHSCRIPT_SPEC_FILE,
    EagerRunner,
    Runner,
    TorchScriptRunner,
    _embed_onnx_spec,
    _quiet,
    _torch_dtype,
    export_spec,
    load_exported,
    to_onnx_bytes,
    to_torchscript,
)
from torchkeep._spec import ModelSpec
from torchkeep.errors import InputError, ParityError, TorchkeepError, UsageError

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
]

FORMATS = ("torchscript", "onnx", "safetensors", "state-dict")

# Tolerances on the max abs logit difference, relative to the logits' scale (max(1, max |logit|)).
# float32 exports differ from eager only by kernel choice and op fusion (~1e-6); float16 keeps ~3
# significant digits, so its tolerance is looser.
TOLERANCE_FP32 = 1e-3
TOLERANCE_FP16 = 5e-2


@dataclass
class ParityReport:
    """Eager vs exported outputs on the same inputs.

    Attributes:
        samples: number of inputs compared.
        inputs: where they came from ("2 images from sklearn's sample photos, 6 crops", "3 files from DIR").
        batch_sizes: batch sizes the exported model was run with.
        max_abs_diff: the largest absolute logit difference.
        logit_scale: ``max(1, max |eager logit|)``; the tolerance is relative to it.
        tolerance: the allowed ``max_abs_diff`` (absolute).
        top1_agree: samples with the same top-1 class.
        topk_agree: samples with the same set of top-k classes.
        k: the k of top-k.
        near_ties: top-1 disagreements where eager's two best logits are closer than the tolerance
            (a tie broken differently, not an error).
        passed: whether the export is accepted.
        reference: ``"eager"`` (the model run eagerly), or ``"source file"`` when a TorchScript / ONNX file was
            exported (the file itself is the reference).
    """

    samples: int
    inputs: str
    batch_sizes: list[int]
    max_abs_diff: float
    logit_scale: float
    tolerance: float
    top1_agree: int
    topk_agree: int
    k: int
    near_ties: int = 0
    passed: bool = True
    reference: str = "eager"  # what the export was compared with: the eager model, or the source file

    @property
    def summary(self) -> str:
        """One line: "max |Δlogit| 3.1e-06 (tolerance 1.2e-02), top-1 8/8, top-5 8/8"."""
        return (
            f"max |Δlogit| {self.max_abs_diff:.2g} (tolerance {self.tolerance:.2g}), "
            f"top-1 {self.top1_agree}/{self.samples}, top-{self.k} {self.topk_agree}/{self.samples}"
        )


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


# ---------------------------------------------------------------------------------------------- parity
def sample_inputs(spec: ModelSpec, samples: Sequence[str | os.PathLike[str]] | None = None, n: int = 8):
    """Real inputs for the parity check, put through the model's own preprocessing.

    Args:
        spec: the model's spec (input size, channels, normalisation).
        samples: image files or folders to use; default: scikit-learn's two bundled photos
            (china.jpg, flower.jpg) and crops of them, so the check runs offline on real pictures.
        n: how many inputs to build from the default photos.

    Returns:
        (batch tensor float32, description).
    """
    import torch

    from torchkeep._preprocess import load_image, transform_for  # torch, PIL: only when used

    tf = transform_for(spec, train=False)
    if samples:
        items = [it for it in collect_inputs(samples) if it.error is None]
        tensors = []
        for it in items[:64]:
            with contextlib.suppress(Exception):  # parity needs some good images, not all of them
                tensors.append(load_image(it.source, spec, tf))
        if not tensors:
            raise InputError("no readable image among the parity samples", path=os.fspath(samples[0]))
        tensors = _same_size(tensors)
        return torch.stack(tensors), f"{len(tensors)} images from {', '.join(os.fspath(s) for s in samples)}"
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    tensors = []
    for i in range(n):
        img = photos[i % len(photos)]
        if i >= len(photos):  # crops of different places and sizes: varied, still real, content
            w, h = img.size
            frac = 0.35 + 0.1 * (i % 5)
            cw, ch = int(w * frac), int(h * frac)
            x0 = int((w - cw) * ((i * 37) % 100) / 100)
            y0 = int((h - ch) * ((i * 61) % 100) / 100)
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
        tensors.append(tf(img.convert(spec.preprocessing.channels)))
    tensors = _same_size(tensors)
    return torch.stack(tensors), (
        f"{len(tensors)} inputs from scikit-learn's sample photos (china.jpg, flower.jpg and crops)"
    )


def _same_size(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs of the most common size: a spec that resizes the shorter side only (``resize=[N]``,
    no crop) keeps aspect ratios, and a batch needs one size."""
    from collections import Counter

    shape = Counter(t.shape for t in tensors).most_common(1)[0][0]
    return [t for t in tensors if t.shape == shape]


def parity(
    reference: torch.Tensor,
    runner: Runner,
    x: torch.Tensor,
    *,
    inputs: str,
    tolerance: float | None = None,
    k: int = 5,
    batch_sizes: Sequence[int] | None = None,
) -> ParityReport:
    """Compare ``runner``'s logits on ``x`` with ``reference`` (the eager model's float32 logits).

    Args:
        reference: eager logits for ``x``.
        runner: the exported model.
        x: the inputs.
        inputs: description of the inputs for the report.
        tolerance: relative tolerance (times ``max(1, max |logit|)``); default by the runner's dtype.
        k: the k of the top-k agreement.
        batch_sizes: batch sizes to run ``x`` through (each result is compared); default ``[len(x)]``.

    Returns:
        The :class:`ParityReport` (``passed`` says whether it is within tolerance).
    """
    import torch

    rel = (
        tolerance
        if tolerance is not None
        else (TOLERANCE_FP16 if runner.dtype == "float16" else TOLERANCE_FP32)
    )
    scale = max(1.0, float(reference.abs().max()))
    tol = rel * scale
    sizes = list(batch_sizes or [x.shape[0]])
    max_abs = 0.0
    out = reference
    for bs in sizes:
        parts = [runner(x[i : i + bs]) for i in range(0, x.shape[0], bs)]
        got = torch.cat(parts).float()
        if got.shape != reference.shape:
            raise TorchkeepError(
                f"the exported model returns shape {list(got.shape)}, eager {list(reference.shape)} (batch {bs})"
            )
        diff = float((got - reference).abs().max()) if got.numel() else 0.0
        if diff != diff:  # NaN: an overflow in float16, typically
            diff = float("inf")
        if diff >= max_abs:
            max_abs, out = diff, got
    kk = max(1, min(k, reference.shape[1]))
    ref_top = reference.topk(kk, dim=1).indices
    got_top = out.topk(kk, dim=1).indices
    top1 = ref_top[:, 0] == got_top[:, 0]
    topk_same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(ref_top, got_top)]
    # a disagreement on top-1 is a broken tie (not an error) when eager's best two logits are that close
    near_ties = 0
    if kk >= 2 or reference.shape[1] >= 2:
        best2 = reference.topk(2, dim=1).values
        margin = best2[:, 0] - best2[:, 1]
        near_ties = int(((~top1) & (margin <= 2 * tol)).sum())
    passed = max_abs <= tol and int((~top1).sum()) == near_ties
    return ParityReport(
        samples=int(x.shape[0]),
        inputs=inputs,
        batch_sizes=sizes,
        max_abs_diff=max_abs,
        logit_scale=scale,
        tolerance=tol,
        top1_agree=int(top1.sum()),
        topk_agree=int(sum(topk_same)),
        k=kk,
        near_ties=near_ties,
        passed=passed,
    )


# ---------------------------------------------------------------------------------------------- export
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
    import copy

    import torch

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    start = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        model = run_model_file(model)
        det = detect(model)
        if det.format in ("torchscript", "onnx"):
            return _export_file(
                det, fmt, Path(out), dynamic_batch=dynamic_batch, half=half, samples=samples,
                tolerance=tolerance, topk=topk, check=check, opset=opset, spec=spec, trust=trust,
                contract=contract, start=start,
            )
    module, spec, label = open_model(model, spec, trust=trust, contract=contract)
    module = module.eval()
    out_path = Path(out)
    dtype = "float16" if half else "float32"
    result = ExportResult(
        source=label,
        output=out_path,
        format=fmt,
        dtype=dtype,
        dynamic_batch=dynamic_batch,
        spec_embedded=fmt != "state-dict",
    )
    if half:
        result.notes.append("float16: on CPU, half-precision kernels are slow and a few ops are unsupported")

    x, inputs = sample_inputs(spec, samples)
    with torch.inference_mode():
        reference = module(x).float()
    work = module if not half else copy.deepcopy(module).half()
    example = x[:2] if dynamic_batch else x[:1]
    example = example.to(_torch_dtype(dtype))
    spec_json = spec.to_json()

    traced_warnings: list[str] = []
    with atomic_path(out_path) as tmp:
        runner: Runner
        batch_sizes = [x.shape[0], 1] if dynamic_batch else [1]
        if fmt == "torchscript":
            traced = to_torchscript(work, example, tracer_warnings=traced_warnings)
            with _quiet():
                torch.jit.save(traced, os.fspath(tmp), _extra_files={TORCHSCRIPT_SPEC_FILE: spec_json})
            result.exporter = "torch.jit.trace + torch.jit.save"
            runner, _, _ = load_exported(tmp)
            batch_sizes = [x.shape[0], 1]  # a trace is batch-agnostic unless the model bakes N in
        elif fmt == "onnx":
            data, result.exporter = to_onnx_bytes(
                work, example, dynamic_batch=dynamic_batch, opset=opset, tracer_warnings=traced_warnings
            )
            import onnx

            onnx.save(_embed_onnx_spec(data, spec_json), os.fspath(tmp))
            runner, _, _ = load_exported(tmp)
        elif fmt == "safetensors":
            save(work, tmp, spec=spec)
            result.exporter = "torchkeep.save (safetensors + spec)"
            runner = EagerRunner(load(tmp, device="cpu"), dtype=dtype)
            batch_sizes = [x.shape[0]]
        else:
            torch.save({k: v.detach().clone() for k, v in work.state_dict().items()}, tmp)
            result.exporter = "torch.save(model.state_dict())"
            result.notes.append(
                "a plain state_dict carries no spec: rebuild the model before loading it "
                "(--format safetensors keeps the spec)"
            )
            runner = EagerRunner(_reload_state_dict(spec, tmp, dtype), dtype=dtype)
            batch_sizes = [x.shape[0]]
        result.notes += [f"the tracer warned: {w}" for w in traced_warnings[:3]]
        if check:
            _check(result, reference, runner, x, inputs, tolerance, topk, batch_sizes, traced_warnings, start)
    result.size = out_path.stat().st_size
    result.seconds = time.perf_counter() - start
    return result


def _check(
    result: ExportResult,
    reference: torch.Tensor,
    runner: Runner,
    x: torch.Tensor,
    inputs: str,
    tolerance: float | None,
    topk: int,
    batch_sizes: list[int],
    traced_warnings: list[str],
    start: float,
) -> None:
    """The parity check of a written export (still at its temporary name): ParityError beyond the tolerance."""
    result.parity = parity(reference, runner, x, inputs=inputs, tolerance=tolerance, k=topk, batch_sizes=batch_sizes)
    if result.parity.passed:
        return
    result.seconds = time.perf_counter() - start
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


# What a TorchScript / ONNX file can become: the same format with the spec embedded, or (TorchScript) ONNX.
_FROM_EXPORT = {"torchscript": ("torchscript", "onnx"), "onnx": ("onnx",)}


def _export_file(
    det: Detected,
    fmt: str,
    out_path: Path,
    *,
    dynamic_batch: bool,
    half: bool,
    samples: Sequence[str | os.PathLike[str]] | None,
    tolerance: float | None,
    topk: int,
    check: bool,
    opset: int | None,
    spec: ModelSpec | None,
    trust: bool,
    contract: InputContract | None,
    start: float,
) -> ExportResult:
    """Export a TorchScript / ONNX file: embed its input contract (the spec) and, for TorchScript, convert
    it to ONNX if asked; the reference for the parity check is the file itself."""
    import torch

    path = det.path
    check_file(path, trust=trust)  # a dangerous file is refused before anything else is said of it
    spec, ours = export_spec(det, spec, contract)  # names every missing fact before anything is loaded
    if fmt not in _FROM_EXPORT[det.format]:
        what = "TorchScript" if det.format == "torchscript" else "an ONNX model"
        if fmt in ("safetensors", "state-dict"):
            arch = spec.arch if ours else "NAME"
            raise UsageError(
                f"{what} holds no module torchkeep can rebuild, so it cannot become a {fmt} model file here",
                path=path,
                fix=f"`torchkeep adapt {path} --arch {arch} -o model.safetensors` loads its weights into an "
                f"architecture; `torchkeep convert {path} weights.safetensors` keeps the weights alone",
            )
        raise UsageError(
            "an ONNX model cannot become TorchScript: there is no PyTorch module to trace",
            path=path,
            fix="--format onnx embeds the input contract in the ONNX file itself",
        )
    if half:
        raise UsageError(
            f"--half converts a model torchkeep builds; this is a {det.format} file",
            path=path,
            fix="export the original model file with --half, or drop --half",
        )
    source, _, _ = load_exported(path, trust=trust, spec=spec, scanned=True)
    result = ExportResult(
        source=os.fspath(path), output=out_path, format=fmt, dtype=source.dtype, dynamic_batch=dynamic_batch
    )
    if not ours:
        result.notes.append(
            f"{path} was not written by torchkeep: the spec embedded is the input contract given "
            f"({spec.preprocessing.describe()})"
        )
    x, inputs = sample_inputs(spec, samples)
    reference = source(x)
    spec_json = spec.to_json()
    traced: list[str] = []
    with atomic_path(out_path) as tmp:
        runner: Runner
        batch_sizes = [x.shape[0]]
        if fmt == "torchscript":
            assert isinstance(source, TorchScriptRunner)
            with _quiet():
                torch.jit.save(source.module, os.fspath(tmp), _extra_files={TORCHSCRIPT_SPEC_FILE: spec_json})
            result.exporter = "torch.jit.save (the archive's code and weights as they were, with the spec)"
            runner = load_exported(tmp, trust=trust)[0]
            batch_sizes = [x.shape[0], 1]
        elif det.format == "torchscript":
            assert isinstance(source, TorchScriptRunner)
            example = x[:2] if dynamic_batch else x[:1]
            data, result.exporter = to_onnx_bytes(
                source.module, example, dynamic_batch=dynamic_batch, opset=opset, tracer_warnings=traced
            )
            import onnx

            onnx.save(_embed_onnx_spec(data, spec_json), os.fspath(tmp))
            runner = load_exported(tmp)[0]
            batch_sizes = [x.shape[0], 1] if dynamic_batch else [1]
        else:
            import onnx

            proto = onnx.load(os.fspath(path))  # external data from the model's folder (checked by the scan)
            onnx.save(_embed_onnx_spec(proto.SerializeToString(), spec_json), os.fspath(tmp))
            result.exporter = "the ONNX graph as it was, with the spec in metadata_props"
            runner = load_exported(tmp, trust=trust)[0]
            result.dynamic_batch = runner.fixed_batch is None
            if dynamic_batch or opset is not None:
                result.notes.append("the ONNX graph is kept as it was: --dynamic-batch and --opset do not apply")
        if check:
            _check(result, reference, runner, x, inputs, tolerance, topk, batch_sizes, traced, start)
            assert result.parity is not None
            result.parity.reference = "source file"
    result.size = out_path.stat().st_size
    result.seconds = time.perf_counter() - start
    return result


def _reload_state_dict(spec: ModelSpec, path: Path, dtype: str) -> nn.Module:
    """Rebuild the model from its spec and load a state_dict ``.pt`` into it, as a user would."""
    import torch

    from torchkeep.models import build_from_spec

    module = build_from_spec(spec)
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.to(_torch_dtype(dtype)).eval()
