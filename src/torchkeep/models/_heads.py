"""Find, replace and extend the classifier head of any classification model, generically.

The head is the last ``nn.Linear`` registered in the model (VGG ``classifier.6``, ResNet ``fc``,
MobileNet/EfficientNet ``classifier.N``, ViT ``heads.head``, ConvNeXt ``classifier.2``, DenseNet
``classifier``, Swin ``head``); a model with no Linear ends in a 1x1 convolution (SqueezeNet
``classifier.1``). Registration order is construction order, and every torchvision classifier builds its
head last, so this needs no per-architecture table.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchkeep.errors import CompatibilityError

__all__ = ["HeadInfo", "append_head", "find_head", "get_module", "replace_head", "set_module"]

# Layers that may follow the head inside its Sequential without changing what "the output" is.
_PASSTHROUGH = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Softmax)


@dataclass
class HeadInfo:
    """Where a model's classifier head is.

    Attributes:
        path: dotted module path (``"classifier.6"``).
        kind: "linear" or "conv".
        in_features: inputs of the head layer (channels for a conv head).
        out_features: outputs (classes) of the head layer.
        aux_paths: auxiliary classifier heads with the same outputs (Inception ``AuxLogits.fc``,
            GoogLeNet ``aux1.fc2``); "replace" replaces them too so training losses see N classes.
    """

    path: str
    kind: str
    in_features: int
    out_features: int
    aux_paths: list[str] = field(default_factory=list)


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` ("" is the model itself)."""
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``path`` (works for Sequential indices too: ``classifier.6``)."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    setattr(parent, name, module)


def _features(module: nn.Module | None) -> tuple[str, int, int] | None:
    if isinstance(module, nn.Linear):
        return "linear", module.in_features, module.out_features
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
        return "conv", module.in_channels, module.out_channels
    return None


def find_head(model: nn.Module) -> HeadInfo:
    """Find the classifier head of ``model``: its last Linear, else its last 1x1 Conv2d.

    Args:
        model: any classification model.

    Returns:
        Where the head is, its kind and sizes, and auxiliary heads of the same size.

    Raises:
        CompatibilityError: the model has neither a Linear nor a 1x1 convolution.
    """
    linears: list[tuple[str, nn.Module]] = [
        (p, m) for p, m in model.named_modules() if isinstance(m, nn.Linear) and p
    ]
    candidates = linears or [
        (p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and p
    ]
    if not candidates:
        raise CompatibilityError(
            f"cannot find a classifier head in {type(model).__name__}: it has no nn.Linear and no 1x1 nn.Conv2d",
            fix="replace the head yourself, then pass spec=ModelSpec(...) to torchkeep.save",
        )
    path, module = candidates[-1]
    kind, fin, fout = _features(module)  # type: ignore[misc]
    aux = [
        p
        for p, m in candidates[:-1]
        if "aux" in p.lower() and _features(m) is not None and _features(m)[2] == fout  # type: ignore[index]
    ]
    return HeadInfo(path=path, kind=kind, in_features=fin, out_features=fout, aux_paths=aux)


def _new_like(old: nn.Module, num_classes: int) -> nn.Module:
    """A fresh head of the same kind, size and device/dtype as ``old`` but ``num_classes`` outputs."""
    weight: Any = old.weight
    device, dtype = weight.device, weight.dtype
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=device, dtype=dtype)
    assert isinstance(old, nn.Conv2d)
    return nn.Conv2d(
        old.in_channels, num_classes, kernel_size=1, bias=old.bias is not None, device=device, dtype=dtype
    )


def replace_head(model: nn.Module, head: HeadInfo, num_classes: int) -> list[str]:
    """Swap the head (and auxiliary heads) for fresh layers with ``num_classes`` outputs.

    Returns:
        The paths of the new layers.
    """
    paths = [head.path, *head.aux_paths]
    for path in paths:
        set_module(model, path, _new_like(get_module(model, path), num_classes))
    return paths


def append_head(model: nn.Module, head: HeadInfo, num_classes: int) -> tuple[str, bool]:
    """Add ``Linear(head.out_features, num_classes)`` after the head, as the seeds do for VGG16.

    If the head sits in a Sequential followed only by pass-through layers (ReLU, pooling, Flatten), the new
    layer is added to that Sequential as ``add_linear`` (``vgg.classifier.add_module("add_linear", ...)``,
    preceded by ``add_flatten`` for a conv head); otherwise the head is wrapped:
    ``fc -> Sequential(0=fc, add_linear=Linear)``.

    Returns:
        ``(path of the added Linear, whether the head was wrapped)``.
    """
    parent_path, _, name = head.path.rpartition(".")
    parent = get_module(model, parent_path)
    old = get_module(model, head.path)
    weight = old.weight  # type: ignore[union-attr]
    new = nn.Linear(head.out_features, num_classes, device=weight.device, dtype=weight.dtype)
    if isinstance(parent, nn.Sequential) and parent_path:
        names = list(parent._modules)
        tail = [parent._modules[n] for n in names[names.index(name) + 1 :]]
        if all(isinstance(m, _PASSTHROUGH) for m in tail):
            if head.kind == "conv":
                parent.add_module("add_flatten", nn.Flatten())
            parent.add_module("add_linear", new)
            return f"{parent_path}.add_linear", False
    if head.kind == "conv":
        wrapped = nn.Sequential(OrderedDict([("0", old), ("add_flatten", nn.Flatten()), ("add_linear", new)]))
    else:
        wrapped = nn.Sequential(OrderedDict([("0", old), ("add_linear", new)]))
    set_module(model, head.path, wrapped)
    return f"{head.path}.add_linear", True


def head_paths(mode: str, head_path: str, added_path: str | None, aux_paths: list[str]) -> list[str]:
    """Module paths that make up the trainable head after a modification (for freeze="backbone")."""
    if mode == "append" and added_path:
        return [added_path]
    return [head_path, *aux_paths]
