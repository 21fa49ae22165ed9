"""Architecture names torchkeep can build: the seeds' models, torchvision classifiers, user classes.

- seeds: ``cifar10_cnn``, ``fashion_mlp`` (``torchkeep.models._seeds``);
- torchvision: every name of ``torchvision.models.list_models(module=torchvision.models)``, built
  through torchvision's own ``get_model``;
- user: ``package.module:Class`` (an ``nn.Module`` subclass), imported only when named.
"""

from __future__ import annotations

import difflib
import importlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from torch import nn

from torchkeep.errors import UntrustedCodeError, UsageError
from torchkeep.models._archinfo import ArchInfo

__all__ = ["ArchInfo", "Resolved", "construct", "is_known", "is_user_arch", "live_models", "resolve"]

_USER_RX = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass
class Resolved:
    """An architecture ready to construct."""

    info: ArchInfo
    factory: Callable[..., nn.Module]
    accepts: set[str] | None  # constructor keyword names, or None when it takes **kwargs


def _seed_infos() -> list[tuple[ArchInfo, Callable[..., nn.Module]]]:
    from torchkeep.models._seeds import Cifar10CNN, FashionMLP

    return [
        (
            ArchInfo(
                "cifar10_cnn",
                "seed",
                "The CIFAR-10 CNN of the tutorials: 3x (Conv5x5 + MaxPool) + Linear(64*H/8*W/8, 64) + Linear(64, N)",
                (32, 32),
                3,
                10,
            ),
            Cifar10CNN,
        ),
        (
            ArchInfo(
                "fashion_mlp",
                "seed",
                "The FashionMNIST quickstart MLP: Flatten + Linear(C*H*W, 512) + ReLU + Linear(512, 512) + ReLU + Linear(512, N)",
                (28, 28),
                1,
                10,
            ),
            FashionMLP,
        ),
    ]


_SEEDS = {"cifar10_cnn", "fashion_mlp"}


def _first_line(doc: str | None) -> str:
    text = (doc or "").strip().split("\n\n")[0]
    text = re.sub(r"`([^`]*?)\s*<[^<>`]*>`_+", r"\1", text)  # RST links -> their text
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text).replace("``", "")
    return " ".join(text.split())


@cache
def _torchvision_info(name: str) -> ArchInfo:
    import torchvision.models as tvm

    builder = tvm.get_model_builder(name)
    weights: list[str] = []
    size: tuple[int, int] = (224, 224)
    num_params = None
    try:
        enum = tvm.get_model_weights(name)
        weights = [w for w in enum.__members__ if w != "DEFAULT"] + ["DEFAULT"]
        default = enum.DEFAULT  # type: ignore[attr-defined]
        crop = default.transforms().crop_size
        size = (int(crop[0]), int(crop[-1]))
        num_params = default.meta.get("num_params")
    except Exception:  # an architecture without published weights keeps the defaults
        pass
    return ArchInfo(name, "torchvision", _first_line(builder.__doc__), size, 3, 1000, weights, num_params)


@lru_cache(maxsize=1)
def _torchvision_names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(tvm.list_models(module=tvm))


def is_known(arch: str) -> bool:
    """Whether ``arch`` is a seed or torchvision name here, or names a user class (not imported)."""
    return arch in _SEEDS or arch in _torchvision_names() or is_user_arch(arch)


def is_user_arch(arch: str) -> bool:
    """Whether ``arch`` names a user class (``package.module:Class``)."""
    return bool(_USER_RX.match(arch))


def live_models() -> list[ArchInfo]:
    """Every architecture ``build`` accepts (user classes aside), seeds first, found by importing torchvision
    and reading its weights enums (seconds): ``torchkeep.models.list_models`` reads them from a catalog."""
    out = []
    for info, factory in _seed_infos():
        info.num_params = sum(p.numel() for p in factory().parameters())  # tiny: build to count
        out.append(info)
    return out + [_torchvision_info(n) for n in _torchvision_names()]


def _unknown(arch: str) -> UsageError:
    names = list(_SEEDS) + list(_torchvision_names())
    close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UsageError(
        f"unknown architecture {arch!r}{hint}",
        fix="`torchkeep models` lists every name; name your own class as package.module:Class",
    )


def _import_user_class(arch: str, *, trust: bool) -> type[nn.Module]:
    if not trust:
        raise UntrustedCodeError(
            f"the model spec names the class {arch!r}; building it imports and runs that module's code",
            fix="pass trust=True (CLI: --trust) if you trust the file and have the code installed",
            classes=[arch],
        )
    module_name, _, qualname = arch.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"cannot import module {module_name!r} for architecture {arch!r}: {exc}",
            fix=f"install the package that provides {module_name} or add its directory to PYTHONPATH",
        ) from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UsageError(
                f"module {module_name!r} has no {qualname!r} (architecture {arch!r})",
                fix="check the class name after the colon: package.module:Class",
            )
    # Only nn.Module subclasses: a spec must not be able to name an arbitrary callable (os:system).
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UsageError(
            f"{arch!r} is not an nn.Module subclass",
            fix="name a model class: package.module:Class",
        )
    return obj


def _accepted_kwargs(factory: Callable[..., Any]) -> set[str] | None:
    import inspect

    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def resolve(arch: str, *, trust: bool = True) -> Resolved:
    """Find the constructor of ``arch``.

    Args:
        arch: a registry name or ``package.module:Class``.
        trust: allow importing a user class (``build`` passes True: the caller named it; a spec read from a
            file needs the user's consent).

    Returns:
        The architecture's info and factory.

    Raises:
        UsageError: unknown name, or a user class that cannot be imported.
        UntrustedCodeError: a user class with ``trust=False``.
    """
    if not isinstance(arch, str) or not arch:
        raise UsageError(f"architecture must be a non-empty name, not {arch!r}")
    for info, factory in _seed_infos():
        if info.name == arch:
            return Resolved(info, factory, _accepted_kwargs(factory))
    if arch in _torchvision_names():
        import torchvision.models as tvm

        def factory(**kwargs: Any) -> nn.Module:
            with warnings.catch_warnings():
                # GoogLeNet/Inception warn about a future change of their default init on every build.
                warnings.simplefilter("ignore", FutureWarning)
                return tvm.get_model(arch, weights=None, **kwargs)

        return Resolved(_torchvision_info(arch), factory, None)
    if is_user_arch(arch):
        cls = _import_user_class(arch, trust=trust)
        info = ArchInfo(arch, "user", _first_line(cls.__doc__) or cls.__name__, (224, 224), 3, 0)
        return Resolved(info, cls, _accepted_kwargs(cls))
    raise _unknown(arch)


def construct(resolved: Resolved, kwargs: dict[str, Any]) -> nn.Module:
    """Call the architecture's constructor; a bad keyword argument becomes a UsageError."""
    if resolved.accepts is not None:
        bad = sorted(set(kwargs) - resolved.accepts)
        if bad:
            raise UsageError(
                f"{resolved.info.name} does not take the argument(s) {', '.join(bad)}",
                fix=f"it takes: {', '.join(sorted(resolved.accepts)) or 'no arguments'}",
            )
    try:
        return resolved.factory(**kwargs)
    # torchvision asserts on some arguments (ViT's patch size); torch.empty refuses negative sizes
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise UsageError(
            f"cannot build {resolved.info.name} with {kwargs}: {exc}",
            fix="check the architecture's keyword arguments",
        ) from None
