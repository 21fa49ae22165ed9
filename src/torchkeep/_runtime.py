"""The inference runtime: a model, opened on a backend, as a callable from a float32 batch to logits.

- runners (``EagerRunner``, ``TorchScriptRunner``, ``OnnxRunner``): a float32 batch ``(N, C, H, W)`` in, float32
  logits ``(N, classes)`` on the CPU out;
- ``to_torchscript`` / ``to_onnx_bytes``: tracing and ONNX export of a module;
- ``read_exported_spec`` / ``load_exported``: open a TorchScript or ONNX export (scanned first) with the spec it
  carries;
- ``prepare(model, backend=...)``: any model (module, model file, export) -> (runner, spec, backend).

``predict`` runs what ``prepare`` opens, ``export`` writes with the tracers and checks parity with the runners
(and the server will serve them). It imports neither ``_predict`` nor ``_export``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from torchkeep._detect import Detected, corrupt_file_errors, detect
from torchkeep._device import resolve_device as _resolve_device
from torchkeep._dtypes import torch_dtype as _torch_dtype
from torchkeep._gate import check_file
from torchkeep._modelpath import InputContract, open_model, run_model_file
from torchkeep._onnx import read_onnx
from torchkeep._spec import METADATA_KEY, ModelSpec
from torchkeep.errors import InputError, TorchkeepError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep stays cheap
    import torch
    from torch import nn

__all__ = [
    "BACKENDS",
    "INPUT_NAME",
    "ONNX_SPEC_KEY",
    "OUTPUT_NAME",
    "TORCHSCRIPT_SPEC_FILE",
    "EagerRunner",
    "OnnxRunner",
    "Runner",
    "TorchScriptRunner",
    "export_spec",
    "load_exported",
    "prepare",
    "read_exported_spec",
    "resolve_device",
    "to_onnx_bytes",
    "to_torchscript",
]

BACKENDS = ("eager", "torchscript", "onnxruntime")
#: Name of the spec JSON inside a TorchScript archive (``torch.jit.save(_extra_files=...)``).
TORCHSCRIPT_SPEC_FILE = "torchkeep_spec.json"
#: ``metadata_props`` key of the spec JSON in an ONNX model (the same key as in safetensors metadata).
ONNX_SPEC_KEY = METADATA_KEY
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


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
    return str(_resolve_device(device))


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
        # idle threads sleep instead of spinning: spinning ones take the cores a server decodes images with
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


def export_spec(
    det: Detected, spec: ModelSpec | None = None, contract: InputContract | None = None
) -> tuple[ModelSpec, bool]:
    """The spec to run a TorchScript / ONNX file with, and whether torchkeep wrote the file (it carries one).

    ``spec`` if given, else the file's own, else one made from ``contract`` and what the file tells (an
    InputError names each fact still missing and its flag); ``contract``'s facts override the others.
    """
    own = read_exported_spec(det)
    contract = contract or InputContract()
    if spec is not None:
        return contract.apply(spec), own is not None
    if own is not None:
        return contract.apply(own), True
    return contract.for_export(det), False


def load_exported(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    trust: bool = False,
    spec: ModelSpec | None = None,
    need_spec: bool = False,
    scanned: bool = False,
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
        scanned: the caller has just passed the file through the gate (not scanned twice).

    Returns:
        (runner, spec or None, format) with format "torchscript" or "onnx".

    Raises:
        InputError: the file is neither TorchScript nor ONNX, carries no spec (``need_spec``), or cannot be loaded.
        UnsafeFileError: the scan found code that is not tensor computation (without ``trust``).
    """
    det = detect(path)
    if det.format not in ("torchscript", "onnx"):
        raise InputError(f"not a TorchScript or ONNX export (it is a {det.description})", path=path)
    if not scanned:
        check_file(path, trust=trust)
    spec = spec or read_exported_spec(det)
    if spec is None and need_spec:
        spec, _ = export_spec(det)  # names what is missing and the flags that give it
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


# ------------------------------------------------------------------------------------------- prepare
def prepare(
    model: Any,
    *,
    backend: str | None = None,
    device: str = "auto",
    half: bool = False,
    spec: ModelSpec | None = None,
    channels_last: bool = False,
    trust: bool = False,
    contract: InputContract | None = None,
) -> tuple[Runner, ModelSpec, str]:
    """Open a model for inference on a backend.

    Args:
        model: an ``nn.Module`` with ``torchkeep_spec``, a torchkeep model file, a training run (its
            directory or ``checkpoint.pt``: its best model file), or a TorchScript / ONNX file (a foreign one
            with ``contract``).
        backend: "eager", "torchscript" or "onnxruntime"; None: the file's own (eager for model files).
        device: "auto", "cpu", "cuda"...
        half: run in float16.
        spec: overrides the spec found in the model (needed for exports made without torchkeep).
        channels_last: eager/torchscript: NHWC memory format (often faster for CNNs on CPU).
        trust: load a file whatever its scan says: a TorchScript / ONNX export whose code is not ``safe``, a
            model file whose spec names a user class (as ``torchkeep.load``). Only for files you trust.
        contract: input size, normalisation, channels and class names for a file that does not carry them
            (a TorchScript / ONNX file torchkeep did not write); for other models they override the spec's.

    Returns:
        (runner, spec, backend actually used).

    Raises:
        UnsafeFileError: the scan found code in the file that is not tensor computation (without ``trust``).
        InputError: a foreign export without the facts it needs (each missing one named with its flag), a
            file that is not a model file (a full pickled model is named with its class and what to do).
    """
    import torch
    from torch import nn

    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", fix=f"use one of: {', '.join(BACKENDS)}")
    if device in (None, "", "auto") and isinstance(model, nn.Module):
        # a module the caller holds stays where it is (moving it would move their model)
        first = next(iter(model.parameters()), None)
        device = str(first.device) if first is not None else "cpu"
    dev = resolve_device(device)
    dtype: str | None = "float16" if half else None
    if isinstance(model, (str, os.PathLike)):
        model = run_model_file(model)
        det = detect(model)
        fmt = det.format
        if fmt in ("torchscript", "onnx"):
            natural = "torchscript" if fmt == "torchscript" else "onnxruntime"
            if backend not in (None, natural):
                raise UsageError(
                    f"this file is a {fmt} export; it runs on the {natural} backend, not {backend}",
                    path=model,
                    fix=f"drop --backend, or export the original model file with torchkeep export --format "
                    f"{'onnx' if backend == 'onnxruntime' else 'torchscript'}",
                )
            # the file scanned first (a dangerous file is refused before anything else is said of it), then the
            # spec settled (or what is missing named), before torch.jit.load / onnxruntime run anything of it
            check_file(model, trust=trust)
            spec, _ = export_spec(det, spec, contract)
            runner, _, _ = load_exported(model, device=dev, trust=trust, spec=spec, scanned=True)
            if half and runner.dtype != "float16":
                if isinstance(runner, TorchScriptRunner):
                    runner = TorchScriptRunner(runner.module, dtype="float16", device=dev)
                else:
                    raise UsageError(
                        "--half needs a float16 ONNX export",
                        path=model,
                        fix="torchkeep export --format onnx --half",
                    )
            return runner, spec, natural
    module, spec, _ = open_model(model, spec, trust=trust, contract=contract)
    module = module.eval()
    if not isinstance(module, nn.Module):  # pragma: no cover - resolve_model guarantees it
        raise UsageError("not a module")
    backend = backend or "eager"
    if half:
        import copy

        module = copy.deepcopy(module).half()
    if backend == "eager":
        return EagerRunner(module, dtype=dtype, device=dev, channels_last=channels_last), spec, backend
    c, (h, w) = spec.in_channels, spec.input_size
    param = next((t for t in module.parameters() if t.is_floating_point()), None)
    example = torch.zeros(1, c, h, w, dtype=param.dtype if param is not None else torch.float32)
    if backend == "torchscript":
        module = module.to(dev)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
            example = example.contiguous(memory_format=torch.channels_last)
        traced = to_torchscript(module, example.to(dev), optimize=dev == "cpu")
        return (
            TorchScriptRunner(traced, dtype=dtype, device=dev, channels_last=channels_last),
            spec,
            backend,
        )
    data, _ = to_onnx_bytes(module, torch.cat([example, example]), dynamic_batch=True)
    return OnnxRunner(data, device=dev), spec, backend
