"""Find the model weights inside a file's structure, and describe a checkpoint's other entries.

The rule "which entry of a checkpoint holds the model weights" lives in :mod:`torchkeep._locate`;
:func:`find_weights` applies it to a file's structure (``inspect``, ``convert``, ``load_state_dict``,
``diff`` and ``adapt`` of a path all go through it) and :func:`find_weights_in_object` to objects in
memory (``load_into(model, checkpoint_dict)``, a trusted ``torch.load``).

Works on :class:`torchkeep._read.FileStructure` (no torch, no tensor bytes): a bare state_dict, a
training checkpoint, a full pickled ``nn.Module`` (its placeholders' ``_parameters`` / ``_buffers`` /
``_modules`` give the same dotted names ``model.state_dict()`` would), a TorchScript module (its
``state_dict()``: the parameters and buffers its classes declare), or a tensor container.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchkeep._locate import (
    EMA_KEYS,
    MAX_DEPTH,
    WEIGHT_KEYS,
    Leaves,
    Location,
    locate,
    tensors_under,
    training_state,
)
from torchkeep._pickle import Placeholder, TensorRef, placeholder_name
from torchkeep._read import FileStructure, RawTensor, TorchScriptClass, iter_tensor_refs, read_structure
from torchkeep.errors import InputError, TorchkeepError

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMA_KEYS", "MAX_DEPTH", "WEIGHT_KEYS", "Leaves", "Location", "WeightsView", "checkpoint_entries",
    "explain_full_model", "file_kind",
    "find_weights", "find_weights_in_object", "is_module_placeholder", "locate", "training_state",
]

AnyTensor = TensorRef | RawTensor


# ----------------------------------------------------------------------------- file structures


@dataclass
class WeightsView:
    """The model weights a file holds, as flat dotted names.

    Attributes:
        tensors: name -> tensor description, in file order.
        location: where they live: ``""`` (the file is the state_dict), a dotted checkpoint path such as
            ``"model_state_dict"`` or ``"model.state_dict"``, ``"(full model)"``, or ``"(all tensors)"``
            (every tensor of the file outside training state).
        source: ``state_dict`` | ``full_model`` | ``torchscript`` | ``tensors`` | ``checkpoint`` | ``none``.
        model_class: class of a pickled full model / TorchScript module (``__main__.Net``).
        parameters / buffers: names known to be parameters / buffers, or None if unknown.
        others: other checkpoint paths that also hold weight sets (e.g. ``ema``).
        attributes: tensors the file holds beside the weights: tensor attributes of a TorchScript module
            that are neither parameters nor buffers (not in its ``state_dict()``), and its code constants.
    """

    tensors: dict[str, AnyTensor] = field(default_factory=dict)
    location: str = ""
    source: str = "none"
    model_class: str | None = None
    parameters: set[str] | None = None
    buffers: set[str] | None = None
    others: list[str] = field(default_factory=list)
    attributes: dict[str, AnyTensor] = field(default_factory=dict)


def is_module_placeholder(obj: Any) -> bool:
    """True for a placeholder of a pickled ``nn.Module`` (its state has ``_parameters``/``_modules``)."""
    if not isinstance(obj, Placeholder):
        return False
    st = obj.tk_state_dict
    return "_parameters" in st or "_modules" in st


def _module_state(obj: Placeholder, prefix: str, view: WeightsView, seen: set[int], depth: int = 0) -> None:
    # ``seen`` holds the modules above this one (a cycle guard): a module shared by two parents is listed
    # under both names, as state_dict() lists it
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
    seen.discard(id(obj))


def _torchscript_state(
    obj: Placeholder, prefix: str, view: WeightsView, classes: Mapping[str, TorchScriptClass], seen: set[int],
    depth: int = 0,
) -> bool:
    """Fill ``view`` with the ``state_dict()`` of a scripted module: its parameters, then the buffers its class
    declares (in slot order; TorchScript keeps no persistence flag, so every buffer), then each submodule's.
    Other tensor attributes go to ``view.attributes``. A class whose code is missing keeps every tensor
    attribute as a weight; returns False when that happened (parameters and buffers are then not known)."""
    if id(obj) in seen or depth > 200:
        return True
    seen.add(id(obj))
    st = obj.tk_state_dict
    cls = classes.get(obj.tk_qualname)
    assert view.parameters is not None and view.buffers is not None
    params = [k for k, v in st.items() if isinstance(v, TensorRef) and (cls is None or k in cls.parameters)]
    buffers = [k for k, v in st.items() if isinstance(v, TensorRef) and cls is not None and k in cls.buffers]
    for names, kind in ((params, view.parameters), (buffers, view.buffers)):
        for k in names:
            view.tensors[prefix + str(k)] = st[k]
            kind.add(prefix + str(k))
    submodules = []
    for k, v in st.items():
        if k in params or k in buffers:
            continue
        sub = classes.get(v.tk_qualname) if isinstance(v, Placeholder) else None
        if isinstance(v, Placeholder) and v._tk_module.startswith("__torch__") and (sub is None or sub.is_module):
            submodules.append((k, v))  # after this module's own tensors, as in state_dict()
            continue
        for name, t in _script_tensors(v, f"{prefix}{k}"):
            view.attributes.setdefault(name, t)
    known = cls is not None
    for k, v in submodules:
        known &= _torchscript_state(v, f"{prefix}{k}.", view, classes, seen, depth + 1)
    seen.discard(id(obj))  # a cycle guard only: a shared submodule is listed under each name
    return known


def _script_tensors(v: Any, name: str, depth: int = 0) -> Iterator[tuple[str, TensorRef]]:
    """Tensors in a TorchScript attribute value: lists and dicts of tensors are pickled as calls of
    ``torch.jit._pickle`` helpers (``build_tensorlist([...])``, ``restore_type_tag({...}, "Dict[...]")``)."""
    if depth > 50:
        return
    if isinstance(v, Placeholder) and v._tk_module == "torch.jit._pickle" and v._tk_args:
        v = v._tk_args[0]
    if isinstance(v, TensorRef):
        yield name, v
    elif isinstance(v, Mapping):
        for k, x in v.items():
            yield from _script_tensors(x, f"{name}.{k}", depth + 1)
    elif isinstance(v, list | tuple):
        for i, x in enumerate(v):
            yield from _script_tensors(x, f"{name}.{i}", depth + 1)
    elif isinstance(v, Placeholder):
        yield from _script_tensors(v.tk_state_dict, name, depth + 1)


def _as_tensor(v: Any) -> AnyTensor | None:
    """A tensor description for a pickled tensor or a numeric numpy array, else None."""
    if isinstance(v, TensorRef):
        return v
    dtype = getattr(v, "dtype", None)
    if type(v).__name__ == "ndarray" and dtype is not None and not dtype.hasobject and dtype.kind in "biufc":
        return RawTensor(str(dtype.name), tuple(int(d) for d in v.shape), 0, int(v.nbytes), array=v)
    return None


def _from_module(obj: Placeholder, location: str) -> WeightsView:
    view = WeightsView(location=location, source="full_model", model_class=obj.tk_qualname, parameters=set(), buffers=set())
    _module_state(obj, "", view, set())
    return view


def _placeholder_contents(v: Any) -> Mapping[Any, Any] | None:
    if not isinstance(v, Placeholder):
        return None
    return {**v.tk_state_dict, **{k: x for k, x in v._tk_items.items() if isinstance(k, str | int)}}


#: the rule's view of a file's object tree: tensors are descriptions, modules are placeholders
FILE_LEAVES = Leaves(
    tensor=_as_tensor,
    module=lambda v: _from_module(v, "").tensors if is_module_placeholder(v) else None,
    numel=lambda t: t.numel,
    contents=_placeholder_contents,
)


def _view_at(loc: Location) -> WeightsView:
    where = loc.key
    others = [".".join(p) for p in loc.others]
    if loc.whole:
        tensors = dict(tensors_under(loc.node, FILE_LEAVES))
        return WeightsView(tensors=tensors, location=where or "(all tensors)", source="checkpoint", others=others)
    if is_module_placeholder(loc.node):
        view = _from_module(loc.node, where or "(full model)")
    else:
        view = WeightsView(tensors=dict(FILE_LEAVES.weight_set(loc.node) or {}), location=where, source="state_dict")
    view.others = others
    return view


def find_weights(fs: FileStructure, key: str | None = None) -> WeightsView:
    """Locate the model weights in ``fs`` with the rule of this module; ``key`` forces a checkpoint entry
    (dotted for nesting). Raises UsageError when ``key`` names no entry holding weights (listing those that do)."""
    obj = fs.obj
    if fs.format in ("safetensors", "numpy", "numpy-npz", "torch-export", "onnx"):
        tensors = dict(obj)
        params = {k for k, v in tensors.items() if v.is_parameter} if fs.format == "torch-export" else None
        buffers = (set(tensors) - params) if params is not None else None
        return WeightsView(tensors=tensors, source="tensors", parameters=params, buffers=buffers)
    if fs.format == "torchscript" and isinstance(obj, Placeholder):
        view = WeightsView(location="", source="torchscript", model_class=obj.tk_qualname, parameters=set(), buffers=set())
        if not _torchscript_state(obj, "", view, fs.extra.get("torchscript_classes") or {}, set()):
            view.parameters = view.buffers = None  # some class code is missing: roles are inferred from names
        for i, t in enumerate(fs.constants if isinstance(fs.constants, tuple | list) else ()):
            if isinstance(t, TensorRef):
                view.attributes[f"CONSTANTS.c{i}"] = t
        return view
    if isinstance(obj, TensorRef) and key is None:
        return WeightsView(tensors={"tensor": obj}, source="tensors")
    loc = locate(obj, FILE_LEAVES, key)
    if loc is None:
        return WeightsView(source="none")
    return _view_at(loc)


# ------------------------------------------------------------------------------ objects in memory


def _torch_leaves() -> Leaves:
    import torch

    def module(v: Any) -> Mapping[str, Any] | None:
        if not isinstance(v, torch.nn.Module):
            return None
        return {k: t for k, t in v.state_dict().items() if isinstance(t, torch.Tensor)}

    return Leaves(tensor=lambda v: v if isinstance(v, torch.Tensor) else None, module=module,
                  numel=lambda t: t.numel())


def find_weights_in_object(obj: Any, key: str | None = None) -> tuple[dict[str, torch.Tensor], Location | None]:
    """The same rule as :func:`find_weights`, on objects in memory (a checkpoint dict, an ``nn.Module``).

    Returns (name -> tensor, where they were found); ``({}, None)`` when ``obj`` holds no tensor.
    """
    lv = _torch_leaves()
    if lv.tensor(obj) is not None and key is None:
        return {"tensor": obj}, None
    loc = locate(obj, lv, key)
    if loc is None:
        return {}, None
    if loc.whole:
        return dict(tensors_under(loc.node, lv)), loc
    return dict(lv.weight_set(loc.node) or {}), loc


# ------------------------------------------------------------------------------- description


def _role(key: str, value: Any, weights: WeightsView) -> str:
    loc = weights.location
    if key == loc or loc.startswith(key + ".") or (loc == "(all tensors)" and _as_tensor(value) is not None):
        return "model weights"
    state = training_state(key, value)
    if state is not None:
        return state
    if any(key == o or o.startswith(key + ".") for o in weights.others) or FILE_LEAVES.weight_set(value) is not None:
        return "other weights"
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
    return [(str(key), _role(str(key), value, weights), _short(value)) for key, value in obj.items()]


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


def explain_full_model(path: str | os.PathLike[str]) -> InputError | None:
    """The error for a full pickled model (``torch.save(model)``) where a model file was expected: its class
    and the command that turns it into a model file. None when ``path`` is not a full pickled model."""
    try:
        fs = read_structure(path)
        view = find_weights(fs)
    except TorchkeepError:
        return None
    if file_kind(fs, view) != "full_model":
        return None
    cls = view.model_class or "unknown"
    short = cls.rsplit(".", 1)[-1]
    return InputError(
        f"is a full pickled model of class {cls} (torch.save(model)), not a torchkeep model file: loading it "
        f"would import and run the code of {short}, which torchkeep never does",
        path=path,
        fix=f"`torchkeep adapt {os.fspath(path)} --arch NAME -o model.safetensors` turns it into a model file "
        f"(its {len(view.tensors)} weights are read without importing {short}; `torchkeep models` lists the "
        "architectures), then predict/export/eval that file",
    )
