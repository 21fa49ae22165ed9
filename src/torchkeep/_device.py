"""One place that turns ``--device auto|cpu|cuda|cuda:N|mps`` into a ``torch.device``.

Used by ``load``, ``train``, ``predict`` and ``export`` so that "auto" means the same everywhere and an
accelerator that is not there is the same one-line error everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchkeep.errors import CompatibilityError, UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (or None) -> CUDA if available, else MPS, else CPU; other values are checked.

    Raises:
        CompatibilityError: the requested accelerator is not available on this machine.
    """
    import torch

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}", fix="use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CompatibilityError(
            f"device {device!r} was requested but this machine has no CUDA GPU",
            fix="pass device='cpu' (CLI: --device cpu) or device='auto'",
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CompatibilityError(
            f"device {device!r} does not exist (this machine has {torch.cuda.device_count()} GPU(s))",
            fix="pass device='cuda:0' or device='auto'",
        )
    return dev
