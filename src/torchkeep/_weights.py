"""Find the model weights inside a file's structure, and describe a checkpoint's other entries.

Works on :class:`torchkeep._read.FileStructure` (no torch, no tensor bytes): a bare state_dict, a
training checkpoint (``state_dict`` / ``model_state_dict`` / ``model`` / ``ema`` …), a full pickled
``nn.Module`` (its placeholders' ``_parameters`` / ``_buffers`` / ``_modules`` give the same dotted
names ``model.state_dict()`` would), a TorchScript module, or a tensor container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchkeep._pickle import Placeholder, TensorRef, placeholder_name
from torchkeep._read import FileStructure, RawTensor, iter_tensor_refs

__all__ = [
    "WEIGHT_KEYS", "WeightsView", "checkpoint_entries", "file_kind", "find_weights", "is_module_placeholder",
    "wrapper_prefix",
]

#: checkpoint keys that hold model weights, most preferred first
WEIGHT_KEYS = (
    "state_dict", "model_state_dict", "model", "module", "net", "network", "params", "weights",
    "model_ema", "ema", "ema_state_dict", "state_dict_ema", "ema_model", "teacher", "student", "generator",
)

AnyTensor = TensorRef | RawTensor


@dataclass
class WeightsView:
    """The model weights a file holds, as flat dotted names.

    Attributes:
        tensors: name -> tensor description, in file order.
        location: where they live: ``""`` (the file is the state_dict), a checkpoint key such as
            ``"model_state_dict"``, or ``"(full model)"``.
        source: ``state_dict`` | ``full_model`` | ``torchscript`` | ``tensors`` | ``checkpoint`` | ``none``.
        model_class: class of a pickled full model / TorchScript module (``__main__.Net``).
        parameters / buffers: names known to be parameters / buffers, or None if unknown.
        others: other checkpoint keys that also hold weight sets (e.g. ``ema``).
    """

    tensors: dict[str, AnyTensor] = field(default_factory=dict)
    location: str = ""
    source: str = "none"
    model_class: str | None = None
    parameters: set[str] | None = None
    buffers: set[str] | None = None
    others: list[str] = field(default_factory=list)


def is_module_placeholder(obj: Any) -> bool:
    """True for a placeholder of a pickled ``nn.Module`` (its state has ``_parameters``/``_modules``)."""
    if not isinstance(obj, Placeholder):
        return False
    st = obj.tk_state_dict
    return "_parameters" in st or "_modules" in st


def _is_torchscript_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder) and obj._tk_module.startswith("__torch__")


def _module_state(obj: Placeholder, prefix: str, view: WeightsView, seen: set[int], depth: int = 0) -> None:
    if id(obj) in seen or depth > 200:
        return
    seen.add(id(obj))
    st = obj.tk_state_dict
    non_persistent = st.get("_non_persistent_buffers_set") or set()
    params = st.get("_parameters") or {}
    buffers = st.get("_buffers") or {}
    assert view.parameters is not None and view.buffers is not None
    if isinstance(params, Mapping):
        for k, v in params.items():
            if isinstance(v, TensorRef):
                view.tensors[prefix + str(k)] = v
                view.parameters.add(prefix + str(k))
    if isinstance(buffers, Mapping):
        for k, v in buffers.items():
            if isinstance(v, TensorRef) and k not in non_persistent:
                view.tensors[prefix + str(k)] = v
                view.buffers.add(prefix + str(k))
    modules = st.get("_modules") or {}
    if isinstance(modules, Mapping):
        for k, v in modules.items():
            if is_module_placeholder(v):
                _module_state(v, f"{prefix}{k}.", view, seen, depth + 1)


def _torchscript_state(obj: Placeholder, prefix: str, view: WeightsView, seen: set[int], depth: int = 0) -> None:
    if id(obj) in seen or depth > 200:
        return
    seen.add(id(obj))
    for k, v in obj.tk_state_dict.items():
        if isinstance(v, TensorRef):
            view.tensors[prefix + str(k)] = v
        elif _is_torchscript_placeholder(v):
            _torchscript_state(v, f"{prefix}{k}.", view, seen, depth + 1)


def _as_tensor(v: Any) -> AnyTensor | None:
    """A tensor description for a pickled tensor or a numeric numpy array, else None."""
    if isinstance(v, TensorRef):
        return v
    dtype = getattr(v, "dtype", None)
    if type(v).__name__ == "ndarray" and dtype is not None and not dtype.hasobject and dtype.kind in "biufc":
        return RawTensor(str(dtype.name), tuple(int(d) for d in v.shape), 0, int(v.nbytes), array=v)
    return None


def _tensor_mapping(obj: Any) -> bool:
    """A mapping whose values are all tensors or numeric arrays (or None), with at least one of them."""
    if not isinstance(obj, Mapping) or not obj:
        return False
    vals = [v for v in obj.values() if v is not None]
    return bool(vals) and all(_as_tensor(v) is not None for v in vals)


def _from_module(obj: Placeholder, location: str) -> WeightsView:
    view = WeightsView(location=location, source="full_model", model_class=obj.tk_qualname, parameters=set(), buffers=set())
    _module_state(obj, "", view, set())
    return view


def _from_mapping(obj: Mapping, location: str, source: str) -> WeightsView:
    tensors: dict[str, AnyTensor] = {}
    for k, v in obj.items():
        t = _as_tensor(v)
        if t is not None:
            tensors[str(k)] = t
    return WeightsView(tensors=tensors, location=location, source=source)


def _weights_in(value: Any, location: str) -> WeightsView | None:
    if is_module_placeholder(value):
        return _from_module(value, location)
    if _tensor_mapping(value):
        return _from_mapping(value, location, "state_dict")
    return None


def find_weights(fs: FileStructure, key: str | None = None) -> WeightsView:
    """Locate the model weights in ``fs``; ``key`` forces a checkpoint entry (dotted for nesting)."""
    obj = fs.obj
    if fs.format in ("safetensors", "numpy", "numpy-npz", "torch-export", "onnx"):
        tensors = dict(obj)
        params = {k for k, v in tensors.items() if v.is_parameter} if fs.format == "torch-export" else None
        buffers = (set(tensors) - params) if params is not None else None
        return WeightsView(tensors=tensors, source="tensors", parameters=params, buffers=buffers)
    if fs.format == "torchscript" and isinstance(obj, Placeholder):
        view = WeightsView(location="", source="torchscript", model_class=obj.tk_qualname)
        _torchscript_state(obj, "", view, set())
        return view
    if key is not None:
        cur = obj
        for part in key.split("."):
            if isinstance(cur, Mapping) and part in cur:
                cur = cur[part]
            else:
                return WeightsView(location=key, source="none")
        return _weights_in(cur, key) or WeightsView(location=key, source="none")
    if isinstance(obj, TensorRef):
        return WeightsView(tensors={"tensor": obj}, source="tensors")
    found = _weights_in(obj, "")
    if found is not None:
        if found.source == "full_model":
            found.location = "(full model)"
        return found
    if isinstance(obj, Mapping):
        views: list[WeightsView] = []
        for k in WEIGHT_KEYS:
            if k in obj:
                v = _weights_in(obj[k], str(k))
                if v is not None:
                    views.append(v)
        if not views:  # unknown key names: any entry that holds weights, the largest first
            cands = [(k, _weights_in(v, str(k))) for k, v in obj.items()]
            views = sorted((v for _, v in cands if v is not None), key=lambda v: -sum(t.numel for t in v.tensors.values()))
        if views:
            best = views[0]
            best.others = [v.location for v in views[1:]]
            return best
    # fall back: every tensor reachable in the object tree
    tensors = dict(iter_tensor_refs(obj))
    return WeightsView(tensors=tensors, location="(all tensors)" if tensors else "", source="checkpoint" if tensors else "none")


def _role(key: str, value: Any, weights_location: str) -> str:
    k = key.lower()
    if key == weights_location:
        return "model weights"
    if _weights_in(value, key) is not None:
        return "other weights" if "optim" not in k else "optimizer state"
    if isinstance(value, Mapping) and ("param_groups" in value or "optim" in k):
        return "optimizer state"
    if "sched" in k or (isinstance(value, Mapping) and "last_epoch" in value and "base_lrs" in value):
        return "scheduler state"
    if "scaler" in k:
        return "grad scaler state"
    if "rng" in k or "random" in k or "seed" in k:
        return "RNG state"
    if isinstance(value, bool | int | float | str) or value is None:
        return "scalar"
    if hasattr(value, "dtype") and hasattr(value, "shape") and getattr(value, "shape", None) == ():
        return "scalar"
    if isinstance(value, Placeholder):
        return f"object {placeholder_name(value)}"
    if isinstance(value, Mapping):
        return "config" if all(isinstance(v, str | int | float | bool | type(None) | list) for v in value.values()) else "dict"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def checkpoint_entries(fs: FileStructure, weights: WeightsView) -> list[tuple[str, str, str]]:
    """(key, role, short description) for each top-level entry of a checkpoint dict."""
    obj = fs.obj
    if not isinstance(obj, Mapping) or weights.location in ("", "(full model)"):
        return []
    out = []
    for key, value in obj.items():
        role = _role(str(key), value, weights.location)
        out.append((str(key), role, _short(value)))
    return out


def _short(value: Any) -> str:
    if isinstance(value, bool | int | float | str) or value is None:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        try:
            return repr(value.item())
        except Exception:
            return "numpy scalar"
    if isinstance(value, TensorRef):
        return f"tensor {value.dtype}{list(value.shape)}"
    if isinstance(value, Placeholder):
        st = value.tk_state_dict
        if st and not is_module_placeholder(value):
            items = ", ".join(f"{k}={v!r}" for k, v in list(st.items())[:4])
            return f"{placeholder_name(value)}({items}{', …' if len(st) > 4 else ''})"[:80]
        return f"{placeholder_name(value)}"
    if isinstance(value, Mapping):
        n_t = sum(1 for _ in iter_tensor_refs(value))
        return f"dict, {len(value)} keys" + (f", {n_t} tensors" if n_t else "")
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def file_kind(fs: FileStructure, view: WeightsView) -> str:
    """What the file is for a user: state_dict, checkpoint, full_model, torchscript, onnx, model_file... """
    fmt = fs.format
    if fmt == "torchscript":
        return "torchscript"
    if fmt == "torch-export":
        return "exported_program"
    if fmt == "onnx":
        return "onnx"
    if fmt == "safetensors" and "torchkeep.spec" in fs.metadata:
        return "model_file"
    if fmt in ("safetensors", "numpy", "numpy-npz"):
        return "tensors"
    if view.location == "(full model)":
        return "full_model"
    if view.source == "state_dict" and view.location == "":
        return "state_dict"
    if isinstance(fs.obj, Mapping) and view.tensors:
        return "checkpoint"
    if isinstance(fs.obj, TensorRef):
        return "tensors"
    return "object"


def wrapper_prefix(names: list[str], known: tuple[str, ...]) -> str:
    """The chain of ``known`` wrapper prefixes every name shares (``module.``, ``module._orig_mod.``), or ``""``."""
    prefix = ""
    rest = names
    while rest:
        p = next((k for k in known if all(n.startswith(k) for n in rest)), None)
        if p is None:
            break
        prefix += p
        rest = [n[len(p):] for n in rest]
    return prefix
