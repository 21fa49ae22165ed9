"""``identify(path_or_state_dict)``: name the architecture of a weights file from its tensor names and shapes.

No code from the file runs and no tensor bytes are read (:mod:`torchkeep._read` and :mod:`torchkeep._weights`
describe the file). The names and shapes are compared with every architecture's signature
(:mod:`torchkeep.models._signatures`: built on the meta device, cached on disk), after stripping wrapper
prefixes (:mod:`torchkeep._keys`). The number of classes, the input channels and the input size are read off
the dimensions that follow them; a classifier layer added after the original head is recognised as an
appended head. Architectures that explain the file equally well are a tie: none is picked.

For weights of no known architecture, the result lists the layers the weights determine and, for a plain
feed-forward stack, a Python ``nn.Module`` skeleton that loads them with ``strict=True``.
The JSON form (``torchkeep identify --json``) is documented in ``docs/identify.md``.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchkeep._keys import KNOWN_PREFIX_SEGMENTS, prefix_candidates
from torchkeep._read import read_structure
from torchkeep._spec import HeadRecipe
from torchkeep._weights import find_weights
from torchkeep.errors import InputError, UsageError
from torchkeep.models._signatures import (
    Dim,
    Signature,
    decode,
    encode,
    load_signatures,
    names_digest,
    similarity,
    sketch,
)

__all__ = ["Appended", "Candidate", "Identification", "Layer", "Reshaped", "head_moves", "identify", "layers_of", "rank",
           "skeleton_of"]

#: a best candidate explaining less than this share of the tensors is not named ("not a known architecture")
CLOSE_CONFIDENCE = 0.8
#: up to this many signatures, a file no architecture has the very names of is compared with all of them;
#: beyond (timm installed), with the SHORTLIST whose names it shares most (estimated from MinHash sketches)
FULL_SCAN = 200
SHORTLIST = 60
#: names listed per difference kind in ``candidates`` (the best match lists all)
CANDIDATE_LIST_LIMIT = 20

Shape = tuple[int, ...]


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


@dataclass
class Layer:
    """One module the weights determine: ``Linear 784→512``, ``Conv2d 3×3 32→64, groups 32``, ``BatchNorm 64``."""

    name: str
    kind: str
    description: str
    shapes: dict[str, list[int]]


@dataclass
class Identification:
    """What ``torchkeep.identify`` found; every field is in the ``--json`` output (see docs/identify.md)."""

    path: str | None
    architecture: str | None
    arch_kwargs: dict[str, Any]
    source: str | None
    num_classes: int | None
    in_channels: int | None
    input_size: list[int] | None
    head: str | None
    head_path: str | None
    appended: Appended | None
    weights_location: str
    prefix: str
    match: str
    confidence: float
    missing: list[str]
    unexpected: list[str]
    reshaped: list[Reshaped]
    tie: list[str]
    candidates: list[Candidate]
    tensors: int
    dtypes: list[str]
    layers: list[Layer] = field(default_factory=list)
    skeleton: str | None = None
    notes: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.reshaped)

    def summary(self) -> str:
        """One line: ``resnet18, 10 classes, head replaced`` / ``a tie: resnet50 = timm/resnet50`` / ``not a
        known architecture; closest: fashion_mlp (4 differences)``."""
        if self.tie:
            return f"a tie: {' = '.join(self.tie)} (names and shapes are identical; pass the architecture)"
        if self.architecture is None:
            if not self.candidates:
                return "not a known architecture"
            best = self.candidates[0]
            return f"not a known architecture; closest: {best.architecture} ({best.differences} differences)"
        parts = [self.architecture]
        if self.num_classes is not None:
            parts.append(f"{self.num_classes} classes")
        if self.head == "appended" and self.appended is not None:
            parts.append(f"head appended ({self.appended.path}: {self.appended.in_features}→"
                         f"{self.appended.out_features})")
        elif self.head in ("replaced", "original", "custom"):
            parts.append(f"head {self.head}")
        if self.match != "exact":
            parts.append(f"close match ({self.differences} differences)")
        return ", ".join(parts)

    def record(self) -> dict[str, Any]:
        """What a model file built from this identification keeps of it (``spec.extra["identified"]``)."""
        return {"summary": self.summary(), "architecture": self.architecture, "arch_kwargs": self.arch_kwargs,
                "match": self.match, "confidence": self.confidence, "num_classes": self.num_classes,
                "head": self.head, "weights_location": self.weights_location, "prefix": self.prefix,
                "notes": list(self.notes)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (internal fields of candidates left out)."""
        import dataclasses

        def clean(obj: Any) -> Any:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                        if not f.name.startswith("_")}
            if isinstance(obj, list):
                return [clean(v) for v in obj]
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            return obj

        out = clean(self)
        out["summary"] = self.summary()
        out["differences"] = self.differences
        return out


# ------------------------------------------------------------------------------------------ the weights


def _dtype_name(t: Any) -> str:
    return str(getattr(t, "dtype", "")).removeprefix("torch.")


def _shape_of(v: Any) -> Shape | None:
    if isinstance(v, (tuple, list)) and all(isinstance(d, int) for d in v):
        return tuple(v)
    shape = getattr(v, "shape", None)
    if shape is not None and all(isinstance(d, int) for d in shape):
        return tuple(int(d) for d in shape)
    return None


# torchvision's DenseNet weights files keep the layout of old PyTorch ("denselayer1.norm.1.weight"), which
# torchvision renames when it loads them ("denselayer1.norm1.weight"): the same rule as torchvision's densenet.py
_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _legacy_names(files: Mapping[str, Shape]) -> dict[str, str]:
    """Old name -> current name for keys written in a layout the library renames when it loads them."""
    out = {}
    for n in files:
        m = _DENSENET_OLD.match(n)
        if m:
            out[n] = m.group(1) + m.group(2)
    return out


def _read(src: Any, key: str | None) -> tuple[dict[str, Shape], Counter[str], str, str | None, bool]:
    """(name -> shape, dtype counts, weights location, path, whether the order is the module order)."""
    if isinstance(src, (str, os.PathLike)):
        fs = read_structure(src)
        view = find_weights(fs, key)
        shapes = {n: tuple(t.shape) for n, t in view.tensors.items()}
        dtypes = Counter(str(t.dtype) for t in view.tensors.values())
        if not shapes:
            raise InputError("holds no tensors to identify", path=fs.path,
                             fix="`torchkeep inspect` shows what the file holds")
        # safetensors sorts its keys: the module order is lost
        return shapes, dtypes, view.location, os.fspath(fs.path), fs.format != "safetensors"
    if isinstance(src, Mapping) and src and all(_shape_of(v) is not None for v in src.values()):
        return ({str(k): _shape_of(v) for k, v in src.items()},  # type: ignore[misc]
                Counter(_dtype_name(v) or "unknown" for v in src.values()), "", None, True)
    if isinstance(src, Mapping) or type(src).__module__.startswith("torch"):
        from torchkeep._weights import find_weights_in_object

        tensors, loc = find_weights_in_object(src, key)
        if tensors:
            return ({n: tuple(t.shape) for n, t in tensors.items()}, Counter(_dtype_name(t) for t in tensors.values()),
                    loc.key if loc is not None else "", None, True)
    raise UsageError(f"cannot identify a {type(src).__name__}: it holds no tensors",
                     fix="pass a file path, a state_dict, a checkpoint dict or an nn.Module")


# ------------------------------------------------------------------------------------------ matching


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


def _compare(sig: Signature, files: Mapping[str, Shape], encoded: Mapping[str, str], prefix: str) -> Candidate:
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
    votes: dict[str, Counter[int]] = {"N": Counter(), "C": Counter()}
    for n, exp in symbolic.items():
        shape = files[n]
        # the head decides the class count (an Inception whose fc was replaced but not its AuxLogits.fc)
        weight = 1000 if sig.head and n.startswith(sig.head + ".") else 1
        if len(shape) == len(exp):
            for d, e in zip(shape, exp):
                if e in votes:
                    votes[e][d] += weight  # type: ignore[index]
    bind = {s: v.most_common(1)[0][0] for s, v in votes.items() if v}
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

        trial = _compare(sig, {unwrap(n): v for n, v in files.items()}, {unwrap(n): v for n, v in encoded.items()},
                         prefix)
        if trial.appended is not None:
            trial.appended.base_head = f"{sig.head}.0"
            cand = trial
    if cand.num_classes is None and cand.appended is None:
        cand.num_classes = sig.num_classes if not any("N" in s for s in sig.shapes) else None
    if cand.appended is not None:
        cand.head = "appended"
        cand.num_classes = cand.appended.out_features
    elif cand.num_classes is not None and sig.head:
        cand.head = "original" if cand.num_classes == sig.num_classes else "replaced"
    cand.differences = len(cand.missing) + len(cand.unexpected) + len(cand.reshaped)
    total = len(files) + len(cand.missing)
    cand.confidence = round(cand._explained / total, 4) if total else 0.0
    cand.match = "exact" if cand.differences == 0 else ("close" if cand.confidence >= CLOSE_CONFIDENCE else "none")
    return cand


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


View = tuple[str, dict[str, Shape], dict[str, str], list[str]]


def _views(files: Mapping[str, Shape]) -> list[View]:
    """The file's names with each wrapper prefix candidate stripped (and their shapes encoded); for a wrapper's
    own prefix (``model.`` of a Lightning module) also the names under it alone, the others set aside (a loss's
    class weights beside the model)."""
    out: list[View] = []
    for p in sorted(prefix_candidates(files, generic=True), key=len):
        view: dict[str, Shape] = {}
        for n, s in files.items():
            view.setdefault(n[len(p):] if p and n.startswith(p) else n, s)
        out.append((p, view, {n: encode(s) for n, s in view.items()}, []))
        outside = [n for n in files if not n.startswith(p)]
        if p and outside and len(outside) < len(files) and all(seg in KNOWN_PREFIX_SEGMENTS for seg in p.split(".")[:-1]):
            inside = {n[len(p):]: s for n, s in files.items() if n.startswith(p)}
            out.append((p, inside, {n: encode(s) for n, s in inside.items()}, outside))
    return out


def _compare_in(sig: Signature, view: View) -> Candidate:
    cand = _compare(sig, view[1], view[2], view[0])
    cand.ignored = view[3]
    return cand


def _best_per_signature(sigs: Iterable[Signature], files: Mapping[str, Shape]) -> list[Candidate]:
    """Every signature compared with the file, each under the prefix that makes most of its names match."""
    views = _views(files)
    out = []
    for sig in sigs:
        table = sig.table
        best = max(views, key=lambda v: (sum(1 for n in v[1] if n in table), -len(v[1]), -len(v[0])))
        out.append(_compare_in(sig, best))
    return out


def _candidates(sigs: list[Signature], files: Mapping[str, Shape], top: int) -> list[Candidate]:
    """The file compared with the signatures that have its very names (found by digest: most files), and with
    ``top`` neighbours by tensor count for the list of alternatives; with every signature when none has them."""
    views = _views(files)
    by_digest = {names_digest(v[1]): v for v in views}
    hits = [(s, by_digest.get(s.digest) or by_digest[s.digest_nbt]) for s in sigs
            if s.digest in by_digest or s.digest_nbt in by_digest]
    cands = [_compare_in(s, v) for s, v in hits]
    if not any(c.match == "exact" for c in cands):
        if len(sigs) <= FULL_SCAN:
            return _best_per_signature(sigs, files)
        # many signatures (timm's): compare in full those whose names the file shares most, by their sketches
        sketches = [sketch(v[1]) for v in views]
        scored = sorted(sigs, key=lambda s: -max(similarity(s.sketch, k) for k in sketches))
        return _best_per_signature(scored[:SHORTLIST], files)
    seen = {id(s) for s, _ in hits}
    near = sorted((s for s in sigs if id(s) not in seen), key=lambda s: abs(s.n - len(files)))[: max(top, 5) * 4]
    return cands + _best_per_signature(near, files)


# ------------------------------------------------------------------------------------------ unknown weights


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layers_of(files: Mapping[str, Shape], ordered: bool = True) -> list[Layer]:
    """The modules the weights determine, in file order (natural name order when the file keeps none)."""
    modules: dict[str, dict[str, Shape]] = {}
    for name, shape in files.items():
        path, _, leaf = name.rpartition(".")
        modules.setdefault(path, {})[leaf] = shape
    order = list(modules) if ordered else sorted(modules, key=_natural)
    out: list[Layer] = []
    prev_out: int | None = None
    for path in order:
        leaves = modules[path]
        w, b = leaves.get("weight"), leaves.get("bias")
        shapes = {k: list(v) for k, v in leaves.items()}
        bias = "" if b is not None else ", no bias"
        if "running_mean" in leaves or "running_var" in leaves:
            n = (leaves.get("running_mean") or leaves.get("running_var") or (0,))[0]
            out.append(Layer(path, "BatchNorm", f"BatchNorm {n}" + ("" if w is not None else ", not affine"), shapes))
        elif w is not None and len(w) == 2 and b is None and re.search(r"emb", path.rpartition(".")[2], re.I):
            out.append(Layer(path, "Embedding", f"Embedding {w[0]}×{w[1]}", shapes))
        elif w is not None and len(w) == 2:
            out.append(Layer(path, "Linear", f"Linear {w[1]}→{w[0]}{bias}", shapes))
            prev_out = w[0]
        elif w is not None and len(w) in (3, 4, 5):
            per_group = w[1]
            groups = (prev_out // per_group if prev_out and per_group and prev_out != per_group
                      and prev_out % per_group == 0 else 1)
            kernel = "×".join(str(k) for k in w[2:])
            extra = f", groups {groups}" if groups > 1 else ""
            out.append(Layer(path, f"Conv{len(w) - 2}d", f"Conv{len(w) - 2}d {kernel} {per_group * groups}→{w[0]}"
                             f"{extra}{bias}", shapes))
            prev_out = w[0]
        elif w is not None and len(w) == 1 and set(leaves) <= {"weight", "bias"}:
            out.append(Layer(path, "LayerNorm", f"LayerNorm {w[0]} (or GroupNorm: the weights look the same)", shapes))
        else:
            desc = ", ".join(f"{k} {list(v)}" for k, v in leaves.items())
            out.append(Layer(path, "tensors", desc, shapes))
    return out


_STANDARD_LEAVES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _ctor(layer: Layer, prev_kind: str | None) -> str | None:
    s = layer.shapes
    w, has_bias = s.get("weight"), "bias" in s
    nobias = "" if has_bias else ", bias=False"
    if layer.kind == "Linear" and w:
        return f"nn.Linear({w[1]}, {w[0]}{nobias})"
    if layer.kind.startswith("Conv") and w:
        m = re.search(r"(\d+)→", layer.description)
        cin = int(m.group(1)) if m else w[1]
        groups = cin // w[1] if w[1] else 1
        k = w[2] if len(set(w[2:])) == 1 else tuple(w[2:])
        g = f", groups={groups}" if groups > 1 else ""
        return f"nn.{layer.kind}({cin}, {w[0]}, kernel_size={k}{g}{nobias})  # stride, padding: not in the weights"
    if layer.kind == "BatchNorm":
        n = (s.get("running_mean") or s.get("running_var") or [0])[0]
        dim = "1d" if prev_kind in (None, "Linear") else ("3d" if prev_kind == "Conv3d" else
                                                           "1d" if prev_kind == "Conv1d" else "2d")
        affine = "" if w else ", affine=False"
        return f"nn.BatchNorm{dim}({n}{affine})"
    if layer.kind == "LayerNorm" and w:
        return f"nn.LayerNorm({w[0]}{'' if has_bias else ', bias=False'})"
    return None


def skeleton_of(files: Mapping[str, Shape], layers: list[Layer], label: str = "the file") -> str | None:
    """Python source of an ``nn.Module`` whose ``state_dict`` has exactly these names and shapes, when the
    weights are a plain feed-forward stack (top-level layers and ``nn.Sequential`` blocks of them)."""
    if not layers or any(set(ly.shapes) - _STANDARD_LEAVES for ly in layers):
        return None
    # units: top-level layers ("fc1") and Sequential blocks ("features.0"); or one Sequential at the root ("0")
    units: list[tuple[str, dict[int, Layer] | Layer]] = []
    seqs: dict[str, dict[int, Layer]] = {}
    for ly in layers:
        parts = ly.name.split(".")
        if len(parts) == 1 and parts[0].isidentifier():
            units.append((parts[0], ly))
        elif (len(parts) == 2 and parts[0].isidentifier() and parts[1].isdigit()) or (len(parts) == 1 and parts[0].isdigit()):
            owner = parts[0] if len(parts) == 2 else ""
            if owner not in seqs:
                seqs[owner] = {}
                units.append((owner, seqs[owner]))
            seqs[owner][int(parts[-1])] = ly
        else:
            return None
    if "" in seqs and len(units) > 1:
        return None
    prev_kind: list[str | None] = [None]

    def build(ly: Layer) -> str | None:
        c = _ctor(ly, prev_kind[0])
        if c is not None and ly.kind != "BatchNorm" and ly.kind != "LayerNorm":
            prev_kind[0] = ly.kind
        return c

    def seq_lines(block: dict[int, Layer], indent: str) -> list[str] | None:
        lines: list[str] = []
        idx = sorted(block)
        for i in range(idx[-1] + 1):
            if i in block:
                c = build(block[i])
                if c is None:
                    return None
                code, _, comment = c.partition("  # ")
                lines.append(f"{indent}{code},{'  # ' + comment if comment else ''}")
                continue
            j = next((j for j in idx if j > i), None)
            # the last empty slot between a convolution and a Linear flattens (or the Linear would fail)
            flatten = (j is not None and j == i + 1 and block[j].kind == "Linear"
                       and (prev_kind[0] or "").startswith("Conv"))
            what = "nn.Flatten()" if flatten else "nn.Identity()"
            why = ("flattens for the Linear after it (pooling before it? not known from the weights)" if flatten
                   else "an activation, pooling, dropout or flatten? not known from the weights")
            lines.append(f"{indent}{what},  # {i}: holds no weights: {why}")
        return lines

    head = [
        "import torch",
        "from torch import nn",
        "",
        "",
    ]
    doc = (f'    """Rebuilt by `torchkeep identify` from the names and shapes of {label}: it loads them with\n'
           '    strict=True. Activations, pooling, dropout, strides and padding are not stored in weights:\n'
           '    check every line marked with a question mark against the code that trained the model."""')
    if "" in seqs:
        body = seq_lines(seqs[""], "            ")
        if body is None:
            return None
        return "\n".join([*head, "class Net(nn.Sequential):", doc, "", "    def __init__(self):",
                          "        super().__init__(", *body, "        )", ""])
    init = ["    def __init__(self):", "        super().__init__()"]
    forward = ["    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
    last_kind: str | None = None
    for i, (name, unit) in enumerate(units):
        if isinstance(unit, Layer):
            first_kind = unit.kind
            c = build(unit)
            if c is None:
                return None
            init.append(f"        self.{name} = {c}")
        else:
            first_kind = unit[min(unit)].kind
            body = seq_lines(unit, "            ")
            if body is None:
                return None
            init += [f"        self.{name} = nn.Sequential(", *body, "        )"]
        if first_kind == "Linear" and (last_kind or "").startswith("Conv"):
            forward.append("        x = torch.flatten(x, 1)  # pooling before it? not known from the weights")
        elif i and last_kind is not None:
            forward.append("        # an activation here? not known from the weights")
        forward.append(f"        x = self.{name}(x)")
        last_kind = prev_kind[0]
    forward.append("        return x")
    return "\n".join([*head, "class Net(nn.Module):", doc, "", *init, "", *forward, ""])


# ------------------------------------------------------------------------------------------ identify


def identify(
    source: Any,
    *,
    top: int = 5,
    key: str | None = None,
    architectures: Iterable[str] | None = None,
) -> Identification:
    """Name the architecture of a weights file (or state_dict) from its tensor names and shapes alone.

    Args:
        source: a file in any format ``torchkeep inspect`` reads, a state_dict / checkpoint dict (tensors,
            meta tensors, or plain ``{name: shape}``), or an ``nn.Module``.
        top: how many candidates to list.
        key: the checkpoint entry holding the weights, if not the automatic choice.
        architectures: compare with these only (registry names, ``timm/NAME``); default every seed and
            torchvision classifier, and timm's when it is installed.

    Returns:
        An :class:`Identification`: ``architecture`` (None for a tie or an unknown architecture), classes,
        head, how it matched, the candidates, and for unknown weights their layers and a skeleton.

    Raises:
        InputError: the file cannot be read or holds no tensors.
        UsageError: an unknown name in ``architectures``.
    """
    files, dtypes, location, path, ordered = _read(source, key)
    renamed = _legacy_names(files)
    if renamed:
        files = {renamed.get(n, n): s for n, s in files.items()}
    sigs = load_signatures(architectures)
    cands, tie = rank(_candidates(sigs, files, top))
    best = cands[0] if cands else None
    notes: list[str] = []
    named = best is not None and best.match != "none" and not tie
    ident = Identification(
        path=path,
        architecture=best.architecture if named and best else None,
        arch_kwargs=dict(best.arch_kwargs) if named and best else {},
        source=best.source if named and best else None,
        num_classes=best.num_classes if best and best.match != "none" else None,
        in_channels=best.in_channels if named and best else None,
        input_size=best.input_size if named and best else None,
        head=best.head if named and best else None,
        head_path=best.head_path if named and best else None,
        appended=best.appended if named and best else None,
        weights_location=location,
        prefix=best.prefix if best and best.match != "none" else "",
        match=best.match if best else "none",
        confidence=best.confidence if best else 0.0,
        missing=best.missing if best and best.match != "none" else [],
        unexpected=best.unexpected if best and best.match != "none" else [],
        reshaped=best.reshaped if best and best.match != "none" else [],
        tie=tie,
        candidates=[_short(c) for c in cands[: max(top, len(tie))]],
        tensors=len(files),
        dtypes=sorted(dtypes),
    )
    if best is not None and best._absent_counters and best.match != "none":
        notes.append(f"{best._absent_counters} BatchNorm num_batches_tracked buffer(s) are absent (saved by "
                     "PyTorch before 0.4.1 or left out): they load as 0")
    if named and best is not None and best.match == "close" and best.head_path:
        _custom_head(ident, best, files)
    if named and best is not None:
        notes += best.assumed
        if best.appended is not None:
            notes.append(f"{best.appended.path} (Linear {best.appended.in_features}→{best.appended.out_features}) "
                         f"follows the original head {best.appended.base_head}: whether an activation sits between "
                         "them is not in the weights (torchkeep appends it directly)")
    if not named or ident.match != "exact":
        ident.layers = layers_of(files, ordered)
        if not ordered:
            notes.append("the file keeps no module order (safetensors sorts its keys): layers are in name order")
        if not named and not tie:
            label = os.path.basename(path) if path else "the weights"
            ident.skeleton = skeleton_of(files, ident.layers, label)
    if best is not None and best.ignored and best.match != "none":
        ident.ignored = best.ignored
        notes.append(f"{len(best.ignored)} tensor(s) outside the wrapper prefix {best.prefix!r} are not the model's and "
                     f"are left aside: {', '.join(best.ignored[:5])}{' …' if len(best.ignored) > 5 else ''}")
    if renamed and ident.architecture:
        ident.renamed = renamed
        notes.append(f"{len(renamed)} keys in the layout of old PyTorch DenseNet files (denselayer1.norm.1.weight) "
                     "read as torchvision names them (denselayer1.norm1.weight), as torchvision does when loading")
    for r in ident.reshaped:
        if len(r.shape) == 4 and r.expected[1] == 3 and r.shape[:1] + r.shape[2:] == r.expected[:1] + r.expected[2:]:
            notes.append(f"{r.name} takes {r.shape[1]} input channel(s) instead of 3: the first layer was changed "
                         "(for grayscale or multispectral input); torchkeep builds torchvision models for RGB, "
                         "so load the weights into your own model (torchkeep.load_into)")
    ident.notes = notes + ident.notes
    return ident


def head_moves(ident: Identification, head: HeadRecipe | None) -> dict[str, str]:
    """Where the file's head layers go in the model ``build(..., head="append")`` makes: file module path ->
    model module path (``{"classifier.7": "classifier.add_linear"}``, ``{"fc": "fc.0", "fc2": "fc.add_linear"}``);
    empty when nothing moves."""
    if ident.appended is None or head is None or not head.added_path:
        return {}
    base = f"{head.path}.0" if head.wrapped else head.path
    moves = {ident.appended.base_head: base, ident.appended.path: head.added_path}
    return {a: b for a, b in moves.items() if a != b}


def rank(cands: list[Candidate]) -> tuple[list[Candidate], list[str]]:
    """Candidates best first, and the architectures tied for first place (empty when one is better than all
    others, or when none fits): a tie is reported, never broken by a guess."""
    cands = sorted(cands, key=lambda c: (-c.confidence, c.differences, c.architecture, len(c.arch_kwargs)))
    if not cands or cands[0].match == "none":
        return cands, []
    best = cands[0]
    same = [c.architecture for c in cands if (c.differences, c.confidence) == (best.differences, best.confidence)]
    tie = list(dict.fromkeys(same))
    return cands, tie if len(tie) > 1 else []


def _custom_head(ident: Identification, best: Candidate, files: Mapping[str, Shape]) -> None:
    """Every difference is under the head: a head of several layers replaced the original one."""
    hp = best.head_path or ""
    names = [*best.missing, *best.unexpected, *(r.name for r in best.reshaped)]
    if not best.unexpected or not all(n.startswith(hp + ".") for n in names):
        return
    new = {n: files.get(best.prefix + n) or files[n] for n in best.unexpected}
    layers = layers_of(new)
    linears = [ly for ly in layers if ly.kind == "Linear"]
    ident.head = "custom"
    if linears:
        ident.num_classes = linears[-1].shapes["weight"][0]
    ident.notes.append(f"the head {hp} is replaced by other layers ({'; '.join(f'{ly.name}: {ly.description}' for ly in layers)}): "
                       "activations between them are not in the weights, so torchkeep cannot build it")


def _short(c: Candidate) -> Candidate:
    lim = CANDIDATE_LIST_LIMIT
    return Candidate(c.architecture, c.arch_kwargs, c.source, c.num_classes, c.match, c.differences, c.confidence,
                     c.missing[:lim], c.unexpected[:lim], c.reshaped[:lim], c.head, c.head_path, c.appended, c.prefix,
                     c.in_channels, c.input_size, c.assumed, c.ignored[:lim])
