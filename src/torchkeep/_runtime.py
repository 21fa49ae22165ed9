"""The inference runtime: open any model on a backend, as a runner (:mod:`torchkeep._runners`).

- ``read_exported_spec`` / ``load_exported``: open a TorchScript or ONNX export (scanned first) with the spec it
  carries; ``export_spec``: the spec to run one with (its own, given, or made from an input contract);
- ``prepare(model, backend=...)``: any model (module, model file, training run, export) -> (runner, spec,
  backend), tracing with :mod:`torchkeep._exporters` for the torchscript and onnxruntime backends.

``predict`` runs what ``prepare`` opens, ``export`` checks parity with the runners, and the server serves
them. It imports neither ``_predict`` nor ``_export``.
"""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING, Any

from torchkeep._detect import Detected, corrupt_file_errors, detect
from torchkeep._exporters import ONNX_SPEC_KEY, TORCHSCRIPT_SPEC_FILE, quiet, to_onnx_bytes, to_torchscript
from torchkeep._gate import check_file
from torchkeep._modelpath import InputContract, open_model, run_model_file
from torchkeep._onnx import read_onnx
from torchkeep._runners import EagerRunner, OnnxRunner, Runner, TorchScriptRunner, resolve_device
from torchkeep._spec import ModelSpec
from torchkeep.errors import InputError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep stays cheap
    from torch import nn

__all__ = ["BACKENDS", "export_spec", "load_exported", "prepare", "read_exported_spec"]

BACKENDS = ("eager", "torchscript", "onnxruntime")


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
            with quiet():
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
    from torch import nn

    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", fix=f"use one of: {', '.join(BACKENDS)}")
    if device in (None, "", "auto") and isinstance(model, nn.Module):
        # a module the caller holds stays where it is (moving it would move their model)
        first = next(iter(model.parameters()), None)
        device = str(first.device) if first is not None else "cpu"
    dev = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        model = run_model_file(model)
        det = detect(model)
        if det.format in ("torchscript", "onnx"):
            return _prepare_export(model, det, backend=backend, device=dev, half=half, spec=spec, trust=trust,
                                   contract=contract)
    module, spec, _ = open_model(model, spec, trust=trust, contract=contract)
    module = module.eval()
    if not isinstance(module, nn.Module):  # pragma: no cover - resolve_model guarantees it
        raise UsageError("not a module")
    backend = backend or "eager"
    return _prepare_module(module, spec, backend, device=dev, half=half, channels_last=channels_last), spec, backend


def _prepare_export(model: str | os.PathLike[str], det: Detected, *, backend: str | None, device: str, half: bool,
                    spec: ModelSpec | None, trust: bool, contract: InputContract | None
                    ) -> tuple[Runner, ModelSpec, str]:
    """A TorchScript / ONNX file (``model``, detected as ``det``) on its own backend: scanned, its spec
    settled, then loaded."""
    fmt = det.format
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
    runner, _, _ = load_exported(model, device=device, trust=trust, spec=spec, scanned=True)
    if half and runner.dtype != "float16":
        if isinstance(runner, TorchScriptRunner):
            runner = TorchScriptRunner(runner.module, dtype="float16", device=device)
        else:
            raise UsageError(
                "--half needs a float16 ONNX export",
                path=model,
                fix="torchkeep export --format onnx --half",
            )
    return runner, spec, natural


def _prepare_module(module: nn.Module, spec: ModelSpec, backend: str, *, device: str, half: bool,
                    channels_last: bool) -> Runner:
    """A module on ``backend``: run eagerly, traced to TorchScript, or exported to ONNX in memory."""
    import torch

    dtype: str | None = "float16" if half else None
    if half:
        import copy

        module = copy.deepcopy(module).half()
    if backend == "eager":
        return EagerRunner(module, dtype=dtype, device=device, channels_last=channels_last)
    c, (h, w) = spec.in_channels, spec.input_size
    param = next((t for t in module.parameters() if t.is_floating_point()), None)
    example = torch.zeros(1, c, h, w, dtype=param.dtype if param is not None else torch.float32)
    if backend == "torchscript":
        module = module.to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
            example = example.contiguous(memory_format=torch.channels_last)
        traced = to_torchscript(module, example.to(device), optimize=device == "cpu")
        return TorchScriptRunner(traced, dtype=dtype, device=device, channels_last=channels_last)
    data, _ = to_onnx_bytes(module, torch.cat([example, example]), dynamic_batch=True)
    return OnnxRunner(data, device=device)
