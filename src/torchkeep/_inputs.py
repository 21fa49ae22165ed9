"""Input collection: files, folders, globs and PIL images -> one ordered list of inputs to run.

``collect_inputs(inputs)`` is what ``predict`` classifies and what ``export``'s parity check feeds; a missing path
or a glob that matches nothing is an item with ``error`` set (it never aborts the batch).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SUFFIXES", "InputItem", "collect_inputs"]

#: Files taken from folders (explicitly named files are always tried, whatever their name).
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jfif",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
_GLOB_CHARS = set("*?[")


@dataclass
class InputItem:
    """One input to classify: a file path or an in-memory PIL image, or why it cannot be found."""

    name: str
    source: Any
    error: str | None = None


def collect_inputs(inputs: Any) -> list[InputItem]:
    """Expand files, folders (recursively, image suffixes only, hidden files skipped) and globs.

    Args:
        inputs: a path, a glob pattern, a PIL image, or a sequence of them.

    Returns:
        The items in order; a missing path or a glob that matches nothing is an item with ``error`` set.
    """
    if isinstance(inputs, (str, os.PathLike)) or _is_pil(inputs):
        inputs = [inputs]
    items: list[InputItem] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            items.append(InputItem(os.fspath(path), path))

    for n, entry in enumerate(inputs):
        if _is_pil(entry):
            items.append(InputItem(f"<image {n}>", entry))
            continue
        text = os.fspath(entry)
        p = Path(text)
        if p.is_dir():
            for f in _walk(p):
                add(f)
        elif p.exists():
            add(p)
        elif _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                items.append(InputItem(text, None, "the pattern matches no file"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for f in _walk(mp):
                        add(f)
                else:
                    add(mp)
        else:
            items.append(InputItem(text, None, "no such file or folder"))
    return items


def _walk(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(root) / name)
    return out


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(obj, Image.Image)
