"""Runners: a model, opened on a backend, as a callable from a float32 batch ``(N, C, H, W)`` to float32
logits ``(N, classes)`` on the CPU (``EagerRunner``, ``TorchScriptRunner``, ``OnnxRunner``).

``predict`` and the server run them; ``export``'s parity check runs an export with them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from torchkeep._device import resolve_device as _resolve_device
from torchkeep._dtypes import torch_dtype as _torch_dtype

if TYPE_CHECKING:  # torch is imported lazily: importing torchkeep stays cheap
    import torch
    from torch import nn

__all__ = ["EagerRunner", "OnnxRunner", "Runner", "TorchScriptRunner", "resolve_device"]


def resolve_device(device: str | None) -> str:
    """The device name runners use; see :func:`torchkeep._device.resolve_device`."""
    return str(_resolve_device(device))


class Runner:
    """Maps a float32 batch ``(N, C, H, W)`` to float32 logits ``(N, classes)`` on the CPU.

    Attributes:
        backend: "eager", "torchscript" or "onnxruntime".
        dtype: "float32" or "float16" (inputs are cast to it).
        device: where the model runs.
        fixed_batch: the only batch size the model accepts (static ONNX exports), else None.
    """

    backend = "eager"

    def __init__(self, *, dtype: str = "float32", device: str = "cpu", fixed_batch: int | None = None):
        self.dtype = dtype
        self.device = device
        self.fixed_batch = fixed_batch

    def _run(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            # a static-batch export: feed it chunks of its batch size, padding the last one
            parts = []
            for i in range(0, x.shape[0], self.fixed_batch):
                chunk = x[i : i + self.fixed_batch]
                n = chunk.shape[0]
                if n < self.fixed_batch:
                    pad = chunk[:1].expand(self.fixed_batch - n, *chunk.shape[1:])
                    chunk = torch.cat([chunk, pad])
                parts.append(self._run(chunk)[:n])
            return torch.cat(parts)
        return self._run(x)


class EagerRunner(Runner):
    """An ``nn.Module`` in eval mode under ``torch.inference_mode``."""

    backend = "eager"

    def __init__(
        self,
        module: nn.Module,
        *,
        dtype: str | None = None,
        device: str | None = None,
        channels_last: bool = False,
    ):
        import torch

        first = next((t for t in module.parameters() if t.is_floating_point()), None)
        current = str(first.dtype).removeprefix("torch.") if first is not None else "float32"
        dtype = dtype or current
        device = device or (str(first.device) if first is not None else "cpu")
        super().__init__(dtype=dtype, device=device)
        # cast only when asked: a user's module keeps its dtype, and to(dtype) would convert it in place
        module = module.eval().to(device)
        if dtype != current:
            module = module.to(_torch_dtype(dtype))
        self.module = module
        self.channels_last = channels_last
        self._torch_dtype = _torch_dtype(dtype)
        self._torch_device = torch.device(device)
        if self._torch_device.type == "cuda" and self._torch_device.index is None:
            self._torch_device = torch.device("cuda", torch.cuda.current_device())
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        # per-call costs matter at batch 1 on small models: skip no-op conversions and nested modes
        if x.dtype != self._torch_dtype or x.device != self._torch_device:
            x = x.to(self._torch_device, self._torch_dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if torch.is_inference_mode_enabled():
            out = self.module(x)
        else:
            with torch.inference_mode():
                out = self.module(x)
        if out.dtype != torch.float32:
            out = out.float()
        return out if out.device.type == "cpu" else out.cpu()


class TorchScriptRunner(EagerRunner):
    """A TorchScript module (traced here, or loaded from a file)."""

    backend = "torchscript"


class OnnxRunner(Runner):
    """An onnxruntime ``InferenceSession``."""

    backend = "onnxruntime"

    def __init__(self, model: str | os.PathLike[str] | bytes, *, device: str = "cpu"):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT warns about unused initializers on every load
        # idle threads sleep instead of spinning: spinning ones take the cores a server decodes images with
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # as many threads as torch uses, so backends compare fairly and respect torch.set_num_threads
        opts.intra_op_num_threads = _torch_threads()
        src = model if isinstance(model, bytes) else os.fspath(model)
        self.session = ort.InferenceSession(src, sess_options=opts, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dtype = "float16" if inp.type == "tensor(float16)" else "float32"
        batch = inp.shape[0] if inp.shape else None
        super().__init__(dtype=dtype, device=device, fixed_batch=batch if isinstance(batch, int) else None)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np
        import torch

        arr = (
            x.detach().cpu().numpy().astype(np.float16 if self.dtype == "float16" else np.float32, copy=False)
        )
        out = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _torch_threads() -> int:
    import torch

    return max(1, torch.get_num_threads())
