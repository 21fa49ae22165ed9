"""Find every pickle stream a file holds, by content, and the container tricks around them.

Containers are read the way their loaders read them, and every member is scanned in one strict mode
(:mod:`torchkeep._walk_stacked`); one module per container:

- zip archives (torch zip, TorchScript, ``.pt2``, ``.npz``, any zip): :mod:`torchkeep._walk_zip`, both
  torch's reader and Python's zipfile; deflated members inflated to their end within a per-file budget
  (:data:`INFLATE_MAX_BYTES`, :data:`INFLATE_MAX_SECONDS`; :mod:`torchkeep._inflate`);
- legacy torch files: :mod:`torchkeep._walk_legacy`, the five stacked pickles and the storage table;
- the oldest torch format (a tar read by ``torch.load`` through :mod:`tarfile`): :mod:`torchkeep._walk_tar`;
- bare pickles: stacked pickles one after another; bytes after the last ``STOP`` that are not a pickle
  (:mod:`torchkeep._walk_stacked`);
- ``.npy`` (alone or in an ``.npz``): :mod:`torchkeep._walk_npy`, the header parsed by numpy itself.

Files are also read the way *other* loaders would read them: torch.load opens any file that is not a zip as
a tar first and then as a legacy pickle, so a file that is also one of those is a polyglot, scanned both ways.

The walker reports through :class:`Sink`; the pickle analysis itself lives in :mod:`torchkeep._pickle_vm`.
"""

from __future__ import annotations

import io
import os

from torchkeep._detect import LEGACY_MAGIC_LONG1, ZIP_FORMATS, ZIP_LOCAL, is_flatbuffer_module
from torchkeep._inflate import _Budget
from torchkeep._walk_legacy import LegacyWalker
from torchkeep._walk_stacked import MAX_DEPTH, Sink, analyze_start
from torchkeep._walk_tar import opens_as_tar, walk_tar
from torchkeep._walk_zip import FLATBUFFER_WHY, ZipWalker, zip_names, zip_start

__all__ = ["INFLATE_MAX_BYTES", "INFLATE_MAX_SECONDS", "MAX_DEPTH", "Sink", "Walker", "analyze_start", "walk_file"]

# Inflating compressed members, per scanned file: past either budget the scan stops inflating and reports
# a dangerous finding (what was not inflated was not scanned). Memory stays bounded whatever the sizes.
INFLATE_MAX_BYTES = 32 << 30
INFLATE_MAX_SECONDS = 300.0


class Walker(ZipWalker, LegacyWalker):
    """Walks one file; see the module docstring."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.budget = _Budget(INFLATE_MAX_BYTES, INFLATE_MAX_SECONDS)

    def blob(self, data: bytes, place: str) -> None:
        """Scan an in-memory file (a torch zip, a legacy torch file or a bare pickle)."""
        fh = io.BytesIO(data)
        if is_flatbuffer_module(data[:8]):
            self.sink.on_finding("dangerous", "torchscript-flatbuffer", place, None, FLATBUFFER_WHY)
        if data.startswith(ZIP_LOCAL):
            self.zip_archive(fh, place + "!/", self.blob_depth, torchscript_root=False)
            self.nested_torchscript(zip_names(fh), place)
        elif data[2:14] == LEGACY_MAGIC_LONG1:
            self.legacy(fh, len(data), place)
        else:
            self.stacked(fh, 0, len(data), place, required=True)


def walk_file(path: os.PathLike[str] | str, fmt: str, sink: Sink) -> None:
    """Scan every pickle stream of ``path`` (detected format ``fmt``) into ``sink``."""
    walker = Walker(sink)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if fmt in ZIP_FORMATS:
            walker.zip_archive(fh, "", 0, torchscript_root=fmt == "torchscript")
        elif fmt == "torch-legacy":
            walker.legacy(fh, size, "legacy file")
        elif fmt == "numpy":
            walker.npy(fh, 0, size, "array")
        elif fmt == "tar":
            walk_tar(walker, fh, "tar")
        elif fmt == "pickle":
            results = walker.stacked(fh, 0, size, "pickle", required=True) or []
            parsed = sum(r.end or 0 for r in results)
            # A pickle glued in front of a zip: each reader sees one of them. (A zip embedded *inside*
            # the pickle's bytes, as plain pickle.dumps(tensor) writes, is scanned as a nested file.)
            if zip_start(fh) >= parsed > 0:
                sink.on_finding(
                    "dangerous",
                    "polyglot",
                    "file",
                    None,
                    "the file is both a pickle and a zip archive: torch.load and unzip see different contents",
                )
                walker.zip_archive(fh, "zip part: ", 0, torchscript_root=False)
        if fmt not in ZIP_FORMATS and fmt != "tar" and opens_as_tar(fh):
            sink.on_finding(
                "dangerous",
                "polyglot",
                "file",
                0,
                f"the file is both {fmt} and a tar archive: torch.load opens any non-zip file as the old tar format first",
            )
            # (byte 0 of a pickle or legacy file was scanned above, as torch.load's fallback reads it)
            walk_tar(walker, fh, "tar part", pickle_at_start=fmt not in ("pickle", "torch-legacy"))
        if fmt in ("safetensors", "onnx", "numpy"):
            # They hold no pickles, but torch.load reads any file that is not a zip as a legacy pickle, and a
            # loader that calls pickle.load in a loop reads the pickles stacked after the first one: a file
            # whose bytes from byte 0 are also pickles that import code is a polyglot. (A first pickle that
            # imports nothing does not clear the ones stacked after it: fuzz finding 4a2d840b64acaad6.)
            head = analyze_start(fh, size)
            if head.imports or head.end is not None:
                stacked = walker.stacked(fh, 0, size, "pickle", required=False)
                if head.imports or any(r.imports for r in stacked or ()):
                    sink.on_finding(
                        "dangerous",
                        "polyglot",
                        "file",
                        0,
                        f"the file is both {fmt} and a pickle that imports code: torch.load (or a pickle.load loop) "
                        "unpickles it",
                    )
                if stacked is None and head.imports:
                    walker._emit("pickle", head, 0)  # one look was not enough for the candidate probe either
