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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchkeep._inputs import IMAGE_SUFFIXES, InputItem, collect_inputs
from torchkeep._modelpath import InputContract
from torchkeep._runners import Runner
from torchkeep._runtime import BACKENDS, prepare
from torchkeep.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch

    from torchkeep._spec import ModelSpec

__all__ = [
    "BACKENDS",
    "IMAGE_SUFFIXES",
    "ClassScore",
    "InputContract",
    "InputItem",
    "Prediction",
    "collect_inputs",
    "predict",
    "prepare",
    "run_batches",
]



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


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, InputError):  # load_image words Pillow's errors (unreadable, truncated, bomb)
        return exc.what
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    contract: InputContract | None = None,
) -> list[Prediction]:
    """Classify images.

    Args:
        model: an ``nn.Module`` built by torchkeep (``model.torchkeep_spec``), a torchkeep model file, a
            training run (its directory or ``checkpoint.pt``: its best model file, with a warning saying so),
            a TorchScript / ONNX file exported by ``torchkeep export``, or one torchkeep did not write (with
            ``contract``).
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
        contract: the input size, normalisation, channels and class names of a TorchScript / ONNX file that does
            not carry them (``InputContract(input_size=224, mean=[...], std=[...], class_names=[...])``); for other
            models, facts that override the spec's.

    Returns:
        One :class:`Prediction` per input, in input order; unreadable inputs have ``error`` set.

    Raises:
        InputError: no input was found at all, the model file cannot be read, a foreign export lacks a fact
            (each named with its flag), or the file is not a model file (a full pickled model: what to do).
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
    runner, spec, _ = prepare(
        model, backend=backend, device=device, half=half, spec=spec, trust=trust, contract=contract
    )
    try:
        return run_batches(runner, spec, items, topk=topk, batch_size=batch_size, progress=progress)
    finally:
        if was_training:  # predicting in the middle of training must not leave the model in eval mode
            model.train()


def _names(spec: ModelSpec, n: int) -> list[str]:
    names = list(spec.class_names or [])
    if names and len(names) != n:  # given for a foreign export, or overriding the spec's: never shift them
        raise UsageError(
            f"{len(names)} class names for a model with {n} outputs",
            fix=f"give exactly {n} names, in output order (--classes FILE|a,b,c)",
        )
    return names or [f"class {i}" for i in range(n)]


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

    from torchkeep._preprocess import load_image, transform_for  # torch, PIL: only when used

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
