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

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchkeep._candidate import Appended, Candidate, Reshaped, compare
from torchkeep._keys import KNOWN_PREFIX_SEGMENTS, prefix_candidates
from torchkeep._layers import Layer, Shape, layers_of, skeleton_of
from torchkeep._read import read_structure
from torchkeep._spec import HeadRecipe
from torchkeep._weights import find_weights, find_weights_in_object
from torchkeep.errors import InputError, UsageError
from torchkeep.models._signatures import Signature, encode, load_signatures, names_digest, similarity, sketch

__all__ = ["Identification", "head_moves", "identify", "rank"]

#: up to this many signatures, a file no architecture has the very names of is compared with all of them;
#: beyond (timm installed), with the SHORTLIST whose names it shares most (estimated from MinHash sketches)
FULL_SCAN = 200
SHORTLIST = 60
#: names listed per difference kind in ``candidates`` (the best match lists all)
CANDIDATE_LIST_LIMIT = 20


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
        tensors, loc = find_weights_in_object(src, key)
        if tensors:
            return ({n: tuple(t.shape) for n, t in tensors.items()}, Counter(_dtype_name(t) for t in tensors.values()),
                    loc.key if loc is not None else "", None, True)
    raise UsageError(f"cannot identify a {type(src).__name__}: it holds no tensors",
                     fix="pass a file path, a state_dict, a checkpoint dict or an nn.Module")


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
    cand = compare(sig, view[1], view[2], view[0])
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
    cands, tie = rank(_candidates(load_signatures(architectures), files, top))
    best = cands[0] if cands else None
    ident = _identification(best, tie, cands[: max(top, len(tie))], path, location, len(files), sorted(dtypes))
    named = ident.architecture is not None
    if best is not None and named and best.match == "close" and best.head_path:
        _custom_head(ident, best, files)
    notes = _fit_notes(best, named)
    if not named or ident.match != "exact":
        ident.layers = layers_of(files, ordered)
        if not ordered:
            notes.append("the file keeps no module order (safetensors sorts its keys): layers are in name order")
        if not named and not tie:
            ident.skeleton = skeleton_of(ident.layers, os.path.basename(path) if path else "the weights")
    if ident.ignored:
        notes.append(f"{len(ident.ignored)} tensor(s) outside the wrapper prefix {ident.prefix!r} are not the model's "
                     f"and are left aside: {', '.join(ident.ignored[:5])}{' …' if len(ident.ignored) > 5 else ''}")
    if renamed and named:
        ident.renamed = renamed
        notes.append(f"{len(renamed)} keys in the layout of old PyTorch DenseNet files (denselayer1.norm.1.weight) "
                     "read as torchvision names them (denselayer1.norm1.weight), as torchvision does when loading")
    notes += _channel_notes(ident.reshaped)
    ident.notes = notes + ident.notes
    return ident


def _identification(best: Candidate | None, tie: list[str], listed: list[Candidate], path: str | None,
                    location: str, tensors: int, dtypes: list[str]) -> Identification:
    """The result the best candidate gives: its match when it fits, its architecture only when no other
    architecture ties with it."""
    fit = best if best is not None and best.match != "none" else None
    named = fit if not tie else None
    return Identification(
        path=path,
        architecture=named.architecture if named else None,
        arch_kwargs=dict(named.arch_kwargs) if named else {},
        source=named.source if named else None,
        num_classes=fit.num_classes if fit else None,
        in_channels=named.in_channels if named else None,
        input_size=named.input_size if named else None,
        head=named.head if named else None,
        head_path=named.head_path if named else None,
        appended=named.appended if named else None,
        weights_location=location,
        prefix=fit.prefix if fit else "",
        match=best.match if best else "none",
        confidence=best.confidence if best else 0.0,
        missing=fit.missing if fit else [],
        unexpected=fit.unexpected if fit else [],
        reshaped=fit.reshaped if fit else [],
        tie=tie,
        candidates=[_short(c) for c in listed],
        tensors=tensors,
        dtypes=dtypes,
        ignored=fit.ignored if fit else [],
    )


def _fit_notes(best: Candidate | None, named: bool) -> list[str]:
    """What the weights do not say about the best candidate: absent BatchNorm counters, assumed input sizes,
    an activation before an appended head."""
    if best is None or best.match == "none":
        return []
    notes = []
    if best._absent_counters:
        notes.append(f"{best._absent_counters} BatchNorm num_batches_tracked buffer(s) are absent (saved by "
                     "PyTorch before 0.4.1 or left out): they load as 0")
    if named:
        notes += best.assumed
        if best.appended is not None:
            notes.append(f"{best.appended.path} (Linear {best.appended.in_features}→{best.appended.out_features}) "
                         f"follows the original head {best.appended.base_head}: whether an activation sits between "
                         "them is not in the weights (torchkeep appends it directly)")
    return notes


def _channel_notes(reshaped: list[Reshaped]) -> list[str]:
    """A first convolution changed for another number of input channels than RGB's 3."""
    return [f"{r.name} takes {r.shape[1]} input channel(s) instead of 3: the first layer was changed "
            "(for grayscale or multispectral input); torchkeep builds torchvision models for RGB, "
            "so load the weights into your own model (torchkeep.load_into)"
            for r in reshaped
            if len(r.shape) == 4 and r.expected[1] == 3 and r.shape[:1] + r.shape[2:] == r.expected[:1] + r.expected[2:]]


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
