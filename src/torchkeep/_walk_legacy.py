"""Legacy (non-zip) torch files: the five stacked pickles (magic, protocol, sys_info, the object, the storage
keys), then the storage table walked record by record (its raw bytes are not pickles)."""

from __future__ import annotations

import struct
from typing import IO, Any

from torchkeep._detect import LEGACY_MAGIC
from torchkeep._dtypes import DTYPE_ITEMSIZE, STORAGE_DTYPES
from torchkeep._pickle_vm import StreamResult, concrete
from torchkeep._walk_stacked import StackedWalker, _analyze_region, _only_padding

__all__ = ["LegacyWalker"]


def _element_size(storage_type: str) -> int | None:
    """Bytes per element of a legacy storage class (``FloatStorage``: 4); the storage table stores counts."""
    dtype = STORAGE_DTYPES.get(storage_type.replace("Storage", "") + "Storage")
    return DTYPE_ITEMSIZE.get(dtype) if dtype is not None else None


class LegacyWalker(StackedWalker):
    """Walks legacy torch files (and the files embedded or stacked in them)."""

    def legacy(self, fh: IO[bytes], size: int, place: str) -> None:
        labels = ["magic number", "protocol version", "sys_info", "object", "storage keys"]
        pos = 0
        results: list[StreamResult] = []
        for label in labels:
            res = _analyze_region(fh, pos, size)
            self._emit(f"{place}: {label} pickle", res, pos)
            if res.end is None:
                self.sink.on_finding(
                    "error", "malformed-pickle", f"{place}: {label} pickle", pos, f"malformed pickle: {res.error}"
                )
                return
            results.append(res)
            pos += res.end
        if concrete(results[0].value) != LEGACY_MAGIC:
            self.sink.on_finding("dangerous", "legacy-magic", place, 0, "the first pickle is not torch's magic number")
        self._storage_table(fh, pos, size, place, results[3], results[4])

    def _storage_table(self, fh: IO[bytes], pos: int, size: int, place: str, obj: StreamResult, keys_res: StreamResult) -> None:
        keys = concrete(keys_res.value)
        sizes: dict[str, int] = {}
        for pid in obj.pids:
            items = _items(pid)
            if not items or len(items) < 5:
                continue
            stype = getattr(items[1], "name", "")
            key = concrete(items[2])
            elem = _element_size(stype)
            if isinstance(key, str) and elem:
                sizes[key] = elem
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            self.sink.on_finding("dangerous", "legacy-keys", place, pos, "the storage keys pickle is not a list of strings")
            return
        for key in keys:
            fh.seek(pos)
            raw = fh.read(8)
            elem = sizes.get(key)
            if len(raw) < 8 or elem is None:
                self.sink.notes.append(f"{place}: storage table not walked past key {key!r}; stopped after the keys list")
                return
            (numel,) = struct.unpack("<q", raw)
            pos += 8 + numel * elem
            if numel < 0 or pos > size:
                self.sink.on_finding("error", "legacy-truncated", place, pos, f"storage {key!r} runs past the end of the file")
                return
        if pos < size and not _only_padding(fh, pos, size):
            self.sink.notes.append(f"{place}: {size - pos} bytes after the storage table (torch.load never reads them)")
            self.stacked(fh, pos, size, f"{place}: bytes after the storage table", required=False)


def _items(value: Any) -> tuple[Any, ...] | list[Any]:
    """The items of an abstract tuple, whichever way the pickle engine represents one."""
    if isinstance(value, tuple):
        return value
    items = getattr(value, "items", None)
    return items if isinstance(items, list) else ()
