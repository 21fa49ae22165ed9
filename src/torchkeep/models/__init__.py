"""Architectures torchkeep can build by name, and the transfer-learning head surgery.

build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8)      # the seeds' CNN for 8x8 digits
build("vgg16", num_classes=10, pretrained="IMAGENET1K_V1", head="append", freeze="backbone")
build("mypkg.nets:Net", num_classes=5, width=64)                         # a user class, JSON kwargs
build_from_spec(model.torchkeep_spec)                                    # the same structure again
list_models()                                                            # -> list[ArchInfo]
find_head(model)                                                         # -> HeadInfo("classifier.6", ...)
"""

from __future__ import annotations

from torchkeep.models._build import build, build_from_spec
from torchkeep.models._heads import HeadInfo, find_head
from torchkeep.models._registry import ArchInfo, list_models

__all__ = ["ArchInfo", "HeadInfo", "build", "build_from_spec", "find_head", "list_models"]
