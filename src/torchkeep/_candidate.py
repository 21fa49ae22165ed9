"""One architecture's signature compared with the names and shapes of a file: a :class:`Candidate`.

The file's tensors are matched by name with the signature (:mod:`torchkeep.models._signatures`); the symbolic
dimensions (``N`` classes, ``C`` input channels, ``S`` a size that follows the input size) are bound by vote,
the input size solved from the ``S`` dims, and a classifier layer added after the original head recognised as
an appended head. :mod:`torchkeep._identify` ranks the candidates.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchkeep._layers import Shape
from torchkeep.models._signatures import Dim, Signature, decode

__all__ = ["CLOSE_CONFIDENCE", "Appended", "Candidate", "Reshaped", "compare"]

#: a best candidate explaining less than this share of the tensors is not named ("not a known architecture")
CLOSE_CONFIDENCE = 0.8


@dataclass
class Reshaped:
    """A tensor whose name fits but whose shape does not: ``shape`` in the file, ``expected`` by the architecture
    (``N`` classes, ``C`` input channels, ``S`` a size that follows the input size)."""

    name: str
    shape: list[int]
    expected: list[Dim]


@dataclass
class Appended:
    """A layer added after the architecture's own head (``vgg.classifier.add_module("add_linear", Linear(1000, 10))``).

    Attributes:
        path: its module path in the file (``classifier.add_linear``, ``fc.1``).
        in_features / out_features: its sizes (``in_features`` is the original head's classes).
        weight / bias: shapes of its tensors (``bias`` None when it has none).
        base_head: the original head's module path in the file (``fc``, or ``fc.0`` when the head was wrapped).
    """

    path: str
    in_features: int
    out_features: int
    weight: list[int]
    bias: list[int] | None
    base_head: str


@dataclass
class Candidate:
    """One architecture compared with the weights."""

    architecture: str
    arch_kwargs: dict[str, Any]
    source: str
    num_classes: int | None
    match: str  # exact | close | none
    differences: int
    confidence: float
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[Reshaped] = field(default_factory=list)
    head: str | None = None  # original | replaced | appended (| custom, on an Identification)
    head_path: str | None = None
    appended: Appended | None = None
    prefix: str = ""
    in_channels: int | None = None
    input_size: list[int] | None = None
    assumed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    _explained: int = 0
    _absent_counters: int = 0



def _fits(shape: Shape, expected: tuple[Dim, ...], bind: Mapping[str, int]) -> bool:
    if len(shape) != len(expected):
        return False
    for d, e in zip(shape, expected):
        if isinstance(e, int):
            if d != e:
                return False
        elif e in bind and d != bind[e]:
            return False
    return True


def _solve_size(sig: Signature, files: Mapping[str, Shape], c: int | None
                ) -> tuple[dict[str, Any], int | None, list[int] | None, list[str], str | None]:
    """Constructor arguments, input channels and input size that give the free ``S`` dims of the file.

    Returns (kwargs, in_channels, input_size, assumptions, the name of a tensor no size explains)."""
    free = [(n, files[n], decode(sig.table[n])) for n in sig.names if n in files and "S" in sig.table[n]
            and len(files[n]) == len(decode(sig.table[n]))]
    if not free or sig.size is None:
        return {}, c, None, [], None
    name, shape, expected = free[0]
    value = next(d for d, e in zip(shape, expected) if e == "S")
    kind = sig.size["kind"]
    if value < 2 or (c is not None and c < 1):  # no input gives an empty layer
        return {}, c, None, [], name
    if kind == "vit":  # pos_embedding [1, (size/patch)^2 + 1, D]
        side = math.isqrt(value - 1)
        if side * side != value - 1:
            return {}, c, None, [], name
        size = side * int(sig.size["patch"])
        return {"image_size": size}, c, [size, size], [], None
    if kind == "flat":  # Linear(per_cell * (H // cell) * (W // cell), ...)
        cells, rest = divmod(value, int(sig.size["per_cell"]))
        if rest or cells < 1:
            return {}, c, None, [], name
        a = _near_square(cells)
        cell = int(sig.size["cell"])
        hw = [cell * a, cell * (cells // a)]
        note = [f"input size {hw[0]}x{hw[1]} assumed: the weights fit any H, W with (H//{cell})*(W//{cell}) = {cells}"
                f"{f' ({hw[0]}..{hw[0] + cell - 1} square)' if a * a == cells else ''}"]
        return {}, c, hw, note, None
    if kind == "pixels":  # Linear(C * H * W, ...): channels and size share one number
        for ch in ([c] if c is not None else [1, 3]):
            side = math.isqrt(value // ch) if value % ch == 0 else 0
            if side * side * ch == value:
                return {}, ch, [side, side], [f"{ch} input channel(s) of {side}x{side} (the weights only say "
                                              f"C*H*W = {value})"], None
        ch = c if c is not None else 1
        return {}, ch, [1, value // ch], [f"{ch} input channel(s) of 1x{value // ch} (C*H*W = {value})"], None
    return {}, c, None, [], name


def _near_square(n: int) -> int:
    a = math.isqrt(n)
    while n % a:
        a -= 1
    return a


def compare(sig: Signature, files: Mapping[str, Shape], encoded: Mapping[str, str], prefix: str) -> Candidate:
    """``sig`` compared with the file's ``files`` (name -> shape; ``encoded``: the shapes as signatures store
    them), read under the wrapper ``prefix`` that was stripped from the names."""
    table = sig.table
    common = [n for n in files if n in table]
    unexpected = [n for n in files if n not in table]
    missing = [n for n in sig.names if n not in files]
    counters = [n for n in missing if n.endswith(".num_batches_tracked")]
    if counters:  # files written before PyTorch 0.4.1 have none; BatchNorm loads them as 0
        missing = [n for n in missing if not n.endswith(".num_batches_tracked")]
    # most shapes are plain numbers and compare as strings; only the symbolic ones (head, stem) are parsed
    differ = [n for n in common if encoded[n] != table[n]]
    symbolic = {n: decode(table[n]) for n in differ if not table[n].replace(",", "").isdigit()}
    bind = _bind(sig, files, symbolic)
    reshaped = [Reshaped(n, list(files[n]), list(symbolic.get(n) or decode(table[n]))) for n in differ
                if n not in symbolic or not _fits(files[n], symbolic[n], bind)]
    kwargs, channels, size, assumed, bad = _solve_size(sig, files, bind.get("C"))
    if bad is not None and all(r.name != bad for r in reshaped):
        reshaped.append(Reshaped(bad, list(files[bad]), list(decode(table[bad]))))
    cand = Candidate(
        architecture=sig.arch, arch_kwargs={**sig.kwargs, **kwargs}, source=sig.source, num_classes=bind.get("N"),
        match="none", differences=0, confidence=0.0, missing=missing, unexpected=unexpected, reshaped=reshaped,
        head_path=sig.head, prefix=prefix, in_channels=channels if channels is not None else sig.in_channels,
        input_size=size, assumed=assumed,
    )
    cand._explained = len(common) - len(reshaped)
    cand._absent_counters = len(counters)
    # Linear(512, 256) + Linear(256, 5) in place of fc is a new head of several layers (with activations
    # between them that weights do not show), not the original head with a layer appended: the original
    # head keeps its classes
    if not missing and not reshaped and unexpected and sig.head and bind.get("N", sig.num_classes) == sig.num_classes:
        _appended(cand, sig.head, files, bind.get("N"))
    elif sig.head and f"{sig.head}.weight" in missing and f"{sig.head}.0.weight" in files:
        # the head wrapped with the new layer: fc -> Sequential(fc, Linear(1000, N)) keeps fc as fc.0
        inner = f"{sig.head}.0."

        def unwrap(n: str) -> str:
            return f"{sig.head}.{n[len(inner):]}" if n.startswith(inner) else n

        trial = compare(sig, {unwrap(n): v for n, v in files.items()}, {unwrap(n): v for n, v in encoded.items()},
                         prefix)
        if trial.appended is not None:
            trial.appended.base_head = f"{sig.head}.0"
            cand = trial
    _score(cand, sig, len(files))
    return cand


def _bind(sig: Signature, files: Mapping[str, Shape], symbolic: Mapping[str, tuple[Dim, ...]]) -> dict[str, int]:
    """The value of each symbol (``N``, ``C``) most of the file's symbolic dims agree on."""
    votes: dict[str, Counter[int]] = {"N": Counter(), "C": Counter()}
    for n, exp in symbolic.items():
        shape = files[n]
        # the head decides the class count (an Inception whose fc was replaced but not its AuxLogits.fc)
        weight = 1000 if sig.head and n.startswith(sig.head + ".") else 1
        if len(shape) == len(exp):
            for d, e in zip(shape, exp):
                if e in votes:
                    votes[e][d] += weight  # type: ignore[index]
    return {s: v.most_common(1)[0][0] for s, v in votes.items() if v}


def _score(cand: Candidate, sig: Signature, n_files: int) -> None:
    """The head kind, class count, differences, confidence and match of a compared candidate."""
    if cand.num_classes is None and cand.appended is None:
        cand.num_classes = sig.num_classes if not any("N" in s for s in sig.shapes) else None
    if cand.appended is not None:
        cand.head = "appended"
        cand.num_classes = cand.appended.out_features
    elif cand.num_classes is not None and sig.head:
        cand.head = "original" if cand.num_classes == sig.num_classes else "replaced"
    cand.differences = len(cand.missing) + len(cand.unexpected) + len(cand.reshaped)
    total = n_files + len(cand.missing)
    cand.confidence = round(cand._explained / total, 4) if total else 0.0
    cand.match = "exact" if cand.differences == 0 else ("close" if cand.confidence >= CLOSE_CONFIDENCE else "none")


def _appended(cand: Candidate, head: str, files: Mapping[str, Shape], n: int | None) -> None:
    """The unexpected tensors are one Linear(N, M) beside or inside the head: an appended head."""
    modules: dict[str, dict[str, Shape]] = {}
    for name in cand.unexpected:
        path, _, leaf = name.rpartition(".")
        modules.setdefault(path, {})[leaf] = files[name]
    if len(modules) != 1:
        return
    (path, leaves), = modules.items()
    w, b = leaves.get("weight"), leaves.get("bias")
    if w is None or len(w) != 2 or set(leaves) - {"weight", "bias"} or (b is not None and b != w[:1]):
        return
    if n is not None and w[1] != n:
        return
    parent = head.rpartition(".")[0]
    if path.rpartition(".")[0] != parent and not path.startswith(head + "."):
        return
    cand.appended = Appended(path, w[1], w[0], list(w), list(b) if b is not None else None, head)
    cand._explained += len(leaves)
    cand.unexpected = []
