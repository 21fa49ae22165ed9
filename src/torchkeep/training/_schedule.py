"""The learning-rate schedule of a run, as segments of epochs.

A fresh run is one segment over all its epochs: ``cosine`` goes from the learning rate to 0 at its end,
``step`` divides it by 10 every third of it, ``none`` keeps it. A run stopped before the end of its
schedule (Ctrl-C, ``on_epoch_end``) and resumed with another ``--epochs`` has its last segment stretched (or
shortened) to the new total. A run that *finished* its schedule ends at learning rate 0 (cosine): raising
``--epochs`` then adds a new segment over the added epochs, a warm restart (SGDR) from the run's learning
rate, or from ``--lr`` / ``--scheduler`` given on resume.

The learning rate of an epoch is computed from the segments in closed form (no recurrence), so a resumed
run sets exactly the values an uninterrupted one did. The segments are stored in ``checkpoint.pt`` as plain
lists (``weights_only=True`` reads them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Segment", "extend", "from_checkpoint", "lr_at", "to_checkpoint"]


@dataclass
class Segment:
    """Epochs ``start`` (0-based, included) to ``end`` (excluded), from learning rate ``lr`` by ``kind``."""

    start: int
    end: int
    lr: float
    kind: str  # "cosine" | "step" | "none"


def lr_at(segments: list[Segment], epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based: the number of epochs done before it)."""
    seg = next((s for s in segments if s.start <= epoch < s.end), segments[-1])
    t, n = epoch - seg.start, max(seg.end - seg.start, 1)
    if seg.kind == "cosine":
        return seg.lr * (1 + math.cos(math.pi * t / n)) / 2
    if seg.kind == "step":
        return seg.lr * 0.1 ** (t // max(1, math.ceil(n / 3)))
    return seg.lr


def extend(
    segments: list[Segment], done: int, total: int, lr: float, kind: str
) -> tuple[list[Segment], str | None]:
    """The segments for ``total`` epochs of a run that has done ``done``; and a note when that changed them.

    Args:
        segments: the run's segments so far.
        done: epochs completed.
        total: the new ``--epochs``.
        lr: learning rate for a new segment (the run's, or ``--lr`` given on resume).
        kind: scheduler of a new segment (the run's, or ``--scheduler`` given on resume).
    """
    last = segments[-1]
    if total <= done or total == last.end:
        return segments, None
    if done < last.end:  # the schedule was not finished: it now ends at the new total
        return [*segments[:-1], Segment(last.start, total, last.lr, last.kind)], (
            f"the {last.kind} schedule of epochs {last.start + 1}-{last.end} now ends at epoch {total}"
        )
    new = Segment(done, total, lr, kind)
    return [*segments, new], (
        f"epochs {done + 1}-{total}: a new {kind} segment of the schedule from lr {lr:g} (warm restart; "
        f"the first {done} epochs finished theirs)"
    )


def to_checkpoint(segments: list[Segment]) -> dict[str, Any]:
    """Plain data for ``checkpoint.pt``."""
    return {"segments": [[s.start, s.end, float(s.lr), s.kind] for s in segments]}


def from_checkpoint(state: dict[str, Any] | None, config: dict[str, Any], lr: float, kind: str) -> list[Segment]:
    """The segments a checkpoint records; a checkpoint written before segments existed (it holds a torch
    scheduler's ``state_dict``) is one segment over the epochs its run was configured with."""
    if state and "segments" in state:
        return [Segment(int(a), int(b), float(r), str(k)) for a, b, r, k in state["segments"]]
    base = (state or {}).get("base_lrs") or [config.get("lr") or lr]
    return [Segment(0, int(config.get("epochs") or 1), float(base[0]), str(config.get("scheduler") or kind))]
