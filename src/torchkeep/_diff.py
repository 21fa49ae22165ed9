"""Compare the weights of two model files: ``diff(a, b) -> DiffReport``.

Both sides are read with :func:`torchkeep.load_state_dict` (any format, no code runs), so a
fine-tuned ``.safetensors`` can be compared with the ``.pt`` it started from. The report lists keys
present on one side only, shape and dtype changes, per-tensor value differences (max abs, relative
L2, cosine similarity) and ends with a one-sentence verdict that says *where* the models differ:
"the backbone is unchanged, the head differs" is the question people usually ask after fine-tuning.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torchkeep._keys import WRAPPER_PREFIXES
from torchkeep._load import load_state_dict
from torchkeep.errors import UsageError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep stays cheap
    import torch

__all__ = ["DiffReport", "TensorDiff", "diff"]

# BatchNorm buffers move whenever a model runs in train mode, even with frozen weights; the verdict
# reports them apart so "frozen backbone" is still recognised after fine-tuning.
_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class TensorDiff:
    """One tensor present in both files whose shape, dtype or values differ.

    Attributes:
        name: the state_dict key.
        kind: ``"values"`` (same shape and dtype, different values), ``"shape"`` or ``"dtype"``.
        shape_a / shape_b: shapes on each side.
        dtype_a / dtype_b: dtypes on each side (``"float32"``...).
        max_abs: largest absolute element difference (``None`` when shapes differ).
        rel_l2: ``||b - a|| / ||a||`` (``None`` when shapes differ; ``inf`` when ``a`` is all zeros).
        cosine: cosine similarity of the flattened tensors (``None`` when shapes differ or a side is zero).
        numel: number of elements on side A.
    """

    name: str
    kind: str
    shape_a: list[int]
    shape_b: list[int]
    dtype_a: str
    dtype_b: str
    max_abs: float | None = None
    rel_l2: float | None = None
    cosine: float | None = None
    numel: int = 0


@dataclass
class DiffReport:
    """What :func:`diff` found.

    Attributes:
        a / b: the two sources (paths, or ``"<state_dict>"`` / ``"<module>"`` for in-memory objects).
        identical: True when both have the same keys, shapes, dtypes and values (within ``atol``).
        verdict: one sentence for humans, e.g. "same architecture, 2 of 62 tensors changed — the
            backbone is unchanged, the head differs (fc)".
        only_in_a / only_in_b: keys present on one side only.
        changed: tensors with different values, shapes or dtypes (see :class:`TensorDiff`), in A's key order.
        tensors_a / tensors_b: number of tensors on each side.
        common: number of keys present on both sides.
        unchanged: number of common tensors that are equal.
        params_a / params_b: number of elements on each side.
        params_changed: number of elements in common tensors that differ (by shape, dtype or value).
        changed_modules: modules (key without its last part) with at least one difference.
        unchanged_modules: modules of A whose tensors are all present in B and equal.
        head: the modules that differ when they form the end of the network, else ``None``.
        atol: the tolerance used for "equal".
    """

    a: str
    b: str
    identical: bool
    verdict: str
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    changed: list[TensorDiff] = field(default_factory=list)
    tensors_a: int = 0
    tensors_b: int = 0
    common: int = 0
    unchanged: int = 0
    params_a: int = 0
    params_b: int = 0
    params_changed: int = 0
    changed_modules: list[str] = field(default_factory=list)
    unchanged_modules: list[str] = field(default_factory=list)
    head: list[str] | None = None
    atol: float = 0.0
    _shapes: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def exit_code(self) -> int:
        """0 when identical, 1 when different (the CLI's exit code)."""
        return 0 if self.identical else 1


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _is_stat(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _STAT_SUFFIXES


def _as_state_dict(source: Any, trust: bool) -> tuple[str, dict[str, torch.Tensor]]:
    """Turn a path, an nn.Module or a mapping of tensors into (label, state_dict)."""
    import torch

    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source), dict(load_state_dict(source, map_location="cpu", trust=trust))
    if isinstance(source, torch.nn.Module):
        return "<module>", dict(source.state_dict())
    if isinstance(source, Mapping):
        tensors = {str(k): v for k, v in source.items() if isinstance(v, torch.Tensor)}
        return "<state_dict>", tensors
    raise UsageError(
        f"diff() takes a path, an nn.Module or a dict of tensors, not {type(source).__name__}",
        fix="pass the model file's path",
    )


def _compare(name: str, ta: torch.Tensor, tb: torch.Tensor, atol: float) -> TensorDiff | None:
    """Return a TensorDiff when ``ta`` and ``tb`` differ, else None."""
    import torch

    shape_a, shape_b = list(ta.shape), list(tb.shape)
    dtype_a, dtype_b = str(ta.dtype).removeprefix("torch."), str(tb.dtype).removeprefix("torch.")
    if shape_a != shape_b:
        return TensorDiff(name, "shape", shape_a, shape_b, dtype_a, dtype_b, numel=ta.numel())
    # float64 so that tiny fine-tuning steps on float16/bfloat16 weights are not rounded away;
    # complex tensors as (real, imaginary) pairs, so that both parts count
    as_complex = ta.is_complex() or tb.is_complex()
    da, db = (
        torch.view_as_real(t.detach().cpu().to(torch.complex128)).flatten()
        if as_complex
        else t.detach().cpu().to(torch.float64).flatten()
        for t in (ta, tb)
    )
    if da.numel() == 0:
        max_abs = 0.0
    else:
        # NaN and +-inf in the same places are equal (a file diffed with its copy is identical);
        # a NaN or inf against anything else is an infinite difference
        same = (da == db) | (da.isnan() & db.isnan())
        delta = torch.where(same, 0.0, (db - da).abs().nan_to_num(nan=float("inf")))
        max_abs = float(delta.max())
    if max_abs <= atol and ta.dtype == tb.dtype:
        return None
    norm_a, norm_b = float(da.norm()), float(db.norm())
    rel_l2 = float((db - da).norm()) / norm_a if norm_a > 0 else (0.0 if max_abs == 0 else float("inf"))
    cosine = float(torch.dot(da, db)) / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else None
    kind = "dtype" if ta.dtype != tb.dtype else "values"
    return TensorDiff(name, kind, shape_a, shape_b, dtype_a, dtype_b, max_abs, rel_l2, cosine, ta.numel())


def _strip_wrapper(keys_a: set[str], keys_b: set[str]) -> str | None:
    """The wrapper prefix (``module.``...) whose removal from one side makes the key sets equal."""
    for prefix in WRAPPER_PREFIXES:  # a key mismatch that vanishes without one is a wrapper, not another model
        for one, other in ((keys_a, keys_b), (keys_b, keys_a)):
            if one and all(k.startswith(prefix) for k in one) and {k[len(prefix) :] for k in one} == other:
                return prefix
    return None


def _span(names: list[str]) -> str:
    """Shorten a list of module names for a sentence."""
    if len(names) <= 4:
        return ", ".join(names)
    return f"{', '.join(names[:3])}, … ({len(names)} in all)"


def _cover(selected: list[str], universe: list[str]) -> list[str]:
    """Name ``selected`` keys by the shortest prefixes that contain only selected keys.

    ``["fc.weight", "fc.bias"]`` among resnet keys gives ``["fc"]``; ``classifier.6.*`` in a VGG
    gives ``["classifier.6"]`` (not ``classifier``, whose other layers are not selected).
    """
    chosen = set(selected)
    total: dict[str, int] = {}
    picked: dict[str, int] = {}
    for key in universe:
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            total[prefix] = total.get(prefix, 0) + 1
            if key in chosen:
                picked[prefix] = picked.get(prefix, 0) + 1
    out: list[str] = []
    for key in selected:
        parts = key.split(".")
        name = key
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if picked.get(prefix, 0) == total[prefix]:
                name = prefix
                break
        if name not in out:
            out.append(name)
    return out


def diff(a: Any, b: Any, *, atol: float = 0.0, trust: bool = False) -> DiffReport:
    """Compare the weights of two models.

    Args:
        a: the reference: a model file of any format torchkeep reads, an ``nn.Module`` or a dict of tensors.
        b: the other one, same kinds as ``a``.
        atol: values whose absolute difference is at most ``atol`` count as equal (default: exact).
        trust: passed to :func:`torchkeep.load_state_dict` (fully unpickle ``custom-code`` files, running
            their classes' code; ``dangerous`` files are refused regardless).

    Returns:
        A :class:`DiffReport`; ``report.identical`` is what scripts test (the CLI exits 0 or 1).

    Raises:
        InputError: a file cannot be read (from :func:`torchkeep.load_state_dict`).
        UnsafeFileError: a file's pickle would run code.
    """
    label_a, sd_a = _as_state_dict(a, trust)
    label_b, sd_b = _as_state_dict(b, trust)
    keys_a, keys_b = set(sd_a), set(sd_b)
    only_a = [k for k in sd_a if k not in keys_b]
    only_b = [k for k in sd_b if k not in keys_a]
    common = [k for k in sd_a if k in keys_b]

    changed: list[TensorDiff] = []
    for k in common:
        d = _compare(k, sd_a[k], sd_b[k], atol)
        if d is not None:
            changed.append(d)
    changed_keys = {d.name for d in changed}

    # where the differences are, named by the shortest module prefixes (in A's key order)
    universe = list(sd_a) + only_b
    differing = changed_keys | set(only_a) | set(only_b)
    changed_modules = _cover([k for k in universe if k in differing], universe)
    unchanged_modules = _cover([k for k in universe if k not in differing], universe)

    report = DiffReport(
        a=label_a,
        b=label_b,
        identical=not (only_a or only_b or changed),
        verdict="",
        only_in_a=only_a,
        only_in_b=only_b,
        changed=changed,
        tensors_a=len(sd_a),
        tensors_b=len(sd_b),
        common=len(common),
        unchanged=len(common) - len(changed),
        params_a=sum(t.numel() for t in sd_a.values()),
        params_b=sum(t.numel() for t in sd_b.values()),
        params_changed=sum(d.numel for d in changed),
        changed_modules=changed_modules,
        unchanged_modules=unchanged_modules,
        atol=atol,
        _shapes={k: list(t.shape) for k, t in sd_a.items()},
    )
    report.head = _head(universe, differing)
    report.verdict = _verdict(report, keys_a, keys_b, universe, differing)
    return report


def _head(universe: list[str], differing: set[str]) -> list[str] | None:
    """The differing modules when they are the last ones of the network and something before them is equal.

    BatchNorm running statistics are ignored here: a frozen backbone fine-tuned in train mode keeps
    its weights but its statistics move, and users still call that "the backbone is unchanged".
    """
    weights = [k for k in universe if not _is_stat(k)]
    modules: list[str] = []
    for k in weights:
        if _module_of(k) not in modules:
            modules.append(_module_of(k))
    touched = {_module_of(k) for k in weights if k in differing}
    positions = [i for i, m in enumerate(modules) if m in touched]
    if not positions or positions[0] == 0:
        return None
    if positions != list(range(positions[0], len(modules))):
        return None  # a change in the middle of the network, not a head
    return _cover([k for k in weights if k in differing], weights)


def _verdict(
    r: DiffReport, keys_a: set[str], keys_b: set[str], universe: list[str], differing: set[str]
) -> str:
    """One sentence saying whether and where the two models differ."""
    if r.identical:
        return f"identical: {r.tensors_a} tensors, same keys, shapes, dtypes and values"
    if r.only_in_a or r.only_in_b:
        return _keys_verdict(r, keys_a, keys_b)
    return _layout_verdict(r) or _values_verdict(r, universe, differing)


def _keys_verdict(r: DiffReport, keys_a: set[str], keys_b: set[str]) -> str:
    """The models do not have the same keys: a wrapper prefix, another model, or another head."""
    prefix = _strip_wrapper(keys_a, keys_b)
    if prefix is not None:
        side = "A" if all(k.startswith(prefix) for k in keys_a) else "B"
        return (
            f"same tensors under a wrapper prefix: every key of {side} starts with '{prefix}' "
            f"(DataParallel / torch.compile); compare after stripping it"
        )
    if not r.common:
        return f"different models: no key in common ({r.tensors_a} tensors in A, {r.tensors_b} in B)"
    base = (
        f"different architectures: {len(r.only_in_a)} keys only in A, {len(r.only_in_b)} only in B, "
        f"{r.common} in common"
    )
    if r.head is not None:
        return f"{base} — the modules before them match; the head differs ({_span(r.head)})"
    return base


def _layout_verdict(r: DiffReport) -> str | None:
    """Same keys, but tensors in another dtype only, or of another shape; None when neither."""
    shape_changes = [d for d in r.changed if d.kind == "shape"]
    dtype_changes = [d for d in r.changed if d.kind == "dtype"]
    values = [d for d in r.changed if d.kind == "values"]
    if dtype_changes and not shape_changes and not values:
        kinds = sorted({f"{d.dtype_a} → {d.dtype_b}" for d in dtype_changes})
        close = max((d.max_abs or 0.0) for d in dtype_changes)
        return (
            f"same architecture and weights in another dtype ({', '.join(kinds)}), "
            f"{len(dtype_changes)} tensors, max abs difference {close:.3g}"
        )
    if shape_changes:
        lead = f"same layer names, {len(shape_changes)} tensors changed shape"
        if r.head is not None:
            return f"{lead} — the backbone is unchanged, the head was replaced ({_span(r.head)}: " + (
                ", ".join(f"{d.name} {d.shape_a} → {d.shape_b}" for d in shape_changes[:2]) + ")"
            )
        return f"{lead}: " + ", ".join(f"{d.name} {d.shape_a} → {d.shape_b}" for d in shape_changes[:3])
    return None


def _values_verdict(r: DiffReport, universe: list[str], differing: set[str]) -> str:
    """Same keys, shapes and dtypes: which values changed, and what that says of how the models relate."""
    n, total = len(r.changed), r.common
    stats_only = all(_is_stat(d.name) for d in r.changed)
    if stats_only:
        return (
            f"same architecture and weights, {n} of {total} tensors changed — only BatchNorm running "
            f"statistics moved (the model ran in train mode)"
        )
    lead = f"same architecture, {n} of {total} tensors changed"
    if n == total:
        return (
            f"{lead} — every tensor differs (further training from the same start, or another initialisation)"
        )
    kernels = [k for k in universe if k not in r.only_in_b and len(_shape_of(r, k)) >= 2]
    if kernels and all(k in differing for k in kernels) and r.head is None:
        return (
            f"{lead} — every weight matrix and kernel differs ({len(kernels)}): independently trained "
            f"or initialised models of the same architecture"
        )
    if r.head is not None:
        note = ""
        head = r.head
        if any(_is_stat(k) and not any(k.startswith(h + ".") for h in head) for k in differing):
            note = " (BatchNorm running statistics moved in the backbone: it ran in train mode)"
        return f"{lead} — the backbone is unchanged, the head differs ({_span(r.head)}){note}"
    weights = [k for k in universe if not _is_stat(k)]
    where = _cover([k for k in weights if k in differing], weights)
    return f"{lead} — in {_span(where)}; the other tensors are equal"


def _shape_of(r: DiffReport, key: str) -> list[int]:
    return r._shapes.get(key, [])
