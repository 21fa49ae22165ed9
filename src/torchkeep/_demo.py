"""The README's main command: train, evaluate and predict on the embedded digits, end to end.

``run_demo(out)`` trains the seeds' CIFAR-10 CNN (1 input channel, 8x8) on scikit-learn's digits with the
default settings, evaluates the best model on the held-out split, writes held-out digits as PNG files
(grayscale, RGB and RGBA, at different sizes, like a user's own pictures) and classifies them with
``torchkeep.predict``, then saves the model in every format (``torchkeep._tour``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._atomic import atomic_path
from torchkeep._evaluate import evaluate
from torchkeep._modelfile import load
from torchkeep._predict import predict
from torchkeep._tour import formats_tour

if TYPE_CHECKING:
    from torchkeep.training._progress import TrainProgress

__all__ = ["DemoPrediction", "DemoResult", "run_demo"]


@dataclass
class DemoPrediction:
    """One held-out digit PNG and what the model said about it."""

    file: Path
    mode: str
    size: tuple[int, int]
    true: str
    predicted: str | None
    probability: float | None
    error: str | None = None

    @property
    def correct(self) -> bool:
        return self.predicted == self.true


@dataclass
class DemoResult:
    """What the demo produced: the training run, its evaluation, the predictions and the formats tour."""

    out_dir: Path
    train: Any
    eval: Any
    predictions: list[DemoPrediction]
    tour: Any | None
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def model_file(self) -> Path:
        return Path(self.train.best_path)


def write_heldout_pngs(out_dir: Path, val_indices: list[int], per_mode: int = 3) -> list[tuple[Path, str, str]]:
    """Write held-out digits as PNGs: 8x8 grayscale, 32x32 RGB, 64x64 RGBA (like a photo with alpha).

    Returns:
        ``(path, PIL mode, true class name)`` per file.
    """
    from PIL import Image

    from torchkeep.data import digits_images

    images, labels = digits_images()
    variants = (("L", 8), ("RGB", 32), ("RGBA", 64))
    files: list[tuple[Path, str, str]] = []
    # spread over the held-out split, a different digit for each file where possible
    picks: list[int] = []
    seen: set[int] = set()
    for i in val_indices:
        if int(labels[i]) not in seen:
            picks.append(i)
            seen.add(int(labels[i]))
        if len(picks) == per_mode * len(variants):
            break
    for k, idx in enumerate(picks):
        mode, size = variants[k % len(variants)]
        img = Image.fromarray(images[idx], mode="L")
        if size != 8:
            img = img.resize((size, size), Image.Resampling.NEAREST)
        if mode == "RGB":
            img = img.convert("RGB")
        elif mode == "RGBA":
            img = img.convert("RGBA")
            img.putalpha(255)
        label = str(int(labels[idx]))
        path = out_dir / f"digit{k:02d}-true{label}-{mode.lower()}-{size}px.png"
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
        files.append((path, mode, label))
    return files


def run_demo(
    out: str | os.PathLike[str] = "torchkeep-demo",
    *,
    epochs: int | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Train, evaluate, predict and tour the model file formats on the embedded digits.

    Args:
        out: demo directory (``run/`` holds the training run, ``pngs/`` the held-out digits,
            ``formats/`` the model in every format).
        epochs: override the default number of epochs (shorter demo, tests).
        progress: called with the training run's progress reports (``TrainConfig.progress``; the CLI passes
            ``torchkeep train``'s bars).
        log: called with a line of text at each step (the CLI prints it).

    Returns:
        A :class:`DemoResult`.
    """
    from PIL import Image

    from torchkeep.data import split_indices
    from torchkeep.training import TrainConfig, train

    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    out_dir = Path(os.fspath(out))
    notes: list[str] = []

    say("1/4 train cifar10_cnn on the embedded digits (1,797 8x8 images), default settings")
    result = train(TrainConfig(arch="cifar10_cnn", data="digits", out=out_dir / "run", epochs=epochs,
                               overwrite=True, progress=progress))

    say("2/4 evaluate the best model on the held-out validation split")
    report = evaluate(result.best_path, "digits", png=out_dir / "run" / "eval-confusion.png")

    say("3/4 write held-out digits as PNG files (grayscale, RGB, RGBA) and predict them")
    # the very split training held out (the evaluation reports the seed and fraction it used)
    _, val_idx = split_indices(result.train_size + result.val_size, report.val_fraction, report.seed)
    files = write_heldout_pngs(out_dir / "pngs", val_idx)
    predictions: list[DemoPrediction] = []
    preds = predict(result.best_path, [str(p) for p, _, _ in files], topk=1, device="cpu")
    for (path, mode, true), p in zip(files, preds):
        with Image.open(path) as im:
            size = im.size
        predictions.append(DemoPrediction(path, mode, size, true, p.label, p.probability, p.error))

    say("4/4 save the model in every format and inspect each")
    tour = formats_tour(load(result.best_path, device="cpu"), out_dir / "formats")
    return DemoResult(out_dir, result, report, predictions, tour, time.perf_counter() - t0, notes)
