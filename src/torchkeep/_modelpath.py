"""What ``predict`` / ``export`` / ``eval`` were pointed at, when it is not simply a torchkeep model file.

- a training run (its directory, or its ``checkpoint.pt``): the run's best model file, said in a warning
  (:func:`run_model_file`);
- a TorchScript or ONNX file that torchkeep did not write: it carries no input contract (how an image becomes
  its input tensor, what its outputs are called). :class:`InputContract` takes those facts from the caller
  (the CLI's ``--classes``, ``--input-size``, ``--mean/--std``, ``--channels``), reads what the file itself
  tells (an ONNX input's static shape, a first convolution's input channels) and names exactly what is
  still missing;
- a full pickled model (``torch.save(model)``): what it is, and the command that turns it into a model file
  (:func:`torchkeep._weights.explain_full_model`).

Nothing here loads a model or runs code from a file: formats, specs and shapes are read from the bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._detect import Detected
from torchkeep._onnx import read_onnx
from torchkeep._read import read_structure
from torchkeep._spec import ModelSpec, Preprocessing, Provenance, channels_mode
from torchkeep._weights import explain_full_model, find_weights
from torchkeep.errors import InputError, TorchkeepError, TorchkeepWarning, UsageError
from torchkeep.training._layout import (  # a run's files, where training defines them (no torch)
    BEST,
    CHECKPOINT,
    LAST,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputContract",
    "open_model",
    "parse_classes",
    "run_model_file",
]

# Quoted in the message for a missing normalisation: the values most foreign exports were trained with.
IMAGENET_MEAN = "0.485,0.456,0.406"
IMAGENET_STD = "0.229,0.224,0.225"


# ---------------------------------------------------------------------------------------- input contract


def parse_classes(value: str | Sequence[str]) -> list[str]:
    """Class names from ``a,b,c``, or from a file: one name per line, or a JSON list.

    Raises:
        InputError: the file cannot be read or holds no names.
    """
    if not isinstance(value, str):
        return [str(v) for v in value]
    p = Path(value).expanduser()
    if "," not in value and p.is_file():
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the class names: {exc}", path=p) from None
        names: list[str] = []
        if text.lstrip().startswith("["):
            try:
                names = [str(v) for v in json.loads(text)]
            except (ValueError, TypeError):
                names = []
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise InputError("holds no class names", path=p, fix="write one name per line, in output order")
        return names
    names = [c.strip() for c in value.split(",")]
    if not all(names):
        raise UsageError(f"--classes {value!r} has an empty name", fix="--classes cat,dog,bird or --classes FILE")
    return names


@dataclass
class InputContract:
    """Facts about a model's input and outputs given by the caller, for files that do not carry them.

    A TorchScript or ONNX file that torchkeep did not write knows nothing of the images it was trained on:
    its input size, the normalisation, the channels and the names of its outputs come from here. For a file
    that carries a spec, each given fact overrides the spec's.

    Attributes:
        class_names: output names, in index order (CLI: ``--classes a,b,c`` or ``--classes FILE``).
        input_size: ``(H, W)`` images are resized to (CLI: ``--input-size N``).
        mean, std: per-channel normalisation after scaling pixels to [0, 1]; one value or one per channel.
        channels: input channels: 1 (grayscale), 3 (RGB) or 4 (RGBA).
    """

    class_names: list[str] | None = None
    input_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.input_size, int):
            self.input_size = (self.input_size, self.input_size)
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise UsageError(f"input_size must be a positive N or (H, W), not {self.input_size!r}")
        if (self.mean is None) != (self.std is None):
            raise UsageError("--mean and --std go together", fix="pass both (e.g. --mean 0.5 --std 0.5)")
        if self.channels is not None:
            channels_mode(self.channels)  # 1, 3 or 4, else a clear error

    @property
    def given(self) -> bool:
        """Whether any fact was given."""
        return any(v is not None for v in dataclasses.asdict(self).values())

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` with the given facts in place of its own (a copy; ``spec`` is unchanged)."""
        if not self.given:
            return spec
        spec = ModelSpec.from_dict(spec.to_dict())
        pre = spec.preprocessing
        if self.channels is not None:
            spec.in_channels = self.channels
            pre = dataclasses.replace(pre, channels=channels_mode(self.channels))
            if pre.mean is not None and len(pre.mean) != self.channels and self.mean is None:
                raise UsageError(
                    f"the model normalises {len(pre.mean)} channels; --channels {self.channels} needs its own "
                    "--mean/--std",
                    fix=f"pass --mean and --std with 1 or {self.channels} values",
                )
        if self.input_size is not None:
            spec.input_size = self.input_size
            pre = dataclasses.replace(pre, resize=list(self.input_size), crop=None)
        if self.mean is not None and self.std is not None:
            pre = pre.normalised(self.mean, self.std)
        spec.preprocessing = pre
        if self.class_names is not None:
            spec.class_names = list(self.class_names)
            spec.num_classes = len(self.class_names)
        return spec

    def for_export(self, det: Detected) -> ModelSpec:
        """The spec of a TorchScript / ONNX file that carries none: the file's own facts, then these.

        Raises:
            InputError: naming every fact that is still missing and the flag that gives it.
        """
        facts = _file_facts(det)
        self._check_fixed(det, facts)
        channels = self.channels or (facts["channels"][0] if "channels" in facts else None)
        size = self.input_size or facts.get("input_size")
        if size is None or self.mean is None:
            raise _missing_facts(det, facts, size is None, self.mean is None)
        assert size is not None and self.mean is not None and self.std is not None
        n = int(channels or 3)
        pre = Preprocessing(resize=list(size), channels=channels_mode(n)).normalised(self.mean, self.std)
        names = list(self.class_names) if self.class_names is not None else None
        outputs = facts.get("outputs")
        if names is not None and outputs is not None and len(names) != outputs:
            raise UsageError(
                f"{len(names)} class names for a model with {outputs} outputs",
                path=det.path,
                fix=f"give exactly {outputs} names, in output order (--classes FILE|a,b,c)",
            )
        return ModelSpec(
            arch=f"external-{det.format}",
            num_classes=len(names) if names is not None else outputs,
            class_names=names,
            in_channels=n,
            input_size=(int(size[0]), int(size[1])),
            preprocessing=pre,
            provenance=Provenance(
                source_file=os.fspath(det.path),
                notes=f"a {det.format} file torchkeep did not write; its input contract was given by the user",
            ),
        )

    def _check_fixed(self, det: Detected, facts: dict[str, Any]) -> None:
        """UsageError for a size or channel count an ONNX file fixes differently from the one given."""
        given_channels = (self.channels,) if self.channels is not None else None
        for what, given, told in (("input size", self.input_size, facts.get("input_size")),
                                  ("number of input channels", given_channels, facts.get("channels"))):
            if det.format == "onnx" and given is not None and told is not None and tuple(given) != tuple(told):
                raise UsageError(
                    f"the ONNX model's {what} is fixed at {'x'.join(map(str, told))}; "
                    f"{'x'.join(map(str, given))} cannot run",
                    path=det.path,
                    fix=f"drop the flag: the {what} comes from the file",
                )


def _missing_facts(det: Detected, facts: dict[str, Any], no_size: bool, no_mean: bool) -> InputError:
    """The error naming each fact a foreign export lacks, the flag that gives it, and what the file says."""
    missing, flags = [], []
    if no_size:
        missing.append("the input size (--input-size N: images are resized to N x N)")
        flags.append("--input-size 224")
    if no_mean:
        missing.append(
            f"the normalisation (--mean/--std: ImageNet-trained models use --mean {IMAGENET_MEAN} --std "
            f"{IMAGENET_STD}; none: --mean 0 --std 1)"
        )
        flags.append(f"--mean {IMAGENET_MEAN} --std {IMAGENET_STD}")
    told = [f"{facts['channels'][0]} input channels"] if "channels" in facts else []
    if "input_size" in facts:
        told.append("input size {}x{}".format(*facts["input_size"]))
    if "outputs" in facts:
        told.append(f"{facts['outputs']} outputs")
    return InputError(
        f"is {_FORMAT_NAMES[det.format]} that torchkeep did not write: it does not say how an image "
        f"becomes its input. Missing: {'; '.join(missing)}"
        + (f" (the file itself gives: {', '.join(told)})" if told else ""),
        path=det.path,
        fix=f"pass {'them' if len(flags) > 1 else 'it'}, e.g. {' '.join(flags)}; name the outputs with "
        "--classes FILE|a,b,c (else 'class N')"
        + ("" if "channels" in facts else "; --channels 1|3|4 if not RGB"),
    )


_FORMAT_NAMES = {"torchscript": "a TorchScript file", "onnx": "an ONNX model"}


def _file_facts(det: Detected) -> dict[str, Any]:
    """What a foreign export tells about its input by itself: channels, (H, W), number of outputs."""
    facts: dict[str, Any] = {}
    try:
        if det.format == "onnx":
            info = read_onnx(det.path)
            shape = info.inputs[0].shape if info.inputs else []
            if len(shape) == 4 and isinstance(shape[1], int):
                facts["channels"] = (shape[1],)
            if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
                facts["input_size"] = (shape[2], shape[3])
            out = info.outputs[0].shape if info.outputs else []
            if len(out) == 2 and isinstance(out[1], int):
                facts["outputs"] = out[1]
        else:  # TorchScript: the first 4-D weight is the first convolution's, [out, in, kh, kw]
            view = find_weights(read_structure(det))
            first = next((t for t in view.tensors.values() if len(getattr(t, "shape", ())) == 4), None)
            if first is not None and first.shape[1] in (1, 3, 4):
                facts["channels"] = (int(first.shape[1]),)
    except TorchkeepError:  # facts are a convenience: without them the user gives the flags
        pass
    return facts


# ------------------------------------------------------------------------------------------ training runs


def run_model_file(path: str | os.PathLike[str]) -> Path:
    """The model file a path stands for: a training run (its directory or its ``checkpoint.pt``) stands for
    its best model file (``best.safetensors``, else ``last.safetensors``), with a ``TorchkeepWarning`` that says
    so; any other path stands for itself.

    Raises:
        InputError: a directory that is not a training run, or a run that has written no model file yet.
    """
    p = Path(path)
    if not (p.is_dir() or p.stem == "checkpoint"):
        return p
    if p.is_dir():
        run = p
    elif p.name == CHECKPOINT and p.is_file() and any((p.parent / f).is_file() for f in (BEST, LAST)):
        run = p.parent
    else:
        return p
    for name, what in ((BEST, "best"), (LAST, "last")):
        if (run / name).is_file():
            warnings.warn(
                f"{os.fspath(path)} is a training run: using its {what} model file {run / name}",
                TorchkeepWarning,
                stacklevel=3,
            )
            return run / name
    if (run / CHECKPOINT).is_file():
        raise InputError(
            f"is a training run that has written no model file yet ({BEST} / {LAST})",
            path=p,
            fix=f"finish or extend it: torchkeep train --resume {run} --epochs N",
        )
    raise InputError(
        "is a directory, not a model file or a training run",
        path=p,
        fix=f"pass a model file (.safetensors), an export (.pt/.onnx) or a training run's directory ({BEST} inside)",
    )


# --------------------------------------------------------------------------------------- not a model file


def open_model(
    model: Any,
    spec: ModelSpec | None = None,
    *,
    trust: bool = False,
    device: Any = "cpu",
    in_memory_label: str = "<module>",
    contract: InputContract | None = None,
) -> tuple[nn.Module, ModelSpec, str]:
    """:func:`torchkeep._modelfile.resolve_model` for what a user points a verb at: a training run means its
    best model file, a file that is not a model file gets the precise error, and ``contract`` overrides the
    spec's facts."""
    # imported here: a TorchScript / ONNX export runs without the model registry, which _modelfile brings in
    from torchkeep._modelfile import resolve_model

    if isinstance(model, (str, os.PathLike)):
        model = run_model_file(model)
        try:
            module, spec, label = resolve_model(model, spec, trust=trust, device=device)
        except InputError as exc:
            raise explain_full_model(model) or exc from None
    else:
        module, spec, label = resolve_model(model, spec, trust=trust, device=device, in_memory_label=in_memory_label)
    if contract is not None:
        spec = contract.apply(spec)
    return module, spec, label
