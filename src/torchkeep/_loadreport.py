"""``LoadReport``: what ``load_into`` did (or would do), and the one-line verdict people read.

The report is filled by the pairing (:mod:`torchkeep._pairing`: which source tensor goes where) and the
engine (:mod:`torchkeep._match`: counts, refusals, the copy); this module only describes it. It imports no
torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from torchkeep._keys import collapse_keys

__all__ = ["DtypeChange", "LoadReport", "ShapeMismatch", "not_the_head", "percent", "problems", "verdict"]


@dataclass
class ShapeMismatch:
    """A tensor whose name matched but whose shape differs (typically a new classification head)."""

    key: str
    source_key: str
    source_shape: list[int]
    target_shape: list[int]


@dataclass
class DtypeChange:
    """Tensors converted from the source dtype to the model's dtype while copying."""

    source_dtype: str
    target_dtype: str
    count: int
    keys: list[str]


@dataclass
class LoadReport:
    """What ``load_into`` did (or, with ``dry_run``, would do).

    Keys in ``matched``, ``missing`` and ``shape_mismatched[*].key`` are the model's names; keys in
    ``unexpected`` and ``renamed`` (its keys) are the source's names as found in the file.
    """

    source: str
    target: str
    matched: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[ShapeMismatch] = field(default_factory=list)
    structural_mismatches: list[str] = field(default_factory=list)
    dtype_converted: list[DtypeChange] = field(default_factory=list)
    non_tensor: list[str] = field(default_factory=list)
    unwrapped: str | None = None
    prefix_stripped: str = ""
    prefix_added: str = ""
    matched_by_order: int = 0
    order_pairing: str = ""  # "", "leftovers" (names differ only there) or "whole sequence" (names ignored)
    tensors_loaded: int = 0
    tensors_expected: int = 0
    params_loaded: int = 0
    params_expected: int = 0
    min_match: float = 0.0
    applied: bool = False
    notes: list[str] = field(default_factory=list)
    verdict: str = ""

    @property
    def fraction(self) -> float:
        """Share of the model's parameters (elements) that receive source weights, in [0, 1]."""
        if self.params_expected:
            return self.params_loaded / self.params_expected
        return self.tensors_loaded / self.tensors_expected if self.tensors_expected else 1.0

    @property
    def complete(self) -> bool:
        """True when every tensor of the model was loaded and nothing in the source was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def collapsed(self, which: str) -> list[str]:
        """One of ``matched``/``missing``/``unexpected``/``shape_mismatched`` with repeated blocks collapsed."""
        if which == "shape_mismatched":
            return collapse_keys([m.key for m in self.shape_mismatched])
        if which == "renamed":
            return [f"{a} -> {b}" for a, b in self.renamed.items()]
        return collapse_keys(getattr(self, which))

    def summary(self) -> dict[str, Any]:
        """A compact summary (counts, prefixes, verdict): what goes into a model file's provenance."""
        return {
            "tensors_loaded": self.tensors_loaded,
            "tensors_expected": self.tensors_expected,
            "params_loaded": self.params_loaded,
            "params_expected": self.params_expected,
            "missing": self.collapsed("missing"),
            "unexpected": self.collapsed("unexpected"),
            "shape_mismatched": self.collapsed("shape_mismatched"),
            "renamed": len(self.renamed),
            "matched_by_order": self.matched_by_order,
            "order_pairing": self.order_pairing,
            "unwrapped": self.unwrapped,
            "prefix_stripped": self.prefix_stripped,
            "prefix_added": self.prefix_added,
            "verdict": self.verdict,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every field, the collapsed views and the loaded fraction."""
        d = asdict(self)
        d["fraction"] = round(self.fraction, 6)
        d["complete"] = self.complete
        d["collapsed"] = {
            k: self.collapsed(k) for k in ("matched", "missing", "unexpected", "shape_mismatched")
        }
        return d


def not_the_head(mismatches: list[ShapeMismatch]) -> list[str]:
    """Mismatched keys that a new classifier head does not explain.

    A head with another number of classes differs only in its first dimension, and always by the same
    pair (1000 -> 10), the pair of the last mismatch in model order (the head comes last; auxiliary heads
    share it). Any other difference means the weights come from another architecture.
    """
    if not mismatches:
        return []
    last = mismatches[-1]
    head_pair = (last.source_shape[:1], last.target_shape[:1])

    def head_like(m: ShapeMismatch) -> bool:
        return (
            bool(m.target_shape)
            and m.source_shape[1:] == m.target_shape[1:]
            and (m.source_shape[:1], m.target_shape[:1]) == head_pair
        )

    return [m.key for m in mismatches if not head_like(m)]


def problems(r: LoadReport) -> str:
    """What keeps a load from being complete, in one clause per kind (for refusal messages)."""
    parts = []
    if r.missing:
        parts.append(f"{len(r.missing)} missing ({', '.join(r.collapsed('missing')[:2])})")
    if r.unexpected:
        parts.append(f"{len(r.unexpected)} unexpected ({', '.join(r.collapsed('unexpected')[:2])})")
    if r.shape_mismatched:
        m = r.shape_mismatched[0]
        parts.append(
            f"{len(r.shape_mismatched)} shape-mismatched ({m.key}: {m.source_shape} vs {m.target_shape})"
        )
    return "; ".join(parts) or "nothing wrong"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def percent(fraction: float) -> str:
    """``0.4996`` -> ``"49.9%"``."""
    # floor, so that 99.96% never reads as "100%" (nor 49.96% as "50%") when something was left out
    return f"{math.floor(fraction * 1000) / 10:.1f}%".replace(".0%", "%")


def verdict(r: LoadReport, allow_partial: bool = False) -> str:
    """The report in one line: OK / PARTIAL / REFUSED, counts, and what was done to make keys match."""
    pct = percent(r.fraction)
    loaded, expected = _count(r.params_loaded), _count(r.params_expected)
    if loaded == expected and r.params_loaded != r.params_expected:  # "11.18M/11.18M" would hide the gap
        loaded, expected = f"{r.params_loaded:,}", f"{r.params_expected:,}"
    head = f"{r.tensors_loaded}/{r.tensors_expected} tensors, {loaded}/{expected} parameters ({pct})"
    extra: list[str] = []
    if r.unwrapped:
        extra.append(f"from checkpoint[{r.unwrapped!r}]")
    if r.prefix_stripped:
        extra.append(f"stripped {r.prefix_stripped!r}")
    if r.prefix_added:
        extra.append(f"added {r.prefix_added!r}")
    if r.renamed and len(r.renamed) > r.matched_by_order:
        extra.append(f"{len(r.renamed) - r.matched_by_order} renamed")
    if r.matched_by_order:
        extra.append(f"{r.matched_by_order} matched by order")
    if r.shape_mismatched:
        extra.append(f"skipped {', '.join(r.collapsed('shape_mismatched')[:3])} (shape differs: left as initialised)")
    if r.structural_mismatches:
        extra.append(
            f"{len(r.structural_mismatches)} shape mismatches inside the network, not just the head: "
            "another architecture?"
        )
    if r.missing:
        extra.append(f"{len(r.missing)} missing")
    if r.unexpected:
        extra.append(f"{len(r.unexpected)} unused")
    tail = f"; {'; '.join(extra)}" if extra else ""
    if r.complete:
        word = "OK: all weights loaded"
    elif r.fraction >= r.min_match:
        word = "PARTIAL"
    elif allow_partial:
        word = f"PARTIAL (below the {r.min_match:.0%} threshold, allowed)"
    else:
        word = "REFUSED"
    return f"{word}: {head}{tail}"
