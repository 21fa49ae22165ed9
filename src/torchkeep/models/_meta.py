"""Build a module on the meta device: parameters and buffers with shapes and no memory, nothing initialised.

Used to read an architecture's names and shapes (signatures for ``identify``, what ``adapt`` compares with)
without allocating or initialising its weights.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only when a module is built
    from torch import nn

__all__ = ["meta_build", "no_init"]


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s initialisers no-ops (only while building on the meta device, where they have
    nothing to fill but still cost ~0.3 s per ResNet through their Python decompositions)."""
    import torch.nn.init as init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


@contextlib.contextmanager
def _params_to_meta() -> Iterator[None]:
    # Constructors that compute with tensors in __init__ (torchvision's RegNet) fail under torch.device("meta"):
    # build them on the CPU and move each parameter and buffer to meta as it is registered.
    import torch
    from torch.nn.modules import module as mod

    def param(m: Any, name: str, p: Any) -> Any:
        return None if p is None else torch.nn.Parameter(p.to("meta"), p.requires_grad)

    def buffer(m: Any, name: str, b: Any) -> Any:
        return None if b is None else b.to("meta")

    handles = [mod.register_module_parameter_registration_hook(param),
               mod.register_module_buffer_registration_hook(buffer)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def meta_build(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with every parameter and buffer on the meta device, without initialising anything."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"), no_init():
                return factory()
        except Exception:  # RuntimeError, or build()'s UsageError around it: try the other way
            with _params_to_meta(), no_init():
                return factory()
