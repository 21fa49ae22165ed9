"""Pretrained weights for ``build``: a torchvision weights name (downloaded through ``torch.hub``) or a local file.

``resolve_pretrained`` says what ``pretrained=`` names (a file, which may be a torchkeep model file of the same
architecture whose spec the new model continues from, or one of the architecture's torchvision weights);
``load_pretrained`` loads it into the freshly built model and records where it came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkeep._convert import file_sha256
from torchkeep._load import load_state_dict
from torchkeep._match import load_into
from torchkeep._spec import ModelSpec, Provenance, read_spec
from torchkeep.errors import CompatibilityError, InputError
from torchkeep.models._archinfo import ArchInfo

__all__ = ["Pretrained", "load_file_into", "load_pretrained", "resolve_pretrained", "torchvision_weights_kwargs"]


@dataclass
class Pretrained:
    """What ``pretrained=`` names: torchvision weights, or a local file (and its spec when it is a torchkeep
    model file of the same architecture: its structure, input size, class names and preprocessing)."""

    weights: Any | None = None  # a torchvision weights enum member
    file: Path | None = None
    spec: ModelSpec | None = None


def resolve_pretrained(arch: str, info: ArchInfo, pretrained: str | os.PathLike[str] | None) -> Pretrained:
    """A file if one exists at ``pretrained``, else one of ``arch``'s torchvision weights.

    Raises:
        InputError: neither.
    """
    if pretrained is None:
        return Pretrained()
    candidate = Path(os.fspath(pretrained)).expanduser()
    if candidate.is_file():
        path = candidate.resolve()
        spec = _spec_of_file(path)
        return Pretrained(file=path, spec=spec if spec is not None and spec.arch == arch else None)
    weights = _torchvision_weights(arch, str(pretrained)) if info.source == "torchvision" else None
    if weights is None:
        names = ", ".join(info.weights) if info.weights else "none"
        raise InputError(
            f"pretrained {str(pretrained)!r} is neither a file nor a weights name of {arch} (weights: {names})",
            path=None,
            fix="pass an existing weights file, or a name from `torchkeep models --filter ^ARCH$`",
        )
    return Pretrained(weights=weights)


def load_pretrained(model: nn.Module, pretrained: Pretrained, provenance: Provenance) -> dict[str, Any] | None:
    """Load the weights into ``model`` (before its head changes), recording them in ``provenance``.

    Returns:
        A local file's state_dict (a file saved from an already re-headed model carries the new head too),
        else None.
    """
    if pretrained.weights is not None:
        weights = pretrained.weights
        _load_torchvision_weights(model, _fetch_torchvision_weights(weights), weights)
        provenance.pretrained = str(weights)
        provenance.pretrained_url = weights.url
        return None
    if pretrained.file is None:
        return None
    sd = load_state_dict(pretrained.file)
    provenance.pretrained = str(pretrained.file)
    provenance.source_file = str(pretrained.file)
    provenance.source_sha256 = file_sha256(pretrained.file)
    provenance.notes = load_file_into(model, sd, first=True)
    return sd


# --------------------------------------------------------------------------- torchvision weights


def _torchvision_weights(arch: str, name: str) -> Any | None:
    """The weights enum member ``name`` (``IMAGENET1K_V1``, ``DEFAULT``, ``ResNet18_Weights.IMAGENET1K_V1``)."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    member = name.rpartition(".")[2]
    return enum.__members__.get(member)


def torchvision_weights_kwargs(arch: str, weights: Any, user: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments torchvision's builders force when weights are given (see their sources)."""
    kw: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if arch.startswith("vit_"):
        kw["image_size"] = int(weights.meta["min_size"][0])
    elif arch == "maxvit_t":
        kw["input_size"] = [int(x) for x in weights.meta["min_size"]]
    elif arch in ("inception_v3", "googlenet"):
        kw["transform_input"] = user.get("transform_input", True)
        kw["init_weights"] = False
        # torchvision drops googlenet's (untrained) aux heads unless asked; inception keeps them.
        kw["aux_logits"] = user.get("aux_logits", arch == "inception_v3")
    return kw


def _fetch_torchvision_weights(weights: Any) -> dict[str, torch.Tensor]:
    """Download (or take from ``$TORCH_HOME/hub/checkpoints``) a torchvision weights file, weights only."""
    from urllib.error import URLError
    from urllib.parse import urlparse

    from torch.hub import get_dir, load_state_dict_from_url

    filename = os.path.basename(urlparse(weights.url).path)
    try:
        return load_state_dict_from_url(
            weights.url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except (URLError, OSError, RuntimeError) as exc:
        raise InputError(
            f"cannot get the pretrained weights {weights} from {weights.url}: {exc}",
            fix=f"on a machine without internet, copy {filename} to {Path(get_dir()) / 'checkpoints' / filename} "
            "or pass pretrained=<local weights file>",
        ) from None


def _load_torchvision_weights(model: nn.Module, sd: dict[str, torch.Tensor], weights: Any) -> None:
    with torch.no_grad():
        result = model.load_state_dict(sd, strict=False)
    # Only torchvision's dropped auxiliary heads may be left over; anything else means the wrong file.
    unexpected = [k for k in result.unexpected_keys if not k.startswith(("aux", "AuxLogits"))]
    if result.missing_keys or unexpected:
        raise CompatibilityError(
            f"the weights file of {weights} does not fit the model: "
            f"missing {result.missing_keys[:3]}, unexpected {unexpected[:3]}",
            fix="delete the cached file under $TORCH_HOME/hub/checkpoints so it is downloaded again",
        )


def load_file_into(model: nn.Module, sd: dict[str, Any], *, first: bool) -> str:
    """Copy what fits from a state_dict into ``model``; returns the load report's verdict."""
    report = load_into(
        model,
        sd,
        on_shape_mismatch="skip",
        # The second pass (after a new head) only picks up a head of the new shape, if the file has one.
        min_match=0.5 if first else 0.0,
        allow_partial=not first,
    )
    return str(getattr(report, "verdict", "") or "")


def _spec_of_file(path: Path) -> ModelSpec | None:
    try:
        return read_spec(path)
    except InputError:  # a malformed spec does not stop using the weights
        return None
