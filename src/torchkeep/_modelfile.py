"""Self-describing model files: safetensors weights + the model's spec in the header metadata.

``save(model, path)`` writes the weights with ``safetensors.torch.save_file`` and the spec JSON under
the metadata key ``torchkeep.spec``; ``load(path)`` rebuilds the architecture from that spec and loads
the weights strictly — no pickle anywhere, so nothing in the file can run code, and the code that
defined the model is not needed. ``read_spec(path)`` reads only the JSON header (no torch import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._atomic import atomic_path
from torchkeep._convert import _dedupe
from torchkeep._detect import detect
from torchkeep._device import resolve_device
from torchkeep._dtypes import cast_dtype, torch_dtype
from torchkeep._gate import check_file
from torchkeep._identify import Identification, head_moves, identify
from torchkeep._load import load_state_dict
from torchkeep._match import copy_state
from torchkeep._spec import METADATA_KEY, ModelSpec, check_model_path, read_spec
from torchkeep._weights import explain_full_model
from torchkeep.errors import CompatibilityError, InputError, TorchkeepWarning, UntrustedCodeError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["load", "read_spec", "resolve_model", "save"]

# --------------------------------------------------------------------------- save


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside torch.compile / DataParallel / DDP wrappers (their keys carry prefixes)."""
    from torch import nn

    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        return model


def save(model: nn.Module, path: str | os.PathLike[str], spec: ModelSpec | None = None) -> Path:
    """Write a self-describing model file: safetensors weights with the spec in the header.

    Args:
        model: the model (wrappers from ``torch.compile``/DataParallel/DDP are unwrapped first).
        path: the output file (conventionally ``*.safetensors``); written atomically.
        spec: the spec to store; defaults to ``model.torchkeep_spec`` (set by ``torchkeep.models.build``
            and ``torchkeep.load``).

    Returns:
        The path written.

    Raises:
        UsageError: no spec given and the model has none.
    """
    from safetensors.torch import save_file

    from torchkeep.models._build import current_versions

    model = _unwrap(model)
    spec = spec if spec is not None else getattr(model, "torchkeep_spec", None)
    if spec is None:
        raise UsageError(
            f"{type(model).__name__} has no model spec, so the file could not be loaded back without its code",
            fix="build it with torchkeep.models.build(...), or pass spec=ModelSpec(arch='package.module:Class', "
            "arch_kwargs={...}); for weights only use safetensors.torch.save_file(model.state_dict(), path)",
        )
    if not isinstance(spec, ModelSpec):
        raise UsageError(f"spec must be a torchkeep.ModelSpec, not {type(spec).__name__}")
    state = model.state_dict()
    empty = [k for k, t in state.items() if t.is_meta]
    if empty:
        raise UsageError(
            f"{len(empty)} tensors of {type(model).__name__} are on the meta device and hold no data ({empty[0]}, ...)",
            fix="load or initialise the weights first (model.to_empty(device='cpu') then load a state_dict)",
        )
    # Tied tensors are stored once ({alias: canonical} goes into the spec so load re-ties them) and views
    # overlapping another tensor are copied: safetensors refuses shared memory. Same rules as convert.
    kept, aliases, _ = _dedupe(state)
    tensors = {k: t.detach().to("cpu").contiguous() for k, t in kept.items()}
    stored = spec.replace(tied=aliases, versions=current_versions())
    metadata = {METADATA_KEY: stored.to_json(), "format": "pt"}
    target = Path(os.fspath(path)).expanduser()
    with atomic_path(target) as tmp:
        save_file(tensors, os.fspath(tmp), metadata=metadata)
    return target


# --------------------------------------------------------------------------- load


def _dtype(dtype: Any) -> torch.dtype | None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    value = torch_dtype(cast_dtype(name) or name)
    if not value.is_floating_point:
        raise UsageError(f"unknown dtype {dtype!r} for a model", fix="use float32, float16 or bfloat16")
    return value


def _explain_not_model_file(p: Path, ident: Identification | None = None) -> InputError:
    """The error for a file ``load`` cannot rebuild, saying what it is (and what ``identify`` found) and what
    to do instead."""
    try:
        fmt = detect(p).format
    except InputError as exc:
        return exc
    found = ""
    if ident is not None:
        if ident.architecture and ident.source == "timm":
            found = f"; it looks like timm's {ident.summary()}: build it with timm.create_model and torchkeep.load_into"
        elif ident.architecture:
            found = f"; it looks like {ident.summary()}, which is not exact enough to build it unasked"
        else:
            found = f"; {ident.summary()}"
    adapt = f"torchkeep adapt {p} --arch NAME -o model.safetensors"
    if fmt == "onnx":
        return InputError(
            "is an ONNX model, not a torchkeep model file; it runs without PyTorch",
            path=p,
            fix=f"torchkeep predict {p} IMAGES (ONNX Runtime), or onnxruntime.InferenceSession(path)",
        )
    if fmt == "torchscript":
        return InputError(
            "is a TorchScript archive, not a torchkeep model file",
            path=p,
            fix=f"`torchkeep predict {p} IMAGES` runs it after scanning its code (torch.jit.load runs whatever "
            f"code it holds: `torchkeep scan` it first); or `{adapt}` to rebuild it as a model file",
        )
    if fmt == "safetensors":
        return InputError(
            "holds weights only (safetensors without a torchkeep spec): a bare state_dict has no architecture"
            + found,
            path=p,
            fix=f"`{adapt}` (or torchkeep.load_state_dict + torchkeep.load_into your model)",
        )
    full = explain_full_model(p)  # torch.save(model): named with its class, never "a state_dict"
    if full is not None:
        return full
    return InputError(
        f"is a {fmt} file, not a torchkeep model file: a state_dict or checkpoint has no architecture{found}",
        path=p,
        fix=f"`{adapt}` turns it into one (torchkeep.load_state_dict reads its weights without running code)",
    )


def _check_arch_known(spec: ModelSpec, p: Path) -> None:
    """An architecture this environment lacks: name the versions that wrote the file."""
    from torchkeep.models._registry import is_known

    if is_known(spec.arch):
        return
    wrote = ", ".join(f"{k} {v}" for k, v in spec.versions.items()) or "unknown versions"
    raise CompatibilityError(
        f"the spec's architecture {spec.arch!r} is not available here (the file was written with {wrote})",
        path=p,
        fix="install the torchvision/torchkeep versions named above (pip install -U torchvision torchkeep)",
    )


def _has_meta(model: nn.Module) -> bool:
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_meta:
            return True
    # Plain tensor attributes made in __init__ (not parameters or buffers) stay on meta too.
    return any(isinstance(v, torch.Tensor) and v.is_meta for m in model.modules() for v in vars(m).values())


def _strict_load(model: nn.Module, tensors: dict[str, torch.Tensor], p: Path, *, assign: bool) -> None:
    import torch

    expected = model.state_dict().keys()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CompatibilityError(
            f"the weights do not match the architecture its spec describes: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}",
            path=p,
            fix="the spec was edited or written for another model; re-save it with torchkeep.save, "
            "or recover the weights with torchkeep.load_state_dict",
        )
    try:
        with torch.no_grad():
            copy_state(model, tensors, strict=True, assign=assign)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CompatibilityError(
            f"the weights do not fit the architecture its spec describes: {first}",
            path=p,
            fix="the spec's arch_kwargs/num_classes disagree with the weights; re-save with torchkeep.save",
        ) from None


#: torchvision builds these with transform_input=True whenever it loads its weights, and files of them
#: come from those weights: identified files are built the same way
_TRANSFORM_INPUT = ("googlenet", "inception_v3")


def build_identified(ident: Identification) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """The model (on the meta device, with its spec) an identification of a seed or torchvision architecture
    describes; with the constructor arguments used and what was assumed."""
    from torchkeep.models._build import build
    from torchkeep.models._meta import meta_build

    arch = ident.architecture
    assert arch is not None
    kwargs = dict(ident.arch_kwargs)
    assumed = []
    if arch in _TRANSFORM_INPUT:
        kwargs.update(transform_input=True, init_weights=False)
        assumed.append("transform_input=True (as torchvision's own weights)")
    model = meta_build(lambda: build(
        arch, ident.num_classes, in_channels=ident.in_channels if ident.source == "seed" else None,
        input_size=tuple(ident.input_size) if ident.input_size else None,  # type: ignore[arg-type]
        head="append" if ident.head == "appended" else "replace", **kwargs))
    return model, kwargs, assumed


def _from_identification(p: Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and tensors of a file without a spec whose architecture ``identify`` names exactly.

    Raises the "not a model file" InputError, with what ``identify`` found, otherwise.
    """
    import warnings

    import torch

    if detect(p).format in ("onnx", "torchscript"):  # they run by themselves: the explanation says how
        raise _explain_not_model_file(p)
    try:
        ident = identify(p)
    except InputError:  # no tensors to identify: what the file is, and what to do
        raise _explain_not_model_file(p) from None
    if ident.architecture is None or ident.match != "exact" or ident.source not in ("seed", "torchvision"):
        raise _explain_not_model_file(p, ident)
    model, kwargs, assumed = build_identified(ident)
    spec: ModelSpec = model.torchkeep_spec  # type: ignore[assignment]
    expected = model.state_dict()
    named = {ident.renamed.get(k, k): v for k, v in load_state_dict(p).items()}  # old layouts read as today's
    tensors = {k[len(ident.prefix):]: v for k, v in named.items() if k.startswith(ident.prefix)}
    # the file's names for the original head and an appended layer -> where build() puts them
    moves = head_moves(ident, spec.head)
    tensors = {next((f"{moves[m]}{k[len(m):]}" for m in moves if k.startswith(m + ".")), k): v
               for k, v in tensors.items()}
    for k in expected:  # BatchNorm counters that files from before PyTorch 0.4.1 lack
        if k not in tensors and k.endswith(".num_batches_tracked"):
            tensors[k] = torch.zeros((), dtype=torch.long)
    halves = [k for k, v in tensors.items() if v.dtype in (torch.float16, torch.bfloat16)]
    for k in halves:
        tensors[k] = tensors[k].float()
    if halves:
        assumed.append(f"{len(halves)} half-precision tensors cast to float32")
    done = f"identified by `torchkeep identify` as {ident.summary()} (exact: {ident.tensors} tensors"
    done += f", from {ident.weights_location!r}" if ident.weights_location else ""
    done += f", prefix {ident.prefix!r} stripped" if ident.prefix else ""
    done += ")"
    spec.provenance.source_file = os.fspath(p)
    spec.provenance.notes = done
    spec.extra["identified"] = {**ident.record(), "assumed": assumed}
    what = "; ".join([*assumed, *ident.notes])
    warnings.warn(
        f"{p.name} has no torchkeep spec: {done}; built with {kwargs or 'default arguments'}"
        f"{'; ' + what if what else ''}; input: {spec.preprocessing.describe()}; class names unknown (indices). "
        f"`torchkeep adapt {p} --arch auto -o model.safetensors` records this in a model file",
        TorchkeepWarning,
        stacklevel=3,
    )
    return spec.replace(arch_kwargs={**spec.arch_kwargs}), tensors


def load(
    path: str | os.PathLike[str],
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    *,
    trust: bool = False,
) -> nn.Module:
    """Rebuild a model from a self-describing model file: no pickle, no source code needed.

    Args:
        path: a file written by ``torchkeep.save`` (or ``torchkeep adapt`` / ``train``); or weights without a spec
            (a state_dict, a checkpoint, in any format) whose architecture ``torchkeep.identify`` names exactly:
            built from the identification, with a :class:`~torchkeep.errors.TorchkeepWarning` saying what was
            assumed.
        device: ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``. Files are
            device-independent: a model saved on a GPU loads on a CPU-only machine.
        dtype: cast floating-point weights (``"float16"``, ``torch.bfloat16``); None keeps the stored dtype.
        trust: allow the spec to import a user class (``package.module:Class``); needed for user models only.

    Returns:
        The model in eval mode on ``device``, with ``model.torchkeep_spec`` set.

    Raises:
        InputError: missing file, not a model file (the message says what it is and how to use it).
        UnsafeFileError: the scan calls the file ``dangerous`` (refused whatever ``trust`` says).
        UntrustedCodeError: the spec names a user class and ``trust`` is False.
        CompatibilityError: weights and spec disagree, or the device is not available.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = check_model_path(path)
    # safetensors runs no code, but a file that also parses as something that does (a polyglot) is refused
    check_file(p, runs_code=False)
    spec = read_spec(p)
    dev = resolve_device(device)
    want = _dtype(dtype)
    if spec is None:
        # weights without a spec: built from what `torchkeep identify` names, when it names it exactly
        spec, tensors = _from_identification(p)
    else:
        try:
            tensors = load_file(os.fspath(p), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InputError(f"cannot read the weights ({exc})", path=p, fix="re-create the file") from None
    for alias, canonical in spec.tied.items():
        if canonical not in tensors:
            raise InputError(f"tied weight {alias!r} points to missing {canonical!r}", path=p)
        tensors[alias] = tensors[canonical]

    _check_arch_known(spec, p)
    model = _rebuild(spec, tensors, p, trust)
    model.to(device=dev)
    if want is not None:
        model.to(dtype=want)
    model.eval()
    model.torchkeep_spec = spec  # type: ignore[assignment]
    return model


def _rebuild(spec: ModelSpec, tensors: dict[str, torch.Tensor], p: Path, trust: bool) -> nn.Module:
    """The model the spec describes, holding ``tensors`` (every one of them: a strict load)."""
    from torchkeep.models._build import build_from_spec

    # Build on the meta device and adopt the loaded tensors (assign=True): no time spent initialising
    # weights that are overwritten anyway (seconds for VGG16). Tied weights need the normal path,
    # since assign would replace each tied Parameter separately and untie them.
    if not spec.tied:
        try:
            model = build_from_spec(spec, trust=trust, device="meta")
        except UntrustedCodeError:
            raise
        except Exception:  # some constructors compute with tensors in __init__ (RegNet): build for real
            pass
        else:
            # A mismatch found here is final: building for real would only allocate what the spec asks
            # (however large) to fail the same way.
            _strict_load(model, tensors, p, assign=True)
            if not _has_meta(model):
                return model
    model = build_from_spec(spec, trust=trust)
    _strict_load(model, tensors, p, assign=False)
    return model


def resolve_model(
    model: Any,
    spec: ModelSpec | None = None,
    *,
    trust: bool = False,
    device: str | torch.device | None = "cpu",
    in_memory_label: str = "<module>",
) -> tuple[nn.Module, ModelSpec, str]:
    """(module, spec, label) from a model file path or an ``nn.Module``: what every verb that
    takes "a model" (export, predict, evaluate) starts with.

    Args:
        model: a torchkeep model file (loaded with :func:`load` on ``device``) or an ``nn.Module`` (kept as is).
        spec: overrides the model's own ``torchkeep_spec``.
        trust: lets a model file whose spec names a user class (``package.module:Class``) import it.
        device: where a model file is loaded.
        in_memory_label: the label of a module passed in memory.

    Raises:
        UsageError: neither a path nor a module, or no spec to go with it.
    """
    from torch import nn

    if isinstance(model, (str, os.PathLike)):
        module = load(model, device=device, trust=trust)
        label = os.fspath(model)
    elif isinstance(model, nn.Module):
        module, label = model, in_memory_label
    else:
        raise UsageError(
            f"expected a model file path or an nn.Module, not {type(model).__name__}",
            fix="pass the path of a torchkeep model file (torchkeep.save) or a module built by torchkeep.models.build",
        )
    spec = spec or getattr(module, "torchkeep_spec", None)
    if spec is None:
        raise UsageError(
            "the model has no torchkeep spec (class names, input size, preprocessing)",
            path=label if label != in_memory_label else None,
            fix="build it with torchkeep.models.build(...) or pass spec=ModelSpec(...)",
        )
    return module, spec, label
