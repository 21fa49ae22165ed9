"""``explain_error(exc_or_text)``: the torchkeep fix for a classic raw PyTorch loading error.

Size mismatches, missing/unexpected keys (and the wrapper prefix that explains them), ``weights_only`` refusals
of a global, a class or module that no longer exists, an unknown architecture name, a Linear fed the wrong
input size: each gets one paragraph that says what happened and what to run instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torchkeep._keys import WRAPPER_PREFIXES, apply_prefix, collapse_keys, prefix_candidates
from torchkeep.errors import TorchkeepError

__all__ = ["explain_error"]

# --------------------------------------------------------------------------------------- explain_error

_SIZE_RX = re.compile(
    r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([\d, ]*)\]\)"
)
_MISSING_RX = re.compile(r"Missing key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")
_UNEXPECTED_RX = re.compile(r"Unexpected key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")
_GLOBAL_RX = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_ATTR_RX = re.compile(r"Can't get attribute '([\w.]+)' on <module '([\w.]+)'")
_NOMODULE_RX = re.compile(r"No module named '([\w.]+)'")
_MATMUL_RX = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


def _keys(rx: re.Pattern[str], text: str) -> list[str]:
    m = rx.search(text)
    return re.findall(r"\"([^\"]*)\"", m.group(1)) if m else []


def _prefix_story(missing: list[str], unexpected: list[str]) -> str | None:
    """Explain missing/unexpected keys that differ only by a wrapper prefix."""
    if not (missing and unexpected):
        return None
    miss = set(missing)
    for strip in sorted(prefix_candidates(unexpected), key=len, reverse=True):
        for add in sorted(prefix_candidates(missing), key=len, reverse=True):
            if not (strip or add):
                continue
            moved = [apply_prefix(k, strip, add) for k in unexpected]
            if sum(k in miss for k in moved) * 2 >= max(len(miss), 1):
                if strip:
                    who = next((v for p, v in WRAPPER_PREFIXES.items() if strip.endswith(p)), "a wrapper module")
                    what = f"the checkpoint's keys carry the prefix {strip!r} (saved from {who})"
                else:
                    what = f"the model's keys carry the prefix {add!r} (it is wrapped) but the checkpoint's do not"
                return (
                    f"{what}. Fix: torchkeep.load_into(model, checkpoint) strips/adds it automatically "
                    f"(strip_prefix='auto'), or by hand: {{k.removeprefix({strip!r}): v for k, v in sd.items()}}"
                    if strip
                    else f"{what}. Fix: torchkeep.load_into(model, checkpoint) adds it automatically "
                    f"(strip_prefix='auto'), or load into the unwrapped model (model.module / model._orig_mod)"
                )
    return None


def explain_error(exc_or_text: BaseException | str) -> str | None:
    """Explain a raw PyTorch loading error (an exception or pasted text) and name the torchkeep fix.

    Knows the classic ones: ``size mismatch for fc.weight``, ``Missing key(s)`` / ``Unexpected key(s) in
    state_dict`` (with the ``module.`` / ``_orig_mod.`` / ``model.`` prefix stories), ``Attempting to
    deserialize object on a CUDA device``, ``Weights only load failed``, ``Can't get attribute 'Net' on
    <module '__main__'>``, ``No module named ...``, ``Unknown model ...``, ``invalid load key``, and the
    device / input-shape errors of a forward pass.

    Args:
        exc_or_text: the exception (its causes are read too) or the message text.

    Returns:
        One or two lines: what happened and the exact call or flag that fixes it; ``None`` if the error is
        not one torchkeep knows.
    """
    if isinstance(exc_or_text, TorchkeepError):
        return str(exc_or_text)  # already says what and how to fix
    text = _error_text(exc_or_text) if isinstance(exc_or_text, BaseException) else str(exc_or_text)
    for explain in _EXPLAINERS:  # the first that recognises the text; the order matters (see each)
        story = explain(text)
        if story is not None:
            return story
    return None


def _error_text(exc: BaseException) -> str:
    """The exception and its causes, each with where it was raised ("No module named" while unpickling is
    not a plain import)."""
    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        tb = e.__traceback__
        while tb is not None:
            parts.append(f'  File "{tb.tb_frame.f_code.co_filename}", in {tb.tb_frame.f_code.co_name}')
            tb = tb.tb_next
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _cuda_file(text: str) -> str | None:
    if "Attempting to deserialize object on a CUDA device" not in text and (
        "torch.cuda.is_available() is False" not in text
    ):
        return None
    return (
        "The file was saved from a GPU and this machine has no CUDA. Fix: "
        "torch.load(path, map_location='cpu'), or torchkeep.load_state_dict(path) / `torchkeep convert PATH "
        "OUT.safetensors`, which always load on the CPU."
    )


def _class_not_found(text: str) -> str | None:
    m = _ATTR_RX.search(text)
    if not m:
        return None
    cls, mod = m.groups()
    # "<module '__main__'>" (or "pytest.__main__" under python -m): the script that ran torch.save
    where = "the script that saved it" if mod.endswith("__main__") else f"module {mod!r}"
    return (
        f"The file is a whole pickled model (torch.save(model)) whose class {cls!r} was defined in {where}, "
        f"which cannot be imported here. Fix: torchkeep.load_state_dict(path) extracts its weights without "
        f"the class; then torchkeep.load_into(YourModel(), path), or `torchkeep adapt PATH --arch NAME -o "
        f"model.safetensors` for a file that needs no code."
    )


def _weights_only_refusal(text: str) -> str | None:
    if "Weights only load failed" not in text:
        return None
    g = _GLOBAL_RX.search(text)
    if g:
        return (
            f"torch.load(weights_only=True) refused the file: it references {g.group(1)}, so it holds more than "
            f"weights (a whole pickled model or custom objects). Fix: `torchkeep scan PATH`, then "
            f"torchkeep.load_state_dict(path) (weights without running code) or `torchkeep convert PATH "
            f"OUT.safetensors`; weights_only=False only for files you trust."
        )
    if "Unsupported operand" in text:
        return (
            "torch.load could not read the file as a pickle at all: it is probably not a PyTorch file (a Git LFS "
            "pointer, an HTML error page, or truncated). Fix: `torchkeep inspect PATH` to see what it is; "
            "re-download it (git lfs pull)."
        )
    return (
        "torch.load(weights_only=True) refused the file: it holds objects other than tensors. Fix: "
        "`torchkeep scan PATH`, then torchkeep.load_state_dict(path) or `torchkeep convert PATH OUT.safetensors`."
    )


def _module_not_found(text: str) -> str | None:
    m = _NOMODULE_RX.search(text)
    # only when it happened while unpickling (torch.load / pickle in the traceback or the pasted text)
    if not (m and re.search(r"unpickl|pickle|torch\.load|serialization\.py|in load\b", text, re.IGNORECASE)):
        return None
    return (
        f"The file is a pickled object whose class lives in module {m.group(1)!r}, which is not importable "
        f"here (moved or renamed). Fix: torchkeep.load_state_dict(path) extracts the weights without importing "
        f"it; then torchkeep.load_into(model, path) or `torchkeep adapt PATH --arch NAME -o OUT`."
    )


def _size_mismatch(text: str) -> str | None:
    sizes = _SIZE_RX.findall(text)
    if not sizes:
        return None
    key, src, dst = sizes[0]
    src_shape = [int(x) for x in src.split(",") if x.strip()]
    dst_shape = [int(x) for x in dst.split(",") if x.strip()]
    keys = collapse_keys(k for k, _, _ in sizes)
    head = ""
    if src_shape[1:] == dst_shape[1:] and src_shape[:1] != dst_shape[:1] and len(src_shape) <= 2:
        head = (
            f" — the checkpoint has {src_shape[0]} outputs there and the model {dst_shape[0]}: a different "
            f"number of classes"
        )
    return (
        f"{key} is {src_shape} in the checkpoint but {dst_shape} in the model{head} "
        f"({', '.join(keys[:3])}). Fix: torchkeep.load_into(model, checkpoint, on_shape_mismatch='skip') loads "
        f"everything else, or `torchkeep adapt SRC --arch NAME --num-classes N -o OUT`."
    )


def _key_names(text: str) -> str | None:
    missing, unexpected = _keys(_MISSING_RX, text), _keys(_UNEXPECTED_RX, text)
    if not (missing or unexpected):
        return None
    story = _prefix_story(missing, unexpected)
    if story:
        return story
    if missing and unexpected:
        return (
            f"Key names differ: the model wants {', '.join(collapse_keys(missing)[:2])} but the checkpoint has "
            f"{', '.join(collapse_keys(unexpected)[:2])}. Fix: torchkeep.load_into(model, checkpoint, "
            f"renames={{'REGEX': 'REPL'}}) or `torchkeep adapt SRC --rename 'REGEX=>REPL'`; if only names differ "
            f"it matches by order and shape and reports it."
        )
    if missing:
        return (
            f"The checkpoint lacks {len(missing)} of the model's tensors ({', '.join(collapse_keys(missing)[:3])}):"
            f" the model has layers the checkpoint does not. Fix: torchkeep.load_into(model, checkpoint) loads"
            f" the rest and lists them (or load_state_dict(..., strict=False)); check the architecture."
        )
    return (
        f"The checkpoint has {len(unexpected)} tensors the model does not ({', '.join(collapse_keys(unexpected)[:3])}"
        f"). Fix: torchkeep.load_into(model, checkpoint) ignores and lists them (or strict=False); check the "
        f"architecture matches."
    )


def _unknown_model(text: str) -> str | None:
    m = re.search(r"Unknown model '?([\w.]+)'?", text)
    return _unknown_arch_hint(m.group(1)) if m else None


def _not_a_file_torch_reads(text: str) -> str | None:
    if "invalid load key" in text:
        return (
            "The file is not a PyTorch pickle (often a Git LFS pointer or an HTML page saved instead of the weights)."
            " Fix: `torchkeep inspect PATH` to see what it is, then re-download it (git lfs pull)."
        )
    if "failed finding central directory" in text or "PytorchStreamReader failed" in text:
        return (
            "The file is not a complete PyTorch zip archive (truncated download or another format). Fix: "
            "`torchkeep inspect PATH` to see what it is; re-save or re-download it."
        )
    return None


def _devices_differ(text: str) -> str | None:
    if not (("Input type" in text and "weight type" in text) or "Expected all tensors to be on the same device" in text):
        return None
    return (
        "The input and the model are on different devices (CPU vs GPU). Fix: move both the same way: "
        "model.to(device) and x.to(device) — torchkeep.load(path, device=...) returns the model on the device."
    )


def _input_size(text: str) -> str | None:
    m = _MATMUL_RX.search(text)
    if not m:
        return None
    return (
        f"A Linear layer expected {m.group(3)} input features but got {m.group(2)}: the input is not the size "
        f"(or channels) the model was built for. Fix: feed images through torchkeep's preprocessing "
        f"(the model file's spec records input_size), or rebuild with the right input_size."
    )


# Loading errors first (a file's problem explains the rest), forward-pass errors last.
_EXPLAINERS: tuple[Callable[[str], str | None], ...] = (
    _cuda_file,
    _class_not_found,
    _weights_only_refusal,
    _module_not_found,
    _size_mismatch,
    _key_names,
    _unknown_model,
    _not_a_file_torch_reads,
    _devices_differ,
    _input_size,
)


def _unknown_arch_hint(name: str) -> str:
    import difflib

    try:  # the registry is optional here (an export runs without it): imported only for this hint
        from torchkeep.models import list_models

        names = [getattr(m, "name", m) for m in list_models()]
    except Exception:  # the registry may be unavailable; torchvision's list still helps
        import torchvision

        names = list(torchvision.models.list_models())
    close = difflib.get_close_matches(name, [str(n) for n in names], n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"Unknown architecture {name!r}: {hint}Fix: `torchkeep models` lists every name --arch accepts."
