"""``list_models()``: every architecture name, without importing torch or torchvision.

Listing used to import torchvision and read every weights enum (5.6 s for ``torchkeep models``). What it
finds depends only on the torchvision release (and torchkeep's own seeds), so it is kept as a catalog:

1. ``_catalog.json`` beside this file, made for one torchvision release by
   ``python -c "from torchkeep.models._catalog import main; main()"`` (a test checks it against the live
   listing, and says to run this when torchvision was upgraded);
2. else a copy made on this machine the first time (``$XDG_CACHE_HOME/torchkeep/models-*.json``, or
   ``~/.cache/...``), keyed by the torchvision and torchkeep versions;
3. else the live listing (``torchkeep.models._registry.live_models``), written to that cache.

A catalog whose torchvision version is not the installed one is never used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from torchkeep._atomic import atomic_write_bytes
from torchkeep._version import __version__
from torchkeep.errors import UsageError
from torchkeep.models._archinfo import ArchInfo

__all__ = ["ArchInfo", "arch_names", "list_models", "to_json"]

BUNDLED = Path(__file__).with_name("_catalog.json")


def _torchvision_version() -> str:
    """The installed torchvision's release, without its local tag (``0.29.1+cu130`` -> ``0.29.1``)."""
    try:
        return metadata.version("torchvision").split("+")[0]
    except metadata.PackageNotFoundError:
        return "none"


def _cache_file(tv: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "torchkeep" / f"models-torchvision{tv}-torchkeep{__version__}.json"


def to_json(infos: list[ArchInfo], torchvision: str) -> str:
    """The catalog file's text."""
    return json.dumps({"torchvision": torchvision, "models": [dataclasses.asdict(i) for i in infos]}, indent=1) + "\n"


def _read(path: Path, tv: str) -> list[ArchInfo] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("torchvision") != tv:
            return None
        return [ArchInfo(**{**m, "input_size": tuple(m["input_size"])}) for m in data["models"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None


@lru_cache(maxsize=1)
def _catalog() -> tuple[ArchInfo, ...]:
    tv = _torchvision_version()
    cache = _cache_file(tv)
    infos = _read(BUNDLED, tv) or _read(cache, tv)
    if infos is None:
        from torchkeep.models._registry import live_models

        infos = live_models()
        try:  # a convenience: the next listing is fast
            atomic_write_bytes(cache, to_json(infos, tv).encode())
        except Exception:
            pass
    return tuple(infos)


def list_models(filter: str | None = None) -> list[ArchInfo]:
    """Every architecture name ``build`` accepts (user classes aside), seeds first.

    Args:
        filter: a regular expression; only names it matches (``re.search``) are listed.

    Returns:
        One :class:`ArchInfo` per architecture (fresh objects: changing them changes no later listing).

    Raises:
        UsageError: ``filter`` is not a valid regular expression.
    """
    rx = None
    if filter:
        try:
            rx = re.compile(filter)
        except re.error as exc:
            raise UsageError(f"invalid --filter regular expression {filter!r}: {exc}") from None
    return [dataclasses.replace(i, weights=list(i.weights)) for i in _catalog() if rx is None or rx.search(i.name)]


def arch_names() -> list[str]:
    """The names alone (shell completion of ``--arch``)."""
    return [i.name for i in _catalog()]


def main() -> None:
    """Write ``_catalog.json`` for the installed torchvision (run after upgrading it)."""
    from torchkeep.models._registry import live_models

    BUNDLED.write_text(to_json(live_models(), _torchvision_version()), encoding="utf-8")
    print(f"wrote {BUNDLED} (torchvision {_torchvision_version()})")

