"""Load weights into a compatible model, and say exactly what happened.

``load_into(model, source)`` takes weights from a file (any format ``torchkeep.load_state_dict`` reads), a
checkpoint dict, a state_dict or another ``nn.Module`` and copies them into ``model``:

1. unwrap checkpoints (``state_dict``, ``model_state_dict``, ``model``, ``net``, ``params``, ``ema``, ...);
2. apply the user's renames (``REGEX=>REPL``, captured groups allowed; two keys landing on one name is an error);
3. strip or add wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from torch.compile, ``model.`` from
   Lightning, and their combinations) only when that makes more keys match;
4. compare shapes: skip (a new head) or refuse;
5. when names still differ but the remaining tensors line up one for one by shape, pair them by order, and
   say so;
6. refuse to load "almost nothing" silently: below ``min_match`` of the model's parameters it is an error
   unless ``allow_partial=True``.

The model is touched only after the whole plan is known, so a refusal leaves it unchanged.
``adapt(src, arch=...)`` builds an architecture with ``torchkeep.models.build``, runs ``load_into`` and writes a
self-describing model file. ``explain_error(exc_or_text)`` turns the classic raw PyTorch loading errors into
the torchkeep fix.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torchkeep._weights import EMA_KEYS, find_weights_in_object
from torchkeep.errors import CompatibilityError, TorchkeepError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep must stay cheap
    import torch
    from torch import nn

__all__ = [
    "AdaptResult",
    "DtypeChange",
    "LoadReport",
    "ShapeMismatch",
    "adapt",
    "collapse_keys",
    "explain_error",
    "load_into",
    "parse_rename",
]

# Prefix segments that wrappers add: DataParallel/DDP, torch.compile, Lightning / generic wrappers.
_KNOWN_PREFIX_SEGMENTS = ("module", "_orig_mod", "model")

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

_DIGITS = re.compile(r"\d+")


def _fmt_numbers(values: Iterable[str]) -> str:
    vals = sorted(set(values), key=lambda v: (int(v), v))
    if len(vals) == 1:
        return vals[0]
    ints = [int(v) for v in vals]
    # a range only when the numbers are written plainly ("01".."03" would not read back the same)
    if len(vals) >= 3 and ints == list(range(ints[0], ints[-1] + 1)) and all(v == str(int(v)) for v in vals):
        return "{" + f"{vals[0]}..{vals[-1]}" + "}"
    return "{" + ",".join(vals) + "}"


def _collapse_numeric(keys: list[str]) -> list[str]:
    # Group keys that differ only in their numbers ("layer1.0.conv1.weight" ~ "layer{}.{}.conv1.weight").
    groups: dict[str, list[tuple[str, ...]]] = {}
    for k in keys:
        template = _DIGITS.sub("\x00", k)
        groups.setdefault(template, []).append(tuple(_DIGITS.findall(k)))
    out: list[str] = []
    for template, nums in groups.items():
        out.extend(_render_group(template, nums))
    return out


def _render_group(template: str, nums: list[tuple[str, ...]]) -> list[str]:
    # template: the key with each number replaced by "\x00"; nums: the numbers of each key of the group
    if not nums[0]:
        return [template]
    sets = [sorted(set(p), key=lambda v: (int(v), v)) for p in zip(*nums)]
    parts = template.split("\x00")
    if math.prod(len(s) for s in sets) == len(set(nums)):
        # The group is a full product of its number sets: one pattern says it truthfully.
        text = parts[0]
        for i, s in enumerate(sets):
            text += _fmt_numbers(s) + parts[i + 1]
        return [text]
    # Not a full product (layer1 has 2 blocks, layer3 has 6): split on the first varying position.
    pos = next(i for i, s in enumerate(sets) if len(s) > 1)
    out: list[str] = []
    for value in sets[pos]:
        sub = [n[:pos] + n[pos + 1 :] for n in nums if n[pos] == value]
        filled = "\x00".join(parts[: pos + 1]) + value + "\x00".join(parts[pos + 1 :])
        out.extend(_render_group(filled, sub))
    return out


def collapse_keys(keys: Iterable[str]) -> list[str]:
    """Collapse repeated blocks of state_dict keys for display, truthfully.

    ``layer1.0.conv1.weight`` ... ``layer4.1.conv1.weight`` becomes ``layer{1..4}.{0,1}.conv1.weight``, and
    ``fc.weight`` + ``fc.bias`` becomes ``fc.{weight,bias}``. A pattern is only printed when every key it
    stands for is present.

    Args:
        keys: state_dict keys, in any order.

    Returns:
        Patterns in order of first appearance.
    """
    numeric = _collapse_numeric(list(dict.fromkeys(keys)))
    # Second pass: siblings that differ only in their last segment (weight/bias/running_mean...).
    by_parent: dict[tuple[str, bool], list[str]] = {}
    for pattern in numeric:
        parent, _, leaf = pattern.rpartition(".")
        if "{" in leaf or not parent:  # a pattern already, or no parent: kept as it is
            by_parent.setdefault((pattern, False), []).append("")
        else:
            by_parent.setdefault((parent, True), []).append(leaf)
    out: list[str] = []
    for (parent, grouped), leaves in by_parent.items():
        if not grouped:
            out.append(parent)
        elif len(leaves) == 1:
            out.append(f"{parent}.{leaves[0]}")
        else:
            out.append(parent + ".{" + ",".join(leaves) + "}")
    return out


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


def _prefix_candidates(keys: Iterable[str], generic: bool = False) -> set[str]:
    # Prefixes made of known wrapper segments ("module.", "module._orig_mod.", "model."), plus (generic) the
    # first segment shared by at least half the keys ("backbone.", "encoder.") so that any wrapper can be
    # stripped when it helps. Only ever *stripped*: adding an arbitrary segment would be a rename in disguise.
    cands: set[str] = {""}
    first: dict[str, int] = {}
    total = 0
    for k in keys:
        total += 1
        parts = k.split(".")
        i = 0
        while i < len(parts) - 1 and parts[i] in _KNOWN_PREFIX_SEGMENTS:
            i += 1
            cands.add(".".join(parts[:i]) + ".")
        if len(parts) > 1:
            first[parts[0] + "."] = first.get(parts[0] + ".", 0) + 1
    for p, n in first.items():
        if generic and n * 2 >= total:
            cands.add(p)
    return cands


def _apply_prefix(key: str, strip: str, add: str) -> str:
    if strip:
        if not key.startswith(strip):
            return key
        key = key[len(strip) :]
    return add + key


def _map_keys(names: list[str], strip: str, add: str) -> dict[str, str] | None:
    """new name -> current name, or None when two keys would collide."""
    out: dict[str, str] = {}
    for n in names:
        new = _apply_prefix(n, strip, add)
        if new in out:
            return None
        out[new] = n
    return out


# -------------------------------------------------------------------------------------------- sources


def _is_tensor(v: Any) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def _tensor_share(m: Mapping) -> float:
    if not m:
        return 0.0
    return sum(1 for v in m.values() if _is_tensor(v)) / len(m)


def _unwrap(obj: Any, notes: list[str]) -> tuple[dict[str, Any], str | None, list[str]]:
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


def _read_source(
    source: Any, trust: bool, notes: list[str], key: str | None = None
) -> tuple[Any, str, str | None]:
    """(weights or checkpoint object, label for the report, where in the file the weights were found)."""
    from torch import nn

    if isinstance(source, (str, os.PathLike)):
        from torchkeep._load import read_weights

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


def _plan(
    target: Mapping[str, torch.Tensor],
    source: Mapping[str, torch.Tensor],
    report: LoadReport,
    *,
    rename: RenameSpec,
    strip_prefix: str | None,
    match_by_order: bool | Literal["auto"],
) -> dict[str, str]:
    """Decide which source tensor goes where (model key -> source key); fills the report's key lists."""
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
        for strip in sorted(_prefix_candidates(cur_names, generic=True), key=len):
            for add in sorted(_prefix_candidates(tgt_keys), key=len):
                if not strip and not add:
                    continue
                mapped = _map_keys(cur_names, strip, add)
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
    mapped = _map_keys(cur_names, *best)
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
    if match_by_order == "auto" and alphabetical and missing and unexpected:
        report.notes.append(
            "not matching by order: the source's keys are in alphabetical order (as safetensors stores them), "
            "not the model's; use renames, or match_by_order=True to force it"
        )
    elif match_by_order and missing and unexpected:
        src_order = {k: i for i, k in enumerate(src_keys)}
        left_src = sorted(unexpected, key=src_order.__getitem__)
        # Pairs must agree in shape, except a trailing head (at most its weight and bias) that differs only
        # in size: a re-headed copy of the same architecture. Those become shape mismatches.
        same = [tuple(source[sk].shape) == tuple(target[tk].shape) for sk, tk in zip(left_src, missing)]
        bad = [i for i, ok in enumerate(same) if not ok]
        n_head = len(same) - bad[0] if bad else 0  # every mismatch lies in the last n_head pairs
        lined_up = (
            len(left_src) == len(missing)
            and n_head <= 2
            and sum(same) > n_head
            and all(source[sk].dim() == target[tk].dim() for sk, tk in zip(left_src, missing))
        )
        if lined_up:
            for i, (sk, tk) in enumerate(zip(left_src, missing)):
                report.renamed[sk] = tk
                if same[i]:
                    pairs[tk] = sk
                else:
                    report.shape_mismatched.append(
                        ShapeMismatch(tk, sk, list(source[sk].shape), list(target[tk].shape))
                    )
            report.matched_by_order = len(same)
            report.notes.append(
                f"matched {len(missing)} tensors by order and shape because their names differ "
                f"(e.g. {left_src[0]!r} -> {missing[0]!r}); check the renamed list"
            )
            missing, unexpected = [], []
        elif match_by_order is True:
            raise CompatibilityError(
                f"cannot match by order: {len(left_src)} unmatched source tensors vs {len(missing)} "
                "unmatched model tensors, or their shapes differ in order",
                fix="use renames ('REGEX=>REPL') for the layers whose names differ",
            )

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
    raw, label, where = _read_source(source, trust, notes, key)
    return _load_weights(
        model,
        raw,
        label=label,
        where=where,
        notes=notes,
        is_file=isinstance(source, (str, os.PathLike)),
        rename=rename,
        strip_prefix=strip_prefix,
        on_shape_mismatch=on_shape_mismatch,
        strict=strict,
        min_match=min_match,
        match_by_order=match_by_order,
        allow_partial=allow_partial,
        dry_run=dry_run,
    )


def _load_weights(
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
) -> LoadReport:
    """``load_into`` once the source is read (``adapt`` reads a file once and may plan twice).

    ``refuse_structural``: refuse when tensors inside the network differ in shape (not only in their
    first dimension, as a classifier head with another number of classes does).
    """
    import torch

    report = LoadReport(source=label, target=type(model).__name__, min_match=min_match, notes=list(notes))
    weights, unwrapped, report.non_tensor = _unwrap(raw, report.notes)
    report.unwrapped = where or unwrapped
    # tensors only: some modules put non-tensor "_extra_state" entries in their state_dict
    target = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    pairs = _plan(
        target,
        weights,
        report,
        rename=rename,
        strip_prefix=strip_prefix,
        match_by_order=match_by_order,
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
    report.structural_mismatches = _structural(report.shape_mismatched)
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
            fix="pick the architecture the weights come from (--arch), or --allow-partial to load what fits",
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
            "allow_partial=True (CLI: torchkeep adapt --allow-partial, then train from that model file)",
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


def _structural(mismatches: list[ShapeMismatch]) -> list[str]:
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
    err = CompatibilityError(what, **kw)
    err.report = report  # type: ignore[attr-defined]
    return err


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


# ---------------------------------------------------------------------------------------------- adapt


@dataclass
class AdaptResult:
    """What ``adapt`` did: the report, and the model file written (``None`` on a dry run)."""

    source: str
    arch: str
    num_classes: int | None
    report: LoadReport
    out: str | None
    source_sha256: str | None
    dry_run: bool
    preprocessing: dict[str, Any] | None = None  # what the model file records (and predict/eval will feed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "source": self.source,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "out": self.out,
            "source_sha256": self.source_sha256,
            "dry_run": self.dry_run,
            "preprocessing": self.preprocessing,
            "verdict": self.report.verdict,
            "report": self.report.to_dict(),
        }


def _inferred_classes(model: nn.Module, report: LoadReport) -> int | None:
    """The source's number of classes when only the model's head disagrees with it, else None."""
    try:
        from torchkeep.models import find_head

        head_path = find_head(model).path
    except Exception:  # no recognisable head: nothing to infer
        return None
    for m in report.shape_mismatched:
        if m.key == f"{head_path}.weight" and m.source_shape[1:] == m.target_shape[1:]:
            return m.source_shape[0]
    return None


def _family(name: str) -> str:
    m = re.match(r"[a-z]+", name.lower())
    return m.group(0) if m else name


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s initialisers no-ops (only used while building on the meta device, where
    they have nothing to fill but still cost ~0.3 s per ResNet through their Python decompositions)."""
    import torch.nn.init as init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def _guess_arch(raw: Any, arch: str, limit: int = 3) -> list[str]:
    """Registry architectures of ``arch``'s family (resnet*, vgg*, efficientnet*...) that the weights fit.

    Built on the meta device (no memory, no init), so trying a family costs well under a second.
    Returns names, with ``" (N classes)"`` when only the head differs.
    """
    import torch

    try:
        from torchkeep.models import build, list_models

        names = [a.name for a in list_models() if a.source != "user"]
    except Exception:  # no registry: no guess
        return []
    family = _family(arch)
    candidates = [n for n in names if n != arch and (_family(n) == family or family in n)]
    weights, _, _ = _unwrap(raw, [])
    fits: list[tuple[int, str]] = []
    for name in candidates:
        try:
            with torch.device("meta"), _no_init():
                target = {k: v for k, v in build(name).state_dict().items() if isinstance(v, torch.Tensor)}
        except Exception:  # some constructors copy data at init and cannot run on meta: skip them
            continue
        trial = LoadReport(source="", target=name)
        try:
            pairs = _plan(target, weights, trial, rename=None, strip_prefix="auto", match_by_order=False)
        except CompatibilityError:
            continue
        if trial.missing or trial.unexpected or len(trial.shape_mismatched) > 2:
            continue
        if not trial.shape_mismatched:
            fits.append((0, name))
        elif len(pairs) >= len(target) - 2:
            fits.append((1, f"{name} ({trial.shape_mismatched[0].source_shape[0]} classes)"))
    return [n for _, n in sorted(fits)[:limit]]


def adapt(
    src: str | os.PathLike[str],
    *,
    arch: str,
    num_classes: int | None = None,
    renames: RenameSpec = (),
    strip_prefix: str | None = "auto",
    allow_partial: bool = False,
    out: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    class_names: Sequence[str] | None = None,
    in_channels: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    min_match: float = 0.5,
    match_by_order: bool | Literal["auto"] = "auto",
    on_shape_mismatch: Literal["skip", "error"] = "skip",
    trust: bool = False,
    key: str | None = None,
    head: Literal["replace", "append"] = "replace",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> AdaptResult:
    """Build ``arch``, load the weights of ``src`` into it, and write a self-describing model file.

    Args:
        src: any file ``torchkeep.load_state_dict`` reads (state_dict, checkpoint, full pickled model,
            safetensors, TorchScript, ...); no code in it runs.
        arch: an architecture name from ``torchkeep models`` (``resnet18``, ``cifar10_cnn``, ...).
        num_classes: outputs of the model; ``None`` takes them from ``class_names``, else from the source's
            head when only the head differs, else the architecture's default.
        renames: ``REGEX=>REPL`` rules (see :func:`load_into`).
        strip_prefix: ``"auto"``, ``"none"`` or a prefix to strip (see :func:`load_into`).
        allow_partial: write the file even if less than ``min_match`` of the parameters load.
        out: the model file to write (``.safetensors``); required unless ``dry_run``.
        dry_run: plan and report only; nothing is written.
        class_names: class names in index order, stored in the spec.
        in_channels: input channels, for architectures that take them.
        input_size: ``(H, W)`` or one int, for architectures that take it.
        min_match: refusal threshold on the share of parameters loaded.
        match_by_order: see :func:`load_into`.
        on_shape_mismatch: ``"skip"`` (a new head stays initialised) or ``"error"``.
        trust: passed to ``torchkeep.load_state_dict`` (only for files whose classes you trust).
        key: the checkpoint entry holding the weights (``"ema"``), if not the automatic choice.
        head: how the model gets ``num_classes`` outputs when the architecture has another number:
            ``"replace"`` its last classifier layer, or ``"append"`` ``Linear(outputs, num_classes)`` after it
            (the seeds' VGG16: ``vgg.classifier.add_module("add_linear", nn.Linear(1000, 10))``), so the
            source's whole head loads. ``"append"`` needs ``num_classes`` (or ``class_names``).
        mean, std: the per-channel normalisation the model file records (one value, or one per channel),
            instead of the architecture's (ImageNet's for torchvision, none for the seeds); both or neither.

    Returns:
        An :class:`AdaptResult` with the :class:`LoadReport`, the file written and the preprocessing it records.

    Raises:
        UsageError: no ``out`` without ``dry_run``, an unknown architecture (with close matches), or
            ``class_names`` that disagree with ``num_classes``.
        CompatibilityError: too little would load (see :func:`load_into`).
    """
    from torchkeep.models import build

    if out is None and not dry_run:
        raise UsageError("adapt needs an output file", fix="pass out=... (CLI: -o OUT.safetensors) or dry_run=True")
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together", fix="pass both (e.g. --mean 0.5 --std 0.5)")
    if head == "append" and num_classes is None and class_names is None:
        raise UsageError(
            "--head append adds Linear(outputs, N) after the model's head: it needs the number of classes N",
            fix="pass --num-classes N (or --class-names)",
        )
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes is None:
            num_classes = len(class_names)
        elif len(class_names) != num_classes:
            raise UsageError(
                f"{len(class_names)} class names given for num_classes={num_classes}",
                fix="give exactly one name per class, in index order",
            )
    path = Path(src)
    notes: list[str] = []
    raw, label, where = _read_source(path, trust, notes, key)

    def _build(n: int | None) -> nn.Module:
        return build(arch, n, in_channels=in_channels, input_size=input_size, class_names=class_names, head=head)

    def _run(model: nn.Module, dry: bool, partial: bool, shapes: Literal["skip", "error"]) -> LoadReport:
        # adapt (unlike load_into) refuses a backbone that does not fit unless partial loads are allowed
        return _load_weights(
            model,
            raw,
            label=label,
            where=where,
            notes=notes,
            is_file=True,
            rename=renames,
            strip_prefix=strip_prefix,
            on_shape_mismatch=shapes,
            strict=False,
            min_match=min_match,
            match_by_order=match_by_order,
            allow_partial=partial,
            dry_run=dry,
            refuse_structural=not partial,
        )

    model = _build(num_classes)
    if num_classes is None:
        # A fine-tuned 10-class file adapted to "resnet18" must keep its trained head, not get a random
        # 1000-class one: take the number of classes from the source when only the head disagrees.
        try:
            inferred = _inferred_classes(model, _run(model, True, True, "skip"))
        except CompatibilityError:  # the real run below reports it
            inferred = None
        if inferred is not None:
            model = _build(inferred)
            notes.append(f"num_classes={inferred} taken from the source's head")
            num_classes = inferred
    try:
        report = _run(model, dry_run, allow_partial, on_shape_mismatch)
    except CompatibilityError as exc:
        refused = getattr(exc, "report", None)
        if refused is None or (refused.fraction >= min_match and not refused.structural_mismatches):
            raise
        # The classic cause of "almost nothing matches" is the wrong --arch: name the ones that fit.
        guesses = _guess_arch(raw, arch)
        if not guesses:
            raise
        refused.notes.append(f"the weights fit {', '.join(guesses)}")
        err = CompatibilityError(
            exc.what,
            path=exc.path,
            fix=f"the weights fit {' / '.join(guesses)}: pass --arch {guesses[0].split(' ')[0]} "
            f"(or allow_partial=True / --allow-partial to load what fits)",
        )
        err.report = refused  # type: ignore[attr-defined]
        raise err from None
    if report.shape_mismatched:
        report.notes.append(
            f"{', '.join(report.collapsed('shape_mismatched'))} keep their fresh initialisation: train "
            "(fine-tune) the model before trusting its predictions"
        )
    spec = getattr(model, "torchkeep_spec", None)
    added = getattr(getattr(spec, "head", None), "added_path", None)
    if added and any(k.startswith(added + ".") for k in report.missing):
        report.notes.append(f"{added} is the appended head: it starts fresh; train (fine-tune) the model before "
                            "trusting its predictions")
    if spec is not None and mean is not None and std is not None:
        spec.preprocessing = spec.preprocessing.normalised(mean, std)
    if isinstance(raw, dict):
        raw.clear()  # the model holds copies now; dropping the source halves peak memory while saving
    from torchkeep._convert import file_sha256

    sha = file_sha256(path)
    written: str | None = None
    if not dry_run and out is not None:
        from torchkeep._modelfile import save

        if spec is not None:
            spec.provenance.source_file = os.fspath(path)
            spec.provenance.source_sha256 = sha
            spec.provenance.notes = f"torchkeep adapt: {report.verdict}"
            spec.extra["adapt"] = report.summary()
            if class_names is not None:
                spec.class_names = list(class_names)
        written = os.fspath(save(model, out, spec))
    actual_classes = getattr(getattr(model, "torchkeep_spec", None), "num_classes", None) or num_classes
    return AdaptResult(
        source=os.fspath(path),
        arch=arch,
        num_classes=actual_classes,
        report=report,
        out=written,
        source_sha256=sha,
        dry_run=dry_run,
        preprocessing=asdict(spec.preprocessing) if spec is not None else None,
    )


# --------------------------------------------------------------------------------------- explain_error

_SIZE_RX = re.compile(
    r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)
_MISSING_RX = re.compile(r"Missing key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")
_UNEXPECTED_RX = re.compile(r"Unexpected key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")
_GLOBAL_RX = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_ATTR_RX = re.compile(r"Can't get attribute '([\w.]+)' on <module '([\w.]+)'")
_NOMODULE_RX = re.compile(r"No module named '([\w.]+)'")
_MATMUL_RX = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")
_PREFIX_NAMES = {
    "module.": "DataParallel/DistributedDataParallel",
    "_orig_mod.": "torch.compile",
    "model.": "a Lightning-style wrapper",
}


def _keys(rx: re.Pattern[str], text: str) -> list[str]:
    m = rx.search(text)
    return re.findall(r"\"([^\"]*)\"", m.group(1)) if m else []


def _prefix_story(missing: list[str], unexpected: list[str]) -> str | None:
    """Explain missing/unexpected keys that differ only by a wrapper prefix."""
    if not (missing and unexpected):
        return None
    miss = set(missing)
    for strip in sorted(_prefix_candidates(unexpected), key=len, reverse=True):
        for add in sorted(_prefix_candidates(missing), key=len, reverse=True):
            if not (strip or add):
                continue
            moved = [_apply_prefix(k, strip, add) for k in unexpected]
            if sum(k in miss for k in moved) * 2 >= max(len(miss), 1):
                if strip:
                    who = next((v for p, v in _PREFIX_NAMES.items() if strip.endswith(p)), "a wrapper module")
                    what = f"the checkpoint's keys carry the prefix {strip!r} (saved from {who})"
                else:
                    what = f"the model's keys carry the prefix {add!r} (it is wrapped) but the checkpoint's do not"
                return (
                    f"{what}. Fix: torchkeep.load_into(model, checkpoint) strips/adds it automatically "
                    f"(strip_prefix='auto'), or by hand: {{k.removeprefix({strip!r}): v for k, v in sd.items()}}"
                    if strip
                    else f"{what}. Fix: torchkeep.load_into(model, checkpoint) adds it automatically "
                    f"(strip_prefix='auto'), or load into the unwrapped model (model.module / model._orig_mod)"
                )
    return None


def explain_error(exc_or_text: BaseException | str) -> str | None:
    """Explain a raw PyTorch loading error (an exception or pasted text) and name the torchkeep fix.

    Knows the classic ones: ``size mismatch for fc.weight``, ``Missing key(s)`` / ``Unexpected key(s) in
    state_dict`` (with the ``module.`` / ``_orig_mod.`` / ``model.`` prefix stories), ``Attempting to
    deserialize object on a CUDA device``, ``Weights only load failed``, ``Can't get attribute 'Net' on
    <module '__main__'>``, ``No module named ...``, ``Unknown model ...``, ``invalid load key``, and the
    device / input-shape errors of a forward pass.

    Args:
        exc_or_text: the exception (its causes are read too) or the message text.

    Returns:
        One or two lines: what happened and the exact call or flag that fixes it; ``None`` if the error is
        not one torchkeep knows.
    """
    if isinstance(exc_or_text, TorchkeepError):
        return str(exc_or_text)  # already says what and how to fix
    if isinstance(exc_or_text, BaseException):
        parts, seen = [], set()
        e: BaseException | None = exc_or_text
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            parts.append(f"{type(e).__name__}: {e}")
            # where it was raised matters ("No module named" while unpickling vs a plain import)
            tb = e.__traceback__
            while tb is not None:
                parts.append(f'  File "{tb.tb_frame.f_code.co_filename}", in {tb.tb_frame.f_code.co_name}')
                tb = tb.tb_next
            e = e.__cause__ or e.__context__
        text = "\n".join(parts)
    else:
        text = str(exc_or_text)

    if "Attempting to deserialize object on a CUDA device" in text or (
        "torch.cuda.is_available() is False" in text
    ):
        return (
            "The file was saved from a GPU and this machine has no CUDA. Fix: "
            "torch.load(path, map_location='cpu'), or torchkeep.load_state_dict(path) / `torchkeep convert PATH "
            "OUT.safetensors`, which always load on the CPU."
        )
    m = _ATTR_RX.search(text)
    if m:
        cls, mod = m.groups()
        # "<module '__main__'>" (or "pytest.__main__" under python -m): the script that ran torch.save
        where = "the script that saved it" if mod.endswith("__main__") else f"module {mod!r}"
        return (
            f"The file is a whole pickled model (torch.save(model)) whose class {cls!r} was defined in {where}, "
            f"which cannot be imported here. Fix: torchkeep.load_state_dict(path) extracts its weights without "
            f"the class; then torchkeep.load_into(YourModel(), path), or `torchkeep adapt PATH --arch NAME -o "
            f"model.safetensors` for a file that needs no code."
        )
    if "Weights only load failed" in text:
        g = _GLOBAL_RX.search(text)
        if g:
            return (
                f"torch.load(weights_only=True) refused the file: it references {g.group(1)}, so it holds more than "
                f"weights (a whole pickled model or custom objects). Fix: `torchkeep scan PATH`, then "
                f"torchkeep.load_state_dict(path) (weights without running code) or `torchkeep convert PATH "
                f"OUT.safetensors`; weights_only=False only for files you trust."
            )
        if "Unsupported operand" in text:
            return (
                "torch.load could not read the file as a pickle at all: it is probably not a PyTorch file (a Git LFS "
                "pointer, an HTML error page, or truncated). Fix: `torchkeep inspect PATH` to see what it is; "
                "re-download it (git lfs pull)."
            )
        return (
            "torch.load(weights_only=True) refused the file: it holds objects other than tensors. Fix: "
            "`torchkeep scan PATH`, then torchkeep.load_state_dict(path) or `torchkeep convert PATH OUT.safetensors`."
        )
    m = _NOMODULE_RX.search(text)
    # only when it happened while unpickling (torch.load / pickle in the traceback or the pasted text)
    if m and re.search(r"unpickl|pickle|torch\.load|serialization\.py|in load\b", text, re.IGNORECASE):
        return (
            f"The file is a pickled object whose class lives in module {m.group(1)!r}, which is not importable "
            f"here (moved or renamed). Fix: torchkeep.load_state_dict(path) extracts the weights without importing "
            f"it; then torchkeep.load_into(model, path) or `torchkeep adapt PATH --arch NAME -o OUT`."
        )
    sizes = _SIZE_RX.findall(text)
    if sizes:
        key, src, dst = sizes[0]
        src_shape = [int(x) for x in src.split(",") if x.strip()]
        dst_shape = [int(x) for x in dst.split(",") if x.strip()]
        keys = collapse_keys(k for k, _, _ in sizes)
        head = ""
        if src_shape[1:] == dst_shape[1:] and src_shape[:1] != dst_shape[:1] and len(src_shape) <= 2:
            head = (
                f" — the checkpoint has {src_shape[0]} outputs there and the model {dst_shape[0]}: a different "
                f"number of classes"
            )
        return (
            f"{key} is {src_shape} in the checkpoint but {dst_shape} in the model{head} "
            f"({', '.join(keys[:3])}). Fix: torchkeep.load_into(model, checkpoint, on_shape_mismatch='skip') loads "
            f"everything else, or `torchkeep adapt SRC --arch NAME --num-classes N -o OUT`."
        )
    missing, unexpected = _keys(_MISSING_RX, text), _keys(_UNEXPECTED_RX, text)
    if missing or unexpected:
        story = _prefix_story(missing, unexpected)
        if story:
            return story
        if missing and unexpected:
            return (
                f"Key names differ: the model wants {', '.join(collapse_keys(missing)[:2])} but the checkpoint has "
                f"{', '.join(collapse_keys(unexpected)[:2])}. Fix: torchkeep.load_into(model, checkpoint, "
                f"rename={{'REGEX': 'REPL'}}) or `torchkeep adapt SRC --rename 'REGEX=>REPL'`; if only names differ "
                f"it matches by order and shape and reports it."
            )
        if missing:
            return (
                f"The checkpoint lacks {len(missing)} of the model's tensors ({', '.join(collapse_keys(missing)[:3])}):"
                f" the model has layers the checkpoint does not. Fix: torchkeep.load_into(model, checkpoint) loads"
                f" the rest and lists them (or load_state_dict(..., strict=False)); check the architecture."
            )
        return (
            f"The checkpoint has {len(unexpected)} tensors the model does not ({', '.join(collapse_keys(unexpected)[:3])}"
            f"). Fix: torchkeep.load_into(model, checkpoint) ignores and lists them (or strict=False); check the "
            f"architecture matches."
        )
    m = re.search(r"Unknown model '?([\w.]+)'?", text)
    if m:
        return _unknown_arch_hint(m.group(1))
    if "invalid load key" in text:
        return (
            "The file is not a PyTorch pickle (often a Git LFS pointer or an HTML page saved instead of the weights)."
            " Fix: `torchkeep inspect PATH` to see what it is, then re-download it (git lfs pull)."
        )
    if "failed finding central directory" in text or "PytorchStreamReader failed" in text:
        return (
            "The file is not a complete PyTorch zip archive (truncated download or another format). Fix: "
            "`torchkeep inspect PATH` to see what it is; re-save or re-download it."
        )
    if ("Input type" in text and "weight type" in text) or "Expected all tensors to be on the same device" in text:
        return (
            "The input and the model are on different devices (CPU vs GPU). Fix: move both the same way: "
            "model.to(device) and x.to(device) — torchkeep.load(path, device=...) returns the model on the device."
        )
    m = _MATMUL_RX.search(text)
    if m:
        return (
            f"A Linear layer expected {m.group(3)} input features but got {m.group(2)}: the input is not the size "
            f"(or channels) the model was built for. Fix: feed images through torchkeep's preprocessing "
            f"(the model file's spec records input_size), or rebuild with the right input_size."
        )
    return None


def _unknown_arch_hint(name: str) -> str:
    import difflib

    try:
        from torchkeep.models import list_models

        names = [getattr(m, "name", m) for m in list_models()]
    except Exception:  # the registry may be unavailable; torchvision's list still helps
        import torchvision

        names = list(torchvision.models.list_models())
    close = difflib.get_close_matches(name, [str(n) for n in names], n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"Unknown architecture {name!r}: {hint}Fix: `torchkeep models` lists every name --arch accepts."
