"""``torchkeep.inspect(path)``: describe any model file without running its code or reading tensor bytes.

Builds on :mod:`torchkeep._read` (structure) and :mod:`torchkeep._weights` (where the weights are).
Never imports torch. The JSON form of :class:`Inspection` is documented in ``docs/inspect.md``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from torchkeep._dcp import training_state
from torchkeep._detect import FORMATS
from torchkeep._identify import identify
from torchkeep._keys import WRAPPER_PREFIXES, wrapper_prefix
from torchkeep._pickle import Placeholder, TensorRef, placeholder_name
from torchkeep._read import FileStructure, RawTensor, read_structure
from torchkeep._weights import WeightsView, checkpoint_entries, file_kind, find_weights
from torchkeep.models._signatures import cached as signatures_cached

__all__ = ["SCHEMA_VERSION", "DtypeTotal", "Inspection", "TensorInfo", "Totals", "inspect"]

SCHEMA_VERSION = 1

#: names of tensors that are buffers, not parameters, in standard layers
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked", "position_ids", "relative_position_index")

# classes whose appearance in a pickle is expected for plain weights
_PLAIN_GLOBALS_PREFIXES = (
    "torch._utils.", "torch._tensor.", "torch.jit._pickle.", "collections.OrderedDict", "_codecs.", "builtins.", "__builtin__.",
    "numpy",
)


@dataclass
class TensorInfo:
    """One tensor: name, shape, dtype, element count, bytes, and what is known about it."""

    name: str
    shape: list[int]
    dtype: str
    numel: int
    nbytes: int
    role: str | None = None  # "parameter" | "buffer" | None (unknown)
    storage: str | None = None  # storage key in the archive, for pickled tensors
    device: str | None = None  # where it was saved from (cpu, cuda:0, ...)
    contiguous: bool | None = None


@dataclass
class DtypeTotal:
    tensors: int = 0
    elements: int = 0
    bytes: int = 0


@dataclass
class Totals:
    """Totals over the (possibly filtered) tensors.

    ``roles`` says how parameters/buffers were told apart: ``known`` (the file records it),
    ``inferred`` (from names like ``running_mean``), or ``unknown``.
    """

    tensors: int = 0
    elements: int = 0
    bytes: int = 0
    by_dtype: dict[str, DtypeTotal] = field(default_factory=dict)
    parameters: int | None = None
    parameter_elements: int | None = None
    buffers: int | None = None
    buffer_elements: int | None = None
    roles: str = "unknown"


@dataclass
class Inspection:
    """What ``torchkeep.inspect`` found; every field is in the ``--json`` output (see docs/inspect.md)."""

    path: str
    format: str
    format_description: str
    kind: str
    size_bytes: int
    weights_location: str = ""
    model_class: str | None = None
    tensors: list[TensorInfo] = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    prefixes: list[str] = field(default_factory=list)
    shared: list[list[str]] = field(default_factory=list)
    checkpoint: list[dict[str, str]] = field(default_factory=list)
    scalars: dict[str, Any] = field(default_factory=dict)
    other_weights: list[str] = field(default_factory=list)
    attributes: list[TensorInfo] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    spec: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    looks_like: str | None = None
    filter: str | None = None
    schema_version: int = SCHEMA_VERSION

    def filtered(self, pattern: str) -> Inspection:
        """A copy keeping only tensors whose name matches the regular expression ``pattern``."""
        rx = re.compile(pattern)
        kept = [t for t in self.tensors if rx.search(t.name)]
        return replace(self, tensors=kept, totals=_totals(kept, self.totals.roles), filter=pattern)

    def tree(self, max_depth: int | None = None) -> list[dict[str, Any]]:
        """Parameters grouped into the module hierarchy: a flat list of nodes in depth-first order.

        Each node: ``path`` (dotted module path, ``""`` for the root), ``depth``, ``tensors``,
        ``elements`` (all tensors below it), ``parameters`` (elements of parameters below it, when known),
        ``own`` (names of the tensors directly in this module).
        """
        nodes: dict[str, dict[str, Any]] = {}
        for t in self.tensors:
            parts = t.name.split(".")
            depth = len(parts) - 1 if max_depth is None else min(len(parts) - 1, max_depth)
            for i in range(depth + 1):
                path = ".".join(parts[:i])
                n = nodes.setdefault(path, {"path": path, "depth": i, "tensors": 0, "elements": 0,
                                            "parameters": 0, "own": []})
                n["tensors"] += 1
                n["elements"] += t.numel
                if t.role != "buffer":
                    n["parameters"] += t.numel
            nodes[".".join(parts[:depth])]["own"].append(".".join(parts[depth:]))
        if not nodes:
            return [{"path": "", "depth": 0, "tensors": 0, "elements": 0, "parameters": 0, "own": []}]
        # dict order is first appearance; a parent always appears before its children -> depth-first
        order = {p: i for i, p in enumerate(nodes)}

        def key(p: str) -> list[int]:
            parts = p.split(".") if p else []
            return [order[".".join(parts[: i + 1])] for i in range(len(parts))]

        return [nodes[p] for p in sorted(nodes, key=key)]


def _totals(tensors: list[TensorInfo], roles: str) -> Totals:
    tot = Totals(roles=roles)
    for t in tensors:
        tot.tensors += 1
        tot.elements += t.numel
        tot.bytes += t.nbytes
        d = tot.by_dtype.setdefault(t.dtype, DtypeTotal())
        d.tensors += 1
        d.elements += t.numel
        d.bytes += t.nbytes
    if roles != "unknown":
        params = [t for t in tensors if t.role == "parameter"]
        bufs = [t for t in tensors if t.role == "buffer"]
        tot.parameters, tot.parameter_elements = len(params), sum(t.numel for t in params)
        tot.buffers, tot.buffer_elements = len(bufs), sum(t.numel for t in bufs)
    return tot


def _tensor_info(name: str, t: TensorRef | RawTensor, role: str | None) -> TensorInfo:
    if isinstance(t, TensorRef):
        return TensorInfo(
            name, list(t.shape), t.dtype, t.numel, t.nbytes, role,
            storage=t.storage.key if t.storage else None,
            device=t.storage.location if t.storage else None,
            contiguous=t.is_contiguous,
        )
    return TensorInfo(name, list(t.shape), t.dtype, t.numel, t.nbytes, role)


def _roles(view: WeightsView) -> tuple[dict[str, str | None], str]:
    if view.parameters is not None and view.buffers is not None:
        return ({n: "parameter" if n in view.parameters else "buffer" if n in view.buffers else None
                 for n in view.tensors}, "known")
    if view.source in ("state_dict", "torchscript", "checkpoint") or (view.source == "tensors" and view.tensors):
        roles: dict[str, str | None] = {}
        for n in view.tensors:
            roles[n] = "buffer" if n.rsplit(".", 1)[-1] in BUFFER_NAMES else "parameter"
        return roles, "inferred"
    return {n: None for n in view.tensors}, "unknown"


def _shared(view: WeightsView) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for n, t in view.tensors.items():
        if isinstance(t, TensorRef) and t.storage is not None:
            groups.setdefault(t.storage.view_of or t.storage.key, []).append(n)
    return [names for names in groups.values() if len(names) > 1]


def _classes(fs: FileStructure) -> list[str]:
    seen: list[str] = []
    for module, name in fs.globals_seen:
        q = f"{module}.{name}"
        if q.startswith(_PLAIN_GLOBALS_PREFIXES) or (module == "torch" and (name.endswith("Storage") or name in (
                "Size", "device") or name[:1].islower())):
            continue
        if q not in seen:
            seen.append(q)
    return seen


def _scalars(fs: FileStructure) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(fs.obj, Mapping):
        return out
    for k, v in fs.obj.items():
        if isinstance(v, bool | int | float | str) and not isinstance(v, TensorRef):
            out[str(k)] = v if not isinstance(v, str) or len(v) < 200 else v[:200] + "…"
        elif hasattr(v, "item") and getattr(v, "shape", None) == ():
            try:
                out[str(k)] = v.item()
            except Exception:
                pass
    return out


def _spec(fs: FileStructure) -> dict[str, Any] | None:
    for key in ("torchkeep.spec", "torchkeep_spec.json"):
        raw = fs.metadata.get(key)
        if raw:
            try:
                spec = json.loads(raw)
                return spec if isinstance(spec, dict) else None
            except json.JSONDecodeError:
                return None
    return None


def _details(fs: FileStructure) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if fs.format == "onnx":
        info = fs.extra["onnx"]
        d["onnx"] = {
            "ir_version": info.ir_version,
            "producer": info.producer,
            "opsets": info.opsets,
            "graph_name": info.graph_name,
            "inputs": [{"name": v.name, "dtype": v.dtype, "shape": v.shape} for v in info.inputs],
            "outputs": [{"name": v.name, "dtype": v.dtype, "shape": v.shape} for v in info.outputs],
            # every tensor the model stores (what `tensors` lists): initializers at any depth and Constant values
            "initializers": len(info.tensors),
            "stored_as": {
                "graph initializers": sum(1 for t in info.tensors if t.stored == "initializer" and not t.graph),
                "subgraph initializers": sum(1 for t in info.tensors if t.stored == "initializer" and t.graph),
                "constants": sum(1 for t in info.tensors if t.stored == "constant"),
            },
            "nodes": sum(info.op_counts.values()),
            "op_counts": dict(sorted(info.op_counts.items(), key=lambda kv: -kv[1])),
        }
    if fs.format == "torchscript":
        d["torchscript"] = {"methods": fs.extra.get("methods", {})}
    if fs.format == "torch-export" and "graph" in fs.extra:
        d["exported_program"] = fs.extra["graph"]
    if fs.format == "dcp":
        ckpt = fs.extra["dcp"]
        d["dcp"] = {
            "version": ckpt.version,
            "shards": {f: (fs.path / f).stat().st_size for f in ckpt.files if (fs.path / f).is_file()},
            "entries": len(ckpt.entries),
            "tensors": len(ckpt.tensors()),
            "pickled objects": len(ckpt.entries) - len(ckpt.tensors()),
        }
        train = training_state(ckpt)
        if train is not None:
            d["training"] = train
    if fs.extra.get("trailing_bytes"):
        d["trailing_bytes"] = fs.extra["trailing_bytes"]
    return d


def inspect(path: str | os.PathLike[str]) -> Inspection:
    """Describe a model file: format, kind, every tensor, totals, checkpoint entries, spec, metadata.

    No code from the file runs, no tensor bytes are read, and torch is not imported.

    Args:
        path: any file torchkeep reads (see ``torchkeep._detect.FORMATS``).

    Returns:
        An :class:`Inspection`.

    Raises:
        InputError: missing, unreadable, empty, corrupt or truncated file.
        UnknownFormatError: the bytes match no known format (the message says what they look like).
    """
    fs = read_structure(path)
    view = find_weights(fs)
    roles, role_source = _roles(view)
    tensors = [_tensor_info(n, t, roles.get(n)) for n, t in view.tensors.items()]
    kind = file_kind(fs, view)
    ins = Inspection(
        path=os.fspath(fs.path),
        format=fs.format,
        format_description=FORMATS[fs.format],
        kind=kind,
        size_bytes=fs.detected.size,
        weights_location=view.location,
        model_class=view.model_class,
        tensors=tensors,
        totals=_totals(tensors, role_source),
        prefixes=[p] if (p := wrapper_prefix(view.tensors)) else [],
        shared=_shared(view),
        checkpoint=[{"key": k, "role": r, "value": v} for k, r, v in checkpoint_entries(fs, view)],
        scalars=_scalars(fs) if kind == "checkpoint" else {},
        other_weights=view.others,
        attributes=[_tensor_info(n, t, "attribute") for n, t in view.attributes.items()],
        classes=_classes(fs),
        devices=sorted({t.device for t in tensors if t.device}),
        spec=_spec(fs),
        metadata={k: v for k, v in fs.metadata.items() if k not in ("torchkeep.spec", "torchkeep_spec.json")},
        details=_details(fs),
    )
    ins.notes = _notes(ins, fs)
    ins.looks_like = _looks_like(ins)
    return ins


def _looks_like(ins: Inspection) -> str | None:
    """What ``torchkeep identify`` says of weights without a spec (``resnet18, 10 classes, head replaced``),
    when the architectures' signatures are cached: inspect builds none (that imports torch and takes seconds)."""
    if ins.spec is not None or ins.kind not in ("state_dict", "checkpoint", "full_model", "tensors") or not ins.tensors:
        return None
    if not signatures_cached():
        return None
    try:
        return identify({t.name: tuple(t.shape) for t in ins.tensors}, top=1).summary()
    except Exception:  # a description, not a verdict: inspect never fails for it
        return None


def _notes(ins: Inspection, fs: FileStructure) -> list[str]:
    notes: list[str] = []
    if ins.kind == "full_model":
        notes.append(
            f"a full pickled model of class {ins.model_class}: torch.load would import and run that class's code; "
            "the weights can be read safely with `torchkeep convert` / torchkeep.load_state_dict"
        )
    if ins.attributes:
        names = ", ".join(t.name for t in ins.attributes[:5]) + (", …" if len(ins.attributes) > 5 else "")
        notes.append(
            f"{len(ins.attributes)} more tensor(s) are neither parameters nor buffers, so not in the module's "
            f"state_dict() and not returned as weights: {names} (listed under `attributes`)"
        )
    if ins.kind == "state_dict":
        notes.append("weights only: the network structure is not in the file (pick an architecture with `torchkeep adapt`)")
    for p in ins.prefixes:
        who = WRAPPER_PREFIXES.get(p.split(".")[0] + ".", "a wrapper")
        notes.append(f"every key starts with {p!r} ({who}); `torchkeep adapt` strips it when that makes keys match")
    gpu = [d for d in ins.devices if not d.startswith("cpu")]
    if gpu:
        notes.append(f"saved from {', '.join(gpu)}: torchkeep loads it on the CPU (torch.load needs map_location='cpu')")
    if ins.shared:
        notes.append(f"{len(ins.shared)} group(s) of tensors share storage (tied weights or views)")
    if ins.totals.roles == "inferred":
        notes.append("parameters vs buffers inferred from names (running_mean, running_var, num_batches_tracked...)")
    custom = [c for c in ins.classes if not c.startswith("torch.")]
    if custom and ins.kind != "torchscript" and fs.format != "dcp":  # DCP's own metadata classes
        notes.append(f"the pickle names classes outside torch: {', '.join(custom[:5])} — run `torchkeep scan` before torch.load")
    if fs.extra.get("trailing_bytes"):
        notes.append(f"{fs.extra['trailing_bytes']} bytes follow the end of the pickle (suspicious; run `torchkeep scan`)")
    if fs.format == "onnx" and fs.extra["onnx"].skipped:
        skipped = fs.extra["onnx"].skipped
        notes.append(f"{len(skipped)} stored tensor(s) are not numeric weights and are not listed: "
                     + ", ".join(skipped[:5]) + (", …" if len(skipped) > 5 else ""))
    if isinstance(fs.obj, Placeholder) and ins.kind == "object":
        notes.append(f"the file holds one object of class {placeholder_name(fs.obj)}")
    return notes
