"""The plan: which source tensor goes into which model tensor (model key -> source key).

Step by step, each only when it makes more keys match (see :func:`plan`):

1. the user's renames (:mod:`torchkeep._renames`);
2. wrapper prefixes stripped or added (``module.``, ``_orig_mod.``, ``model.``; :mod:`torchkeep._keys`);
3. names matched, then shapes compared (a new head is a shape mismatch);
4. leftovers paired by order when their shapes line up one for one (names differ, architectures agree);
5. the whole sequence paired by order when another naming scheme collides with the model's names.

The plan fills a :class:`~torchkeep._loadreport.LoadReport`'s key lists and touches no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from torchkeep._keys import map_keys, prefix_candidates
from torchkeep._loadreport import LoadReport, ShapeMismatch, not_the_head, percent
from torchkeep._renames import RenameSpec, apply_renames
from torchkeep.errors import CompatibilityError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep must stay cheap
    import torch

__all__ = ["UNORDERED_NOTE", "plan"]

Tensors = Mapping[str, "torch.Tensor"]


def plan(
    target: Tensors,
    source: Tensors,
    report: LoadReport,
    *,
    renames: RenameSpec,
    strip_prefix: str | None,
    match_by_order: bool | Literal["auto"],
    ordered: bool = True,
) -> dict[str, str]:
    """Decide which source tensor goes where (model key -> source key); fills the report's key lists.

    ``ordered``: the source keeps the order its tensors were written in (a pickled state_dict, ONNX,
    TorchScript), so pairing by position means something; a safetensors file sorts its keys and does not.
    """
    src_keys, tgt_keys = list(source), list(target)
    names = apply_renames(src_keys, renames, report.notes)  # current name -> source key
    report.renamed = {orig: cur for cur, orig in names.items() if cur != orig}
    final = _strip_or_add_prefix(names, tgt_keys, strip_prefix, report)  # final name -> source key
    pairs, missing, unexpected = _match_names(final, source, target, report)

    # Safetensors files store keys alphabetically ("layer10" before "layer2"): their order is not the
    # model's, so "auto" does not trust it unless the model's own keys are sorted the same way.
    alphabetical = len(src_keys) > 2 and src_keys == sorted(src_keys) and tgt_keys != sorted(tgt_keys)
    if match_by_order == "auto" and (not ordered or alphabetical) and (missing or unexpected or report.shape_mismatched):
        if (missing and unexpected) or not_the_head(report.shape_mismatched):
            report.notes.append(UNORDERED_NOTE if not ordered else (
                "not matching by order: the source's keys are in alphabetical order (as safetensors stores "
                "them), not the model's; use renames, or match_by_order=True to force it"
            ))
    elif match_by_order:
        if missing and unexpected:
            missing, unexpected = _pair_leftovers(pairs, missing, unexpected, src_keys, source, target, report)
        if missing or unexpected or not_the_head(report.shape_mismatched):
            pairs, missing, unexpected = _pair_whole_sequence(
                pairs, missing, unexpected, src_keys, tgt_keys, source, target, report, insist=match_by_order is True
            )

    report.matched = [k for k in tgt_keys if k in pairs]
    report.missing = missing
    unexpected_set = set(unexpected)
    report.unexpected = [k for k in src_keys if k in unexpected_set]
    return pairs


def _strip_or_add_prefix(
    names: dict[str, str], tgt_keys: list[str], strip_prefix: str | None, report: LoadReport
) -> dict[str, str]:
    """Step 2: the wrapper prefix strip/add pair that makes the most names match (``"auto"``), the prefix
    given, or none; ``{final name: source key}``."""
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
    return {new: names[cur] for new, cur in mapped.items()}


def _match_names(
    final: dict[str, str], source: Tensors, target: Tensors, report: LoadReport
) -> tuple[dict[str, str], list[str], list[str]]:
    """Step 3: match by name, then compare shapes: (pairs, missing model keys, unexpected source keys)."""
    pairs: dict[str, str] = {}
    unexpected: list[str] = []
    for new, src in final.items():
        if new not in target:
            unexpected.append(src)
            continue
        s, t = source[src], target[new]
        if tuple(s.shape) != tuple(t.shape):
            report.shape_mismatched.append(ShapeMismatch(new, src, list(s.shape), list(t.shape)))
        else:
            pairs[new] = src
    tgt_order = {k: i for i, k in enumerate(target)}
    report.shape_mismatched.sort(key=lambda m: tgt_order[m.key])  # model order, whatever the file's order
    mismatched_targets = {m.key for m in report.shape_mismatched}
    missing = [k for k in target if k not in pairs and k not in mismatched_targets]
    return pairs, missing, unexpected


def _pair_leftovers(
    pairs: dict[str, str],
    missing: list[str],
    unexpected: list[str],
    src_keys: list[str],
    source: Tensors,
    target: Tensors,
    report: LoadReport,
) -> tuple[list[str], list[str]]:
    """Step 4: names differ but the architectures agree: pair the leftovers by order when their shapes line
    up one for one. Returns what is still (missing, unexpected)."""
    src_order = {k: i for i, k in enumerate(src_keys)}
    left_src = sorted(unexpected, key=src_order.__getitem__)
    lined = _line_up(left_src, missing, source, target)
    if lined is None or len(left_src) != len(missing):
        return missing, unexpected
    _take(lined, pairs, report, source, target)
    report.matched_by_order = len(lined)
    report.order_pairing = "leftovers"
    report.notes.append(
        f"matched {len(missing)} tensors by order and shape because their names differ "
        f"(e.g. {left_src[0]!r} -> {missing[0]!r}); check the renamed list"
    )
    return [], []


def _pair_whole_sequence(
    pairs: dict[str, str],
    missing: list[str],
    unexpected: list[str],
    src_keys: list[str],
    tgt_keys: list[str],
    source: Tensors,
    target: Tensors,
    report: LoadReport,
    *,
    insist: bool,
) -> tuple[dict[str, str], list[str], list[str]]:
    """Step 5: another naming scheme whose names partly collide (a name on both sides with another shape)
    breaks the pairing of leftovers: pair the whole sequence by order when that explains every tensor and
    loads more than the names do. Returns (pairs, missing, unexpected), new or as they were.

    Raises:
        CompatibilityError: ``insist`` (``match_by_order=True``) and nothing lines up by order.
    """
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
            + f"; by name alone {percent(name_share)} of the tensors' elements would load"
        )
    elif insist and report.order_pairing != "leftovers":
        raise CompatibilityError(
            f"cannot match by order: {len(unexpected)} unmatched source tensors vs {len(missing)} "
            "unmatched model tensors, and the whole sequences do not line up by shape either",
            fix="use renames ('REGEX=>REPL') for the layers whose names differ",
        )
    return pairs, missing, unexpected


UNORDERED_NOTE = (
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
