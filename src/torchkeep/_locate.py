"""The rule "which entry of a checkpoint holds the model weights", on any object tree.

:func:`locate` applies it from the root down (at most :data:`MAX_DEPTH` levels of nesting):

1. a module (a pickled ``nn.Module``) or a mapping whose values are all tensors is a weight set;
2. otherwise the entries of a mapping are searched, skipping training state (optimizer, scheduler, grad
   scaler, RNG: by key name or by structure, see :func:`training_state`) — entries under the keys of
   :data:`WEIGHT_KEYS` first, in that order, then any other entry that holds weights, the largest first;
3. tensors sitting directly beside non-tensor entries (``{"conv.weight": t, "epoch": 3}``), when no known key
   holds weights, are the weights together with any tensors nested under that level (dotted names).

The first weight set found is the weights; the others are reported (``others``: an EMA copy, a
discriminator). The location is the dotted path of keys (``model.state_dict``).

What a tensor and a module are is given by :class:`Leaves`: file placeholders (no torch) in
:mod:`torchkeep._weights`' ``find_weights``, torch objects in its ``find_weights_in_object``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchkeep.errors import UsageError

__all__ = ["EMA_KEYS", "MAX_DEPTH", "WEIGHT_KEYS", "Leaves", "Location", "locate", "tensors_under", "training_state"]

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


def tensors_under(node: Any, lv: Leaves, prefix: str = "", seen: set[int] | None = None, depth: int = 0) -> Iterator[tuple[str, Any]]:
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
            yield from tensors_under(v, lv, f"{prefix}.{k}" if prefix else str(k), seen, depth + 1)


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
        return [_Candidate(path, node, True, sum(lv.numel(t) for _, t in tensors_under(node, lv)))]
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
        if not any(True for _ in tensors_under(node, lv)):
            if key is None:
                return None
            raise UsageError(f"the checkpoint entry {key!r} holds no model weights", fix=_key_fix(obj, lv))
        # no mapping of weights anywhere (a list, an object): every tensor outside training state
        return Location(start, node, whole=True)
    best = found[0]
    skipped = []
    if best.whole and isinstance(best.node, Mapping):
        skipped = [str(k) for k, v in best.node.items() if not any(True for _ in tensors_under(v, lv))]
    return Location(best.path, best.node, best.whole, [c.path for c in found[1:]], skipped)
