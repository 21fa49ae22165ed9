"""The matching engine: load weights into a compatible model, and say exactly what happened.

``load_into(model, source)`` takes weights from a file (any format ``torchkeep.load_state_dict`` reads), a
checkpoint dict, a state_dict or another ``nn.Module`` and copies them into ``model``:

1. unwrap checkpoints (the entry ``torchkeep._weights`` names: ``state_dict``, ``model``, ``ema``, ...);
2. apply the user's renames (``REGEX=>REPL``, captured groups allowed; two keys landing on one name is an error);
3. strip or add wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile, ``model.`` from
   Lightning, and their combinations) only when that makes more keys match;
4. compare shapes: skip (a new head) or refuse;
5. when names still differ but the remaining tensors line up one for one by shape, pair them by order, and
   say so;
6. refuse to load "almost nothing" silently: below ``min_match`` of the model's parameters it is an error
   unless ``allow_partial=True`` (the ``CompatibilityError`` carries the report in its ``report`` field).

The model is touched only after the whole plan is known, so a refusal leaves it unchanged. ``copy_state`` is the
one ``load_state_dict`` call every loader shares. This module knows no architecture and no model file: it imports
neither ``torchkeep.models`` nor ``torchkeep._modelfile`` (both use it).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torchkeep._detect import detect
from torchkeep._explain import explain_error
from torchkeep._keys import collapse_keys, map_keys, prefix_candidates
from torchkeep._load import read_weights
from torchkeep._weights import EMA_KEYS, find_weights_in_object
from torchkeep.errors import CompatibilityError, TorchkeepError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep must stay cheap
    import torch
    from torch import nn

__all__ = [
    "DtypeChange",
    "LoadReport",
    "RenameSpec",
    "ShapeMismatch",
    "collapse_keys",
    "copy_state",
    "keeps_order",
    "load_into",
    "load_weights",
    "not_the_head",
    "parse_rename",
    "plan",
    "read_source",
    "unwrap_checkpoint",
]

RenameSpec = Mapping[str, str] | Sequence[str | tuple[str, str]] | Callable[[str], str] | str | None


# ----------------------------------------------------------------------------------------------- report


@dataclass
class ShapeMismatch:
    """A tensor whose name matched but whose shape differs (typically a new classification head)."""

    key: str
    source_key: str
    source_shape: list[int]
    target_shape: list[int]


@dataclass
class DtypeChange:
    """Tensors converted from the source dtype to the model's dtype while copying."""

    source_dtype: str
    target_dtype: str
    count: int
    keys: list[str]


@dataclass
class LoadReport:
    """What ``load_into`` did (or, with ``dry_run``, would do).

    Keys in ``matched``, ``missing`` and ``shape_mismatched[*].key`` are the model's names; keys in
    ``unexpected`` and ``renamed`` (its keys) are the source's names as found in the file.
    """

    source: str
    target: str
    matched: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[ShapeMismatch] = field(default_factory=list)
    structural_mismatches: list[str] = field(default_factory=list)
    dtype_converted: list[DtypeChange] = field(default_factory=list)
    non_tensor: list[str] = field(default_factory=list)
    unwrapped: str | None = None
    prefix_stripped: str = ""
    prefix_added: str = ""
    matched_by_order: int = 0
    order_pairing: str = ""  # "", "leftovers" (names differ only there) or "whole sequence" (names ignored)
    tensors_loaded: int = 0
    tensors_expected: int = 0
    params_loaded: int = 0
    params_expected: int = 0
    min_match: float = 0.0
    applied: bool = False
    notes: list[str] = field(default_factory=list)
    verdict: str = ""

    @property
    def fraction(self) -> float:
        """Share of the model's parameters (elements) that receive source weights, in [0, 1]."""
        if self.params_expected:
            return self.params_loaded / self.params_expected
        return self.tensors_loaded / self.tensors_expected if self.tensors_expected else 1.0

    @property
    def complete(self) -> bool:
        """True when every tensor of the model was loaded and nothing in the source was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatched)

    def collapsed(self, which: str) -> list[str]:
        """One of ``matched``/``missing``/``unexpected``/``shape_mismatched`` with repeated blocks collapsed."""
        if which == "shape_mismatched":
            return collapse_keys([m.key for m in self.shape_mismatched])
        if which == "renamed":
            return [f"{a} -> {b}" for a, b in self.renamed.items()]
        return collapse_keys(getattr(self, which))

    def summary(self) -> dict[str, Any]:
        """A compact summary (counts, prefixes, verdict): what goes into a model file's provenance."""
        return {
            "tensors_loaded": self.tensors_loaded,
            "tensors_expected": self.tensors_expected,
            "params_loaded": self.params_loaded,
            "params_expected": self.params_expected,
            "missing": self.collapsed("missing"),
            "unexpected": self.collapsed("unexpected"),
            "shape_mismatched": self.collapsed("shape_mismatched"),
            "renamed": len(self.renamed),
            "matched_by_order": self.matched_by_order,
            "order_pairing": self.order_pairing,
            "unwrapped": self.unwrapped,
            "prefix_stripped": self.prefix_stripped,
            "prefix_added": self.prefix_added,
            "verdict": self.verdict,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every field, the collapsed views and the loaded fraction."""
        d = asdict(self)
        d["fraction"] = round(self.fraction, 6)
        d["complete"] = self.complete
        d["collapsed"] = {
            k: self.collapsed(k) for k in ("matched", "missing", "unexpected", "shape_mismatched")
        }
        return d


# ----------------------------------------------------------------------------------------- key helpers

def parse_rename(spec: str) -> tuple[str, str]:
    """Parse ``'REGEX=>REPL'`` (the CLI's ``--rename``) into ``(regex, replacement)``.

    ``$1`` in the replacement is accepted as well as Python's ``\\1`` / ``\\g<1>``.

    Args:
        spec: the rule text.

    Returns:
        ``(pattern, replacement)`` with the replacement in Python ``re.sub`` syntax.
    """
    if "=>" not in spec:
        raise UsageError(
            f"rename rule {spec!r} has no '=>'",
            fix="write it as 'REGEX=>REPL', e.g. --rename '^head\\.=>fc.' or --rename 'layer(\\d)\\.=>block\\1.'",
        )
    pattern, repl = spec.split("=>", 1)
    if not pattern:
        raise UsageError(f"rename rule {spec!r} has an empty pattern", fix="write it as 'REGEX=>REPL'")
    return pattern, re.sub(r"\$(\d+)", r"\\g<\1>", repl)


def _rename_rules(rename: RenameSpec) -> list[tuple[str, Callable[[str], str]]]:
    if rename is None:
        return []
    if callable(rename):
        return [("<function>", rename)]
    items: list[tuple[str, str]]
    if isinstance(rename, str):
        items = [parse_rename(rename)]
    elif isinstance(rename, Mapping):
        items = list(rename.items())
    else:
        items = [parse_rename(r) if isinstance(r, str) else (r[0], r[1]) for r in rename]
    rules: list[tuple[str, Callable[[str], str]]] = []
    for pattern, repl in items:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"rename pattern {pattern!r} is not a valid regular expression ({exc})") from None
        repl = re.sub(r"\$(\d+)", r"\\g<\1>", repl)
        try:
            rx.sub(repl, "")  # compiles the replacement: a bad group reference or escape fails here, not mid-plan
        except (re.error, IndexError) as exc:
            raise UsageError(
                f"rename replacement {repl!r} is invalid for the pattern {pattern!r} ({exc})",
                fix=f"{pattern!r} has {rx.groups} group(s): refer to them as \\1 or $1",
            ) from None

        def fn(key: str, rx: re.Pattern[str] = rx, repl: str = repl) -> str:
            return rx.sub(repl, key)

        rules.append((f"{pattern}=>{repl}", fn))
    return rules


# -------------------------------------------------------------------------------------------- sources


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


def read_source(
    source: Any, trust: bool, notes: list[str], key: str | None = None
) -> tuple[Any, str, str | None]:
    """(weights or checkpoint object, label for the report, where in the file the weights were found)."""
    from torch import nn

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        # runs no code; CUDA-saved tensors land on the CPU
        loaded = read_weights(path, "cpu", trust=trust, key=key)
        # "(full model)" / "(all tensors)" are descriptions, not checkpoint keys
        where = loaded.location if loaded.location and not loaded.location.startswith("(") else None
        if loaded.source == "full_model":
            notes.append(
                f"the file is a whole pickled model ({loaded.model_class}); its weights were read without "
                "importing the class"
            )
        return loaded.tensors, os.fspath(path), where
    if isinstance(source, nn.Module):
        return source, f"<{type(source).__name__} module>", None
    if isinstance(source, Mapping):
        label = "<state_dict>" if _tensor_share(source) == 1.0 else "<checkpoint dict>"
        if key is None:
            return source, label, None
        tensors, loc = find_weights_in_object(source, key)  # UsageError naming the entries that hold weights
        return tensors, label, loc.key if loc is not None else key
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


# ----------------------------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    pairs: dict[str, str]  # target key -> source key
    report: LoadReport


def _parameter_sizes(model: nn.Module) -> dict[str, int]:
    # state_dict key -> numel for parameters, each shared (tied) parameter counted once.
    seen: set[int] = set()
    sizes: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        sizes[name] = 0 if id(p) in seen else p.numel()
        seen.add(id(p))
    return sizes


def plan(
    target: Mapping[str, torch.Tensor],
    source: Mapping[str, torch.Tensor],
    report: LoadReport,
    *,
    rename: RenameSpec,
    strip_prefix: str | None,
    match_by_order: bool | Literal["auto"],
    ordered: bool = True,
) -> dict[str, str]:
    """Decide which source tensor goes where (model key -> source key); fills the report's key lists.

    ``ordered``: the source keeps the order its tensors were written in (a pickled state_dict, ONNX,
    TorchScript), so pairing by position means something; a safetensors file sorts its keys and does not.
    """
    src_keys = list(source)
    tgt_keys = list(target)

    # 1. renames, in the order given; applied to the names as they appear in the source.
    names: dict[str, str] = {k: k for k in src_keys}  # current name -> source key
    for label, fn in _rename_rules(rename):
        new_names: dict[str, str] = {}
        hits = 0
        for cur, orig in names.items():
            new = fn(cur)
            hits += new != cur
            if new in new_names:
                raise CompatibilityError(
                    f"rename {label!r} maps both {new_names[new]!r} and {orig!r} to {new!r}",
                    fix="make the pattern more specific (anchor it with ^ and escape dots: '^head\\.')",
                )
            new_names[new] = orig
        if not hits:
            report.notes.append(f"rename {label!r} matched no key")
        names = new_names
    report.renamed = {orig: cur for cur, orig in names.items() if cur != orig}

    # 2. wrapper prefixes: pick the strip/add pair that makes the most names match.
    tgt_set = set(tgt_keys)
    cur_names = list(names)
    best = ("", "")
    if strip_prefix in (None, "none", ""):
        pass
    elif strip_prefix == "auto":
        best_score = sum(1 for n in cur_names if n in tgt_set)
        for strip in sorted(prefix_candidates(cur_names, generic=True), key=len):
            for add in sorted(prefix_candidates(tgt_keys), key=len):
                if not strip and not add:
                    continue
                mapped = map_keys(cur_names, strip, add)
                if mapped is None:
                    continue
                score = sum(1 for n in mapped if n in tgt_set)
                if score > best_score:
                    best, best_score = (strip, add), score
    else:
        strip = strip_prefix if strip_prefix.endswith(".") else strip_prefix + "."
        if not any(n.startswith(strip) for n in cur_names):
            report.notes.append(f"no source key starts with {strip!r}; nothing stripped")
        best = (strip, "")
    mapped = map_keys(cur_names, *best)
    if mapped is None:
        raise CompatibilityError(
            f"stripping {best[0]!r} makes two source keys collide",
            fix="pass strip_prefix='none' (CLI: --strip-prefix none) and use renames instead",
        )
    report.prefix_stripped, report.prefix_added = best
    final: dict[str, str] = {new: names[cur] for new, cur in mapped.items()}  # final name -> source key

    # 3. match by name, then compare shapes.
    pairs: dict[str, str] = {}
    unexpected: list[str] = []
    for new, src in final.items():
        if new not in tgt_set:
            unexpected.append(src)
            continue
        s, t = source[src], target[new]
        if tuple(s.shape) != tuple(t.shape):
            report.shape_mismatched.append(ShapeMismatch(new, src, list(s.shape), list(t.shape)))
        else:
            pairs[new] = src
    tgt_order = {k: i for i, k in enumerate(tgt_keys)}
    report.shape_mismatched.sort(key=lambda m: tgt_order[m.key])  # model order, whatever the file's order
    mismatched_targets = {m.key for m in report.shape_mismatched}
    missing = [k for k in tgt_keys if k not in pairs and k not in mismatched_targets]

    # 4. names differ but the architectures agree: pair the leftovers by order when their shapes line up.
    # Safetensors files store keys alphabetically ("layer10" before "layer2"): their order is not the
    # model's, so "auto" does not trust it unless the model's own keys are sorted the same way.
    alphabetical = len(src_keys) > 2 and src_keys == sorted(src_keys) and tgt_keys != sorted(tgt_keys)
    unordered = not ordered or alphabetical
    if match_by_order == "auto" and unordered and (missing or unexpected or report.shape_mismatched):
        if (missing and unexpected) or not_the_head(report.shape_mismatched):
            report.notes.append(_UNORDERED_NOTE if not ordered else (
                "not matching by order: the source's keys are in alphabetical order (as safetensors stores "
                "them), not the model's; use renames, or match_by_order=True to force it"
            ))
        return _finish(report, pairs, missing, unexpected, src_keys, tgt_keys)
    if match_by_order and missing and unexpected:
        src_order = {k: i for i, k in enumerate(src_keys)}
        left_src = sorted(unexpected, key=src_order.__getitem__)
        lined = _line_up(left_src, missing, source, target)
        if lined is not None and len(left_src) == len(missing):
            _take(lined, pairs, report, source, target)
            report.matched_by_order = len(lined)
            report.order_pairing = "leftovers"
            report.notes.append(
                f"matched {len(missing)} tensors by order and shape because their names differ "
                f"(e.g. {left_src[0]!r} -> {missing[0]!r}); check the renamed list"
            )
            missing, unexpected = [], []

    # 5. another naming scheme whose names partly collide (a name on both sides with another shape) breaks
    # the pairing of leftovers: pair the whole sequence by order when that explains every tensor and loads
    # more than the names do.
    explained = not (missing or unexpected or not_the_head(report.shape_mismatched))
    if match_by_order and not explained:
        whole = _order_whole(src_keys, tgt_keys, source, target)
        by_name = sum(target[t].numel() for t in pairs)
        if whole is not None and sum(target[t].numel() for _, t, same in whole[0] if same) > by_name:
            collided = len(report.shape_mismatched)
            name_share = by_name / max(1, sum(t.numel() for t in target.values()))
            lined, missing, unexpected = whole
            pairs = {}
            report.renamed = {}
            report.shape_mismatched = []
            report.prefix_stripped = report.prefix_added = ""
            _take(lined, pairs, report, source, target)
            report.matched_by_order = len(lined)
            report.order_pairing = "whole sequence"
            first = next(((s, t) for s, t, _ in lined if s != t), (lined[0][0], lined[0][1]))
            report.notes.append(
                f"paired all {len(lined)} source tensors with the model's by their order in the file and their "
                f"shapes: the names follow another scheme (e.g. {first[0]!r} -> {first[1]!r})"
                + (f"; {collided} names exist on both sides with other shapes" if collided else "")
                + f"; by name alone {_pct(name_share)} of the tensors' elements would load"
            )
        elif match_by_order is True and report.order_pairing != "leftovers":
            raise CompatibilityError(
                f"cannot match by order: {len(unexpected)} unmatched source tensors vs {len(missing)} "
                "unmatched model tensors, and the whole sequences do not line up by shape either",
                fix="use renames ('REGEX=>REPL') for the layers whose names differ",
            )
    return _finish(report, pairs, missing, unexpected, src_keys, tgt_keys)


_UNORDERED_NOTE = (
    "not matching by order: a safetensors file keeps no order (its keys are in alphabetical order), so its tensors "
    "cannot be paired with the model's by position; use renames ('REGEX=>REPL'), or adapt the original "
    ".pt/.pth/.onnx/TorchScript file, which keeps the order"
)


def _line_up(
    src_seq: Sequence[str],
    tgt_seq: Sequence[str],
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
) -> list[tuple[str, str, bool]] | None:
    """Pair two key sequences position by position: ``[(source key, model key, same shape)]``, or None.

    Pairs must agree in shape, except a trailing head (at most its weight and bias) that differs only in
    size: a re-headed copy of the same architecture. Those become shape mismatches.
    """
    lined = [(sk, tk, tuple(source[sk].shape) == tuple(target[tk].shape)) for sk, tk in zip(src_seq, tgt_seq)]
    bad = [i for i, (_, _, same) in enumerate(lined) if not same]
    n_head = len(lined) - bad[0] if bad else 0  # every mismatch lies in the last n_head pairs
    if n_head > 2 or len(lined) - len(bad) <= n_head:
        return None
    if any(source[sk].dim() != target[tk].dim() for sk, tk, _ in lined):
        return None
    return lined


def _take(
    lined: list[tuple[str, str, bool]],
    pairs: dict[str, str],
    report: LoadReport,
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
) -> None:
    """Record pairs made by position: same shapes load, the others (a head) are shape mismatches."""
    for sk, tk, same in lined:
        if sk != tk:
            report.renamed[sk] = tk
        if same:
            pairs[tk] = sk
        else:
            report.shape_mismatched.append(ShapeMismatch(tk, sk, list(source[sk].shape), list(target[tk].shape)))


def _is_counter(t: torch.Tensor) -> bool:
    # BatchNorm's num_batches_tracked: a 0-dim integer buffer that many exporters and other schemes drop
    return t.dim() == 0 and not t.is_floating_point()


def _order_whole(
    src_keys: list[str],
    tgt_keys: list[str],
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
) -> tuple[list[tuple[str, str, bool]], list[str], list[str]] | None:
    """Pair every source tensor with the model's, in order, ignoring names: (pairs, missing, unexpected).

    None unless that explains every tensor: all pairs agree in shape (a trailing head may differ in size),
    and at most a head (two tensors) is left over on one side, e.g. a backbone-only file for a whole
    classifier. BatchNorm counters are left out of the pairing when only one side has them.
    """
    s_seq, t_seq, dropped = list(src_keys), list(tgt_keys), []
    if sum(_is_counter(source[k]) for k in s_seq) != sum(_is_counter(target[k]) for k in t_seq):
        s_seq = [k for k in s_seq if not _is_counter(source[k])]
        dropped = [k for k in t_seq if _is_counter(target[k])]
        t_seq = [k for k in t_seq if not _is_counter(target[k])]
    n = min(len(s_seq), len(t_seq))
    if n < 2 or max(len(s_seq), len(t_seq)) - n > 2:
        return None
    lined = _line_up(s_seq[:n], t_seq[:n], source, target)
    if lined is None:
        return None
    left_tgt = set(t_seq[n:]) | set(dropped)
    missing = [k for k in tgt_keys if k in left_tgt]
    kept = set(s_seq)
    return lined, missing, s_seq[n:] + [k for k in src_keys if k not in kept]


def _finish(
    report: LoadReport,
    pairs: dict[str, str],
    missing: list[str],
    unexpected: list[str],
    src_keys: list[str],
    tgt_keys: list[str],
) -> dict[str, str]:
    report.matched = [k for k in tgt_keys if k in pairs]
    report.missing = missing
    unexpected_set = set(unexpected)
    report.unexpected = [k for k in src_keys if k in unexpected_set]
    return pairs


# ------------------------------------------------------------------------------------------ load_into


def load_into(
    model: nn.Module,
    source: Any,
    *,
    rename: RenameSpec = None,
    strip_prefix: str | None = "auto",
    on_shape_mismatch: Literal["skip", "error"] = "skip",
    strict: bool = False,
    min_match: float = 0.5,
    match_by_order: bool | Literal["auto"] = "auto",
    allow_partial: bool = False,
    dry_run: bool = False,
    trust: bool = False,
    key: str | None = None,
) -> LoadReport:
    """Copy weights from ``source`` into ``model`` and report exactly what was loaded.

    Args:
        model: the model to load into (its weights are overwritten in place).
        source: a file path (any format ``torchkeep.load_state_dict`` reads), a state_dict, a checkpoint dict
            (weights under ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``params``, ``ema``...)
            or an ``nn.Module``.
        rename: renames applied to the source names before matching: ``{"REGEX": "REPL"}``, a list of
            ``"REGEX=>REPL"`` strings or ``(regex, repl)`` pairs, or a function ``str -> str``. Captured groups
            (``\\1``, ``\\g<1>``, ``$1``) work. Two keys landing on one name is an error.
        strip_prefix: ``"auto"`` strips/adds ``module.``, ``_orig_mod.``, ``model.`` (and combinations) only
            when that makes more keys match; ``"none"`` never; any other string strips that prefix.
        on_shape_mismatch: ``"skip"`` leaves mismatched tensors (a new head) as initialised; ``"error"`` raises.
        strict: raise unless every model tensor is loaded and every source tensor is used.
        min_match: refuse (``CompatibilityError``) when less than this share of the model's parameters would
            be loaded, unless ``allow_partial``.
        match_by_order: ``"auto"`` pairs leftover tensors by order when their shapes line up one for one;
            ``True`` insists (error if they do not line up); ``False`` never.
        allow_partial: load even below ``min_match``.
        dry_run: plan and report without touching the model.
        trust: passed to ``torchkeep.load_state_dict`` when ``source`` is a path.
        key: the checkpoint entry holding the weights (dotted for nesting: ``"ema"``, ``"model.state_dict"``)
            when the automatic choice is not the one you want.

    Returns:
        A :class:`LoadReport`; ``report.applied`` tells whether the weights were copied.

    Raises:
        CompatibilityError: shapes differ with ``on_shape_mismatch="error"``, ``strict`` and keys differ,
            rename collisions, or too little would load.
    """
    if on_shape_mismatch not in ("skip", "error"):
        raise UsageError(f"on_shape_mismatch must be 'skip' or 'error', not {on_shape_mismatch!r}")
    if not 0.0 <= min_match <= 1.0:
        raise UsageError(f"min_match must be between 0 and 1, not {min_match!r}")
    notes: list[str] = []
    raw, label, where = read_source(source, trust, notes, key)
    is_file = isinstance(source, (str, os.PathLike))
    return load_weights(
        model,
        raw,
        label=label,
        where=where,
        notes=notes,
        is_file=is_file,
        ordered=keeps_order(source) if is_file else True,
        rename=rename,
        strip_prefix=strip_prefix,
        on_shape_mismatch=on_shape_mismatch,
        strict=strict,
        min_match=min_match,
        match_by_order=match_by_order,
        allow_partial=allow_partial,
        dry_run=dry_run,
    )


def load_weights(
    model: nn.Module,
    raw: Any,
    *,
    label: str,
    where: str | None,
    notes: list[str],
    is_file: bool,
    rename: RenameSpec,
    strip_prefix: str | None,
    on_shape_mismatch: str,
    strict: bool,
    min_match: float,
    match_by_order: bool | Literal["auto"],
    allow_partial: bool,
    dry_run: bool,
    refuse_structural: bool = False,
    ordered: bool = True,
) -> LoadReport:
    """``load_into`` once the source is read (``adapt`` reads a file once and may plan twice).

    ``refuse_structural``: refuse when tensors inside the network differ in shape (not only in their
    first dimension, as a classifier head with another number of classes does). ``ordered``: the source
    keeps its tensors' order (see :func:`plan`; :func:`keeps_order` tells for a file).
    """
    import torch

    report = LoadReport(source=label, target=type(model).__name__, min_match=min_match, notes=list(notes))
    weights, unwrapped, report.non_tensor = unwrap_checkpoint(raw, report.notes)
    report.unwrapped = where or unwrapped
    # tensors only: some modules put non-tensor "_extra_state" entries in their state_dict
    target = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    pairs = plan(
        target,
        weights,
        report,
        rename=rename,
        strip_prefix=strip_prefix,
        match_by_order=match_by_order,
        ordered=ordered,
    )

    sizes = _parameter_sizes(model)
    report.tensors_expected = len(target)
    report.tensors_loaded = len(pairs)
    report.params_expected = sum(sizes.values())
    report.params_loaded = sum(sizes.get(k, 0) for k in pairs)
    changes: dict[tuple[str, str], list[str]] = {}
    for t, s in pairs.items():
        sd, td = weights[s].dtype, target[t].dtype
        if sd != td:
            changes.setdefault((str(sd).removeprefix("torch."), str(td).removeprefix("torch.")), []).append(t)
    report.dtype_converted = [DtypeChange(a, b, len(ks), collapse_keys(ks)) for (a, b), ks in changes.items()]
    report.structural_mismatches = not_the_head(report.shape_mismatched)
    report.verdict = _verdict(report, allow_partial)

    if report.shape_mismatched and on_shape_mismatch == "error":
        m = report.shape_mismatched[0]
        raise _refusal(
            report,
            f"{len(report.shape_mismatched)} tensors differ in shape, e.g. {m.key}: source "
            f"{m.source_shape} vs model {m.target_shape}",
            path=report.source if is_file else None,
            fix="skip them with on_shape_mismatch='skip' (a new head; CLI: --on-shape-mismatch skip) or build the "
            "model with the source's number of classes (CLI: --num-classes)",
        )
    if refuse_structural and report.structural_mismatches:
        m = next(x for x in report.shape_mismatched if x.key in set(report.structural_mismatches))
        raise _refusal(
            report,
            f"{len(report.structural_mismatches)} tensors inside the network differ in shape, not just the "
            f"head (e.g. {m.key}: source {m.source_shape} vs model {m.target_shape}): the weights come from "
            "another architecture",
            path=report.source if is_file else None,
            fix=(
                "the names follow another scheme and a safetensors file keeps no order to pair them by: use "
                "renames ('REGEX=>REPL'), or adapt the original .pt/.pth file"
                if _UNORDERED_NOTE in report.notes
                else "pick the architecture the weights come from (--arch)"
            )
            + (", or --allow-partial to load what fits" if report.params_loaded else ""),
        )
    if strict and not report.complete:
        raise _refusal(
            report,
            f"strict load failed: {_problems(report)}",
            path=report.source if is_file else None,
            fix="pass strict=False to load what matches (the report lists the rest)",
        )
    if report.fraction < min_match and not allow_partial:
        raise _refusal(
            report,
            f"only {_pct(report.fraction)} of {type(model).__name__}'s parameters would load "
            f"(threshold {min_match:.0%}): {_problems(report)}",
            path=report.source if is_file else None,
            fix="check the architecture (and --num-classes), add renames ('REGEX=>REPL'), or accept it with "
            "allow_partial=True (CLI: torchkeep adapt --allow-partial, then train from that model file)"
            if report.params_loaded
            # nothing fits: a "partial" load would be a randomly initialised model under the source's name
            else "nothing in the source fits this model: check the architecture the weights come from (and "
            "--num-classes), or add renames ('REGEX=>REPL')",
        )
    if dry_run:
        return report

    with torch.no_grad():
        try:
            result = copy_state(model, {t: weights[s] for t, s in pairs.items()}, strict=False)
        except RuntimeError as exc:  # should not happen after planning; still explain it, never a traceback
            raise CompatibilityError(
                f"copying the weights failed: {str(exc).splitlines()[0]}",
                fix=explain_error(exc) or "re-run with --debug and report it",
            ) from exc
    if result.unexpected_keys:  # pragma: no cover - the plan only passes model keys
        raise CompatibilityError(f"internal: unexpected keys while copying: {result.unexpected_keys[:3]}")
    report.applied = True
    return report


def copy_state(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], *, strict: bool, assign: bool = False
) -> Any:
    """``model.load_state_dict(tensors)`` with the model's own module versions attached.

    The keys are the model's, so its versions describe them. A dict read from safetensors or rebuilt by
    renaming carries none (``_metadata``), and modules that convert old layouts refuse a missing version
    (torchvision's MNASNet: "version should be set to 1 or 2 instead of None").
    """
    from collections import OrderedDict

    state = OrderedDict(tensors)
    state._metadata = getattr(model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    return model.load_state_dict(state, strict=strict, assign=assign)


def not_the_head(mismatches: list[ShapeMismatch]) -> list[str]:
    """Mismatched keys that a new classifier head does not explain.

    A head with another number of classes differs only in its first dimension, and always by the same
    pair (1000 -> 10), the pair of the last mismatch in model order (the head comes last; auxiliary heads
    share it). Any other difference means the weights come from another architecture.
    """
    if not mismatches:
        return []
    last = mismatches[-1]
    head_pair = (last.source_shape[:1], last.target_shape[:1])

    def head_like(m: ShapeMismatch) -> bool:
        return (
            bool(m.target_shape)
            and m.source_shape[1:] == m.target_shape[1:]
            and (m.source_shape[:1], m.target_shape[:1]) == head_pair
        )

    return [m.key for m in mismatches if not head_like(m)]


def _refusal(report: LoadReport, what: str, **kw: Any) -> CompatibilityError:
    # The report rides along so that the CLI can still show what would have loaded (table or --json).
    if not report.verdict.startswith("REFUSED"):
        report.verdict = "REFUSED: " + report.verdict.split(": ", 1)[-1]
    return CompatibilityError(what, report=report, **kw)


def _problems(r: LoadReport) -> str:
    parts = []
    if r.missing:
        parts.append(f"{len(r.missing)} missing ({', '.join(r.collapsed('missing')[:2])})")
    if r.unexpected:
        parts.append(f"{len(r.unexpected)} unexpected ({', '.join(r.collapsed('unexpected')[:2])})")
    if r.shape_mismatched:
        m = r.shape_mismatched[0]
        parts.append(
            f"{len(r.shape_mismatched)} shape-mismatched ({m.key}: {m.source_shape} vs {m.target_shape})"
        )
    return "; ".join(parts) or "nothing wrong"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _pct(fraction: float) -> str:
    # floor, so that 99.96% never reads as "100%" (nor 49.96% as "50%") when something was left out
    return f"{math.floor(fraction * 1000) / 10:.1f}%".replace(".0%", "%")


def _verdict(r: LoadReport, allow_partial: bool = False) -> str:
    pct = _pct(r.fraction)
    loaded, expected = _count(r.params_loaded), _count(r.params_expected)
    if loaded == expected and r.params_loaded != r.params_expected:  # "11.18M/11.18M" would hide the gap
        loaded, expected = f"{r.params_loaded:,}", f"{r.params_expected:,}"
    head = f"{r.tensors_loaded}/{r.tensors_expected} tensors, {loaded}/{expected} parameters ({pct})"
    extra: list[str] = []
    if r.unwrapped:
        extra.append(f"from checkpoint[{r.unwrapped!r}]")
    if r.prefix_stripped:
        extra.append(f"stripped {r.prefix_stripped!r}")
    if r.prefix_added:
        extra.append(f"added {r.prefix_added!r}")
    if r.renamed and len(r.renamed) > r.matched_by_order:
        extra.append(f"{len(r.renamed) - r.matched_by_order} renamed")
    if r.matched_by_order:
        extra.append(f"{r.matched_by_order} matched by order")
    if r.shape_mismatched:
        extra.append(f"skipped {', '.join(r.collapsed('shape_mismatched')[:3])} (shape differs: left as initialised)")
    if r.structural_mismatches:
        extra.append(
            f"{len(r.structural_mismatches)} shape mismatches inside the network, not just the head: "
            "another architecture?"
        )
    if r.missing:
        extra.append(f"{len(r.missing)} missing")
    if r.unexpected:
        extra.append(f"{len(r.unexpected)} unused")
    tail = f"; {'; '.join(extra)}" if extra else ""
    if r.complete:
        word = "OK: all weights loaded"
    elif r.fraction >= r.min_match:
        word = "PARTIAL"
    elif allow_partial:
        word = f"PARTIAL (below the {r.min_match:.0%} threshold, allowed)"
    else:
        word = "REFUSED"
    return f"{word}: {head}{tail}"
