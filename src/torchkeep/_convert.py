"""``torchkeep.convert(src, out)``: any readable model file into a weights-only file that is safe forever.

The weights are read with :func:`torchkeep._load.read_weights` (scanned, no code runs) and written as
safetensors (default) or a plain ``.pt`` state_dict. Values are kept bit for bit unless ``dtype`` asks
for a cast (only floating-point tensors are cast). Tied tensors are stored once and their other names
recorded in the metadata (``torchkeep.aliases``); overlapping views are copied. The safetensors file
is streamed tensor by tensor from the loaded buffers, so peak memory stays about one copy of the
weights (``safetensors.torch.save_file`` first builds a bytes copy of every tensor). The write is atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._atomic import atomic_path, dir_sides, swap_dir
from torchkeep._compat import renamed_kwarg
from torchkeep._detect import is_dcp_dir
from torchkeep._dtypes import cast_dtype, safetensors_code, torch_dtype
from torchkeep._keys import ALWAYS_WRAPPERS, wrapper_prefix
from torchkeep._load import read_weights
from torchkeep._version import __version__
from torchkeep.errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["ConvertResult", "convert", "file_sha256", "output_format", "strip_common_prefix", "write_safetensors"]


@dataclass
class ConvertResult:
    """What ``convert`` wrote."""

    source: str
    destination: str
    format: str  # "safetensors" | "pt"
    source_format: str
    source_kind: str
    source_sha256: str
    tensors: int
    bytes: int
    dtype: str | None = None
    cast: int = 0  # tensors whose dtype was changed
    stripped_prefix: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    copied_views: list[str] = field(default_factory=list)
    scan_verdict: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file; of a DCP directory: of its files' names and bytes, in name order."""
    h = hashlib.sha256()
    files = sorted(f for f in Path(path).iterdir() if f.is_file()) if is_dcp_dir(path) else [Path(path)]
    for f in files:
        if len(files) > 1 or f != Path(path):
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# what convert writes, by the output's suffix: any other suffix is refused, never safetensors written under
# a name that says .onnx
SUFFIXES = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".bin": "pt", ".ckpt": "pt"}
# suffixes of other formats: refused even with --format
_OTHER_FORMATS = {".onnx", ".pt2", ".npz", ".npy", ".pkl", ".pickle", ".h5", ".keras", ".tflite", ".gguf", ".msgpack"}
_WRITES = (
    "convert writes safetensors (.safetensors) or a PyTorch state_dict (.pt, .pth, .bin, .ckpt), "
    "or a torch.distributed.checkpoint directory (--to dcp)"
)


def output_format(out: Path, fmt: str | None = None) -> str:
    """``"safetensors"``, ``"pt"`` or ``"dcp"``: from ``out``'s suffix, or ``fmt`` (``dcp``: always given).

    Raises:
        UsageError: the suffix names no format convert writes (``out.onnx``), or another one than ``fmt``.
    """
    if fmt is not None and fmt not in ("safetensors", "pt", "dcp"):
        raise UsageError(f"unknown output format {fmt!r}; {_WRITES}", fix="use --format safetensors, pt or dcp")
    if fmt == "dcp" or (fmt is None and is_dcp_dir(out)):
        if out.exists() and not is_dcp_dir(out) and (not out.is_dir() or any(out.iterdir())):
            raise UsageError("a DCP checkpoint is a directory: this path holds something else", path=out,
                             fix="name a new or empty directory")
        return "dcp"
    suffix = out.suffix.lower()
    by_suffix = SUFFIXES.get(suffix)
    if suffix == ".onnx":
        raise UsageError(
            f"cannot write an ONNX file: {_WRITES}",
            path=out,
            fix=f"torchkeep export MODEL --format onnx -o {out.name} (MODEL: a model file; "
            "torchkeep adapt WEIGHTS --arch NAME -o MODEL makes one from weights)",
        )
    if suffix in _OTHER_FORMATS or (fmt is None and by_suffix is None):
        what = f"a {suffix} file" if suffix else "a file without a suffix"
        fix = "name the output .safetensors or .pt"
        raise UsageError(f"cannot write {what}: {_WRITES}", path=out,
                         fix=fix if suffix in _OTHER_FORMATS else f"{fix} (or pass --format)")
    if fmt is not None and by_suffix not in (None, fmt):
        raise UsageError(f"cannot write {fmt} under a {suffix} name", path=out,
                         fix=f"name the output {'.safetensors' if fmt == 'safetensors' else '.pt'}, "
                         "or leave out --format")
    return fmt or by_suffix or "safetensors"


def strip_common_prefix(names: list[str], strip_prefix: str | None) -> str | None:
    """The prefix to strip: ``"auto"`` finds a known wrapper prefix all names share; ``"none"``/None: nothing."""
    if strip_prefix in (None, "none", ""):
        return None
    if strip_prefix == "auto":
        # only prefixes that are always wrappers; "model." may be a real attribute (self.model = Sequential(...))
        return wrapper_prefix(names, ALWAYS_WRAPPERS) or None
    return strip_prefix if strip_prefix.endswith(".") else strip_prefix + "."


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Store each tied tensor once; copy views that overlap another tensor's storage."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    copied: list[str] = []
    by_view: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        if t.device.type == "meta":
            raise UsageError(f"tensor {name!r} is a meta tensor with no data; it cannot be converted")
        sptr = t.untyped_storage().data_ptr() if t.numel() else 0
        key = (sptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in by_view:
            aliases[name] = by_view[key]
            continue
        if t.numel() and (sptr in storages or not t.is_contiguous()):
            t = t.contiguous() if not t.is_contiguous() else t.clone()
            copied.append(name)
        by_view[key] = name
        storages.add(sptr)
        kept[name] = t
    return kept, aliases, copied


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Stream ``tensors`` (contiguous, CPU, no shared memory) into a safetensors file atomically.

    Returns the number of bytes written. The file is read back by the ``safetensors`` library in tests.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        code = safetensors_code(str(t.dtype))
        if code is None:
            raise UsageError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store",
                             fix="convert to .pt instead, or cast with --dtype")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for t in tensors.values():
            if t.numel():
                fh.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        fh.flush()
        os.fsync(fh.fileno())
    return 8 + len(raw) + offset


def write_dcp_dir(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """A one-process DCP checkpoint of a state dict (what ``torch_save_to_dcp`` makes of a state_dict file),
    written beside ``path`` and swapped in whole. Returns the bytes written."""
    import torch.distributed.checkpoint as dcp

    tmp, _ = dir_sides(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.save({n: t.contiguous() for n, t in tensors.items()}, checkpoint_id=tmp, no_dist=True)
        swap_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    dtype: str | None = None,
    strip_prefix: str | None = "auto",
    fmt: str | None = None,
    trust: bool = False,
    key: str | None = None,
    dst: str | os.PathLike[str] | None = None,
    format: str | None = None,
) -> ConvertResult:
    """Convert any readable model file into weights-only safetensors or a ``.pt`` state_dict.

    Args:
        src: any file :func:`torchkeep.load_state_dict` reads (full pickled models included; no code runs).
        out: output path; its suffix picks the format: ``.safetensors``, or a ``.pt`` state_dict for
            ``.pt``/``.pth``/``.bin``/``.ckpt``; any other suffix is refused unless ``fmt`` is given
            (and a suffix of another format, such as ``.onnx``, is refused even then).
        dtype: ``fp16`` | ``bf16`` | ``fp32`` to cast floating-point tensors; None keeps every value bit for bit.
        strip_prefix: ``"auto"`` (strip ``module.`` / ``_orig_mod.`` when every key has it),
            ``"none"``, or an explicit prefix.
        fmt: ``"safetensors"``, ``"pt"`` or ``"dcp"``, for an output name whose suffix says neither.
        trust: see :func:`torchkeep.load_state_dict`.
        key: checkpoint entry holding the weights, if the automatic choice is wrong.
        dst, format: the old names of ``out`` and ``fmt`` (they warn, ``DeprecationWarning``, and still work).

    Returns:
        A :class:`ConvertResult` (the source's sha256, kind and torchkeep version are also in the file).
    """
    out = renamed_kwarg("dst", "out", dst, out, "convert")
    fmt = renamed_kwarg("format", "fmt", format, fmt, "convert")
    if out is None:
        raise UsageError("convert() needs the output path", fix="torchkeep.convert(src, out)")
    out_path = Path(out)
    fmt = output_format(out_path, fmt)
    target = None
    if dtype is not None:
        name = cast_dtype(dtype)
        if name is None:
            raise UsageError(f"unknown dtype {dtype!r}", fix="use fp16, bf16 or fp32")
        target = torch_dtype(name)
    src_path = Path(src)
    if out_path.resolve() == src_path.resolve():
        raise UsageError("the output would overwrite the input", path=out_path, fix="choose another output path")
    # hashing releases the GIL: let it run beside the read instead of after it
    with ThreadPoolExecutor(max_workers=1) as pool:
        sha = pool.submit(file_sha256, src_path)
        lw = read_weights(src_path, trust=trust, key=key)
        source_sha256 = sha.result()
    prefix = strip_common_prefix(list(lw.tensors), strip_prefix)
    tensors, cast = _renamed_and_cast(lw.tensors, prefix, target, src_path)
    kept, aliases, copied = _dedupe(tensors)
    metadata = {
        "format": "pt",
        "torchkeep.version": __version__,
        "torchkeep.source_sha256": source_sha256,
        "torchkeep.source_kind": lw.kind,
        "torchkeep.source_format": lw.format,
        "torchkeep.source_name": src_path.name,
    }
    if aliases:
        metadata["torchkeep.aliases"] = json.dumps(aliases)
    if "torchkeep.spec" in lw.metadata and not prefix:
        metadata["torchkeep.spec"] = lw.metadata["torchkeep.spec"]
    nbytes = _write(fmt, out_path, tensors, kept, metadata)
    return ConvertResult(
        source=os.fspath(src_path), destination=os.fspath(out_path), format=fmt, source_format=lw.format,
        source_kind=lw.kind, source_sha256=source_sha256, tensors=len(tensors), bytes=nbytes,
        dtype=cast_dtype(dtype) if dtype else None, cast=cast, stripped_prefix=prefix, aliases=aliases,
        copied_views=copied, scan_verdict=lw.scan_verdict, metadata=metadata,
    )


def _renamed_and_cast(tensors: Mapping[str, torch.Tensor], prefix: str | None, target: torch.dtype | None,
                      src: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors with ``prefix`` stripped from their names and floating-point ones cast to ``target``;
    and how many were cast."""
    out: dict[str, torch.Tensor] = {}
    cast = 0
    for name, t in tensors.items():
        new = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if new in out:
            raise UsageError(f"stripping {prefix!r} makes two tensors named {new!r}", path=src,
                             fix="use --strip-prefix none")
        if target is not None and t.is_floating_point() and t.dtype != target:
            t = t.to(target)
            cast += 1
        out[new] = t
    return out, cast


def _write(fmt: str, out: Path, tensors: dict[str, torch.Tensor], kept: dict[str, torch.Tensor],
           metadata: dict[str, str]) -> int:
    """Write ``fmt`` at ``out`` (safetensors: ``kept``, each tied tensor once); returns the bytes written."""
    import torch

    if fmt == "dcp":
        return write_dcp_dir(out, tensors)
    if fmt == "safetensors":
        return write_safetensors(out, kept, metadata)
    contiguous = {n: t.contiguous() if not t.is_contiguous() else t for n, t in tensors.items()}
    with atomic_path(out) as tmp:
        torch.save(contiguous, tmp)
    return out.stat().st_size
