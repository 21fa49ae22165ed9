"""Export a model to TorchScript, ONNX, safetensors or a plain state_dict, with a parity check.

``export(model, fmt, out) -> ExportResult``. After writing, the exported file is loaded back and run
side by side with the eager model on real sample inputs (images put through the model's own
preprocessing); the maximum absolute difference of the logits and the top-1 / top-k agreement are
reported, and the export fails (``ParityError``, exit 4) beyond the tolerance. The file is renamed
into place only once the check passes, so a failed export never leaves a bad file at ``out``.

The spec (class names, preprocessing) travels with the export: TorchScript ``_extra_files``
(``torchkeep_spec.json``), ONNX ``metadata_props`` (key ``torchkeep.spec``), safetensors metadata.
``torchkeep predict`` runs an exported file alone, without torchkeep's model registry.

This module also holds the *runners* shared with ``predict``: a callable per backend that maps a
float32 batch to float32 logits on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._atomic import atomic_path
from torchkeep._detect import Detected, corrupt_file_errors, detect
from torchkeep._gate import check_file
from torchkeep._onnx import read_onnx
from torchkeep._spec import ModelSpec
from torchkeep.errors import InputError, TorchkeepError, UsageError

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
#: Name of the spec JSON inside a TorchScript archive (``torch.jit.save(_extra_files=...)``).
TORCHSCRIPT_SPEC_FILE = "torchkeep_spec.json"
#: ``metadata_props`` key of the spec JSON in an ONNX model (same key as in safetensors metadata).
ONNX_SPEC_KEY = "torchkeep.spec"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# Tolerances on the max abs logit difference, relative to the logits' scale (max(1, max |logit|)).
# float32 exports differ from eager only by kernel choice and op fusion (~1e-6); float16 keeps ~3
# significant digits, so its tolerance is looser.
TOLERANCE_FP32 = 1e-3
TOLERANCE_FP16 = 5e-2


class ParityError(TorchkeepError):
    """The exported model's outputs differ from the eager model's beyond the tolerance (exit 4).

    Attributes:
        result: the :class:`ExportResult` with its ``parity`` report (the file was not written).
    """

    exit_code = 4

    def __init__(self, what: str, *, path=None, fix=None, result: ExportResult | None = None):
        self.result = result
        super().__init__(what, path=path, fix=fix)


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


# ---------------------------------------------------------------------------------------------- runners
@contextlib.contextmanager
def _quiet(record: list[str] | None = None) -> Iterator[None]:
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


def resolve_device(device: str | None) -> str:
    """The device name runners use; see :func:`torchkeep._device.resolve_device`."""
    from torchkeep._device import resolve_device as _resolve

    return str(_resolve(device))


class Runner:
    """Maps a float32 batch ``(N, C, H, W)`` to float32 logits ``(N, classes)`` on the CPU.

    Attributes:
        backend: "eager", "torchscript" or "onnxruntime".
        dtype: "float32" or "float16" (inputs are cast to it).
        device: where the model runs.
        fixed_batch: the only batch size the model accepts (static ONNX exports), else None.
    """

    backend = "eager"

    def __init__(self, *, dtype: str = "float32", device: str = "cpu", fixed_batch: int | None = None):
        self.dtype = dtype
        self.device = device
        self.fixed_batch = fixed_batch

    def _run(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            # a static-batch export: feed it chunks of its batch size, padding the last one
            parts = []
            for i in range(0, x.shape[0], self.fixed_batch):
                chunk = x[i : i + self.fixed_batch]
                n = chunk.shape[0]
                if n < self.fixed_batch:
                    pad = chunk[:1].expand(self.fixed_batch - n, *chunk.shape[1:])
                    chunk = torch.cat([chunk, pad])
                parts.append(self._run(chunk)[:n])
            return torch.cat(parts)
        return self._run(x)


class EagerRunner(Runner):
    """An ``nn.Module`` in eval mode under ``torch.inference_mode``."""

    backend = "eager"

    def __init__(
        self,
        module: nn.Module,
        *,
        dtype: str | None = None,
        device: str | None = None,
        channels_last: bool = False,
    ):
        import torch

        first = next((t for t in module.parameters() if t.is_floating_point()), None)
        current = str(first.dtype).removeprefix("torch.") if first is not None else "float32"
        dtype = dtype or current
        device = device or (str(first.device) if first is not None else "cpu")
        super().__init__(dtype=dtype, device=device)
        # cast only when asked: a user's module keeps its dtype, and to(dtype) would convert it in place
        module = module.eval().to(device)
        if dtype != current:
            module = module.to(_torch_dtype(dtype))
        self.module = module
        self.channels_last = channels_last
        self._torch_dtype = _torch_dtype(dtype)
        self._torch_device = torch.device(device)
        if self._torch_device.type == "cuda" and self._torch_device.index is None:
            self._torch_device = torch.device("cuda", torch.cuda.current_device())
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        # per-call costs matter at batch 1 on small models: skip no-op conversions and nested modes
        if x.dtype != self._torch_dtype or x.device != self._torch_device:
            x = x.to(self._torch_device, self._torch_dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if torch.is_inference_mode_enabled():
            out = self.module(x)
        else:
            with torch.inference_mode():
                out = self.module(x)
        if out.dtype != torch.float32:
            out = out.float()
        return out if out.device.type == "cpu" else out.cpu()


class TorchScriptRunner(EagerRunner):
    """A TorchScript module (traced here, or loaded from a file)."""

    backend = "torchscript"


class OnnxRunner(Runner):
    """An onnxruntime ``InferenceSession``."""

    backend = "onnxruntime"

    def __init__(self, model: str | os.PathLike[str] | bytes, *, device: str = "cpu"):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT warns about unused initializers on every load
        # as many threads as torch uses, so backends compare fairly and respect torch.set_num_threads
        opts.intra_op_num_threads = _torch_threads()
        src = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(src, sess_options=opts, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dtype = "float16" if inp.type == "tensor(float16)" else "float32"
        batch = inp.shape[0] if inp.shape else None
        super().__init__(dtype=dtype, device=device, fixed_batch=batch if isinstance(batch, int) else None)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        arr = (
            x.detach().cpu().numpy().astype(np.float16 if self.dtype == "float16" else np.float32, copy=False)
        )
        out = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _torch_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}.get(
        name, torch.float32
    )


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
    with _quiet(tracer_warnings), torch.inference_mode(False), torch.no_grad():
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
    with _quiet(tracer_warnings), torch.inference_mode(False), torch.no_grad():
        try:
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
        except Exception as exc:  # torch.export rejects some models; the legacy exporter may not
            errors.append(
                f"dynamo exporter: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
        try:
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
            import onnx

            data = buf.getvalue()
            return (
                data,
                f"torch.onnx.export(dynamo=False, legacy), opset {_opset_of(onnx.load_from_string(data))}",
            )
        except Exception as exc:
            errors.append(
                f"legacy exporter: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
    raise TorchkeepError(
        "ONNX export failed; " + "; ".join(errors),
        fix="export to TorchScript (--format torchscript), or re-run with --debug for the traceback",
    )


def _opset_of(proto: Any) -> int | str:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return "?"


def _embed_onnx_spec(data: bytes, spec_json: str | None) -> Any:
    import onnx

    proto = onnx.load_from_string(data)
    if spec_json is not None:
        props = {p.key: p.value for p in proto.metadata_props}
        props[ONNX_SPEC_KEY] = spec_json
        onnx.helper.set_model_props(proto, props)
    return proto


def read_exported_spec(det: Detected) -> ModelSpec | None:
    """The spec a TorchScript or ONNX export carries, read from the file without loading it (no torch)."""
    raw: str | None = None
    with corrupt_file_errors(det.path):
        if det.format == "torchscript":
            # torch.jit.save(_extra_files=...) writes <archive>/extra/NAME, where torch.jit.load reads it
            member = f"{det.archive_root}/extra/{TORCHSCRIPT_SPEC_FILE}" if det.archive_root else ""
            with zipfile.ZipFile(det.path) as zf:
                if member in zf.namelist():
                    raw = zf.read(member).decode("utf-8")
        elif det.format == "onnx":
            raw = read_onnx(det.path).metadata.get(ONNX_SPEC_KEY)  # onnxruntime's custom_metadata_map
    return ModelSpec.from_json(raw, path=det.path) if raw else None


def load_exported(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    trust: bool = False,
    spec: ModelSpec | None = None,
    need_spec: bool = False,
) -> tuple[Runner, ModelSpec | None, str]:
    """Open a TorchScript or ONNX export and read the spec it carries.

    The file is scanned first (:func:`torchkeep._gate.check_file`): ``torch.jit.load`` runs TorchScript
    code (``__setstate__`` while loading) and onnxruntime runs custom ops, so only a ``safe`` file is
    loaded unless ``trust``. The spec is read from the file without loading it, so a missing spec
    (``need_spec``) is reported before anything is loaded.

    Args:
        path: the exported file.
        device: where to run it.
        trust: load it whatever the scan says (``--trust``).
        spec: a spec that overrides the file's.
        need_spec: raise if neither ``spec`` nor the file gives one.

    Returns:
        (runner, spec or None, format) with format "torchscript" or "onnx".

    Raises:
        InputError: the file is neither TorchScript nor ONNX, carries no spec (``need_spec``), or cannot be loaded.
        UnsafeFileError: the scan found code that is not tensor computation (without ``trust``).
    """
    det = detect(path)
    if det.format not in ("torchscript", "onnx"):
        raise InputError(f"not a TorchScript or ONNX export (it is a {det.description})", path=path)
    check_file(path, trust=trust)
    spec = spec or read_exported_spec(det)
    if spec is None and need_spec:
        raise InputError(
            f"this {det.format} file carries no torchkeep spec (class names, input size, preprocessing)",
            path=path,
            fix="export it with `torchkeep export`, or pass spec=ModelSpec(...)",
        )
    if det.format == "torchscript":
        import torch

        try:
            with _quiet():
                module = torch.jit.load(os.fspath(path), map_location=device)
        except Exception as exc:
            raise InputError(
                f"cannot load the TorchScript archive: {exc}".splitlines()[0], path=path
            ) from None
        return TorchScriptRunner(module, device=device), spec, "torchscript"
    try:
        runner = OnnxRunner(path, device=device)
    except Exception as exc:
        raise InputError(f"onnxruntime cannot load the model: {exc}".splitlines()[0], path=path) from None
    return runner, spec, "onnx"


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

    from torchkeep._preprocess import transform_for

    tf = transform_for(spec, train=False)
    if samples:
        from torchkeep._predict import collect_inputs
        from torchkeep._preprocess import load_image

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
def resolve_model(
    model: Any, spec: ModelSpec | None = None, *, trust: bool = False
) -> tuple[nn.Module, ModelSpec, str]:
    """(module in eval mode on the CPU, spec, label) from a model file path or an ``nn.Module``.

    ``trust`` lets a model file whose spec names a user class (``package.module:Class``) import it.
    """
    from torch import nn

    if isinstance(model, (str, os.PathLike)):
        from torchkeep._modelfile import load

        module = load(model, device="cpu", trust=trust)
        label = os.fspath(model)
    elif isinstance(model, nn.Module):
        module, label = model, "<module>"
    else:
        raise UsageError(
            f"expected a model file path or an nn.Module, not {type(model).__name__}",
            fix="pass the path of a torchkeep model file (torchkeep.save) or a module built by torchkeep.models.build",
        )
    spec = spec or getattr(module, "torchkeep_spec", None)
    if spec is None:
        raise UsageError(
            "the model has no torchkeep spec (class names, input size, preprocessing)",
            path=label if label != "<module>" else None,
            fix="build it with torchkeep.models.build(...) or pass spec=ModelSpec(...)",
        )
    return module.eval(), spec, label


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
) -> ExportResult:
    """Export a model and check that the export computes what the eager model computes.

    Args:
        model: a torchkeep model file (path) or an ``nn.Module`` carrying ``torchkeep_spec``.
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
        trust: allow a model file whose spec names a user class to import it (as ``torchkeep.load``).

    Returns:
        An :class:`ExportResult`.

    Raises:
        ParityError: outputs differ beyond the tolerance (nothing is written; ``exc.result`` has the report).
        UsageError: unknown format.
    """
    import copy

    import torch

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
    start = time.perf_counter()
    module, spec, label = resolve_model(model, spec, trust=trust)
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
            from torchkeep._modelfile import load, save

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
            result.parity = parity(
                reference, runner, x, inputs=inputs, tolerance=tolerance, k=topk, batch_sizes=batch_sizes
            )
            if not result.parity.passed:
                result.seconds = time.perf_counter() - start
                raise ParityError(
                    f"parity check failed: {result.parity.summary}; nothing was written",
                    path=out_path,
                    fix=(
                        "the model takes Python decisions on tensor values, which a trace records as one "
                        "fixed path; express them with torch.where, or use --format safetensors"
                    )
                    if traced_warnings
                    else "raise --tolerance if the difference is acceptable, or try another --format"
                    + (" or drop --half" if half else ""),
                    result=result,
                )
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
