"""Where ``load_into``'s weights come from: a file, a checkpoint dict, a state_dict or a module, read once.

``read_source`` reads the source (a file through ``torchkeep._load``, running no code) into a
:class:`WeightSource`: the weights or checkpoint object with what a report says about them (a label, the
checkpoint entry, notes) and whether their order means anything. ``unwrap_checkpoint`` then finds the
weights in it with the rule every verb uses (:mod:`torchkeep._weights`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep._detect import detect
from torchkeep._keys import collapse_keys
from torchkeep._load import read_weights
from torchkeep._weights import EMA_KEYS, find_weights_in_object
from torchkeep.errors import CompatibilityError, TorchkeepError, UsageError

__all__ = ["WeightSource", "keeps_order", "read_source", "unwrap_checkpoint"]


@dataclass
class WeightSource:
    """A source read once, with what the load report says about it (``adapt`` reads once and plans twice).

    Attributes:
        raw: the weights, the checkpoint object holding them, or an ``nn.Module``.
        label: how the report names the source (the path, ``<state_dict>``, ``<checkpoint dict>``...).
        where: the checkpoint entry the weights were read from, if known already.
        notes: notes for the report (a whole pickled model, EMA weights beside the main ones...).
        is_file: the source is a file (errors name it).
        ordered: the tensors keep the order they were written in, so pairing by position means
            something (:func:`keeps_order`).
    """

    raw: Any
    label: str
    where: str | None = None
    notes: list[str] = field(default_factory=list)
    is_file: bool = False
    ordered: bool = True


def _is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _tensor_share(m: Mapping) -> float:
    if not m:
        return 0.0
    return sum(1 for v in m.values() if _is_tensor(v)) / len(m)


def unwrap_checkpoint(obj: Any, notes: list[str]) -> tuple[dict[str, Any], str | None, list[str]]:
    """Find the weights in ``obj`` (a state_dict, a checkpoint dict, nested, or an nn.Module) with the rule
    every verb uses (:mod:`torchkeep._weights`).

    Returns (tensors, where they were found, keys of non-tensor entries beside them).
    """
    from torch import nn

    if not isinstance(obj, Mapping | nn.Module):
        raise CompatibilityError(
            f"the source is a {type(obj).__name__}, not weights",
            fix="pass a file path, a state_dict (name -> tensor), a checkpoint dict or an nn.Module",
        )
    tensors, loc = find_weights_in_object(obj)
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CompatibilityError(
            f"no tensors found in the source (top-level keys: {keys})",
            fix="pass the weights themselves, e.g. load_into(model, checkpoint['<key that holds them>'])",
        )
    if loc is None:
        return tensors, None, []
    ema = [".".join(p) for p in loc.others if p and p[-1] in EMA_KEYS]
    if ema and not (loc.path and loc.path[-1] in EMA_KEYS):
        notes.append(
            f"the checkpoint also holds EMA weights under {ema[0]!r}; to load those pass "
            f"key={ema[0]!r} (CLI: --key {ema[0]})"
        )
    if loc.skipped:
        notes.append(f"ignored {len(loc.skipped)} non-tensor entries: {', '.join(collapse_keys(loc.skipped)[:5])}")
    return tensors, loc.key or None, loc.skipped


def read_source(source: Any, *, trust: bool = False, key: str | None = None) -> WeightSource:
    """Read ``source`` (a path, an ``nn.Module``, a state_dict or a checkpoint dict) once.

    Args:
        source: what to load from.
        trust: passed to ``torchkeep.load_state_dict`` when ``source`` is a path.
        key: the checkpoint entry holding the weights, when the automatic choice is not the one wanted.

    Raises:
        UsageError: ``source`` is none of those, or ``key`` names no entry holding weights.
    """
    from torch import nn

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        notes: list[str] = []
        # runs no code; CUDA-saved tensors land on the CPU
        loaded = read_weights(path, "cpu", trust=trust, key=key)
        # "(full model)" / "(all tensors)" are descriptions, not checkpoint keys
        where = loaded.location if loaded.location and not loaded.location.startswith("(") else None
        if loaded.source == "full_model":
            notes.append(
                f"the file is a whole pickled model ({loaded.model_class}); its weights were read without "
                "importing the class"
            )
        return WeightSource(loaded.tensors, os.fspath(path), where, notes, is_file=True, ordered=keeps_order(path))
    if isinstance(source, nn.Module):
        return WeightSource(source, f"<{type(source).__name__} module>")
    if isinstance(source, Mapping):
        label = "<state_dict>" if _tensor_share(source) == 1.0 else "<checkpoint dict>"
        if key is None:
            return WeightSource(source, label)
        tensors, loc = find_weights_in_object(source, key)  # UsageError naming the entries that hold weights
        return WeightSource(tensors, label, loc.key if loc is not None else key)
    raise UsageError(
        f"cannot load weights from a {type(source).__name__}",
        fix="pass a file path, a state_dict (name -> tensor), a checkpoint dict or an nn.Module",
    )


def keeps_order(path: str | os.PathLike[str]) -> bool:
    """Whether a weights file keeps the order its tensors were written in (module order for a state_dict).

    Pickled state_dicts, TorchScript and ONNX do; a safetensors file stores its keys sorted by name, so
    pairing its tensors with a model's by position means nothing.
    """
    try:
        return detect(Path(path)).format != "safetensors"
    except TorchkeepError:
        return True
