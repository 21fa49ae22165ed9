"""Signatures: the tensor names and shapes of every architecture ``build`` knows, for ``torchkeep identify``.

A signature is an architecture's ``state_dict()`` as names and shapes, built on the meta device (no memory,
no initialisation), with the dimensions that follow a constructor argument written as symbols:

- ``"N"``: the number of classes (found by building with a sentinel number of classes, :mod:`torchkeep.models._sigbuild`);
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
import time
from collections.abc import Callable, Iterable
from functools import cache
from importlib import metadata
from pathlib import Path

from torchkeep._atomic import atomic_write_bytes
from torchkeep._version import __version__
from torchkeep.errors import UsageError
from torchkeep.models._meta import meta_build, no_init
from torchkeep.models._sigbuild import all_names, build_signatures
from torchkeep.models._signature import Dim, Signature, decode, encode, names_digest, similarity, sketch

__all__ = [
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
    "similarity",
    "sketch",
    "sources",
]

#: bump when the stored form changes
FORMAT = 3


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



def cached() -> bool:
    """Whether every signature of this environment is cached (identifying then imports no torch)."""
    return all(_read_cache(_cache_file(s), s)[1] for s in sources())


def load_signatures(architectures: Iterable[str] | None = None) -> list[Signature]:
    """Signatures of every architecture identified here, or of ``architectures`` only (registry names, or
    ``timm/NAME``), from the cache or built (and cached) now.

    Raises:
        UsageError: an architecture that is neither a seed, a torchvision classifier nor (installed) timm's.
    """
    out: list[Signature] = []
    wanted = None if architectures is None else list(dict.fromkeys(architectures))
    for source in sources():
        path = _cache_file(source)
        cached, complete = _read_cache(path, source)
        if wanted is None:
            if not complete:
                have = {s.arch for s in cached.values()}
                for sig in build_signatures(source, [n for n in all_names(source) if n not in have]):
                    cached[sig.key] = sig
                _write_cache(path, source, cached, True)
            out.extend(cached.values())
            continue
        prefix = "timm/" if source == "timm" else ""
        mine = [a for a in wanted if a.startswith("timm/") == (source == "timm")]
        if not mine:
            continue
        known = set(all_names(source))
        bad = [a for a in mine if a[len(prefix):] not in known]
        if bad:
            raise UsageError(f"cannot identify against unknown architecture(s) {', '.join(bad)}",
                             fix="`torchkeep models` lists the names (timm's as timm/NAME when timm is installed)")
        have = {s.arch for s in cached.values()}
        missing = [a[len(prefix):] for a in mine if a not in have]
        if missing:
            for sig in build_signatures(source, missing):
                cached[sig.key] = sig
            _write_cache(path, source, cached, complete)
        out.extend(s for s in cached.values() if s.arch in mine)
    if wanted is not None:
        left = [a for a in wanted if a.startswith("timm/") and "timm" not in sources()]
        if left:
            raise UsageError(f"{left[0]} is a timm architecture and timm is not installed",
                             fix="pip install 'torchkeep[timm]'")
    return out
