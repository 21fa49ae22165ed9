"""A signature: an architecture's ``state_dict()`` as tensor names and symbolic shapes.

Dimensions that follow a constructor argument are written as symbols: ``"N"`` the number of classes, ``"C"``
the input channels, ``"S"`` a size that follows the input size. Shapes are stored and compared encoded
(``"64,3,7,7"``, ``"N,512"``); a set of names has a digest (found at once) and a MinHash sketch (the share of
names two sets have in common, estimated without the names). :mod:`torchkeep.models._sigbuild` builds
signatures, :mod:`torchkeep.models._signatures` caches and loads them. No torch here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Dim", "Signature", "decode", "encode", "names_digest", "similarity", "sketch"]

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

