"""Step 1 of the data flow: tell a file's format from its bytes, never from its name.

``detect(path)`` opens the file, reads its first bytes (and, for zip archives, the member list) and
returns a :class:`Detected`. Nothing is unpickled, no tensor bytes are read, ``torch`` is not imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from torchkeep._zipdir import ZipDirError, read_central_directory
from torchkeep.errors import InputError, TorchkeepError, UnknownFormatError

# what the container libraries raise on corrupt or truncated bytes (safetensors' and protobuf's errors are
# matched by name so that neither library is imported here)
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeDecodeError, EOFError, struct.error, zlib.error,
            ValueError, OSError, OverflowError, MemoryError, NotImplementedError)
_CORRUPT_NAMES = ("SafetensorError", "DecodeError", "UnpicklingError")


@contextlib.contextmanager
def corrupt_file_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn the errors libraries raise on damaged bytes into one-line :class:`InputError` s naming ``path``."""
    try:
        yield
    except TorchkeepError:
        raise
    except Exception as exc:
        if not isinstance(exc, _CORRUPT) and type(exc).__name__ not in _CORRUPT_NAMES:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(
            f"the file is corrupt or truncated ({type(exc).__name__}: {first})",
            path=path,
            fix="re-save or re-download it",
        ) from None

__all__ = [
    "DCP_METADATA",
    "DCP_RANK_METADATA",
    "FLATBUFFER_ID",
    "FORMATS",
    "MAX_SAFETENSORS_HEADER",
    "Detected",
    "check_readable",
    "dcp_metadata_files",
    "describe_bytes",
    "detect",
    "is_dcp_dir",
    "is_flatbuffer_module",
    "looks_like_safetensors",
    "read_safetensors_json",
]

#: the longest JSON header a safetensors file may have: the safetensors library's own limit (MAX_HEADER_SIZE)
MAX_SAFETENSORS_HEADER = 100_000_000

#: Every container format torchkeep reads, with the words used in reports.
FORMATS: dict[str, str] = {
    "torch-zip": "PyTorch zip archive (torch.save)",
    "torch-legacy": "legacy PyTorch file (torch.save with _use_new_zipfile_serialization=False)",
    "torchscript": "TorchScript archive (torch.jit.save)",
    "torch-export": "torch.export archive (.pt2, torch.export.save)",
    "safetensors": "safetensors",
    "onnx": "ONNX model (protobuf)",
    "numpy": "NumPy array (.npy)",
    "numpy-npz": "NumPy archive (.npz)",
    "pickle": "bare Python pickle",
    "dcp": "torch.distributed.checkpoint directory (DCP)",
}

#: the file that makes a directory a torch.distributed.checkpoint (DCP) checkpoint
DCP_METADATA = ".metadata"


#: the metadata each rank writes where no coordinator gathers one (``dcp.save(..., no_dist=True)`` and
#: ``use_collectives=False``): DCP reads it when ``.metadata`` is missing or does not unpickle
DCP_RANK_METADATA = re.compile(r"__\d+\.metadata")


def dcp_metadata_files(path: str | os.PathLike[str]) -> list[str]:
    """The metadata files DCP may read in directory ``path``: ``.metadata`` first, then ``__<rank>.metadata`` by rank."""
    p = Path(path)
    try:
        names = [c.name for c in p.iterdir() if c.is_file()]
    except OSError:
        return []
    ranks = sorted((n for n in names if DCP_RANK_METADATA.fullmatch(n)), key=lambda n: int(n[2:-9]))
    return ([DCP_METADATA] if DCP_METADATA in names else []) + ranks


def is_dcp_dir(path: str | os.PathLike[str]) -> bool:
    """A directory holding a DCP metadata file (``.metadata``, or only ranks' ``__<rank>.metadata``, which
    ``dcp.load`` falls back to): a checkpoint that is read like a file."""
    p = Path(path)
    return p.is_dir() and bool(dcp_metadata_files(p))

#: the number the first pickle of a legacy torch file holds (torch.serialization.MAGIC_NUMBER)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_MAGIC_LONG1 = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")  # pickled as LONG1 (protocol 2+)
LEGACY_MAGIC_TEXT = b"L%dL" % LEGACY_MAGIC  # the same number, protocol 0/1
NPY_MAGIC = b"\x93NUMPY"
ZIP_LOCAL = b"PK\x03\x04"  # a zip's first local header
ZIP_MAGICS = (ZIP_LOCAL, b"PK\x05\x06")
#: the formats that are zip archives (``"zip"``: any other zip, which the scan reads all the same)
ZIP_FORMATS = frozenset({"torch-zip", "torchscript", "torch-export", "numpy-npz", "zip"})
#: torch.jit.load (and torch.load, for a zip it hands to torch.jit.load) reads any buffer with this identifier at
#: bytes 4..8 as a TorchScript flatbuffer module, before it looks for a zip (getFileFormat in
#: torch/csrc/jit/mobile/file_format.h); its methods are compiled and run. torchkeep reads no flatbuffer module.
FLATBUFFER_ID = b"PTMF"


def is_flatbuffer_module(head: bytes) -> bool:
    """Would torch.jit.load read these first bytes of a file as a TorchScript flatbuffer module?"""
    return head[4:8] == FLATBUFFER_ID


@dataclass(frozen=True)
class Detected:
    """What ``detect`` found.

    Attributes:
        path: the file.
        format: one of :data:`FORMATS`.
        size: file size in bytes.
        archive_root: for torch zip-based formats, the top folder inside the archive (``"archive"``).
        members: for zip-based formats, the member names in archive order.
    """

    path: Path
    format: str
    size: int
    archive_root: str | None = None
    members: tuple[str, ...] = field(default_factory=tuple)

    @property
    def description(self) -> str:
        return FORMATS[self.format]


def describe_bytes(head: bytes) -> str:
    """A short human description of what some leading bytes look like."""
    if not head:
        return "the file is empty"
    sample = head[:16]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]) / max(1, len(head[:256]))
    if printable > 0.95:
        text = head[:40].decode("ascii", "replace").replace("\n", "\\n")
        kind = "text"
        if head.lstrip()[:1] in (b"{", b"["):
            kind = "JSON-like text"
        elif head.lstrip()[:1] == b"<":
            kind = "HTML/XML-like text"
        return f'starts with {kind} "{text}"'
    known = {
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"GIF8": "a GIF image",
        b"\x1f\x8b": "gzip-compressed data",
        b"BZh": "bzip2-compressed data",
        b"\xfd7zXZ": "xz-compressed data",
        b"7z\xbc\xaf": "a 7-Zip archive",
        b"\x89HDF": "an HDF5 file (Keras .h5?)",
        b"GGUF": "a GGUF file (llama.cpp)",
        b"PK": "a zip archive",
    }
    if head[257:262] == b"ustar":
        return "is a tar archive (the pre-1.0 PyTorch format, or a packaged model): unpack it or re-save it with torch.save"
    for magic, what in known.items():
        if head.startswith(magic):
            return f"starts with bytes {sample.hex(' ')} ({what})"
    return f"starts with bytes {sample.hex(' ')} (no known signature)"


def check_readable(path: str | os.PathLike[str]) -> tuple[Path, int]:
    """Return (path, size) or raise :class:`InputError` for missing, directory, unreadable, empty."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError("no such file", path=p, fix="check the path") from None
    except PermissionError:
        raise InputError("permission denied", path=p, fix="check the file's permissions") from None
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", path=p) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory, not a model file", path=p, fix="name a file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise InputError("is not a regular file", path=p)
    if not os.access(p, os.R_OK):
        raise InputError("permission denied", path=p, fix="check the file's permissions")
    if st.st_size == 0:
        raise InputError("the file is empty (0 bytes)", path=p, fix="re-save or re-download it")
    return p, st.st_size


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _zip_names(p: Path, size: int) -> tuple[str, ...]:
    """Member names as zipfile reads them or, for archives zipfile refuses, as torch's own zip reader
    (miniz) reads them: torch.load opens archives that zipfile cannot (see :mod:`torchkeep._zipdir`)."""
    try:
        with zipfile.ZipFile(p) as zf:
            return tuple(zf.namelist())
    except (zipfile.BadZipFile, UnicodeDecodeError, EOFError, OSError, ValueError, struct.error,
            NotImplementedError) as exc:
        try:
            with open(p, "rb") as fh:
                return tuple(e.name for e in read_central_directory(fh, size))
        except (ZipDirError, OSError):
            pass
        raise InputError(
            f"looks like a zip archive but its directory cannot be read ({exc}); the file is truncated or corrupt",
            path=p,
            fix="re-save or re-download it",
        ) from None


def _is_zipfile(p: Path) -> bool:
    try:
        return zipfile.is_zipfile(p)
    except (zipfile.BadZipFile, OSError, ValueError, struct.error):  # e.g. "zipfiles that span multiple disks"
        return False


def _zip_format(p: Path, size: int) -> Detected:
    names = _zip_names(p, size)
    root = names[0].split("/", 1)[0] if names and "/" in names[0] else None
    lower = [n.translate(_ASCII_LOWER) for n in names]

    def has(suffix: str) -> bool:
        # torch's reader looks names up ignoring ASCII case ("archive/DATA.PKL" is its data.pkl)
        return any(n == suffix or n.endswith("/" + suffix) for n in lower)

    if has("archive_format") or any("/models/" in n and n.endswith(".json") for n in names):
        return Detected(p, "torch-export", size, root, names)
    if has("data.pkl") and has("constants.pkl") and any("/code/" in n or n.startswith("code/") for n in names):
        return Detected(p, "torchscript", size, root, names)
    if has("data.pkl"):
        return Detected(p, "torch-zip", size, root, names)
    if names and all(n.endswith(".npy") for n in names):
        return Detected(p, "numpy-npz", size, None, names)
    listing = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
    raise UnknownFormatError(
        f"is a zip archive but not a PyTorch one: it has no data.pkl (members: {listing or 'none'})",
        path=p,
        fix="if it is a model in another format, export it to .pt, .safetensors or .onnx first",
    )


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether the first bytes of a file of ``size`` bytes are a safetensors header's start."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def read_safetensors_json(path: str | os.PathLike[str], size: int) -> tuple[dict, int]:
    """The JSON header of a safetensors file, parsed as the safetensors library parses it, and its length.

    Only the header is read. Raises ValueError saying what is wrong (too short, over the library's limit,
    longer than the file, not a JSON object); OSError when the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("safetensors file shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"safetensors header claims {n} bytes, more than the {MAX_SAFETENSORS_HEADER} "
                             "the safetensors library reads")
        if 8 + n > size:
            raise ValueError(f"safetensors header claims {n} bytes but the file has {size - 8} after the length field")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not a JSON object")
    return header, n


def _looks_like_pickle(head: bytes) -> bool:
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return True
    if head[257:262] == b"ustar":
        return False  # a tar whose first member's name starts like a pickle (scan reads byte 0 of a tar as one too)
    # Protocol 0/1 pickles have no PROTO opcode; accept the usual first opcodes of a container or global.
    return head[:1] in (b"(", b"}", b"]", b"c", b"\x8c") and b"." in head[-1:] + head


def _looks_like_onnx(p: Path, head: bytes, size: int) -> bool:
    from torchkeep._onnx import looks_like_onnx

    return looks_like_onnx(p, head, size)


def detect(path: str | os.PathLike[str]) -> Detected:
    """Detect the container format of ``path`` from its bytes.

    Raises:
        InputError: the path is missing, a directory, unreadable or empty, or a zip is corrupt.
        UnknownFormatError: the bytes match no known format; the message says what they look like.
    """
    if is_dcp_dir(path):
        p = Path(path)
        return Detected(p, "dcp", sum(f.stat().st_size for f in p.iterdir() if f.is_file()))
    p, size = check_readable(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", path=p) from None

    if is_flatbuffer_module(head):  # first, as torch.jit.load decides: a zip or pickle with this id is one too
        raise UnknownFormatError(
            "is a TorchScript flatbuffer (mobile) module: torch.jit.load runs its code, and torchkeep does not read "
            "this format",
            path=p,
            fix="load it only if you trust its source; re-save it with torch.jit.save (zip) to inspect and scan it",
        )
    if head.startswith(ZIP_MAGICS):
        return _zip_format(p, size)
    if head.startswith(NPY_MAGIC):
        return Detected(p, "numpy", size)
    if head[2:14] == LEGACY_MAGIC_LONG1 or LEGACY_MAGIC_TEXT in head[:40]:
        return Detected(p, "torch-legacy", size)
    if looks_like_safetensors(head, size):
        return Detected(p, "safetensors", size)
    if _looks_like_pickle(head):
        return Detected(p, "pickle", size)
    if _looks_like_onnx(p, head, size):
        return Detected(p, "onnx", size)
    if _is_zipfile(p):  # zip with a prefix (self-extracting, appended data)
        return _zip_format(p, size)
    raise UnknownFormatError(
        f"not a model file torchkeep can read: it {describe_bytes(head)}",
        path=p,
        fix="torchkeep reads torch.save files (.pt/.pth/.ckpt/.bin, zip or legacy), TorchScript, torch.export .pt2, "
        "safetensors, ONNX, .npy/.npz and pickles",
    )
