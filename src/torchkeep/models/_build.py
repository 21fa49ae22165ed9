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
from typing import Any

import torch
from torch import nn

from torchkeep._spec import HeadRecipe, ModelSpec, Preprocessing, Provenance, channels_mode
from torchkeep._version import __version__
from torchkeep.errors import CompatibilityError, TorchkeepWarning, UsageError
from torchkeep.models._heads import (
    HeadInfo,
    _features,
    append_head,
    find_head,
    get_module,
    head_paths,
    replace_head,
)
from torchkeep.models._pretrained import (
    Pretrained,
    load_file_into,
    load_pretrained,
    resolve_pretrained,
    torchvision_weights_kwargs,
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


# --------------------------------------------------------------------------- build


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
    num_classes, class_names = _check_args(num_classes, head, freeze, class_names, arch_kwargs)
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
    user_hw = hw is not None
    kwargs = dict(arch_kwargs)
    pre = resolve_pretrained(arch, info, pretrained)
    if pre.spec is not None:
        # A torchkeep model file of the same architecture describes the structure its weights fit: start there.
        kwargs = {**pre.spec.arch_kwargs, **kwargs}
        hw = hw or pre.spec.input_size
        in_channels = in_channels if in_channels is not None else pre.spec.in_channels
    in_channels = _shape_kwargs(kwargs, resolved, arch, hw, input_size, in_channels)
    channels = in_channels if in_channels is not None else info.in_channels
    if pre.weights is not None:
        kwargs = {**kwargs, **torchvision_weights_kwargs(arch, pre.weights, kwargs)}
    # Without pretrained weights a "replace" head is simply built with num_classes outputs.
    takes_classes = info.source != "user" or resolved.accepts is None or "num_classes" in resolved.accepts
    if pretrained is None and head == "replace" and num_classes is not None and takes_classes:
        kwargs["num_classes"] = num_classes

    model = construct(resolved, kwargs)
    provenance = Provenance(created=_now())
    sd = load_pretrained(model, pre, provenance)
    recipe, final_classes = _fit_head(model, num_classes, head, "num_classes" in kwargs, sd)
    if freeze == "backbone":
        _freeze_backbone(model, _trainable_paths(model, recipe))

    preprocessing, size = _preprocessing(resolved, hw, channels, pre.weights)
    if pre.spec is not None and not user_hw:
        # the pretrained weights were trained on inputs prepared this way: keep feeding them so
        preprocessing, size = pre.spec.preprocessing, pre.spec.input_size
    spec = ModelSpec(
        arch=arch,
        arch_kwargs=kwargs,
        num_classes=final_classes if final_classes is not None else num_classes,
        class_names=_class_names(class_names, pre, final_classes),
        in_channels=channels,
        input_size=size,
        preprocessing=preprocessing,
        head=recipe,
        freeze=freeze,
        versions=current_versions(),
        provenance=provenance,
    )
    model.torchkeep_spec = spec  # type: ignore[assignment]
    return model


def _check_args(
    num_classes: int | None,
    head: str,
    freeze: str | None,
    class_names: list[str] | None,
    arch_kwargs: dict[str, Any],
) -> tuple[int | None, list[str] | None]:
    """Refuse bad arguments; ``(num_classes, class_names)`` with the names as strings setting the number."""
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
    return num_classes, class_names


def _shape_kwargs(
    kwargs: dict[str, Any],
    resolved: Resolved,
    arch: str,
    hw: tuple[int, int] | None,
    input_size: int | tuple[int, int] | None,
    in_channels: int | None,
) -> int | None:
    """Put the input size and channels into the constructor's ``kwargs`` the way the architecture takes them;
    returns the input channels (3 for torchvision)."""
    accepts = resolved.accepts
    if resolved.info.source == "torchvision":
        # torchvision classifiers (and their pretrained stems) take RGB. Grayscale or RGBA data is fed to
        # them converted to RGB by the spec's preprocessing, so the trainer can pass its data's channels.
        if in_channels not in (None, 1, 3, 4):
            raise UsageError(
                f"torchvision's {arch} takes 3-channel input; in_channels={in_channels} cannot be converted",
                fix="use images with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels: they are converted to RGB",
            )
        if hw is not None and arch.startswith("vit_"):
            if hw[0] != hw[1]:
                raise UsageError(f"{arch} needs a square input_size, not {hw}")
            kwargs["image_size"] = hw[0]
        elif hw is not None and arch == "maxvit_t":
            kwargs["input_size"] = list(hw)
        return 3
    if in_channels is not None and (accepts is None or "in_channels" in accepts):
        kwargs["in_channels"] = in_channels
    if hw is not None and (accepts is None or "input_size" in accepts):
        kwargs["input_size"] = input_size if isinstance(input_size, int) else list(hw)
    return in_channels


def _fit_head(
    model: nn.Module, num_classes: int | None, head: str, built_with_classes: bool, sd: dict[str, Any] | None
) -> tuple[HeadRecipe | None, int | None]:
    """Give the model ``num_classes`` outputs when it has another number (or ``head="append"``):
    ``(the recipe applied, the final number of classes)``."""
    try:
        base_head = find_head(model)
    except CompatibilityError:
        if num_classes is not None and (head == "append" or not built_with_classes):
            raise
        return None, None
    if num_classes is None or (head == "replace" and num_classes == base_head.out_features):
        return None, base_head.out_features
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
    new_weight: Any = get_module(model, recipe.added_path or recipe.path).weight
    new_shape = tuple(new_weight.shape)
    if sd is not None and any(tuple(getattr(t, "shape", ())) == new_shape for t in sd.values()):
        # A file saved from an already re-headed model carries the new head too: take it.
        load_file_into(model, sd, first=False)
    return recipe, num_classes


def _class_names(class_names: list[str] | None, pre: Pretrained, final_classes: int | None) -> list[str] | None:
    """The given names, else the pretrained weights' own when the number of classes is still theirs."""
    if class_names is None and pre.weights is not None and final_classes == len(pre.weights.meta["categories"]):
        class_names = list(pre.weights.meta["categories"])
    if pre.spec is not None and class_names is None and pre.spec.num_classes == final_classes:
        class_names = pre.spec.class_names  # continuing from a torchkeep model file keeps its names
    return class_names


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
