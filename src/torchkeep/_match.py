"""The matching engine: load weights into a compatible model, and say exactly what happened.

``load_into(model, source)`` takes weights from a file (any format ``torchkeep.load_state_dict`` reads), a
checkpoint dict, a state_dict or another ``nn.Module`` and copies them into ``model``:

1. read the source once and unwrap checkpoints (:mod:`torchkeep._source`; the entry ``torchkeep._weights``
   names: ``state_dict``, ``model``, ``ema``, ...);
2. plan which source tensor goes where (:mod:`torchkeep._pairing`): the user's renames, wrapper prefixes
   (``module.`` from DDP, ``_orig_mod.`` from torch.compile, ``model.`` from Lightning) only when that makes
   more keys match, shapes (skip a new head, or refuse), and pairing by order when names differ but the
   tensors line up one for one;
3. refuse to load "almost nothing" silently: below ``min_match`` of the model's parameters it is an error
   unless ``allow_partial=True`` (the ``CompatibilityError`` carries the report in its ``report`` field);
4. copy.

The model is touched only after the whole plan is known, so a refusal leaves it unchanged. ``copy_state`` is the
one ``load_state_dict`` call every loader shares. This module knows no architecture and no model file: it imports
neither ``torchkeep.models`` nor ``torchkeep._modelfile`` (both use it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from torchkeep._compat import renamed_kwarg
from torchkeep._explain import explain_error
from torchkeep._keys import collapse_keys
from torchkeep._loadreport import (
    DtypeChange,
    LoadReport,
    ShapeMismatch,
    not_the_head,
    percent,
    problems,
    verdict,
)
from torchkeep._pairing import UNORDERED_NOTE, plan
from torchkeep._renames import RenameSpec
from torchkeep._source import WeightSource, read_source, unwrap_checkpoint
from torchkeep.errors import CompatibilityError, UsageError

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep must stay cheap
    import torch
    from torch import nn

__all__ = ["DtypeChange", "LoadReport", "MatchOptions", "ShapeMismatch", "copy_state", "load_into", "load_weights"]


@dataclass(frozen=True)
class MatchOptions:
    """How ``load_into`` matches and when it refuses (the arguments of :func:`load_into` of the same names).

    ``refuse_structural``: refuse when tensors inside the network differ in shape (not only in their first
    dimension, as a classifier head with another number of classes does); ``adapt`` sets it.
    """

    renames: RenameSpec = None
    strip_prefix: str | None = "auto"
    on_shape_mismatch: Literal["skip", "error"] = "skip"
    strict: bool = False
    min_match: float = 0.5
    match_by_order: bool | Literal["auto"] = "auto"
    allow_partial: bool = False
    dry_run: bool = False
    refuse_structural: bool = False

    def __post_init__(self) -> None:
        if self.on_shape_mismatch not in ("skip", "error"):
            raise UsageError(f"on_shape_mismatch must be 'skip' or 'error', not {self.on_shape_mismatch!r}")
        if not 0.0 <= self.min_match <= 1.0:
            raise UsageError(f"min_match must be between 0 and 1, not {self.min_match!r}")


def load_into(
    model: nn.Module,
    source: Any,
    *,
    renames: RenameSpec = None,
    strip_prefix: str | None = "auto",
    on_shape_mismatch: Literal["skip", "error"] = "skip",
    strict: bool = False,
    min_match: float = 0.5,
    match_by_order: bool | Literal["auto"] = "auto",
    allow_partial: bool = False,
    dry_run: bool = False,
    trust: bool = False,
    key: str | None = None,
    rename: RenameSpec = None,
) -> LoadReport:
    """Copy weights from ``source`` into ``model`` and report exactly what was loaded.

    Args:
        model: the model to load into (its weights are overwritten in place).
        source: a file path (any format ``torchkeep.load_state_dict`` reads), a state_dict, a checkpoint dict
            (weights under ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``params``, ``ema``...)
            or an ``nn.Module``.
        renames: renames applied to the source names before matching: ``{"REGEX": "REPL"}``, a list of
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
        rename: the old name of ``renames`` (deprecated: warns).

    Returns:
        A :class:`LoadReport`; ``report.applied`` tells whether the weights were copied.

    Raises:
        CompatibilityError: shapes differ with ``on_shape_mismatch="error"``, ``strict`` and keys differ,
            rename collisions, or too little would load.
    """
    renames = renamed_kwarg("rename", "renames", rename, renames, "load_into")
    options = MatchOptions(
        renames=renames,
        strip_prefix=strip_prefix,
        on_shape_mismatch=on_shape_mismatch,
        strict=strict,
        min_match=min_match,
        match_by_order=match_by_order,
        allow_partial=allow_partial,
        dry_run=dry_run,
    )
    return load_weights(model, read_source(source, trust=trust, key=key), options)


def load_weights(model: nn.Module, source: WeightSource, options: MatchOptions) -> LoadReport:
    """``load_into`` once the source is read (``adapt`` reads a file once and may plan twice)."""
    import torch

    report = LoadReport(
        source=source.label, target=type(model).__name__, min_match=options.min_match, notes=list(source.notes)
    )
    weights, unwrapped, report.non_tensor = unwrap_checkpoint(source.raw, report.notes)
    report.unwrapped = source.where or unwrapped
    # tensors only: some modules put non-tensor "_extra_state" entries in their state_dict
    target = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    pairs = plan(
        target,
        weights,
        report,
        renames=options.renames,
        strip_prefix=options.strip_prefix,
        match_by_order=options.match_by_order,
        ordered=source.ordered,
    )
    _tally(report, model, pairs, weights, target)
    report.verdict = verdict(report, options.allow_partial)
    _refuse(report, options, model, path=report.source if source.is_file else None)
    if options.dry_run:
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


def _parameter_sizes(model: nn.Module) -> dict[str, int]:
    # state_dict key -> numel for parameters, each shared (tied) parameter counted once.
    seen: set[int] = set()
    sizes: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        sizes[name] = 0 if id(p) in seen else p.numel()
        seen.add(id(p))
    return sizes


def _tally(
    report: LoadReport,
    model: nn.Module,
    pairs: dict[str, str],
    weights: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
) -> None:
    """Counts, dtype conversions and the mismatches a new head does not explain, into the report."""
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


def _refuse(report: LoadReport, options: MatchOptions, model: nn.Module, path: str | None) -> None:
    """Raise the ``CompatibilityError`` (carrying the report) for a plan the options do not accept."""
    if report.shape_mismatched and options.on_shape_mismatch == "error":
        m = report.shape_mismatched[0]
        raise _refusal(
            report,
            f"{len(report.shape_mismatched)} tensors differ in shape, e.g. {m.key}: source "
            f"{m.source_shape} vs model {m.target_shape}",
            path=path,
            fix="skip them with on_shape_mismatch='skip' (a new head; CLI: --on-shape-mismatch skip) or build the "
            "model with the source's number of classes (CLI: --num-classes)",
        )
    if options.refuse_structural and report.structural_mismatches:
        m = next(x for x in report.shape_mismatched if x.key in set(report.structural_mismatches))
        raise _refusal(
            report,
            f"{len(report.structural_mismatches)} tensors inside the network differ in shape, not just the "
            f"head (e.g. {m.key}: source {m.source_shape} vs model {m.target_shape}): the weights come from "
            "another architecture",
            path=path,
            fix=(
                "the names follow another scheme and a safetensors file keeps no order to pair them by: use "
                "renames ('REGEX=>REPL'), or adapt the original .pt/.pth file"
                if UNORDERED_NOTE in report.notes
                else "pick the architecture the weights come from (--arch)"
            )
            + (", or --allow-partial to load what fits" if report.params_loaded else ""),
        )
    if options.strict and not report.complete:
        raise _refusal(
            report,
            f"strict load failed: {problems(report)}",
            path=path,
            fix="pass strict=False to load what matches (the report lists the rest)",
        )
    if report.fraction < options.min_match and not options.allow_partial:
        raise _refusal(
            report,
            f"only {percent(report.fraction)} of {type(model).__name__}'s parameters would load "
            f"(threshold {options.min_match:.0%}): {problems(report)}",
            path=path,
            fix="check the architecture (and --num-classes), add renames ('REGEX=>REPL'), or accept it with "
            "allow_partial=True (CLI: torchkeep adapt --allow-partial, then train from that model file)"
            if report.params_loaded
            # nothing fits: a "partial" load would be a randomly initialised model under the source's name
            else "nothing in the source fits this model: check the architecture the weights come from (and "
            "--num-classes), or add renames ('REGEX=>REPL')",
        )


def _refusal(report: LoadReport, what: str, **kw: Any) -> CompatibilityError:
    # The report rides along so that the CLI can still show what would have loaded (table or --json).
    if not report.verdict.startswith("REFUSED"):
        report.verdict = "REFUSED: " + report.verdict.split(": ", 1)[-1]
    return CompatibilityError(what, report=report, **kw)


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
