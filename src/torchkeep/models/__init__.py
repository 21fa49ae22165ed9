"""Architectures torchkeep can build by name, and the transfer-learning head surgery.

build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8)      # the seeds' CNN for 8x8 digits
build("vgg16", num_classes=10, pretrained="IMAGENET1K_V1", head="append", freeze="backbone")
build("mypkg.nets:Net", num_classes=5, width=64)                         # a user class, JSON kwargs
build_from_spec(model.torchkeep_spec)                                    # the same structure again
list_models()                                                            # -> list[ArchInfo]
find_head(model)                                                         # -> HeadInfo("classifier.6", ...)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# listing needs no torch (``torchkeep models`` answers at once): the rest is imported when first used
from torchkeep.models._catalog import ArchInfo, arch_names, list_models

__all__ = ["ArchInfo", "HeadInfo", "arch_names", "build", "build_from_spec", "find_head", "list_models"]

_LAZY = {
    "build": "torchkeep.models._build",
    "build_from_spec": "torchkeep.models._build",
    "HeadInfo": "torchkeep.models._heads",
    "find_head": "torchkeep.models._heads",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'torchkeep.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from torchkeep.models._build import build, build_from_spec
    from torchkeep.models._heads import HeadInfo, find_head
