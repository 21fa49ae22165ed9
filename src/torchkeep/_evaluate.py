"""``evaluate(model, data)``: accuracy, per-class precision / recall / F1 and the confusion matrix.

The model is fed through its own spec's preprocessing (the same transform training used), and by
default on the same deterministic validation split its training run held out (seed and fraction are
read from the model file's spec, ``extra.training``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._modelpath import open_model
from torchkeep.errors import CompatibilityError, UsageError
from torchkeep.training._config import DEFAULTS as TRAIN_DEFAULTS
from torchkeep.training._plots import plot_confusion

if TYPE_CHECKING:
    import torch

    from torchkeep.data import ImageSource

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_DEVICE", "DEFAULT_SPLIT", "SPLITS", "ClassMetrics", "EvalReport", "evaluate"]

# the choices and defaults `torchkeep eval` shows (this module imports no torch until evaluate() runs)
SPLITS = ("val", "test", "train", "all")
DEFAULT_SPLIT = "val"
DEFAULT_BATCH_SIZE = 256
DEFAULT_DEVICE = "auto"


@dataclass
class ClassMetrics:
    """Metrics of one class: precision, recall, F1 and support (number of true images)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class EvalReport:
    """Result of :func:`evaluate`.

    Attributes:
        model: the model file (or ``<in-memory model>``).
        data: the dataset name; split: ``val``, ``test``, ``train`` or ``all``; images: how many were evaluated.
        accuracy: share of images whose top-1 class is right; loss: mean cross-entropy.
        classes: class names, in the model's output order (rows/columns of ``confusion``).
        per_class: precision / recall / F1 / support per class.
        macro_f1: unweighted mean F1 over classes that have images.
        confusion: ``confusion[true][predicted]`` counts.
        png: the confusion-matrix image, when asked for.
        seed / val_fraction: the split parameters used (for ``val`` / ``train``).
        seconds: wall time; notes: anything worth knowing (class mapping, skipped files).
    """

    model: str
    data: str
    split: str
    images: int
    accuracy: float
    loss: float
    classes: list[str]
    per_class: list[ClassMetrics]
    macro_f1: float
    confusion: list[list[int]]
    png: Path | None
    seed: int
    val_fraction: float
    seconds: float
    notes: list[str] = field(default_factory=list)


def _class_map(model_names: list[str], data_names: list[str], model_label: str, data: str) -> list[int]:
    """Dataset label -> model output index, matched by class name."""
    if model_names == data_names[: len(model_names)] and len(data_names) <= len(model_names):
        return list(range(len(data_names)))
    missing = [c for c in data_names if c not in model_names]
    if missing:
        raise CompatibilityError(
            f"dataset {data} has classes the model does not know: {', '.join(missing[:8])}"
            + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
            + f"; the model's classes are {', '.join(model_names[:12])}",
            path=model_label if model_label != "<in-memory model>" else None,
            fix="evaluate on the dataset the model was trained on",
        )
    return [model_names.index(c) for c in data_names]


@dataclass
class _Split:
    """The images to evaluate: which dataset, which of its images, with which split parameters."""

    data: str
    src: ImageSource
    indices: list[int]
    seed: int
    val_fraction: float


def _pick_split(
    spec: Any, data: str | None, split: str, seed: int | None, val_fraction: float | None, subset: int | None,
    data_root: str | os.PathLike[str] | None, download: bool,
) -> _Split:
    """The dataset (default: the one the model was trained on) and the split, by default the very one its
    training held out (seed, fraction and subset from the spec's ``extra.training``)."""
    from torchkeep.data import open_dataset, split_indices

    trained = dict((spec.extra or {}).get("training") or {})
    data = data or trained.get("data") or spec.provenance.dataset
    if not data:
        raise UsageError(
            "the model does not record which dataset it was trained on",
            fix="pass the dataset: --data digits | cifar10 | fashion-mnist | folder:PATH",
        )
    seed = int(seed if seed is not None else trained.get("seed", TRAIN_DEFAULTS["seed"]))
    val_fraction = float(val_fraction if val_fraction is not None else trained.get("val_fraction", TRAIN_DEFAULTS["val_fraction"]))
    if subset is None and data == trained.get("data"):
        subset = trained.get("subset")
    if split == "test":
        src = open_dataset(data, root=data_root, split="test", download=download)
        if src.split != "test":
            raise UsageError(f"{data} has no separate test split", fix="use --split val (the seeded hold-out split)")
        indices = list(range(len(src)))
    else:
        src = open_dataset(data, root=data_root, split="train", download=download)
        n = min(len(src), subset) if subset else len(src)
        train_idx, val_idx = split_indices(n, val_fraction, seed)
        indices = {"val": val_idx, "train": train_idx, "all": list(range(n))}[split]
    if not indices:
        raise UsageError(f"the {split} split of {data} is empty", fix="use --split all or a larger --val-fraction")
    return _Split(data, src, indices, seed, val_fraction)


def _predict_all(
    model: Any, loader: Any, lut: torch.Tensor, n_cls: int, label: str
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """True labels (in the model's class order), top-1 predictions and the summed cross-entropy."""
    import torch

    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    y_true: list[torch.Tensor] = []
    y_pred: list[torch.Tensor] = []
    loss_sum = 0.0
    was_training = model.training
    model.eval()  # BatchNorm running statistics, no Dropout: the classic evaluation mistake, made impossible
    try:
        with torch.inference_mode():
            for x, y in loader:
                y = lut[y]
                out = model(x.to(dev)).float().cpu()
                if out.shape[1] != n_cls:
                    raise CompatibilityError(
                        f"the model outputs {out.shape[1]} classes but its spec names {n_cls}", path=label
                    )
                loss_sum += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
                y_true.append(y)
                y_pred.append(out.argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(y_true), torch.cat(y_pred), loss_sum


def _class_metrics(y_true: Any, y_pred: Any, names: list[str]) -> tuple[list[ClassMetrics], float, list[list[int]]]:
    """Per-class precision / recall / F1 / support, the macro F1 over classes that have images, the confusion."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    per_class = [
        ClassMetrics(names[i], float(precision[i]), float(recall[i]), float(f1[i]), int(support[i])) for i in labels
    ]
    present = support > 0
    macro_f1 = float(f1[present].mean()) if present.any() else 0.0
    return per_class, macro_f1, cm.tolist()


def evaluate(
    model_or_path: Any,
    data: str | None = None,
    *,
    split: str = DEFAULT_SPLIT,
    seed: int | None = None,
    val_fraction: float | None = None,
    subset: int | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = DEFAULT_DEVICE,
    png: str | os.PathLike[str] | None = None,
    trust: bool = False,
) -> EvalReport:
    """Evaluate a classifier on a dataset.

    Args:
        model_or_path: a torchkeep model file, a training run (its directory or ``checkpoint.pt``: its best
            model file, with a warning saying so), or an ``nn.Module`` carrying ``torchkeep_spec``.
        data: ``digits``, ``cifar10``, ``fashion-mnist`` or ``folder:PATH``; default the dataset named in
            the model's spec (what it was trained on).
        split: ``val`` (the seeded hold-out split training used; default), ``test`` (the official test set of
            cifar10 / fashion-mnist), ``train`` (the rest), or ``all``.
        seed, val_fraction, subset: the split parameters; default those recorded by the training run.
        data_root: where cifar10 / fashion-mnist live; download: allow downloading them.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``mps``.
        png: also write the confusion matrix as a PNG here.
        trust: allow a model file whose spec names a user class (``package.module:Class``) to import it.

    Returns:
        An :class:`EvalReport`.

    Raises:
        UnsafeFileError: the model file can run code (scan verdict ``dangerous``).
        UsageError: unknown dataset or split, no dataset given or recorded.
        CompatibilityError: the dataset has classes the model was not trained on.
    """
    import torch

    from torchkeep._preprocess import transform_for
    from torchkeep.data import TransformedSubset

    t0 = time.perf_counter()
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}", fix="use one of: " + ", ".join(SPLITS))
    model, spec, label = open_model(model_or_path, trust=trust, device=device, in_memory_label="<in-memory model>")
    chosen = _pick_split(spec, data, split, seed, val_fraction, subset, data_root, download)
    src = chosen.src
    notes = [f"skipped {len(src.skipped)} unreadable files"] if src.skipped else []
    model_names = list(spec.class_names or src.classes)
    mapping = _class_map(model_names, list(src.classes), label, chosen.data)
    if mapping != list(range(len(src.classes))):
        notes.append("dataset classes were matched to the model's classes by name")
    ds = TransformedSubset(src, chosen.indices, transform_for(spec, train=False))
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    lut = torch.tensor(mapping, dtype=torch.int64)
    y_true, y_pred, loss_sum = _predict_all(model, loader, lut, len(model_names), label)
    per_class, macro_f1, confusion = _class_metrics(y_true.numpy(), y_pred.numpy(), model_names)
    n_images = len(chosen.indices)
    accuracy = sum(confusion[i][i] for i in range(len(confusion))) / n_images
    png_path: Path | None = None
    if png is not None:
        png_path = plot_confusion(
            confusion, model_names, Path(os.fspath(png)),
            title=f"{Path(label).name} on {chosen.data} ({split}): accuracy {100 * accuracy:.2f}%",
        )
    return EvalReport(
        model=label,
        data=chosen.data,
        split=split,
        images=n_images,
        accuracy=accuracy,
        loss=loss_sum / n_images,
        classes=model_names,
        per_class=per_class,
        macro_f1=macro_f1,
        confusion=confusion,
        png=png_path,
        seed=chosen.seed,
        val_fraction=chosen.val_fraction,
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
