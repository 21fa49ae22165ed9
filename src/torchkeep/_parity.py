"""The parity check: an export run side by side with its reference on real inputs.

``sample_inputs`` builds the inputs (image files, or scikit-learn's bundled photos and crops of them, put
through the model's own preprocessing); ``parity`` compares a runner's logits with the reference's: the
largest absolute difference (relative to the logits' scale), top-1 and top-k agreement, near-ties.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torchkeep._inputs import collect_inputs
from torchkeep._runners import Runner
from torchkeep._spec import ModelSpec
from torchkeep.errors import InputError, TorchkeepError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep stays cheap
    import torch

__all__ = ["TOLERANCE_FP16", "TOLERANCE_FP32", "ParityReport", "parity", "sample_inputs"]

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
    rel = (
        tolerance
        if tolerance is not None
        else (TOLERANCE_FP16 if runner.dtype == "float16" else TOLERANCE_FP32)
    )
    scale = max(1.0, float(reference.abs().max()))
    tol = rel * scale
    sizes = list(batch_sizes or [x.shape[0]])
    max_abs, out = _worst(reference, runner, x, sizes)
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


def _worst(reference: torch.Tensor, runner: Runner, x: torch.Tensor, sizes: list[int]) -> tuple[float, torch.Tensor]:
    """``x`` run through ``runner`` at each batch size: the largest absolute difference from ``reference``
    (inf for NaN) and the logits that gave it."""
    import torch

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
    return max_abs, out
