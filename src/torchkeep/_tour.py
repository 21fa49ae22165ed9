"""Save one model in every format torchkeep reads, then inspect each file (a step of ``torchkeep demo``).

Shows a newcomer, on their own model, what each way of saving puts in the file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torchkeep._inspect import inspect
from torchkeep._modelfile import save

if TYPE_CHECKING:
    from torch import nn

    from torchkeep._inspect import Inspection

__all__ = ["TourEntry", "formats_tour"]


@dataclass
class TourEntry:
    """One saved file: how it was written and what ``inspect`` says of it."""

    file: str
    how: str
    inspection: Inspection | None
    error: str | None = None


def formats_tour(model: nn.Module, out_dir: str | os.PathLike[str], input_shape: tuple[int, ...] | None = None) -> list[TourEntry]:
    """Write ``model`` as a state_dict, checkpoint, full pickle, legacy file, TorchScript, ``.pt2``, ONNX,
    safetensors and ``.npz`` under ``out_dir``, inspect each, and return the entries.

    Args:
        model: any nn.Module (eval mode is used for tracing/exporting).
        out_dir: directory to write into (created).
        input_shape: example input shape for TorchScript/ONNX/export; default from the model's spec.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "torchkeep_spec", None)
    if input_shape is None:
        if spec is None:
            raise ValueError("input_shape is needed for a model without a torchkeep spec")
        h, w = spec.input_size if hasattr(spec, "input_size") else (32, 32)
        input_shape = (1, spec.in_channels, h, w)
    model = model.eval().cpu()
    example = torch.zeros(input_shape)
    sd = model.state_dict()

    def write_model_file(p: Path) -> None:
        if spec is not None:
            save(model, p)
        else:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(p))

    def write_onnx(p: Path) -> None:
        torch.onnx.export(model, (example,), str(p), dynamo=False, input_names=["image"], output_names=["logits"])

    writers = [
        ("state_dict.pt", "torch.save(model.state_dict(), path)  # recommended: weights only",
         lambda p: torch.save(sd, p)),
        ("checkpoint.pth", "torch.save({'epoch', 'model_state_dict', 'optimizer_state_dict'}, path)",
         lambda p: torch.save({"epoch": 1, "model_state_dict": sd,
                               "optimizer_state_dict": torch.optim.SGD(model.parameters(), lr=0.01).state_dict()}, p)),
        ("full_model.pth", "torch.save(model, path)  # pickles the class: discouraged",
         lambda p: torch.save(model, p)),
        ("legacy.pt", "torch.save(sd, path, _use_new_zipfile_serialization=False)",
         lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False)),
        ("scripted.pt", "torch.jit.trace(model, x).save(path)",
         lambda p: torch.jit.trace(model, example).save(str(p))),
        ("exported.pt2", "torch.export.save(torch.export.export(model, (x,)), path)",
         lambda p: torch.export.save(torch.export.export(model, (example,)), str(p))),
        ("model.onnx", "torch.onnx.export(model, (x,), path)", write_onnx),
        ("model.safetensors", "torchkeep.save(model, path)  # weights + spec, no pickle", write_model_file),
        ("weights.npz", "numpy.savez(path, **arrays)",
         lambda p: np.savez(p, **{k: v.numpy() for k, v in sd.items()})),
    ]
    entries: list[TourEntry] = []
    for name, how, write in writers:
        path = out / name
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                write(path)
            entries.append(TourEntry(str(path), how, inspect(path)))
        except Exception as exc:  # one exporter failing must not hide the others
            entries.append(TourEntry(str(path), how, None, f"{type(exc).__name__}: {exc}"))
    return entries
