"""Classify images with a model file: ``predict(model, inputs) -> list[Prediction]``.

Everything that silently breaks hand-written inference is done from the model file itself: the
preprocessing comes from its spec (``torchkeep._preprocess``: channels, EXIF orientation, resize,
crop, normalisation, exactly as in training), the model runs in eval mode under
``torch.inference_mode`` in batches, and class indices become the spec's class names.

An unreadable image (truncated, not an image, a decompression bomb) becomes a ``Prediction`` with
``error`` set; it never aborts the batch. Model files that are exports (TorchScript or ONNX carrying
the spec, see ``torchkeep export``) run without torchkeep's model registry.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._detect import detect
from torchkeep.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch

    from torchkeep._export import Runner
    from torchkeep._spec import ModelSpec

__all__ = ["BACKENDS", "IMAGE_SUFFIXES", "ClassScore", "Prediction", "collect_inputs", "predict"]

BACKENDS = ("eager", "torchscript", "onnxruntime")
#: Files taken from folders (explicitly named files are always tried, whatever their name).
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jfif",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
_GLOB_CHARS = set("*?[")


@dataclass
class ClassScore:
    """One class of a top-k list."""

    index: int
    label: str
    probability: float


@dataclass
class Prediction:
    """The top-k classes of one input, or why it could not be read.

    Attributes:
        input: the file (or ``"<image N>"`` for in-memory images).
        label: the top-1 class name (the spec's ``class_names``, else ``"class N"``); None on error.
        index: the top-1 class index; None on error.
        probability: softmax probability of the top-1 class; None on error.
        topk: the k best classes, best first.
        error: why the input was skipped (None when it was classified).
    """

    input: str
    label: str | None = None
    index: int | None = None
    probability: float | None = None
    topk: list[ClassScore] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the input was classified."""
        return self.error is None


@dataclass
class InputItem:
    """One input to classify: a file path or an in-memory PIL image, or why it cannot be found."""

    name: str
    source: Any
    error: str | None = None


def collect_inputs(inputs: Any) -> list[InputItem]:
    """Expand files, folders (recursively, image suffixes only, hidden files skipped) and globs.

    Args:
        inputs: a path, a glob pattern, a PIL image, or a sequence of them.

    Returns:
        The items in order; a missing path or a glob that matches nothing is an item with ``error`` set.
    """
    if isinstance(inputs, (str, os.PathLike)) or _is_pil(inputs):
        inputs = [inputs]
    items: list[InputItem] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            items.append(InputItem(os.fspath(path), path))

    for n, entry in enumerate(inputs):
        if _is_pil(entry):
            items.append(InputItem(f"<image {n}>", entry))
            continue
        text = os.fspath(entry)
        p = Path(text)
        if p.is_dir():
            for f in _walk(p):
                add(f)
        elif p.exists():
            add(p)
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                items.append(InputItem(text, None, "the pattern matches no file"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for f in _walk(mp):
                        add(f)
                else:
                    add(mp)
        else:
            items.append(InputItem(text, None, "no such file or folder"))
    return items


def _walk(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(root) / name)
    return out


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, InputError):  # load_image words Pillow's errors (unreadable, truncated, bomb)
        return exc.what
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- the model
def prepare(
    model: Any,
    *,
    backend: str | None = None,
    device: str = "auto",
    half: bool = False,
    spec: ModelSpec | None = None,
    channels_last: bool = False,
    trust: bool = False,
) -> tuple[Runner, ModelSpec, str]:
    """Open a model for inference on a backend.

    Args:
        model: an ``nn.Module`` with ``torchkeep_spec``, a torchkeep model file, or a TorchScript /
            ONNX export carrying the spec.
        backend: "eager", "torchscript" or "onnxruntime"; None: the file's own (eager for model files).
        device: "auto", "cpu", "cuda"...
        half: run in float16.
        spec: overrides the spec found in the model (needed for exports made without torchkeep).
        channels_last: eager/torchscript: NHWC memory format (often faster for CNNs on CPU).
        trust: load a file whatever its scan says: a TorchScript / ONNX export whose code is not ``safe``, a
            model file whose spec names a user class (as ``torchkeep.load``). Only for files you trust.

    Returns:
        (runner, spec, backend actually used).

    Raises:
        UnsafeFileError: the scan found code in the file that is not tensor computation (without ``trust``).
    """
    import torch
    from torch import nn

    from torchkeep import _export as ex

    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", fix=f"use one of: {', '.join(BACKENDS)}")
    if device in (None, "", "auto") and isinstance(model, nn.Module):
        # a module the caller holds stays where it is (moving it would move their model)
        first = next(iter(model.parameters()), None)
        device = str(first.device) if first is not None else "cpu"
    dev = ex.resolve_device(device)
    dtype: str | None = "float16" if half else None
    if isinstance(model, (str, os.PathLike)):
        fmt = detect(model).format
        if fmt in ("torchscript", "onnx"):
            natural = "torchscript" if fmt == "torchscript" else "onnxruntime"
            if backend not in (None, natural):
                raise UsageError(
                    f"this file is a {fmt} export; it runs on the {natural} backend, not {backend}",
                    path=model,
                    fix=f"drop --backend, or export the original model file with torchkeep export --format "
                    f"{'onnx' if backend == 'onnxruntime' else 'torchscript'}",
                )
            # scanned, then the spec checked, before torch.jit.load / onnxruntime run anything of the file
            runner, spec, _ = ex.load_exported(model, device=dev, trust=trust, spec=spec, need_spec=True)
            assert spec is not None  # need_spec
            if half and runner.dtype != "float16":
                if isinstance(runner, ex.TorchScriptRunner):
                    runner = ex.TorchScriptRunner(runner.module, dtype="float16", device=dev)
                else:
                    raise UsageError(
                        "--half needs a float16 ONNX export",
                        path=model,
                        fix="torchkeep export --format onnx --half",
                    )
            return runner, spec, natural
    module, spec, _ = ex.resolve_model(model, spec, trust=trust)
    if not isinstance(module, nn.Module):  # pragma: no cover - resolve_model guarantees it
        raise UsageError("not a module")
    backend = backend or "eager"
    if half:
        import copy

        module = copy.deepcopy(module).half()
    if backend == "eager":
        return ex.EagerRunner(module, dtype=dtype, device=dev, channels_last=channels_last), spec, backend
    c, (h, w) = spec.in_channels, spec.input_size
    param = next((t for t in module.parameters() if t.is_floating_point()), None)
    example = torch.zeros(1, c, h, w, dtype=param.dtype if param is not None else torch.float32)
    if backend == "torchscript":
        module = module.to(dev)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
            example = example.contiguous(memory_format=torch.channels_last)
        traced = ex.to_torchscript(module, example.to(dev), optimize=dev == "cpu")
        return (
            ex.TorchScriptRunner(traced, dtype=dtype, device=dev, channels_last=channels_last),
            spec,
            backend,
        )
    data, _ = ex.to_onnx_bytes(module, torch.cat([example, example]), dynamic_batch=True)
    return ex.OnnxRunner(data, device=dev), spec, backend


def predict(
    model: Any,
    inputs: Any,
    *,
    topk: int = 5,
    batch_size: int = 32,
    device: str = "auto",
    backend: str | None = None,
    half: bool = False,
    spec: ModelSpec | None = None,
    progress: Callable[[int, int], None] | None = None,
    trust: bool = False,
) -> list[Prediction]:
    """Classify images.

    Args:
        model: an ``nn.Module`` built by torchkeep (``model.torchkeep_spec``), a torchkeep model file,
            or a TorchScript / ONNX file exported by ``torchkeep export``.
        inputs: image files, folders (recursive), glob patterns or PIL images; one or a list.
        topk: how many classes to return per image.
        batch_size: images per forward pass.
        device: "auto" (GPU if available), "cpu", "cuda"...
        backend: "eager", "torchscript" (traced, frozen) or "onnxruntime"; None: the file's own.
        half: float16 (slow on CPU; use with the parity check of ``torchkeep export --half``).
        spec: overrides the model's spec.
        progress: called as ``progress(done, total)`` after each batch.
        trust: load the model whatever its scan says (TorchScript / ONNX code that is not ``safe``) and let a
            model file whose spec names a user class (``package.module:Class``) import it. Only for files you trust.

    Returns:
        One :class:`Prediction` per input, in input order; unreadable inputs have ``error`` set.

    Raises:
        InputError: no input was found at all, or the model file cannot be read.
        UnsafeFileError: the model file can run code that is not tensor computation (without ``trust``).
        UsageError: bad arguments.
    """
    if topk < 1:
        raise UsageError(f"topk must be at least 1, not {topk}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, not {batch_size}")
    items = collect_inputs(inputs)
    if not items:
        raise InputError("no input images given", fix="pass image files, folders or glob patterns")
    if all(it.error is not None for it in items):
        first = items[0]
        raise InputError(first.error or "no readable input", path=first.name, fix="check the path or pattern")
    was_training = bool(getattr(model, "training", False))
    runner, spec, _ = prepare(model, backend=backend, device=device, half=half, spec=spec, trust=trust)
    try:
        return run_batches(runner, spec, items, topk=topk, batch_size=batch_size, progress=progress)
    finally:
        if was_training:  # predicting in the middle of training must not leave the model in eval mode
            model.train()


def _names(spec: ModelSpec, n: int) -> list[str]:
    names = list(spec.class_names or [])
    return [names[i] if i < len(names) else f"class {i}" for i in range(n)]


def run_batches(
    runner: Runner,
    spec: ModelSpec,
    items: Sequence[InputItem],
    *,
    topk: int = 5,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> list[Prediction]:
    """Decode, batch, run and rank; the loop behind :func:`predict` (also used by the benchmark)."""
    import torch

    from torchkeep._preprocess import load_image, transform_for

    transform = transform_for(spec, train=False)
    names: list[str] = []
    results: list[Prediction | None] = [None] * len(items)
    pending: list[tuple[int, torch.Tensor]] = []
    done = 0

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        shapes = {t.shape for _, t in pending}
        # resize-only specs ([N] keeps the aspect ratio) give images of different sizes: run them one by one
        groups = [pending] if len(shapes) == 1 else [[p] for p in pending]
        for group in groups:
            logits = runner(torch.stack([t for _, t in group]))
            probs = torch.softmax(logits, dim=1)  # runners return float32 logits
            k = min(topk, probs.shape[1])
            values, indices = probs.topk(k, dim=1)
            if len(names) != probs.shape[1]:
                names[:] = _names(spec, probs.shape[1])
            for (i, _), row_values, row_indices in zip(group, values.tolist(), indices.tolist()):
                scores = [ClassScore(c, names[c], v) for v, c in zip(row_values, row_indices)]
                best = scores[0]
                results[i] = Prediction(items[i].name, best.label, best.index, best.probability, scores)
        done += len(pending)
        pending.clear()
        if progress is not None:
            progress(done, len(items))

    with torch.inference_mode():  # once for the whole run: entering it per batch costs at batch 1
        for i, item in enumerate(items):
            if item.error is not None:
                results[i] = Prediction(item.name, error=item.error)
                done += 1
                continue
            try:
                tensor = load_image(item.source, spec, transform)
            except Exception as exc:  # any decoding failure skips this image, never the batch
                results[i] = Prediction(item.name, error=_describe_error(exc))
                done += 1
                continue
            pending.append((i, tensor))
            if len(pending) >= batch_size:
                flush()
        flush()
    if progress is not None:
        progress(len(items), len(items))
    return [r for r in results if r is not None]
