"""Signatures: the tensor names and shapes of every architecture ``build`` knows, for ``torchkeep identify``.

A signature is an architecture's ``state_dict()`` as names and shapes, built on the meta device (no memory,
no initialisation), with the dimensions that follow a constructor argument written as symbols:

- ``"N"``: the number of classes (found by building with :data:`SENTINEL_CLASSES` classes);
- ``"C"``: the input channels (seeds only: torchvision classifiers take RGB);
- ``"S"``: a size that follows the input size (ViT's position embedding, the seeds' flattened features).

Building every torchvision classifier takes seconds, so signatures are cached on disk, one JSON file per
source (``seed`` + ``torchvision``, and ``timm`` when it is installed), keyed by the versions of torch,
torchvision, timm and torchkeep: ``$TORCHKEEP_CACHE_DIR`` or ``$XDG_CACHE_HOME/torchkeep`` or
``~/.cache/torchkeep``. Reading a cached file imports no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._atomic import atomic_write_bytes
from torchkeep._version import __version__

if TYPE_CHECKING:  # torch only where signatures are built
    from torch import nn

__all__ = [
    "SENTINEL_CLASSES",
    "Dim",
    "Signature",
    "cache_dir",
    "cache_files",
    "cache_size",
    "cached",
    "decode",
    "encode",
    "load_signatures",
    "meta_build",
    "names_digest",
    "no_init",
]

#: a class count no real layer has by chance: the dimensions equal to it are the head's
SENTINEL_CLASSES = 1009
#: input channels the seeds are built with to find the dimensions that follow them
SENTINEL_CHANNELS = 11
#: bump when the stored form changes
FORMAT = 3

Dim = int | str


def encode(dims: Iterable[Dim]) -> str:
    """A shape as stored and compared: ``"64,3,7,7"``, ``"N,512"``, ``""`` for a scalar."""
    return ",".join(str(d) for d in dims)


def decode(text: str) -> tuple[Dim, ...]:
    return tuple(int(d) if d.isdigit() else d for d in text.split(",")) if text else ()


def names_digest(names: Iterable[str]) -> str:
    """A digest of a set of tensor names: signatures with the very names of a file are found by it at once."""
    return hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:16]


#: MinHash size: the share of names two sets have in common is estimated from this many minimums
SKETCH = 32
_MASK = 0xFFFFFFFF


def _sketch_params() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(20261129)  # fixed: sketches in a cache stay comparable
    return (rng.integers(1, 1 << 32, SKETCH, dtype=np.uint64) | np.uint64(1),
            rng.integers(0, 1 << 32, SKETCH, dtype=np.uint64))


def sketch(names: Iterable[str]) -> list[int]:
    """A MinHash of a set of tensor names (BatchNorm counters left out): :func:`similarity` of two sketches
    estimates the share of names the sets have in common, without the names."""
    import numpy as np

    hashes = [int.from_bytes(hashlib.blake2b(n.encode(), digest_size=4).digest(), "little")
              for n in names if not n.endswith(".num_batches_tracked")]
    if not hashes:
        return [_MASK] * SKETCH
    a, b = _sketch_params()
    h = np.asarray(hashes, dtype=np.uint64)[:, None]
    return [int(v) for v in ((h * a + b) & np.uint64(_MASK)).min(axis=0)]


def similarity(x: list[int], y: list[int]) -> float:
    """Estimated Jaccard similarity of the name sets two sketches describe."""
    return sum(1 for a, b in zip(x, y) if a == b) / SKETCH


def _without_counters(names: Iterable[str]) -> list[str]:
    return [n for n in names if not n.endswith(".num_batches_tracked")]


class Signature:
    """One buildable architecture (or one variant of it) as names and shapes.

    Attributes:
        key: unique name of this entry (``googlenet``, ``googlenet(aux_logits=False)``, ``timm/resnet50``).
        arch: the name ``torchkeep.models.build`` accepts (``timm/NAME`` for timm: identified, not built).
        source: ``seed`` | ``torchvision`` | ``timm``.
        kwargs: constructor arguments of this variant (besides ``num_classes``).
        num_classes: the architecture's default number of classes.
        in_channels: its default input channels.
        head: path of the classifier head (``fc``, ``classifier.6``), or None.
        names / shapes: the state_dict, in module order; shapes encoded (:func:`encode`), dims are ints or the
            symbols ``N``, ``C``, ``S``. Read from the cache only when first used.
        size: how free ``S`` dims give the input size: ``{"kind": "vit", "patch": 16}``, ``{"kind": "flat",
            "per_cell": 64, "cell": 8}`` (the seeds' CNN), ``{"kind": "pixels"}`` (the seeds' MLP), or None.
        n: the number of tensors; digest / digest_nbt: :func:`names_digest` of the names, with and without
            BatchNorm's ``num_batches_tracked`` (old files lack them).
    """

    def __init__(self, key: str, arch: str, source: str, kwargs: dict[str, Any], num_classes: int, in_channels: int,
                 head: str | None, names: list[str] | None = None, shapes: list[str] | None = None,
                 size: dict[str, Any] | None = None, *, n: int | None = None, digest: str | None = None,
                 digest_nbt: str | None = None, loader: Callable[[], tuple[list[str], list[str]]] | None = None,
                 sketch: list[int] | None = None):
        self.key, self.arch, self.source, self.kwargs = key, arch, source, kwargs
        self.num_classes, self.in_channels, self.head, self.size = num_classes, in_channels, head, size
        self._names, self._shapes, self._loader = names, shapes, loader
        self._table: dict[str, str] | None = None
        if names is not None:
            n, digest, digest_nbt = len(names), names_digest(names), names_digest(_without_counters(names))
        self.n, self.digest, self.digest_nbt = n or 0, digest or "", digest_nbt or ""
        self._sketch = sketch

    @property
    def sketch(self) -> list[int]:
        """:func:`sketch` of the names (stored in the cache's index)."""
        if self._sketch is None:
            self._sketch = sketch(self.names)
        return self._sketch

    def _load(self) -> None:
        if self._names is None or self._shapes is None:
            assert self._loader is not None
            self._names, self._shapes = self._loader()

    @property
    def names(self) -> list[str]:
        self._load()
        return self._names  # type: ignore[return-value]

    @property
    def shapes(self) -> list[str]:
        self._load()
        return self._shapes  # type: ignore[return-value]

    @property
    def table(self) -> dict[str, str]:
        """name -> encoded shape (built once)."""
        if self._table is None:
            self._table = dict(zip(self.names, self.shapes))
        return self._table

    def __repr__(self) -> str:
        return f"Signature({self.key!r}, {self.n} tensors)"

    def meta(self) -> dict[str, Any]:
        return {"key": self.key, "arch": self.arch, "source": self.source, "kwargs": self.kwargs,
                "num_classes": self.num_classes, "in_channels": self.in_channels, "head": self.head,
                "size": self.size, "n": self.n, "digest": self.digest, "digest_nbt": self.digest_nbt,
                "sketch": self.sketch}


# ------------------------------------------------------------------------------------- meta building


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s initialisers no-ops (only while building on the meta device, where they have
    nothing to fill but still cost ~0.3 s per ResNet through their Python decompositions)."""
    import torch.nn.init as init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


@contextlib.contextmanager
def _params_to_meta() -> Iterator[None]:
    # Constructors that compute with tensors in __init__ (torchvision's RegNet) fail under torch.device("meta"):
    # build them on the CPU and move each parameter and buffer to meta as it is registered.
    import torch
    from torch.nn.modules import module as mod

    def param(m: Any, name: str, p: Any) -> Any:
        return None if p is None else torch.nn.Parameter(p.to("meta"), p.requires_grad)

    def buffer(m: Any, name: str, b: Any) -> Any:
        return None if b is None else b.to("meta")

    handles = [mod.register_module_parameter_registration_hook(param),
               mod.register_module_buffer_registration_hook(buffer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def meta_build(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with every parameter and buffer on the meta device, without initialising anything."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"), no_init():
                return factory()
        except Exception:  # RuntimeError, or build()'s UsageError around it: try the other way
            with _params_to_meta(), no_init():
                return factory()


# ------------------------------------------------------------------------------------- building


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    import torch

    return {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _head(model: nn.Module) -> str | None:
    from torchkeep.errors import CompatibilityError
    from torchkeep.models._heads import find_head

    try:
        return find_head(model).path
    except CompatibilityError:
        return None


def _symbolic(base: dict[str, tuple[int, ...]], variants: list[tuple[str, dict[str, tuple[int, ...]], int | None]]
              ) -> list[list[Dim]]:
    """Dims of ``base`` that change in a variant get that variant's symbol (``S`` wins: a product of several)."""
    out: list[list[Dim]] = []
    for name, shape in base.items():
        dims: list[Dim] = list(shape)
        for symbol, other, value in variants:
            alt = other.get(name)
            if alt is None or len(alt) != len(shape):
                continue
            for i, (a, b) in enumerate(zip(shape, alt)):
                if a == b:
                    continue
                # a dim equal to the sentinel that moves with it is that argument; anything else that moves
                # (a product of channels and sizes, a size) is free
                dims[i] = symbol if symbol != "S" and a == value and dims[i] == a else "S"
        out.append(dims)
    return out


def _signature(key: str, arch: str, source: str, kwargs: dict[str, Any], default_classes: int, in_channels: int,
               factory: Callable[..., nn.Module], *, channels: bool = False, size_arg: str | None = None,
               sizes: tuple[Any, Any] = (None, None), size: dict[str, Any] | None = None) -> Signature:
    """Build ``factory`` with the sentinel class count (and channel/size variants) and read the symbols off."""
    kw = {**kwargs, "num_classes": SENTINEL_CLASSES}
    if size_arg:
        kw[size_arg] = sizes[0]
    if channels:
        kw["in_channels"] = SENTINEL_CHANNELS
    model = meta_build(lambda: factory(**kw))
    base = _shapes(model)
    head = _head(model)
    # the same with other classes / channels / sizes: what changes follows that argument
    variants: list[tuple[str, dict[str, tuple[int, ...]], int | None]] = [
        ("N", _shapes(meta_build(lambda: factory(**{**kw, "num_classes": SENTINEL_CLASSES + 4}))), SENTINEL_CLASSES)]
    if channels:
        variants.append(("C", _shapes(meta_build(lambda: factory(**{**kw, "in_channels": 5}))), SENTINEL_CHANNELS))
    if size_arg:
        variants.append(("S", _shapes(meta_build(lambda: factory(**{**kw, size_arg: sizes[1]}))), None))
    return Signature(key, arch, source, kwargs, default_classes, in_channels, head, list(base),
                     [encode(d) for d in _symbolic(base, variants)], size)


def _n_only(key: str, arch: str, source: str, kwargs: dict[str, Any], default_classes: int,
            factory: Callable[..., nn.Module]) -> Signature:
    """The common case (one build): every dim equal to the sentinel class count is ``N``."""
    model = meta_build(lambda: factory(**{**kwargs, "num_classes": SENTINEL_CLASSES}))
    base = _shapes(model)
    shapes = [encode("N" if d == SENTINEL_CLASSES else d for d in s) for s in base.values()]
    return Signature(key, arch, source, kwargs, default_classes, 3, _head(model), list(base), shapes)


def _seed_signatures() -> list[Signature]:
    from torchkeep.models._seeds import Cifar10CNN, FashionMLP

    return [
        _signature("cifar10_cnn", "cifar10_cnn", "seed", {}, 10, 3, Cifar10CNN, channels=True,
                   size_arg="input_size", sizes=(32, 48), size={"kind": "flat", "per_cell": 64, "cell": 8}),
        _signature("fashion_mlp", "fashion_mlp", "seed", {}, 10, 1, FashionMLP, channels=True,
                   size_arg="input_size", sizes=(28, 20), size={"kind": "pixels"}),
    ]


#: torchvision variants whose weights differ from the default build's: the published weights drop the
#: auxiliary classifiers these builders make by default
TORCHVISION_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "googlenet": [{}, {"aux_logits": False}],
    "inception_v3": [{}, {"aux_logits": False}],
}


def variant_key(arch: str, kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return arch
    return f"{arch}({', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))})"


def _torchvision_signatures(names: Iterable[str]) -> list[Signature]:
    import torchvision.models as tvm

    out = []
    for name in names:
        def factory(**kw: Any) -> nn.Module:
            return tvm.get_model(name, weights=None, **kw)  # noqa: B023 - called at once

        for kwargs in TORCHVISION_VARIANTS.get(name, [{}]):
            key = variant_key(name, kwargs)
            if name.startswith("vit_"):
                patch = int(re.search(r"_(\d+)$", name).group(1))  # type: ignore[union-attr]
                out.append(_signature(key, name, "torchvision", kwargs, 1000, 3, factory, size_arg="image_size",
                                      sizes=(14 * patch, 16 * patch), size={"kind": "vit", "patch": patch}))
            else:
                out.append(_n_only(key, name, "torchvision", kwargs, 1000, factory))
    return out


def _timm_signatures(names: Iterable[str]) -> list[Signature]:
    import timm

    out = []
    for name in names:
        try:
            sig = _n_only(f"timm/{name}", f"timm/{name}", "timm", {}, 1000,
                          lambda **kw: timm.create_model(name, pretrained=False, **kw))  # noqa: B023
        except Exception:  # some timm entries need arguments or extra packages: they are not identified
            continue
        out.append(sig)
    return out


# ------------------------------------------------------------------------------------- the cache


@cache
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cache_dir() -> Path:
    """Where signatures are cached: ``$TORCHKEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/torchkeep``, else
    ``~/.cache/torchkeep``."""
    explicit = os.environ.get("TORCHKEEP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchkeep"


def _versions(source: str) -> dict[str, str | None]:
    v = {"format": str(FORMAT), "torchkeep": __version__, "torch": _version("torch"),
         "torchvision": _version("torchvision")}
    if source == "timm":
        v["timm"] = _version("timm")
    return v


def sources() -> list[str]:
    """The sources whose architectures are identified here: ``builtin`` (seeds + torchvision), ``timm`` if installed."""
    return ["builtin", "timm"] if _version("timm") else ["builtin"]


def _cache_file(source: str) -> Path:
    versions = _versions(source)
    digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"signatures-{source}-{digest}.json"


def cache_files() -> list[Path]:
    """The signature cache files of this environment that exist."""
    return [p for p in (_cache_file(s) for s in sources()) if p.is_file()]


# The cache is two files per source: an index (JSON: every signature's metadata, digests and where its names and
# shapes are) and a blob of the names and shapes, read when a signature is compared in full. Identifying a file
# whose names one architecture has exactly reads the index and a few signatures only.

# index path -> (mtime, size, signatures, complete): a process reads each cache file once
_MEMO: dict[Path, tuple[int, int, dict[str, Signature], bool]] = {}
_BLOBS: dict[Path, bytes] = {}


def _blob_loader(path: Path, start: int, length: int) -> Callable[[], tuple[list[str], list[str]]]:
    def load() -> tuple[list[str], list[str]]:
        blob = _BLOBS.get(path)
        if blob is None:
            blob = _BLOBS[path] = path.read_bytes()
        names, _, shapes = blob[start:start + length].decode().partition("\x00")
        return (names.split("\n"), shapes.split("\n")) if names else ([], [])

    return load


def _read_cache(path: Path, source: str) -> tuple[dict[str, Signature], bool]:
    try:
        st = path.stat()
        memo = _MEMO.get(path)
        if memo is not None and memo[:2] == (st.st_mtime_ns, st.st_size):
            return dict(memo[2]), memo[3]
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("versions") != _versions(source):
            return {}, False
        blob = path.with_name(data["blob"])
        if not blob.is_file():
            return {}, False
        sigs = {}
        for d in data["signatures"]:
            sigs[d["key"]] = Signature(
                d["key"], d["arch"], d["source"], dict(d["kwargs"]), int(d["num_classes"]), int(d["in_channels"]),
                d["head"], size=d.get("size"), n=int(d["n"]), digest=d["digest"], digest_nbt=d["digest_nbt"],
                loader=_blob_loader(blob, int(d["offset"]), int(d["length"])), sketch=list(d["sketch"]))
        complete = bool(data.get("complete"))
        _MEMO[path] = (st.st_mtime_ns, st.st_size, sigs, complete)
        return dict(sigs), complete
    except (OSError, ValueError, KeyError, TypeError):
        return {}, False


def _write_cache(path: Path, source: str, sigs: dict[str, Signature], complete: bool) -> None:
    chunks: list[bytes] = []
    entries = []
    offset = 0
    for sig in sigs.values():
        chunk = ("\n".join(sig.names) + "\x00" + "\n".join(sig.shapes)).encode()
        entries.append({**sig.meta(), "offset": offset, "length": len(chunk)})
        chunks.append(chunk)
        offset += len(chunk)
    blob = b"".join(chunks)
    # the blob's name carries its digest: an index never points at a blob written for another index
    blob_path = path.with_name(f"{path.stem}-{hashlib.sha1(blob).hexdigest()[:12]}.blob")
    data = {"versions": _versions(source), "complete": complete, "blob": blob_path.name, "signatures": entries}
    with contextlib.suppress(OSError):  # a read-only home: identify still works, only slower
        atomic_write_bytes(blob_path, blob)
        atomic_write_bytes(path, json.dumps(data, separators=(",", ":")).encode())
        # blobs of earlier indexes go once no process can still be reading them through its index
        for old in path.parent.glob(f"{path.stem}-*.blob"):
            with contextlib.suppress(OSError):
                if old != blob_path and time.time() - old.stat().st_mtime > 600:
                    old.unlink()
        st = path.stat()
        _MEMO[path] = (st.st_mtime_ns, st.st_size, dict(sigs), complete)


def cache_size() -> int:
    """Bytes the signature cache of this environment takes on disk (indexes and blobs)."""
    total = 0
    for p in cache_files():
        blob = p.with_name(json.loads(p.read_text(encoding="utf-8"))["blob"])
        total += p.stat().st_size + blob.stat().st_size
    return total


def _all_names(source: str) -> list[str]:
    if source == "timm":
        import timm

        return list(timm.list_models())
    from torchkeep.models._registry import _torchvision_names

    return ["cifar10_cnn", "fashion_mlp", *_torchvision_names()]


def _build(source: str, names: list[str]) -> list[Signature]:
    if source == "timm":
        return _timm_signatures(names)
    seeds = [s for s in _seed_signatures() if s.arch in names]
    return seeds + _torchvision_signatures([n for n in names if n not in ("cifar10_cnn", "fashion_mlp")])


def cached() -> bool:
    """Whether every signature of this environment is cached (identifying then imports no torch)."""
    return all(_read_cache(_cache_file(s), s)[1] for s in sources())


def load_signatures(architectures: Iterable[str] | None = None) -> list[Signature]:
    """Signatures of every architecture identified here, or of ``architectures`` only (registry names, or
    ``timm/NAME``), from the cache or built (and cached) now.

    Raises:
        UsageError: an architecture that is neither a seed, a torchvision classifier nor (installed) timm's.
    """
    from torchkeep.errors import UsageError

    out: list[Signature] = []
    wanted = None if architectures is None else list(dict.fromkeys(architectures))
    for source in sources():
        path = _cache_file(source)
        cached, complete = _read_cache(path, source)
        if wanted is None:
            if not complete:
                have = {s.arch for s in cached.values()}
                for sig in _build(source, [n for n in _all_names(source) if n not in have]):
                    cached[sig.key] = sig
                _write_cache(path, source, cached, True)
            out.extend(cached.values())
            continue
        prefix = "timm/" if source == "timm" else ""
        mine = [a for a in wanted if a.startswith("timm/") == (source == "timm")]
        if not mine:
            continue
        known = set(_all_names(source))
        bad = [a for a in mine if a[len(prefix):] not in known]
        if bad:
            raise UsageError(f"cannot identify against unknown architecture(s) {', '.join(bad)}",
                             fix="`torchkeep models` lists the names (timm's as timm/NAME when timm is installed)")
        have = {s.arch for s in cached.values()}
        missing = [a[len(prefix):] for a in mine if a not in have]
        if missing:
            for sig in _build(source, missing):
                cached[sig.key] = sig
            _write_cache(path, source, cached, complete)
        out.extend(s for s in cached.values() if s.arch in mine)
    if wanted is not None:
        left = [a for a in wanted if a.startswith("timm/") and "timm" not in sources()]
        if left:
            raise UsageError(f"{left[0]} is a timm architecture and timm is not installed",
                             fix="pip install 'torchkeep[timm]'")
    return out
