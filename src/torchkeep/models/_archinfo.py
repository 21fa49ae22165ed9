"""``ArchInfo``: what the catalog says of one buildable architecture (no torch: listing must stay cheap).

Its own module so that the catalog (no torch) and the live registry (torch, torchvision) both use it and
neither imports the other to get it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ArchInfo"]


@dataclass
class ArchInfo:
    """One buildable architecture.

    Attributes:
        name: the name ``build`` and ``--arch`` accept.
        source: "seed", "torchvision" or "user".
        description: one line.
        input_size: default ``(H, W)`` of the input.
        in_channels: default input channels.
        num_classes: default number of outputs.
        weights: torchvision pretrained weights names (``IMAGENET1K_V1``, ...); ``pretrained=`` accepts them.
        num_params: parameters of the default model, where torchvision publishes it.
    """

    name: str
    source: str
    description: str
    input_size: tuple[int, int]
    in_channels: int = 3
    num_classes: int = 1000
    weights: list[str] = field(default_factory=list)
    num_params: int | None = None
