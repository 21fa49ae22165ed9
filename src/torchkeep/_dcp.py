"""torch.distributed.checkpoint (DCP) directories, read without torch and without running the metadata pickle.

A DCP checkpoint is a directory: ``.metadata`` (a pickle of ``torch.distributed.checkpoint.metadata.Metadata``)
and ``__<rank>_<n>.distcp`` files. The metadata names every entry of the flattened state dict (``model.fc.weight``,
``optimizer.state.fc.weight.exp_avg``, ``optimizer.param_groups.0.lr``): a tensor (dtype, global shape, the chunks
it was saved in) or a byte blob (any other object). ``storage_data`` says where each chunk's bytes are: a
relative file, an offset and a length. With the default (``torch_save``) serialization each chunk is one
``torch.save`` archive of a tensor; each byte blob is one ``torch.save`` archive of the object, which
``torch.distributed.checkpoint`` loads with ``weights_only=False`` (so the scan judges every blob).

The metadata is read with torchkeep's restricted unpickler (:mod:`torchkeep._pickle`): DCP's own classes stay
inert placeholders whose state is read here.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep._detect import DCP_METADATA as METADATA
from torchkeep._detect import is_dcp_dir
from torchkeep._pickle import DTypeRef, PickleReadError, Placeholder, StorageRef, TensorRef, read_pickle
from torchkeep.errors import InputError

__all__ = [
    "METADATA", "TRAIN_ENTRY", "DcpCheckpoint", "DcpChunk", "DcpEntry", "DcpObject", "is_dcp_dir", "read_chunk",
    "read_dcp", "read_entry_blob", "state_tree", "training_state",
]

#: the entry ``torchkeep train --checkpoint-format dcp`` keeps its training state in (a uint8 tensor holding a
#: ``torch.save`` archive that loads with ``weights_only=True``)
TRAIN_ENTRY = "train"
_TRAIN_FIELDS = ("epoch", "step", "batch_in_epoch", "sample_in_epoch", "world", "best_value", "best_epoch")


@dataclass
class DcpChunk:
    """One saved piece of a tensor: where it sits in the whole tensor and where its bytes are."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str  # relative to the checkpoint directory
    offset: int
    length: int


@dataclass
class DcpEntry:
    """One entry of the flattened state dict: a tensor (``dtype`` and ``shape`` set) or a byte blob."""

    name: str
    kind: str  # "tensor" or "bytes"
    path: tuple[Any, ...]  # where it goes in the nested state dict (planner_data), e.g. ("model", "fc.weight")
    dtype: str | None = None
    shape: tuple[int, ...] = ()
    chunks: list[DcpChunk] = field(default_factory=list)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


@dataclass
class DcpCheckpoint:
    """What ``.metadata`` says a DCP directory holds."""

    path: Path
    entries: dict[str, DcpEntry]
    files: list[str]  # the data files the entries point into
    version: str | None
    globals_seen: list[tuple[str, str]]

    def tensors(self) -> dict[str, DcpEntry]:
        return {k: e for k, e in self.entries.items() if e.kind == "tensor"}


def _state(obj: Any, what: str, path: Path) -> dict[str, Any]:
    if not isinstance(obj, Placeholder):
        raise InputError(f"the DCP metadata holds {type(obj).__name__} where a {what} was expected", path=path)
    return obj.tk_state_dict


def _dtype(props: Any) -> str | None:
    st = props._tk_state if isinstance(props, Placeholder) else None
    if isinstance(st, tuple) and st and isinstance(st[0], DTypeRef):  # TensorProperties.__getstate__: (dtype, ...)
        return st[0].name
    d = props.tk_state_dict.get("dtype") if isinstance(props, Placeholder) else None
    return d.name if isinstance(d, DTypeRef) else None


def _ints(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in (v or ()))


def read_dcp(path: str | os.PathLike[str]) -> DcpCheckpoint:
    """Read a DCP directory's ``.metadata`` (no torch, nothing run).

    Raises:
        InputError: not a DCP directory, or its metadata is not DCP's.
    """
    p = Path(path)
    meta_path = p / METADATA
    if not meta_path.is_file():
        raise InputError("not a DCP checkpoint (no .metadata file)", path=p, fix="name a directory written by torch.distributed.checkpoint")
    try:
        res = read_pickle(meta_path.read_bytes())
    except PickleReadError as exc:
        raise InputError(f"the DCP metadata cannot be read ({exc})", path=meta_path) from None
    except OSError as exc:
        raise InputError(f"cannot read the DCP metadata ({exc.strerror or exc})", path=meta_path) from None
    md = _state(res.obj, "Metadata", meta_path)
    sdm = md.get("state_dict_metadata")
    if not isinstance(sdm, dict):
        raise InputError("the DCP metadata has no state_dict_metadata", path=meta_path)
    planner_data = md.get("planner_data")
    planner: dict[Any, Any] = planner_data if isinstance(planner_data, dict) else {}
    entries: dict[str, DcpEntry] = {}
    for name, m in sdm.items():
        st = _state(m, "storage metadata", meta_path)
        where = tuple(planner.get(name) or (name,))
        if placeholder_kind(m) == "TensorStorageMetadata":
            chunks = [
                DcpChunk(_ints(c.tk_state_dict.get("offsets")), _ints(c.tk_state_dict.get("sizes")), "", 0, 0)
                for c in st.get("chunks") or [] if isinstance(c, Placeholder)
            ]
            entries[str(name)] = DcpEntry(str(name), "tensor", where, _dtype(st.get("properties")), _ints(st.get("size")), chunks)
        else:
            entries[str(name)] = DcpEntry(str(name), "bytes", where)
    files: list[str] = []
    storage_data = md.get("storage_data")
    storage: dict[Any, Any] = storage_data if isinstance(storage_data, dict) else {}
    for idx, info in storage.items():
        ist = _state(idx, "MetadataIndex", meta_path)
        sst = _state(info, "storage info", meta_path)
        e = entries.get(str(ist.get("fqn")))
        if e is None:
            continue
        rel = str(sst.get("relative_path"))
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise InputError(f"the DCP metadata points outside its directory ({rel})", path=meta_path)
        if rel not in files:
            files.append(rel)
        off, length = int(sst.get("offset") or 0), int(sst.get("length") or 0)
        if e.kind == "bytes":
            e.chunks = [DcpChunk((), (), rel, off, length)]
            continue
        at = _ints(ist.get("offset"))
        for c in e.chunks:
            if c.offsets == at or (not at and len(e.chunks) == 1):
                c.file, c.offset, c.length = rel, off, length
    return DcpCheckpoint(p, entries, sorted(files), md.get("version"), res.globals_seen)


def placeholder_kind(obj: Any) -> str:
    """The class name of a DCP metadata placeholder (``TensorStorageMetadata``...)."""
    return obj._tk_name if isinstance(obj, Placeholder) else type(obj).__name__


def read_chunk(ckpt: DcpCheckpoint, chunk: DcpChunk) -> bytes:
    """The bytes of one chunk or blob (a ``torch.save`` archive with the default serialization)."""
    with open(ckpt.path / chunk.file, "rb") as fh:
        fh.seek(chunk.offset)
        data = fh.read(chunk.length)
    if len(data) != chunk.length:
        raise InputError(f"{chunk.file} is truncated (an entry ends past the end of the file)", path=ckpt.path / chunk.file)
    return data


def read_entry_blob(path: str | os.PathLike[str], name: str) -> bytes:
    """The stored bytes of a one-chunk entry (KeyError when there is none by that name)."""
    ckpt = read_dcp(path)
    e = ckpt.entries.get(name)
    if e is None or len(e.chunks) != 1:
        raise KeyError(name)
    return read_chunk(ckpt, e.chunks[0])


@dataclass(eq=False)
class DcpObject:
    """A non-tensor entry (a pickled Python object: a learning rate, a list of names...); never unpickled here."""

    name: str
    nbytes: int

    def __repr__(self) -> str:
        return f"<pickled object {self.name}, {self.nbytes} bytes>"


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= max(int(size), 1)
    return tuple(reversed(stride))


def state_tree(ckpt: DcpCheckpoint) -> dict[Any, Any]:
    """The nested state dict the checkpoint was saved from (as ``planner_data`` records it), with tensors as
    :class:`TensorRef` (storage key: the entry's flat name) and other objects as :class:`DcpObject`."""
    root: dict[Any, Any] = {}
    for e in ckpt.entries.values():
        if e.kind == "tensor" and e.dtype is not None:
            leaf: Any = TensorRef(
                StorageRef(e.name, e.dtype, "cpu", e.numel), 0, e.shape, _contiguous(e.shape), e.dtype
            )
        else:
            leaf = DcpObject(e.name, sum(c.length for c in e.chunks))
        node = root
        *parents, last = e.path or (e.name,)
        for k in parents:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[last] = leaf
    return root


def _zip_member(data: bytes, suffix: str) -> bytes | None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        name = next((n for n in zf.namelist() if n.endswith(suffix)), None)
        return zf.read(name) if name is not None else None


def training_state(ckpt: DcpCheckpoint) -> dict[str, Any] | None:
    """The resume state a torchkeep training run keeps in the checkpoint (epoch, step, samples of the epoch
    consumed, world size, arch, data...), read without torch; None for other DCP checkpoints."""
    e = ckpt.entries.get(TRAIN_ENTRY)
    if e is None or e.kind != "tensor" or e.dtype != "uint8" or len(e.chunks) != 1:
        return None
    try:
        inner = _zip_member(read_chunk(ckpt, e.chunks[0]), "/data/0")  # the uint8 tensor's bytes
        pkl = _zip_member(inner, "/data.pkl") if inner else None
        state = read_pickle(pkl).obj if pkl else None
    except (zipfile.BadZipFile, PickleReadError, InputError, OSError):
        return None
    if not isinstance(state, dict) or state.get("format") != "torchkeep.train-checkpoint":
        return None
    out = {k: state[k] for k in _TRAIN_FIELDS if isinstance(state.get(k), int | float | str)}
    config = state.get("config")
    cfg: dict[str, Any] = config if isinstance(config, dict) else {}
    out.update({k: cfg[k] for k in ("arch", "data", "epochs", "batch_size", "seed") if k in cfg})
    return out
