"""``ModelSpec``: everything needed to rebuild and feed a model, as versioned JSON.

A spec travels inside a safetensors model file under the metadata key ``torchkeep.spec``, so a file
can be turned back into a working ``nn.Module`` without the code that created it. The format is
documented field by field in ``docs/spec.md``.

``read_spec(path)`` reads it back from the file's header alone. This module must not import torch: ``inspect``
reads specs from file headers without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep._detect import looks_like_safetensors, read_safetensors_json
from torchkeep._specfields import Validator
from torchkeep._version import __version__
from torchkeep.errors import InputError, UsageError

__all__ = [
    "METADATA_KEY",
    "SPEC_VERSION",
    "HeadRecipe",
    "ModelSpec",
    "Preprocessing",
    "Provenance",
    "channels_mode",
    "check_model_path",
    "read_spec",
]

#: Version of the spec format written by this torchkeep. Readers accept this version and older ones.
SPEC_VERSION = 1
#: Metadata key of the spec JSON in a safetensors model file.
METADATA_KEY = "torchkeep.spec"

_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def channels_mode(in_channels: int) -> str:
    """The PIL mode that gives ``in_channels`` channels ("L", "RGB" or "RGBA")."""
    mode = _CHANNELS.get(int(in_channels))
    if mode is None:
        raise InputError(
            f"in_channels={in_channels} has no image mode",
            fix="use 1 (grayscale), 3 (RGB) or 4 (RGBA) input channels",
        )
    return mode


@dataclass
class Preprocessing:
    """How an image becomes the model's input tensor (see ``torchkeep._preprocess.transform_for``).

    Attributes:
        resize: ``[H, W]`` resizes to exactly that size; ``[N]`` resizes the shorter side to N keeping the
            aspect ratio (torchvision's convention); None: no resize.
        crop: ``[H, W]`` center crop after resizing; None: no crop.
        interpolation: resize interpolation, one of torchvision's ``InterpolationMode`` values.
        mean: per-channel mean subtracted after scaling pixels to [0, 1]; None: no normalisation.
        std: per-channel standard deviation divided by; None: no normalisation.
        channels: the PIL mode images are converted to: "L" (1 channel), "RGB" (3) or "RGBA" (4).
    """

    resize: list[int] | None = None
    crop: list[int] | None = None
    interpolation: str = "bilinear"
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: str = "RGB"

    def normalised(self, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """A copy with this per-channel ``mean`` / ``std`` (one value is used for every channel).

        Raises:
            UsageError: a count that is neither 1 nor the number of channels, or a std that is not positive.
        """
        n = len(self.channels)  # "L", "RGB", "RGBA": 1, 3, 4 channels
        values = []
        for name, given in (("mean", mean), ("std", std)):
            v = [float(x) for x in given]
            if len(v) not in (1, n):
                raise UsageError(f"--{name} has {len(v)} values; the input has {n} channels ({self.channels})",
                                 fix=f"give 1 or {n} comma-separated values")
            values.append(v * n if len(v) == 1 else v)
        if not all(0 < s < math.inf for s in values[1]):
            raise UsageError(f"--std must be positive, not {values[1]}")
        return dataclasses.replace(self, mean=values[0], std=values[1])

    def describe(self) -> str:
        """One line: ``RGB, resize 256 (shorter side, bilinear), center crop 224x224, mean [...], std [...]``."""
        parts = [self.channels]
        if self.resize and len(self.resize) == 1:
            parts.append(f"resize {self.resize[0]} (shorter side, {self.interpolation})")
        elif self.resize:
            parts.append(f"resize {'x'.join(map(str, self.resize))} ({self.interpolation})")
        if self.crop:
            parts.append(f"center crop {'x'.join(map(str, self.crop))}")
        if self.mean is not None and self.std is not None:
            parts.append(f"mean [{', '.join(f'{m:g}' for m in self.mean)}], std [{', '.join(f'{v:g}' for v in self.std)}]")
        else:
            parts.append("pixels in [0, 1], not normalised")
        return ", ".join(parts)


@dataclass
class HeadRecipe:
    """How the classifier head of a base architecture was modified (transfer learning).

    Attributes:
        mode: "replace" (the head layer was swapped for a new one with ``num_classes`` outputs) or
            "append" (a ``Linear(out_features, num_classes)`` was added after it, as
            ``vgg.classifier.add_module("add_linear", nn.Linear(1000, 10))`` does).
        path: dotted module path of the original head layer in the base model (``"classifier.6"``, ``"fc"``).
        kind: "linear" or "conv" (SqueezeNet's final 1x1 convolution).
        in_features: inputs of the original head layer.
        out_features: outputs of the original head layer (1000 for ImageNet weights).
        num_classes: outputs after the modification.
        added_path: "append" only: dotted path of the added Linear (``"classifier.add_linear"``).
        wrapped: "append" only: the head was not inside a Sequential and was wrapped into one
            (``fc`` became ``Sequential(0=fc, add_linear=Linear)``).
        aux_paths: "replace" only: auxiliary heads replaced too (Inception ``AuxLogits.fc``).
    """

    mode: str
    path: str
    kind: str = "linear"
    in_features: int = 0
    out_features: int = 0
    num_classes: int = 0
    added_path: str | None = None
    wrapped: bool = False
    aux_paths: list[str] = field(default_factory=list)


@dataclass
class Provenance:
    """Where a model came from.

    Attributes:
        created: ISO 8601 UTC time the spec was created.
        pretrained: the pretrained weights: a torchvision weights name (``"IMAGENET1K_V1"``) or a file path.
        pretrained_url: URL the torchvision weights come from.
        source_file: the file the weights were read from (``adapt``, ``pretrained=FILE``).
        source_sha256: SHA-256 of ``source_file``.
        dataset: the dataset the model was trained on, if known.
        notes: free text.
    """

    created: str | None = None
    pretrained: str | None = None
    pretrained_url: str | None = None
    source_file: str | None = None
    source_sha256: str | None = None
    dataset: str | None = None
    notes: str | None = None


@dataclass
class ModelSpec:
    """The architecture, input contract and history of a model; JSON in a model file's metadata.

    Attributes:
        arch: registry name (``"cifar10_cnn"``, ``"resnet18"``) or a user class ``"package.module:Class"``.
        arch_kwargs: keyword arguments passed to the architecture's constructor (JSON values only).
        num_classes: number of outputs of the final model.
        class_names: names of the classes, index order; None if unknown.
        in_channels: channels of the input tensor.
        input_size: ``(H, W)`` of the input tensor.
        preprocessing: how images become input tensors.
        head: the head modification applied after building the base architecture; None if none.
        freeze: "backbone" if all but the head were frozen when built; None otherwise.
        tied: ``{alias_key: canonical_key}`` for tensors shared between state_dict keys; a model file
            stores each shared tensor once and ``load`` re-ties the aliases.
        versions: ``{"torch": ..., "torchvision": ..., "torchkeep": ...}`` that created the file.
        provenance: where the model and its weights came from.
        extra: free-form JSON for other components (training summary, ...).
        spec_version: version of this format (``SPEC_VERSION``).
    """

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    class_names: list[str] | None = None
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    head: HeadRecipe | None = None
    freeze: str | None = None
    tied: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    provenance: Provenance = field(default_factory=Provenance)
    extra: dict[str, Any] = field(default_factory=dict)
    spec_version: int = SPEC_VERSION

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-ready values (``spec_version`` first)."""
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        out = {"spec_version": data.pop("spec_version")}
        out.update(data)
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        """Serialise to JSON (compact by default, as stored in file metadata).

        Args:
            indent: indentation for human-readable output; None for compact.

        Returns:
            The JSON text.

        Raises:
            UsageError: a field holds a value JSON cannot store.
        """
        separators = (",", ":") if indent is None else None
        try:
            return json.dumps(self.to_dict(), indent=indent, separators=separators, sort_keys=False)
        except (TypeError, ValueError) as exc:  # a numpy scalar, Path or tensor in arch_kwargs / extra
            raise UsageError(
                f"the model spec holds a value JSON cannot store ({exc})",
                fix="keep arch_kwargs and extra to JSON values: str, int, float, bool, None, lists, dicts",
            ) from None

    @classmethod
    def from_dict(cls, data: Any, *, path: str | os.PathLike[str] | None = None) -> ModelSpec:
        """Build a spec from parsed JSON, validating every field.

        Args:
            data: the parsed JSON object.
            path: the file the spec came from, named in errors.

        Returns:
            The validated spec.

        Raises:
            InputError: the spec is malformed, or was written by a newer torchkeep (``spec_version``).
        """
        v = Validator(path)
        if not isinstance(data, dict):
            v.fail(f"the model spec is a JSON {type(data).__name__}, not an object")
        version = _spec_version(data, v, path)
        arch = v.str_(data, "arch", required=True)
        assert arch is not None
        arch_kwargs = v.dict_(data, "arch_kwargs")
        num_classes = v.int_(data, "num_classes")
        class_names = data.get("class_names")
        if class_names is not None and not (
            isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)
        ):
            v.fail("class_names must be a list of strings")
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            v.fail(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        in_channels = v.int_(data, "in_channels")
        input_size = data.get("input_size", [224, 224])
        if not (
            isinstance(input_size, list | tuple)
            and len(input_size) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in input_size)
        ):
            v.fail(f"input_size must be [H, W] positive integers (got {input_size!r})")
        preprocessing = _preprocessing_from(v.dict_(data, "preprocessing"), v)
        head = _head_from(data.get("head"), v)
        freeze = v.str_(data, "freeze")
        if freeze not in (None, "backbone"):
            v.fail(f"freeze must be 'backbone' or null (got {freeze!r})")
        tied = v.dict_(data, "tied")
        if not all(isinstance(k, str) and isinstance(t, str) for k, t in tied.items()):
            v.fail("tied must map state_dict keys to state_dict keys")
        versions = {str(k): str(val) for k, val in v.dict_(data, "versions").items()}
        prov = v.dict_(data, "provenance")
        known = {f.name for f in dataclasses.fields(Provenance)}
        provenance = Provenance(**{k: (None if val is None else str(val)) for k, val in prov.items() if k in known})
        extra = v.dict_(data, "extra")
        # Keys a later 1.x writer added: keep them (in extra) rather than drop them silently.
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            extra = {**extra, "unknown_fields": {k: data[k] for k in sorted(unknown)}}
        return cls(
            arch=arch,
            arch_kwargs=arch_kwargs,
            num_classes=num_classes,
            class_names=class_names,
            in_channels=in_channels if in_channels is not None else 3,
            input_size=(int(input_size[0]), int(input_size[1])),
            preprocessing=preprocessing,
            head=head,
            freeze=freeze,
            tied=tied,
            versions=versions,
            provenance=provenance,
            extra=extra,
            spec_version=version,
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, path: str | os.PathLike[str] | None = None) -> ModelSpec:
        """Parse and validate spec JSON.

        Args:
            text: the JSON text.
            path: the file the spec came from, named in errors.

        Returns:
            The validated spec.

        Raises:
            InputError: invalid JSON, a malformed field, or a spec newer than this torchkeep reads.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(
                f"the model spec is not valid JSON ({exc})",
                path=path,
                fix="re-save the model with torchkeep.save(model, path, spec)",
            ) from None
        return cls.from_dict(data, path=path)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (deep-copied, so the original is never shared)."""
        return dataclasses.replace(ModelSpec.from_dict(self.to_dict()), **changes)


def _spec_version(data: dict[str, Any], v: Validator, path: str | os.PathLike[str] | None) -> int:
    """The spec's ``spec_version``; a newer one than this torchkeep reads is refused with the upgrade command."""
    version = data.get("spec_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        v.fail(f"the model spec has no valid spec_version (got {version!r})")
    if version > SPEC_VERSION:
        raise InputError(
            f"the model spec has spec_version {version}, newer than this torchkeep {__version__} "
            f"reads (up to {SPEC_VERSION})",
            path=path,
            fix="upgrade torchkeep: pip install -U torchkeep",
        )
    return version


def _preprocessing_from(pre: dict[str, Any], v: Validator) -> Preprocessing:
    """The ``preprocessing`` object of a spec, validated."""
    preprocessing = Preprocessing(
        resize=v.int_list(pre, "preprocessing.resize", "resize"),
        crop=v.int_list(pre, "preprocessing.crop", "crop"),
        interpolation=v.str_(pre, "interpolation") or "bilinear",
        mean=v.float_list(pre, "preprocessing.mean", "mean"),
        std=v.float_list(pre, "preprocessing.std", "std"),
        channels=v.str_(pre, "channels") or "RGB",
    )
    if preprocessing.interpolation not in _INTERPOLATIONS:
        v.fail(f"preprocessing.interpolation {preprocessing.interpolation!r} is not one of {_INTERPOLATIONS}")
    if preprocessing.channels not in _CHANNELS.values():
        v.fail(f"preprocessing.channels {preprocessing.channels!r} is not one of L, RGB, RGBA")
    if (preprocessing.mean is None) != (preprocessing.std is None):
        v.fail("preprocessing.mean and preprocessing.std must both be set or both be null")
    return preprocessing


def _head_from(head_data: Any, v: Validator) -> HeadRecipe | None:
    """The ``head`` object of a spec (null: no head modification), validated."""
    if head_data is None:
        return None
    if not isinstance(head_data, dict):
        v.fail("head must be an object or null")
    mode = v.str_(head_data, "mode", required=True)
    if mode not in ("replace", "append"):
        v.fail(f"head.mode must be 'replace' or 'append' (got {mode!r})")
    return HeadRecipe(
        mode=mode,  # type: ignore[arg-type]
        path=v.str_(head_data, "path", required=True) or "",
        kind=v.str_(head_data, "kind") or "linear",
        in_features=v.int_(head_data, "in_features") or 0,
        out_features=v.int_(head_data, "out_features") or 0,
        num_classes=v.int_(head_data, "num_classes") or 0,
        added_path=v.str_(head_data, "added_path"),
        wrapped=bool(head_data.get("wrapped", False)),
        aux_paths=v.str_list(head_data, "head.aux_paths", "aux_paths"),
    )


# --------------------------------------------------------------------------- reading it from a file (no torch)

def _read_header(path: Path) -> dict[str, Any] | None:
    """The safetensors JSON header of ``path``, or None if the file is not safetensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
        if not looks_like_safetensors(head, size):
            return None
        header, _ = read_safetensors_json(path, size)
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc.strerror})", path=path) from None
    except ValueError as exc:
        raise InputError(f"{exc} (the file is corrupt or truncated)", path=path, fix="re-create the file") from None
    return header


def check_model_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or the InputError a user should see (missing, a directory)."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise InputError("no such file", path=p, fix="check the path")
    if p.is_dir():
        raise InputError(
            "is a directory, not a model file", path=p, fix="name the .safetensors file inside it"
        )
    return p


def read_spec(path: str | os.PathLike[str]) -> ModelSpec | None:
    """Read the model spec stored in a safetensors file's header, without torch and without tensor bytes.

    Args:
        path: the file.

    Returns:
        The spec, or None when the file is not safetensors or carries no torchkeep spec.

    Raises:
        InputError: missing file, corrupt header, or a malformed / too new spec.
    """
    p = check_model_path(path)
    header = _read_header(p)
    if header is None:
        return None
    meta = header.get("__metadata__") or {}
    text = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if text is None:
        return None
    if not isinstance(text, str):  # safetensors metadata values are strings; a crafted header may differ
        raise InputError(
            f"invalid model spec: the {METADATA_KEY} metadata is a JSON {type(text).__name__}, not a string",
            path=p,
            fix="re-save the model with torchkeep.save(model, path, spec)",
        )
    return ModelSpec.from_json(text, path=p)
