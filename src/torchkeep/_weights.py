"""Find the model weights inside a file's structure, and describe a checkpoint's other entries.

This module is the one home of the rule "which entry of a checkpoint holds the model weights":
:func:`find_weights` applies it to a file's structure (``inspect``, ``convert``, ``load_state_dict``,
``diff`` and ``adapt`` of a path all go through it) and :func:`find_weights_in_object` to objects in
memory (``load_into(model, checkpoint_dict)``, a trusted ``torch.load``). Both call :func:`locate`.

The rule, applied from the root down (at most :data:`MAX_DEPTH` levels of nesting):

1. a module (a pickled ``nn.Module``) or a mapping whose values are all tensors is a weight set;
2. otherwise the entries of a mapping are searched, skipping training state (optimizer, scheduler, grad
   scaler, RNG: by key name or by structure, see :func:`training_state`) — entries under the keys of
   :data:`WEIGHT_KEYS` first, in that order, then any other entry that holds weights, the largest first;
3. tensors sitting directly beside non-tensor entries (``{"conv.weight": t, "epoch": 3}``), when no known key
   holds weights, are the weights together with any tensors nested under that level (dotted names).

The first weight set found is the weights; the others are reported (``others``: an EMA copy, a
discriminator). The location is the dotted path of keys (``model.state_dict``).

Works on :class:`torchkeep._read.FileStructure` (no torch, no tensor bytes): a bare state_dict, a
training checkpoint, a full pickled ``nn.Module`` (its placeholders' ``_parameters`` / ``_buffers`` /
``_modules`` give the same dotted names ``model.state_dict()`` would), a TorchScript module (its
``state_dict()``: the parameters and buffers its classes declare), or a tensor container.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchkeep._pickle import Placeholder, TensorRef, placeholder_name
from torchkeep._read import FileStructure, RawTensor, TorchScriptClass, iter_tensor_refs, read_structure
from torchkeep.errors import InputError, TorchkeepError, UsageError

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMA_KEYS", "MAX_DEPTH", "WEIGHT_KEYS", "Leaves", "Location", "WeightsView", "checkpoint_entries",
    "explain_full_model", "file_kind",
    "find_weights", "find_weights_in_object", "is_module_placeholder", "locate", "training_state",
]

#: checkpoint keys that hold model weights, most preferred first: the main model before its EMA copy
WEIGHT_KEYS = (
    "state_dict", "model_state_dict", "model", "module", "net", "network", "params", "weights", "model_weights",
    "model_ema", "ema", "ema_state_dict", "state_dict_ema", "ema_model", "params_ema", "teacher", "student",
    "generator",
)
#: those of :data:`WEIGHT_KEYS` that hold an exponential moving average of the weights
EMA_KEYS = ("model_ema", "ema", "ema_state_dict", "state_dict_ema", "ema_model", "params_ema")

#: deepest nesting searched: checkpoints nest a few levels ({"model": {"state_dict": ...}})
MAX_DEPTH = 8

# key words of training state, matched against the words of a key ("optimizer_state_dict", "lrScheduler");
# not "opt": YOLO checkpoints keep their options there (a real optimizer is known by its param_groups)
_OPTIMIZER_WORDS = {"optim", "optimizer", "optimizers", "optimiser", "optimisers"}
_SCHEDULER_WORDS = {"sched", "scheduler", "schedulers"}
_SCALER_WORDS = {"scaler", "scalers"}
_RNG_WORDS = {"rng", "random", "seed"}

AnyTensor = TensorRef | RawTensor


def _words(key: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)  # camelCase -> camel Case
    return {w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w}


def training_state(key: str, value: Any) -> str | None:
    """``"optimizer state"``, ``"scheduler state"``, ``"grad scaler state"`` or ``"RNG state"`` when the entry
    ``key: value`` of a checkpoint holds training state (known by its key or by its structure), else None.

    Model weights are never searched for under training state: optimizer moments are tensors too.
    """
    words = _words(key)
    is_map = isinstance(value, Mapping)
    if words & _OPTIMIZER_WORDS or (is_map and "param_groups" in value and "state" in value):
        return "optimizer state"
    if words & _SCHEDULER_WORDS or (is_map and "last_epoch" in value and "base_lrs" in value):
        return "scheduler state"
    if words & _SCALER_WORDS or (is_map and "growth_factor" in value and "scale" in value):
        return "grad scaler state"
    if words & _RNG_WORDS:
        return "RNG state"
    return None


# ------------------------------------------------------------------------------------------ the rule


@dataclass(frozen=True)
class Leaves:
    """What a tensor and a module are in the object tree the rule walks (file placeholders or torch objects).

    Attributes:
        tensor: the tensor ``v`` is (a description or a ``torch.Tensor``), or None.
        module: the weights of a module object ``v`` (name -> tensor), or None when ``v`` is not a module.
        numel: element count of a tensor returned by ``tensor``.
        contents: the entries of another object worth walking for tensors (a placeholder's state), or None.
    """

    tensor: Callable[[Any], Any]
    module: Callable[[Any], Mapping[str, Any] | None]
    numel: Callable[[Any], int]
    contents: Callable[[Any], Mapping[Any, Any] | None] = lambda v: None

    def weight_set(self, v: Any) -> Mapping[str, Any] | None:
        """name -> tensor when ``v`` is a module or a mapping whose values are all tensors (None allowed)."""
        m = self.module(v)
        if m is not None:
            return m
        if not isinstance(v, Mapping) or not v:
            return None
        out: dict[str, Any] = {}
        for k, x in v.items():
            if x is None:
                continue
            t = self.tensor(x)
            if t is None:
                return None
            out[str(k)] = t
        return out or None


@dataclass
class Location:
    """Where the rule found the weights.

    Attributes:
        path: keys from the root to the weights (``("model", "state_dict")``); ``()`` for the root.
        node: the object at ``path``.
        whole: the weights are every tensor under ``node`` outside training state (tensors beside other
            entries), not one weight set.
        others: paths of the other weight sets found (an EMA copy...).
        skipped: keys beside the weights that hold no tensors (with ``whole``).
    """

    path: tuple[str, ...]
    node: Any
    whole: bool = False
    others: list[tuple[str, ...]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return ".".join(self.path)


@dataclass
class _Candidate:
    path: tuple[str, ...]
    node: Any
    whole: bool
    size: int


def _tree(node: Any, lv: Leaves, prefix: str = "", seen: set[int] | None = None, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(dotted name, tensor) for every tensor under ``node``, skipping training state."""
    seen = set() if seen is None else seen
    if depth > 100 or id(node) in seen:
        return
    t = lv.tensor(node)
    if t is not None:
        yield prefix, t
        return
    m = lv.module(node)
    items: Any
    if m is not None:
        items = m.items()
    elif isinstance(node, Mapping):
        items = node.items()
    elif isinstance(node, list | tuple):
        items = enumerate(node)
    else:
        c = lv.contents(node)
        if c is None:
            return
        items = c.items()
    seen.add(id(node))
    for k, v in items:
        if training_state(str(k), v) is None:
            yield from _tree(v, lv, f"{prefix}.{k}" if prefix else str(k), seen, depth + 1)


def _candidates(node: Any, path: tuple[str, ...], lv: Leaves, depth: int = 0) -> list[_Candidate]:
    """The weight sets under ``node``, most preferred first (the rule in the module docstring)."""
    ws = lv.weight_set(node)
    if ws is not None:
        return [_Candidate(path, node, False, sum(lv.numel(t) for t in ws.values()))]
    if not isinstance(node, Mapping) or depth >= MAX_DEPTH:
        return []
    known: list[tuple[int, list[_Candidate]]] = []
    unknown: list[list[_Candidate]] = []
    direct = False
    for k, v in node.items():
        key = str(k)
        if lv.tensor(v) is not None:
            direct = True
            continue
        if training_state(key, v) is not None:
            continue
        found = _candidates(v, (*path, key), lv, depth + 1)
        if not found:
            continue
        if key in WEIGHT_KEYS:
            known.append((WEIGHT_KEYS.index(key), found))
        else:
            unknown.append(found)
    known.sort(key=lambda e: e[0])
    unknown.sort(key=lambda f: -f[0].size)
    if direct and not known:
        # tensors beside scalars or configs: this level is the state_dict (with any nested tensors)
        return [_Candidate(path, node, True, sum(lv.numel(t) for _, t in _tree(node, lv)))]
    return [c for _, found in known for c in found] + [c for found in unknown for c in found]


def _entry(obj: Any, key: str, lv: Leaves) -> tuple[tuple[str, ...], Any]:
    """The entry at a dotted ``key`` (a key that holds dots is matched whole first), or UsageError."""
    parts = key.split(".")
    node: Any = obj
    path: tuple[str, ...] = ()
    i = 0
    while i < len(parts):
        by_str = {str(k): k for k in node} if isinstance(node, Mapping) else {}
        j = next((j for j in range(len(parts), i, -1) if ".".join(parts[i:j]) in by_str), None)
        if j is None:
            have = ", ".join(map(str, list(node)[:10])) if isinstance(node, Mapping) else type(node).__name__
            where = f"{'.'.join(path)!r} has" if path else "it has"
            raise UsageError(f"the checkpoint has no entry {key!r} ({where}: {have})", fix=_key_fix(obj, lv))
        name = ".".join(parts[i:j])
        node, path, i = node[by_str[name]], (*path, name), j
    return path, node


def _key_fix(obj: Any, lv: Leaves) -> str:
    found = [c for c in _candidates(obj, (), lv) if c.path]
    if found:
        return "pass an entry that holds weights as key (CLI: --key): " + ", ".join(".".join(c.path) for c in found[:10])
    return "pass one of those as key (CLI: --key)"


def locate(obj: Any, lv: Leaves, key: str | None = None) -> Location | None:
    """Apply the rule to ``obj``; ``key`` (dotted for nesting) names the entry to start from.

    Returns None when nothing under ``obj`` is a tensor. Raises UsageError when ``key`` names no entry,
    or an entry that holds no weights; the message lists the entries that do.
    """
    start: tuple[str, ...] = ()
    node = obj
    if key is not None:
        start, node = _entry(obj, key, lv)
    found = _candidates(node, start, lv)
    if not found:
        if not any(True for _ in _tree(node, lv)):
            if key is None:
                return None
            raise UsageError(f"the checkpoint entry {key!r} holds no model weights", fix=_key_fix(obj, lv))
        # no mapping of weights anywhere (a list, an object): every tensor outside training state
        return Location(start, node, whole=True)
    best = found[0]
    skipped = []
    if best.whole and isinstance(best.node, Mapping):
        skipped = [str(k) for k, v in best.node.items() if not any(True for _ in _tree(v, lv))]
    return Location(best.path, best.node, best.whole, [c.path for c in found[1:]], skipped)


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
        tensors = dict(_tree(loc.node, FILE_LEAVES))
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
        return dict(_tree(loc.node, lv)), loc
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
