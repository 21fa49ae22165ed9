"""``build``: an architecture by name, with pretrained weights and a new head; ``build_from_spec``: the same again.

Everything ``build`` does is recorded in the model's :class:`~torchkeep._spec.ModelSpec`
(``model.torchkeep_spec``) so ``build_from_spec`` reproduces the exact structure — including a replaced or
appended head — and a saved transfer-learning model reloads without its training script.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkeep._convert import file_sha256
from torchkeep._load import load_state_dict
from torchkeep._match import load_into
from torchkeep._spec import HeadRecipe, ModelSpec, Preprocessing, Provenance, channels_mode, read_spec
from torchkeep._version import __version__
from torchkeep.errors import CompatibilityError, InputError, TorchkeepWarning, UsageError
from torchkeep.models._heads import (
    HeadInfo,
    _features,
    append_head,
    find_head,
    get_module,
    head_paths,
    replace_head,
)
from torchkeep.models._registry import Resolved, construct, resolve

__all__ = ["build", "build_from_spec", "current_versions"]

# ImageNet statistics: the normalisation every torchvision classification weight uses.
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def current_versions() -> dict[str, str]:
    """torch / torchvision / torchkeep versions of this environment, for ``ModelSpec.versions``."""
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "torchkeep": __version__}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _hw(input_size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        vals = list(input_size)
        if len(vals) == 1:
            vals = vals * 2
        if len(vals) != 2:
            raise UsageError(f"input_size must be N or (H, W), not {input_size!r}")
        size = (int(vals[0]), int(vals[1]))
    if min(size) <= 0:
        raise UsageError(f"input_size must be positive, not {input_size!r}")
    return size


# --------------------------------------------------------------------------- torchvision weights


def _torchvision_weights(arch: str, name: str) -> Any | None:
    """The weights enum member ``name`` (``IMAGENET1K_V1``, ``DEFAULT``, ``ResNet18_Weights.IMAGENET1K_V1``)."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    member = name.rpartition(".")[2]
    return enum.__members__.get(member)


def _torchvision_weights_kwargs(arch: str, weights: Any, user: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments torchvision's builders force when weights are given (see their sources)."""
    kw: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if arch.startswith("vit_"):
        kw["image_size"] = int(weights.meta["min_size"][0])
    elif arch == "maxvit_t":
        kw["input_size"] = [int(x) for x in weights.meta["min_size"]]
    elif arch in ("inception_v3", "googlenet"):
        kw["transform_input"] = user.get("transform_input", True)
        kw["init_weights"] = False
        # torchvision drops googlenet's (untrained) aux heads unless asked; inception keeps them.
        kw["aux_logits"] = user.get("aux_logits", arch == "inception_v3")
    return kw


def _fetch_torchvision_weights(weights: Any) -> dict[str, torch.Tensor]:
    """Download (or take from ``$TORCH_HOME/hub/checkpoints``) a torchvision weights file, weights only."""
    from urllib.error import URLError
    from urllib.parse import urlparse

    from torch.hub import get_dir, load_state_dict_from_url

    filename = os.path.basename(urlparse(weights.url).path)
    try:
        return load_state_dict_from_url(
            weights.url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except (URLError, OSError, RuntimeError) as exc:
        raise InputError(
            f"cannot get the pretrained weights {weights} from {weights.url}: {exc}",
            fix=f"on a machine without internet, copy {filename} to {Path(get_dir()) / 'checkpoints' / filename} "
            "or pass pretrained=<local weights file>",
        ) from None


def _load_torchvision_weights(model: nn.Module, sd: dict[str, torch.Tensor], weights: Any) -> None:
    with torch.no_grad():
        result = model.load_state_dict(sd, strict=False)
    # Only torchvision's dropped auxiliary heads may be left over; anything else means the wrong file.
    unexpected = [k for k in result.unexpected_keys if not k.startswith(("aux", "AuxLogits"))]
    if result.missing_keys or unexpected:
        raise CompatibilityError(
            f"the weights file of {weights} does not fit the model: "
            f"missing {result.missing_keys[:3]}, unexpected {unexpected[:3]}",
            fix="delete the cached file under $TORCH_HOME/hub/checkpoints so it is downloaded again",
        )


# --------------------------------------------------------------------------- local pretrained files


def _load_file_into(model: nn.Module, sd: dict[str, Any], *, first: bool) -> str:
    """Copy what fits from a state_dict into ``model``; returns the load report's verdict."""
    report = load_into(
        model,
        sd,
        on_shape_mismatch="skip",
        # The second pass (after a new head) only picks up a head of the new shape, if the file has one.
        min_match=0.5 if first else 0.0,
        allow_partial=not first,
    )
    return str(getattr(report, "verdict", "") or "")


# --------------------------------------------------------------------------- build


def _spec_of_file(path: Path) -> ModelSpec | None:
    try:
        return read_spec(path)
    except InputError:  # a malformed spec does not stop using the weights
        return None


def _preprocessing(
    resolved: Resolved, hw: tuple[int, int] | None, in_channels: int, weights: Any | None
) -> tuple[Preprocessing, tuple[int, int]]:
    """Input contract for the new model: from the pretrained weights, the given size, or the arch default."""
    info = resolved.info
    channels = channels_mode(in_channels)
    if info.source == "torchvision":
        tf_weights = weights
        if tf_weights is None:
            with contextlib.suppress(Exception):
                import torchvision.models as tvm

                tf_weights = tvm.get_model_weights(info.name).DEFAULT  # type: ignore[attr-defined]
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        if tf_weights is not None:
            tf = tf_weights.transforms()
            mean, std = [float(x) for x in tf.mean], [float(x) for x in tf.std]
            if hw is None:
                crop = [int(x) for x in tf.crop_size]
                crop = crop * 2 if len(crop) == 1 else crop
                pre = Preprocessing(
                    resize=[int(x) for x in tf.resize_size],
                    crop=crop,
                    interpolation=str(tf.interpolation.value),
                    mean=mean,
                    std=std,
                    channels=channels,
                )
                return pre, (crop[0], crop[1])
        size = hw or info.input_size
        return Preprocessing(resize=list(size), mean=mean, std=std, channels=channels), size
    size = hw or info.input_size
    # The seeds feed plain ToTensor() output ([0, 1], no normalisation); keep that contract.
    return Preprocessing(resize=list(size), channels=channels), size


def _apply_recipe(model: nn.Module, recipe: HeadRecipe) -> None:
    """Re-apply a recorded head modification to a freshly built base model."""
    fix = "the spec does not match this architecture version; rebuild the model with torchkeep.models.build"
    old = _module_or_none(model, recipe.path)
    if _features(old) != (recipe.kind, recipe.in_features, recipe.out_features):
        raise CompatibilityError(
            f"the spec's head recipe names {recipe.kind} {recipe.path}({recipe.in_features} -> {recipe.out_features}) "
            f"but the built architecture has {type(old).__name__ if old is not None else 'nothing'} there",
            fix=fix,
        )
    for path in recipe.aux_paths:
        aux = _module_or_none(model, path)
        feats = _features(aux)
        if feats is None or feats[2] != recipe.out_features:
            raise CompatibilityError(
                f"the spec's head recipe names the auxiliary head {path} ({recipe.out_features} outputs) "
                f"but the built architecture has {type(aux).__name__ if aux is not None else 'nothing'} there",
                fix=fix,
            )
    info = HeadInfo(recipe.path, recipe.kind, recipe.in_features, recipe.out_features, list(recipe.aux_paths))
    if recipe.mode == "replace":
        replace_head(model, info, recipe.num_classes)
    else:
        added, _ = append_head(model, info, recipe.num_classes)
        if recipe.added_path and added != recipe.added_path:
            raise CompatibilityError(
                f"appending the head gave {added}, the spec recorded {recipe.added_path}",
                fix="rebuild the model with torchkeep.models.build",
            )


def _module_or_none(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return get_module(model, path)
    except AttributeError:
        return None


def _freeze_backbone(model: nn.Module, trainable: list[str]) -> None:
    model.requires_grad_(False)
    for path in trainable:
        get_module(model, path).requires_grad_(True)


def _trainable_paths(model: nn.Module, recipe: HeadRecipe | None) -> list[str]:
    if recipe is not None:
        return head_paths(recipe.mode, recipe.path, recipe.added_path, recipe.aux_paths)
    head = find_head(model)
    return [head.path, *head.aux_paths]


def build(
    arch: str,
    num_classes: int | None = None,
    *,
    in_channels: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    pretrained: str | os.PathLike[str] | None = None,
    head: str = "replace",
    freeze: str | None = None,
    class_names: list[str] | None = None,
    **arch_kwargs: Any,
) -> nn.Module:
    """Build a classification model by name, optionally pretrained and with a new head.

    Args:
        arch: a name from ``list_models()`` (``"cifar10_cnn"``, ``"resnet18"``) or ``"package.module:Class"``.
        num_classes: outputs of the final model; None keeps the architecture's (or the weights') own.
        in_channels: input channels of seed and user models. torchvision models always take 3: for them
            1 or 4 means "my images are grayscale/RGBA", and the preprocessing converts those to RGB.
        input_size: input ``H`` or ``(H, W)``; sets the seeds' flatten size, ViT's ``image_size`` and the
            preprocessing's resize.
        pretrained: a local weights file in any format ``torchkeep.load_state_dict`` reads, or a torchvision
            weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``) downloaded through ``torch.hub`` (cached in
            ``$TORCH_HOME/hub/checkpoints``). Loaded before the head is changed.
        head: when ``num_classes`` differs from the base model: ``"replace"`` swaps the last classifier layer
            for one with ``num_classes`` outputs (``vgg.classifier[6] = nn.Linear(4096, 10)``); ``"append"``
            adds ``Linear(out, num_classes)`` after it (``vgg.classifier.add_module("add_linear", ...)``).
        freeze: ``"backbone"`` sets ``requires_grad=False`` on everything but the head (the new layer).
            Without ``pretrained`` this warns (:class:`~torchkeep.errors.TorchkeepWarning`): a frozen random
            backbone is rarely what was meant.
        class_names: names of the classes, index order (sets ``num_classes`` when that is None).
        **arch_kwargs: more keyword arguments for the architecture's constructor (JSON values).

    Returns:
        The model (train mode, CPU) with ``model.torchkeep_spec`` describing exactly how to rebuild it.

    Raises:
        UsageError: unknown architecture or weights name, bad arguments.
        InputError: the pretrained file cannot be read or downloaded.
        CompatibilityError: the pretrained weights do not fit the architecture.
    """
    if head not in ("replace", "append"):
        raise UsageError(f"head must be 'replace' or 'append', not {head!r}")
    if freeze not in (None, "backbone"):
        raise UsageError(f"freeze must be 'backbone' or None, not {freeze!r}")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes is None:
            num_classes = len(class_names)
        elif num_classes != len(class_names):
            raise UsageError(f"{len(class_names)} class names given for num_classes={num_classes}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise UsageError(f"num_classes must be a positive integer, not {num_classes!r}")
    try:
        json.dumps(arch_kwargs)
    except TypeError as exc:
        raise UsageError(
            f"architecture arguments must be JSON values (they go into the spec): {exc}"
        ) from None

    resolved = resolve(arch, trust=True)  # the caller named the class: importing it is their choice
    info = resolved.info
    if freeze == "backbone" and pretrained is None:
        named = f" or {info.weights[0]}" if info.weights else ""
        warnings.warn(
            f"freezing the backbone of {arch} without pretrained weights: it keeps its random initialisation "
            f"and only the head learns; pass pretrained weights (--pretrained FILE{named}) or leave out --freeze",
            TorchkeepWarning,
            stacklevel=2,
        )
    hw = _hw(input_size)
    kwargs = dict(arch_kwargs)
    accepts = resolved.accepts

    # What pretrained names: a file, or one of the architecture's torchvision weights.
    weights = None
    pre_file: Path | None = None
    if pretrained is not None:
        candidate = Path(os.fspath(pretrained)).expanduser()
        if candidate.is_file():
            pre_file = candidate.resolve()
        else:
            weights = _torchvision_weights(arch, str(pretrained)) if info.source == "torchvision" else None
        if pre_file is None and weights is None:
            names = ", ".join(info.weights) if info.weights else "none"
            raise InputError(
                f"pretrained {str(pretrained)!r} is neither a file nor a weights name of {arch} (weights: {names})",
                path=None,
                fix="pass an existing weights file, or a name from `torchkeep models --filter ^ARCH$`",
            )

    # A torchkeep model file of the same architecture describes the structure its weights fit: start there.
    source_spec = _spec_of_file(pre_file) if pre_file is not None else None
    user_hw = hw is not None
    if source_spec is not None and source_spec.arch == arch:
        kwargs = {**source_spec.arch_kwargs, **kwargs}
        hw = hw or source_spec.input_size
        in_channels = in_channels if in_channels is not None else source_spec.in_channels
    else:
        source_spec = None

    if info.source == "torchvision":
        # torchvision classifiers (and their pretrained stems) take RGB. Grayscale or RGBA data is fed to
        # them converted to RGB by the spec's preprocessing, so the trainer can pass its data's channels.
        if in_channels not in (None, 1, 3, 4):
            raise UsageError(
                f"torchvision's {arch} takes 3-channel input; in_channels={in_channels} cannot be converted",
                fix="use images with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels: they are converted to RGB",
            )
        in_channels = 3
        if hw is not None and arch.startswith("vit_"):
            if hw[0] != hw[1]:
                raise UsageError(f"{arch} needs a square input_size, not {hw}")
            kwargs["image_size"] = hw[0]
        elif hw is not None and arch == "maxvit_t":
            kwargs["input_size"] = list(hw)
    else:
        if in_channels is not None and (accepts is None or "in_channels" in accepts):
            kwargs["in_channels"] = in_channels
        if hw is not None and (accepts is None or "input_size" in accepts):
            kwargs["input_size"] = input_size if isinstance(input_size, int) else list(hw)
    channels = in_channels if in_channels is not None else info.in_channels
    if weights is not None:
        kwargs = {**kwargs, **_torchvision_weights_kwargs(arch, weights, kwargs)}

    # Without pretrained weights a "replace" head is simply built with num_classes outputs.
    takes_classes = info.source != "user" or accepts is None or "num_classes" in accepts
    if pretrained is None and head == "replace" and num_classes is not None and takes_classes:
        kwargs["num_classes"] = num_classes

    model = construct(resolved, kwargs)
    provenance = Provenance(created=_now())
    sd: dict[str, Any] | None = None
    if weights is not None:
        _load_torchvision_weights(model, _fetch_torchvision_weights(weights), weights)
        provenance.pretrained = str(weights)
        provenance.pretrained_url = weights.url
    elif pre_file is not None:
        sd = load_state_dict(pre_file)
        provenance.pretrained = str(pre_file)
        provenance.source_file = str(pre_file)
        provenance.source_sha256 = file_sha256(pre_file)
        provenance.notes = _load_file_into(model, sd, first=True)

    recipe: HeadRecipe | None = None
    final_classes: int | None = None
    try:
        base_head: HeadInfo | None = find_head(model)
    except CompatibilityError:
        if num_classes is not None and (head == "append" or "num_classes" not in kwargs):
            raise
        base_head = None
    if base_head is not None:
        final_classes = base_head.out_features
    if (
        base_head is not None
        and num_classes is not None
        and (head == "append" or num_classes != final_classes)
    ):
        if head == "replace":
            replace_head(model, base_head, num_classes)
            recipe = HeadRecipe(
                "replace",
                base_head.path,
                base_head.kind,
                base_head.in_features,
                base_head.out_features,
                num_classes,
                aux_paths=list(base_head.aux_paths),
            )
        else:
            added, wrapped = append_head(model, base_head, num_classes)
            recipe = HeadRecipe(
                "append",
                base_head.path,
                base_head.kind,
                base_head.in_features,
                base_head.out_features,
                num_classes,
                added_path=added,
                wrapped=wrapped,
            )
        final_classes = num_classes
        new_weight: Any = get_module(model, recipe.added_path or recipe.path).weight
        new_shape = tuple(new_weight.shape)
        if sd is not None and any(tuple(getattr(t, "shape", ())) == new_shape for t in sd.values()):
            # A file saved from an already re-headed model carries the new head too: take it.
            _load_file_into(model, sd, first=False)

    if class_names is None and weights is not None and final_classes == len(weights.meta["categories"]):
        class_names = list(weights.meta["categories"])
    if source_spec is not None and class_names is None and source_spec.num_classes == final_classes:
        class_names = source_spec.class_names  # continuing from a torchkeep model file keeps its names
    if freeze == "backbone":
        _freeze_backbone(model, _trainable_paths(model, recipe))

    pre, size = _preprocessing(resolved, hw, channels, weights)
    if source_spec is not None and not user_hw:
        # the pretrained weights were trained on inputs prepared this way: keep feeding them so
        pre, size = source_spec.preprocessing, source_spec.input_size
    spec = ModelSpec(
        arch=arch,
        arch_kwargs=kwargs,
        num_classes=final_classes if final_classes is not None else num_classes,
        class_names=class_names,
        in_channels=channels,
        input_size=size,
        preprocessing=pre,
        head=recipe,
        freeze=freeze,
        versions=current_versions(),
        provenance=provenance,
    )
    model.torchkeep_spec = spec  # type: ignore[assignment]
    return model


def build_from_spec(
    spec: ModelSpec, *, trust: bool = False, device: str | torch.device | None = None
) -> nn.Module:
    """Rebuild the structure a spec describes (random weights), including its head modification.

    Args:
        spec: the model spec (from ``model.torchkeep_spec`` or a model file).
        trust: allow importing a user class (``package.module:Class``) named by the spec.
        device: construct on this device (``"meta"`` builds without allocating, for loading weights next).

    Returns:
        The model, with ``model.torchkeep_spec = spec``.

    Raises:
        UntrustedCodeError: the spec names a user class and ``trust`` is False.
        UsageError: unknown architecture.
        CompatibilityError: the head recipe does not fit the architecture.
    """
    resolved = resolve(spec.arch, trust=trust)
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        model = construct(resolved, dict(spec.arch_kwargs))
        if spec.head is not None:
            _apply_recipe(model, spec.head)
    if spec.freeze == "backbone":
        _freeze_backbone(model, _trainable_paths(model, spec.head))
    model.torchkeep_spec = spec  # type: ignore[assignment]
    return model
