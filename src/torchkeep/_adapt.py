"""``adapt(src, arch=...)``: build an architecture, load a file's weights into it, write a model file.

It builds with ``torchkeep.models.build``, matches with the engine of ``torchkeep._match`` (``load_into``) and
writes with ``torchkeep._modelfile.save``. When almost nothing fits, it names the architectures of the same family
that the weights do fit.

``load_into``, ``LoadReport``, ``collapse_keys``, ``parse_rename`` and ``explain_error`` are importable from here
too, where they used to live (they live in ``_match``, ``_loadreport``, ``_keys``, ``_renames`` and ``_explain``).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torchkeep._convert import file_sha256
from torchkeep._explain import explain_error
from torchkeep._identify import Identification, head_moves, identify
from torchkeep._keys import collapse_keys
from torchkeep._loadreport import DtypeChange, LoadReport, ShapeMismatch, not_the_head
from torchkeep._match import MatchOptions, copy_state, load_into, load_weights
from torchkeep._modelfile import save
from torchkeep._pairing import plan
from torchkeep._renames import RenameSpec, parse_rename
from torchkeep._source import WeightSource, read_source, unwrap_checkpoint
from torchkeep.errors import CompatibilityError, UsageError
from torchkeep.models._meta import meta_build

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep must stay cheap
    from torch import nn

    from torchkeep._spec import ModelSpec

__all__ = [
    "AdaptResult",
    "DtypeChange",
    "LoadReport",
    "ShapeMismatch",
    "adapt",
    "collapse_keys",
    "copy_state",
    "explain_error",
    "load_into",
    "parse_rename",
]

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


@cache
def _meta_state(name: str) -> dict[str, Any]:
    """The state_dict tensors of registry architecture ``name``, built on the meta device (no memory, no init)."""
    import torch

    from torchkeep.models import build

    return {k: v for k, v in meta_build(lambda: build(name)).state_dict().items() if isinstance(v, torch.Tensor)}


def _fits(name: str, weights: dict[str, Any], ordered: bool) -> str | None:
    """``name`` (with what it took: another number of classes, pairing by order) if the weights fit it."""
    try:
        target = _meta_state(name)
    except Exception:  # some constructors copy data at init and cannot run on meta: skip them
        return None
    trial = LoadReport(source="", target=name)
    try:
        pairs = plan(target, weights, trial, renames=None, strip_prefix="auto",
                     match_by_order="auto" if ordered else False, ordered=ordered)
    except CompatibilityError:
        return None
    real_missing = [k for k in trial.missing if target[k].is_floating_point()]  # not BatchNorm's counters
    # everything pairs but at most a head (weight and bias): another number of classes, or none in the file
    if trial.unexpected or len(real_missing) + len(trial.shape_mismatched) > 2 or not pairs:
        return None
    if not_the_head(trial.shape_mismatched):
        return None
    how = []
    if trial.shape_mismatched:
        how.append(f"{trial.shape_mismatched[0].source_shape[0]} classes")
    elif real_missing:
        how.append("without its head")
    if trial.order_pairing == "whole sequence":
        how.append("paired by order")
    return f"{name} ({', '.join(how)})" if how else name


def _guess_arch(
    raw: Any, arch: str, ordered: bool = True, limit: int = 3, others: int = 16, budget_s: float = 5.0
) -> list[str]:
    """Registry architectures that the weights fit: ``arch``'s family (resnet*, vgg*...) first, then the
    ``others`` whose parameter count is closest to the source's (a backbone without its head is smaller
    than its catalog count), within ``budget_s`` seconds (each try builds the model on the meta device).

    Names come with ``" (N classes)"`` when only the head differs, ``"paired by order"`` when the names
    follow another scheme. (The one place that answers "which architecture is this?" for a refusal.)
    """
    try:
        from torchkeep.models import list_models

        infos = [a for a in list_models() if a.source != "user" and a.name != arch]
    except Exception:  # no registry: no guess
        return []
    weights, _, _ = unwrap_checkpoint(raw, [])
    family = _family(arch)
    first = [a.name for a in infos if _family(a.name) == family or family in a.name]
    numel = sum(int(v.numel()) for v in weights.values() if getattr(v, "is_floating_point", lambda: False)())

    def distance(num_params: int | None) -> float:
        return abs(math.log(max(num_params or 1, 1) / max(numel, 1)))

    rest = [a.name for a in sorted(infos, key=lambda a: distance(a.num_params)) if a.name not in first][:others]
    fits: list[str] = []
    start = time.monotonic()
    for i, name in enumerate(first + rest):
        if i >= len(first) and (fits or time.monotonic() - start > budget_s):
            break
        hit = _fits(name, weights, ordered)
        if hit is not None:
            fits.append(hit)
            if len(fits) >= limit:
                break
    return sorted(fits, key=lambda n: "(" in n)  # exact fits first


def adapt(
    src: str | os.PathLike[str],
    *,
    arch: str,
    num_classes: int | None = None,
    renames: RenameSpec = None,
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
    target = _Target(arch, num_classes, in_channels, input_size, head,
                     [str(c) for c in class_names] if class_names is not None else None)
    ident = _identify_arch(target, src, key) if arch == "auto" else None
    if out is None and not dry_run:
        raise UsageError("adapt needs an output file", fix="pass out=... (CLI: -o OUT.safetensors) or dry_run=True")
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together", fix="pass both (e.g. --mean 0.5 --std 0.5)")
    target.check()
    options = MatchOptions(renames=renames, strip_prefix=strip_prefix, on_shape_mismatch=on_shape_mismatch,
                           min_match=min_match, match_by_order=match_by_order, allow_partial=allow_partial,
                           dry_run=dry_run, refuse_structural=not allow_partial)
    path = Path(src)
    source = read_source(path, trust=trust, key=key)

    model = target.build()
    if ident is not None:
        source.notes.append(f"--arch auto: {ident.summary()} (`torchkeep identify`, {ident.match} match)")
        options = replace(options, renames=_identified_renames(ident, model, options.renames))
    if target.num_classes is None:
        model = _keep_source_head(model, target, source, options)
    report = _load_or_name_fits(model, source, options, target.arch)
    spec: ModelSpec | None = getattr(model, "torchkeep_spec", None)
    _note_fresh_layers(report, spec)
    if spec is not None and mean is not None and std is not None:
        spec.preprocessing = spec.preprocessing.normalised(mean, std)
    if isinstance(source.raw, dict):
        source.raw.clear()  # the model holds copies now; dropping the source halves peak memory while saving
    sha = file_sha256(path)
    written: str | None = None
    if not dry_run and out is not None:
        if spec is not None:
            _record(spec, path, sha, report, ident, target.class_names)
        written = os.fspath(save(model, out, spec))
    return AdaptResult(
        source=os.fspath(path),
        arch=target.arch,
        num_classes=getattr(spec, "num_classes", None) or target.num_classes,
        report=report,
        out=written,
        source_sha256=sha,
        dry_run=dry_run,
        preprocessing=asdict(spec.preprocessing) if spec is not None else None,
    )


@dataclass
class _Target:
    """What ``adapt`` builds: the arguments of ``models.build`` that travel together (``--arch auto`` fills
    them from the identification; the source's head may set ``num_classes``)."""

    arch: str
    num_classes: int | None
    in_channels: int | None
    input_size: int | tuple[int, int] | None
    head: Literal["replace", "append"]
    class_names: list[str] | None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse arguments that contradict each other; ``class_names`` sets ``num_classes`` when it is None."""
        if self.head == "append" and self.num_classes is None and self.class_names is None:
            raise UsageError(
                "--head append adds Linear(outputs, N) after the model's head: it needs the number of classes N",
                fix="pass --num-classes N (or --class-names)",
            )
        if self.class_names is not None:
            if self.num_classes is None:
                self.num_classes = len(self.class_names)
            elif len(self.class_names) != self.num_classes:
                raise UsageError(
                    f"{len(self.class_names)} class names given for num_classes={self.num_classes}",
                    fix="give exactly one name per class, in index order",
                )

    def build(self) -> nn.Module:
        """``models.build`` with these arguments."""
        from torchkeep.models import build

        return build(self.arch, self.num_classes, in_channels=self.in_channels, input_size=self.input_size,
                     class_names=self.class_names, head=self.head, **self.arch_kwargs)


def _identify_arch(target: _Target, src: str | os.PathLike[str], key: str | None) -> Identification:
    """``--arch auto``: what `torchkeep identify` names fills the target (its classes, head, input size and
    constructor arguments), where the caller left them open."""
    ident = identify(src, key=key)
    if ident.architecture is None or ident.source not in ("seed", "torchvision"):
        raise CompatibilityError(
            f"--arch auto: {ident.summary()}", path=os.fspath(src),
            fix="pass --arch NAME (`torchkeep identify FILE` lists the candidates and their differences)")
    target.arch = ident.architecture
    target.arch_kwargs = {k: v for k, v in ident.arch_kwargs.items() if k != "image_size"}  # input_size sets it
    if target.num_classes is None and target.class_names is None:
        target.num_classes = ident.num_classes
    if ident.head == "appended" and target.num_classes == ident.num_classes:
        target.head = "append"
    if target.input_size is None and ident.input_size:
        target.input_size = (ident.input_size[0], ident.input_size[1])
    if target.in_channels is None and ident.source == "seed":
        target.in_channels = ident.in_channels
    return ident


def _identified_renames(ident: Identification, model: nn.Module, renames: RenameSpec) -> RenameSpec:
    """The user's renames, then the identification's: the file's appended layer (classifier.7, fc.1) goes where
    build() appends it (classifier.add_linear); keys in an old layout (DenseNet's norm.1) are read as the
    library names them."""
    moves = head_moves(ident, getattr(getattr(model, "torchkeep_spec", None), "head", None))
    if not (moves or ident.renamed) or callable(renames) or isinstance(renames, str):
        return renames
    given = list(renames.items()) if isinstance(renames, Mapping) else list(renames or ())
    return [*given, *((f"^{re.escape(a)}$", b) for a, b in ident.renamed.items()),
            *((f"^({re.escape(ident.prefix)}){re.escape(a)}\\.(weight|bias)$", f"\\g<1>{b}.\\2")
              for a, b in moves.items())]


def _keep_source_head(model: nn.Module, target: _Target, source: WeightSource, options: MatchOptions) -> nn.Module:
    """A fine-tuned 10-class file adapted to "resnet18" must keep its trained head, not get a random
    1000-class one: take the number of classes from the source when only the head disagrees."""
    trial = replace(options, on_shape_mismatch="skip", allow_partial=True, dry_run=True, refuse_structural=False)
    try:
        inferred = _inferred_classes(model, load_weights(model, source, trial))
    except CompatibilityError:  # the real run reports it
        return model
    if inferred is None:
        return model
    source.notes.append(f"num_classes={inferred} taken from the source's head")
    target.num_classes = inferred
    return target.build()


def _load_or_name_fits(model: nn.Module, source: WeightSource, options: MatchOptions, arch: str) -> LoadReport:
    """Load (adapt, unlike load_into, refuses a backbone that does not fit unless partial loads are allowed);
    when almost nothing fits, the refusal names the architectures the weights do fit."""
    try:
        return load_weights(model, source, options)
    except CompatibilityError as exc:
        refused = exc.report
        if refused is None or (refused.fraction >= options.min_match and not refused.structural_mismatches):
            raise
        # The classic cause of "almost nothing matches" is the wrong --arch: name the ones that fit.
        guesses = _guess_arch(source.raw, arch, source.ordered)
        if not guesses:
            raise
        refused.notes.append(f"the weights fit {', '.join(guesses)}")
        raise CompatibilityError(
            exc.what,
            report=refused,
            path=exc.path,
            fix=f"the weights fit {' / '.join(guesses)}: pass --arch {guesses[0].split(' ')[0]}"
            # at 0% a "partial" model would be all random init under the source's name: never offer it
            + (" (or allow_partial=True / --allow-partial to load what fits)" if refused.params_loaded else ""),
        ) from None


def _note_fresh_layers(report: LoadReport, spec: ModelSpec | None) -> None:
    """Say which layers keep their fresh initialisation (a new or appended head): train before trusting it."""
    added = getattr(getattr(spec, "head", None), "added_path", None)
    fresh = report.collapsed("shape_mismatched") + collapse_keys([
        k for k in report.missing
        if not k.endswith("num_batches_tracked") and not (added and k.startswith(added + "."))
    ])
    if fresh:
        report.notes.append(
            f"{', '.join(fresh[:6])} keep their fresh initialisation: train (fine-tune) the model before "
            "trusting its predictions"
        )
    if added and any(k.startswith(added + ".") for k in report.missing):
        report.notes.append(f"{added} is the appended head: it starts fresh; train (fine-tune) the model before "
                            "trusting its predictions")


def _record(
    spec: ModelSpec,
    path: Path,
    sha: str,
    report: LoadReport,
    ident: Identification | None,
    class_names: list[str] | None,
) -> None:
    """What the model file keeps of where its weights came from and how they were loaded."""
    spec.provenance.source_file = os.fspath(path)
    spec.provenance.source_sha256 = sha
    spec.provenance.notes = f"torchkeep adapt: {report.verdict}"
    spec.extra["adapt"] = report.summary()
    if ident is not None:
        spec.extra["identified"] = ident.record()
    if class_names is not None:
        spec.class_names = list(class_names)
