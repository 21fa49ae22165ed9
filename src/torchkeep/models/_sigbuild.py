"""Build the signatures of the architectures ``build`` knows: seeds, torchvision classifiers, timm's.

Each architecture is built on the meta device (:mod:`torchkeep.models._meta`) with a sentinel number of
classes (and, for the seeds, of input channels and an input size), then again with another: the dimensions
that change are the symbols ``N``, ``C`` and ``S`` of its :class:`~torchkeep.models._signature.Signature`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from torchkeep.errors import CompatibilityError
from torchkeep.models._meta import meta_build
from torchkeep.models._signature import Dim, Signature, encode

if TYPE_CHECKING:  # torch only where signatures are built
    from torch import nn

__all__ = ["SENTINEL_CHANNELS", "SENTINEL_CLASSES", "TORCHVISION_VARIANTS", "all_names", "build_signatures",
           "variant_key"]

#: a class count no real layer has by chance: the dimensions equal to it are the head's
SENTINEL_CLASSES = 1009
#: input channels the seeds are built with to find the dimensions that follow them
SENTINEL_CHANNELS = 11


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    import torch

    return {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _head(model: nn.Module) -> str | None:
    from torchkeep.models._heads import find_head  # torch: only when signatures are built

    try:
        return find_head(model).path
    except CompatibilityError:
        return None


def _symbolic(base: dict[str, tuple[int, ...]], variants: list[tuple[str, dict[str, tuple[int, ...]], int | None]]
              ) -> list[list[Dim]]:
    """Dims of ``base`` that change in a variant get that variant's symbol (``S`` wins: a product of several)."""
    out: list[list[Dim]] = []
    for name, shape in base.items():
        dims: list[Dim] = list(shape)
        for symbol, other, value in variants:
            alt = other.get(name)
            if alt is None or len(alt) != len(shape):
                continue
            for i, (a, b) in enumerate(zip(shape, alt)):
                if a == b:
                    continue
                # a dim equal to the sentinel that moves with it is that argument; anything else that moves
                # (a product of channels and sizes, a size) is free
                dims[i] = symbol if symbol != "S" and a == value and dims[i] == a else "S"
        out.append(dims)
    return out


def _signature(key: str, arch: str, source: str, kwargs: dict[str, Any], default_classes: int, in_channels: int,
               factory: Callable[..., nn.Module], *, channels: bool = False, size_arg: str | None = None,
               sizes: tuple[Any, Any] = (None, None), size: dict[str, Any] | None = None) -> Signature:
    """Build ``factory`` with the sentinel class count (and channel/size variants) and read the symbols off."""
    kw = {**kwargs, "num_classes": SENTINEL_CLASSES}
    if size_arg:
        kw[size_arg] = sizes[0]
    if channels:
        kw["in_channels"] = SENTINEL_CHANNELS
    model = meta_build(lambda: factory(**kw))
    base = _shapes(model)
    head = _head(model)
    # the same with other classes / channels / sizes: what changes follows that argument
    variants: list[tuple[str, dict[str, tuple[int, ...]], int | None]] = [
        ("N", _shapes(meta_build(lambda: factory(**{**kw, "num_classes": SENTINEL_CLASSES + 4}))), SENTINEL_CLASSES)]
    if channels:
        variants.append(("C", _shapes(meta_build(lambda: factory(**{**kw, "in_channels": 5}))), SENTINEL_CHANNELS))
    if size_arg:
        variants.append(("S", _shapes(meta_build(lambda: factory(**{**kw, size_arg: sizes[1]}))), None))
    return Signature(key, arch, source, kwargs, default_classes, in_channels, head, list(base),
                     [encode(d) for d in _symbolic(base, variants)], size)


def _n_only(key: str, arch: str, source: str, kwargs: dict[str, Any], default_classes: int,
            factory: Callable[..., nn.Module]) -> Signature:
    """The common case (one build): every dim equal to the sentinel class count is ``N``."""
    model = meta_build(lambda: factory(**{**kwargs, "num_classes": SENTINEL_CLASSES}))
    base = _shapes(model)
    shapes = [encode("N" if d == SENTINEL_CLASSES else d for d in s) for s in base.values()]
    return Signature(key, arch, source, kwargs, default_classes, 3, _head(model), list(base), shapes)


def _seed_signatures() -> list[Signature]:
    from torchkeep.models._seeds import Cifar10CNN, FashionMLP

    return [
        _signature("cifar10_cnn", "cifar10_cnn", "seed", {}, 10, 3, Cifar10CNN, channels=True,
                   size_arg="input_size", sizes=(32, 48), size={"kind": "flat", "per_cell": 64, "cell": 8}),
        _signature("fashion_mlp", "fashion_mlp", "seed", {}, 10, 1, FashionMLP, channels=True,
                   size_arg="input_size", sizes=(28, 20), size={"kind": "pixels"}),
    ]


#: torchvision variants whose weights differ from the default build's: the published weights drop the
#: auxiliary classifiers these builders make by default
TORCHVISION_VARIANTS: dict[str, list[dict[str, Any]]] = {
    "googlenet": [{}, {"aux_logits": False}],
    "inception_v3": [{}, {"aux_logits": False}],
}


def variant_key(arch: str, kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return arch
    return f"{arch}({', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))})"


def _torchvision_signatures(names: Iterable[str]) -> list[Signature]:
    import torchvision.models as tvm

    out = []
    for name in names:
        def factory(**kw: Any) -> nn.Module:
            return tvm.get_model(name, weights=None, **kw)  # noqa: B023 - called at once

        for kwargs in TORCHVISION_VARIANTS.get(name, [{}]):
            key = variant_key(name, kwargs)
            if name.startswith("vit_"):
                patch = int(re.search(r"_(\d+)$", name).group(1))  # type: ignore[union-attr]
                out.append(_signature(key, name, "torchvision", kwargs, 1000, 3, factory, size_arg="image_size",
                                      sizes=(14 * patch, 16 * patch), size={"kind": "vit", "patch": patch}))
            else:
                out.append(_n_only(key, name, "torchvision", kwargs, 1000, factory))
    return out


def _timm_signatures(names: Iterable[str]) -> list[Signature]:
    import timm

    out = []
    for name in names:
        try:
            sig = _n_only(f"timm/{name}", f"timm/{name}", "timm", {}, 1000,
                          lambda **kw: timm.create_model(name, pretrained=False, **kw))  # noqa: B023
        except Exception:  # some timm entries need arguments or extra packages: they are not identified
            continue
        out.append(sig)
    return out



def all_names(source: str) -> list[str]:
    if source == "timm":
        import timm

        return list(timm.list_models())
    from torchkeep.models._registry import _torchvision_names

    return ["cifar10_cnn", "fashion_mlp", *_torchvision_names()]


def build_signatures(source: str, names: list[str]) -> list[Signature]:
    if source == "timm":
        return _timm_signatures(names)
    seeds = [s for s in _seed_signatures() if s.arch in names]
    return seeds + _torchvision_signatures([n for n in names if n not in ("cifar10_cnn", "fashion_mlp")])

