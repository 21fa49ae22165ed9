"""The seeds' own models, rebuilt by name and parameterised by input channels, input size and classes.

Module names match the tutorials' classes (``self.model = nn.Sequential(...)`` for the CIFAR-10 CNN,
``self.flatten`` + ``self.linear_relu_stack`` for the FashionMNIST quickstart), so their state_dicts
load into these with every key matching.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Cifar10CNN", "FashionMLP"]


def _hw(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    h, w = input_size
    return int(h), int(w)


class Cifar10CNN(nn.Module):
    """The CIFAR-10 CNN of the seeds: three 5x5 conv + 2x2 max-pool stages, then two Linear layers.

    Args:
        in_channels: input channels (3 for CIFAR-10, 1 for grayscale digits).
        input_size: input ``H`` (or ``(H, W)``); each side must be at least 8 (three 2x poolings).
        num_classes: outputs of the last Linear.
    """

    def __init__(self, in_channels: int = 3, input_size: int | tuple[int, int] = 32, num_classes: int = 10):
        super().__init__()
        h, w = _hw(input_size)
        if h < 8 or w < 8:
            raise ValueError(f"cifar10_cnn needs inputs of at least 8x8 (got {h}x{w})")
        # MaxPool2d floors, so 3 poolings leave H//8 x W//8 (8x8 digits -> 1x1 -> flatten 64).
        flat = 64 * (h // 8) * (w // 8)
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, 64),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class FashionMLP(nn.Module):
    """The FashionMNIST quickstart MLP: Flatten-Linear(C*H*W, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, N).

    Args:
        in_channels: input channels (1 for FashionMNIST).
        input_size: input ``H`` (or ``(H, W)``), 28 for FashionMNIST (784 inputs).
        num_classes: outputs of the last Linear.
    """

    def __init__(self, in_channels: int = 1, input_size: int | tuple[int, int] = 28, num_classes: int = 10):
        super().__init__()
        h, w = _hw(input_size)
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(in_channels * h * w, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_relu_stack(self.flatten(x))
