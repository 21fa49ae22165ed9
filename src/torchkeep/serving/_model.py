"""One served model: opened once (scanned by the gate, loaded), warmed up on a backend, described as JSON.

Opening is quick and happens when the app is created, so a refused file (dangerous, custom code without
``trust``) stops the server before it binds a port. Warming up (tracing, ONNX export, the backend race of
``backend="auto"``) runs in the background while ``/readyz`` says 503.

Images go through ``torchkeep._preprocess.load_image`` with the model's own transform and logits through the
same softmax as ``torchkeep.predict``: the numbers are predict's.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkeep._convert import file_sha256
from torchkeep._detect import detect
from torchkeep._parity import parity, sample_inputs
from torchkeep._predict import ClassScore
from torchkeep._preprocess import load_image, transform_for
from torchkeep._runners import EagerRunner, Runner
from torchkeep._runtime import BACKENDS, prepare
from torchkeep.errors import UsageError

if TYPE_CHECKING:
    import torch

    from torchkeep._spec import ModelSpec

__all__ = ["BackendTrial", "ServedModel", "parse_model_args"]

#: Backends ``--backend`` accepts: ``auto`` races the others at warm-up.
SERVE_BACKENDS = ("auto", *BACKENDS)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class BackendTrial:
    """One backend measured at warm-up (``backend="auto"``).

    Attributes:
        backend: "eager", "torchscript" or "onnxruntime".
        ms_batch1: median milliseconds of a forward pass of one image.
        ms_batch: median milliseconds of a forward pass of ``batch`` images.
        batch: the batch size of ``ms_batch``.
        parity: the parity check against eager ("max |Δlogit| ...").
        passed: whether the parity check passed (only those may be chosen).
        error: why the backend could not be built (then nothing was measured).
    """

    backend: str
    ms_batch1: float | None = None
    ms_batch: float | None = None
    batch: int = 0
    parity: str = ""
    passed: bool = False
    error: str | None = None

    @property
    def score(self) -> float:
        """Lower is better: a lone request plus a full batch (latency and throughput alike)."""
        return (self.ms_batch1 or 0.0) + (self.ms_batch or 0.0)


def parse_model_args(args: list[str]) -> list[tuple[str, Path]]:
    """``["model.safetensors", "digits=other.onnx"]`` -> ``[("model", path), ("digits", path)]``.

    A model's name is its file stem unless ``NAME=`` is given; names are URL-safe and unique.

    Raises:
        UsageError: a bad or duplicate name, or no model.
    """
    out: list[tuple[str, Path]] = []
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep or Path(arg).exists():
            name, path = Path(arg).stem, arg
        if not _NAME.match(name):
            raise UsageError(
                f"bad model name {name!r}",
                fix="name it NAME=MODEL with letters, digits, '.', '_' or '-' (at most 64 characters)",
            )
        if any(n == name for n, _ in out):
            raise UsageError(f"two models are named {name!r}", fix=f"give one a name: other_{name}={path}")
        out.append((name, Path(path)))
    if not out:
        raise UsageError("no model to serve", fix="torchkeep serve MODEL [NAME=MODEL ...]")
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class ServedModel:
    """A model file opened for serving (see the module docstring).

    Attributes:
        name: the name in URLs (``/v1/models/{name}``).
        path: the model file.
        spec: its spec (classes, input size, preprocessing).
        requested: the backend asked for ("auto", "eager", ...).
        backend: the backend serving it (the file's own until warm-up picked one).
        sha256: the file's sha256.
        state: "loading", "ready" or "failed".
        error: why warm-up failed.
        trials: the backends measured by ``auto``.
    """

    name: str
    path: Path
    spec: ModelSpec
    runner: Runner
    requested: str
    backend: str
    sha256: str
    file_format: str
    state: str = "loading"
    error: str | None = None
    trials: list[BackendTrial] = field(default_factory=list)
    warmup_seconds: float | None = None
    _transform: Any = None

    @classmethod
    def open(
        cls, name: str, path: str | os.PathLike[str], *, backend: str = "auto", device: str = "cpu",
        trust: bool = False,
    ) -> ServedModel:
        """Scan and load ``path`` (through ``torchkeep._runtime.prepare``, which calls the gate first).

        Raises:
            UnsafeFileError: the scan found code execution.
            UntrustedCodeError: custom code without ``trust``.
            InputError: not a model file or an export carrying a spec.
            UsageError: a backend the file cannot run on.
        """
        if backend not in SERVE_BACKENDS:
            raise UsageError(f"unknown backend {backend!r}", fix=f"use one of: {', '.join(SERVE_BACKENDS)}")
        p = Path(os.fspath(path))
        fmt = detect(p).format
        is_export = fmt in ("torchscript", "onnx")
        # exports run on their own backend (prepare refuses another); model files open eager, warm-up converts
        if is_export:
            first = None if backend == "auto" else backend
        else:
            first = "eager"
        runner, spec, used = prepare(p, backend=first, device=device, trust=trust)
        return cls(
            name=name, path=p, spec=spec, runner=runner, requested=backend, backend=used,
            sha256=file_sha256(p), file_format=fmt, _transform=transform_for(spec, train=False),
        )

    # ------------------------------------------------------------------------------------ warm-up
    def warm_up(self, max_batch: int = 32) -> None:
        """Convert to the requested backend (or race them), run a few batches; sets ``state``."""
        t0 = time.perf_counter()
        try:
            self._warm_up(max_batch)
            self.state = "ready"
        except Exception as exc:  # reported by /readyz and the model's description, never raised into a request
            self.error = _first_line(exc)
            self.state = "failed"
        self.warmup_seconds = round(time.perf_counter() - t0, 3)

    def _warm_up(self, max_batch: int) -> None:
        import torch

        module = self.runner.module if isinstance(self.runner, EagerRunner) else None
        convertible = self.file_format not in ("torchscript", "onnx") and module is not None
        race = self.requested == "auto" and convertible
        batch = max(1, min(max_batch, 8))
        if race:  # the parity check runs on real photos, as torchkeep export's
            x = sample_inputs(self.spec)[0][:batch]
            batch = x.shape[0]
        else:  # warming up needs only the right shape
            x = torch.rand(batch, *self.input_shape)
        if race:
            with torch.inference_mode():
                reference = self.runner(x)
            candidates: dict[str, Runner] = {"eager": self.runner}
            for backend in BACKENDS:
                trial = BackendTrial(backend, batch=batch)
                self.trials.append(trial)
                try:
                    runner = candidates.get(backend) or prepare(
                        module, backend=backend, device=self.runner.device, spec=self.spec
                    )[0]
                    check = parity(reference, runner, x, inputs="warm-up photos", batch_sizes=[1, batch])
                    trial.parity, trial.passed = check.summary, check.passed
                    trial.ms_batch1 = _median_ms(runner, x[:1])
                    trial.ms_batch = _median_ms(runner, x)
                    candidates[backend] = runner
                except Exception as exc:  # a backend that cannot take this model is skipped, with why
                    trial.error = _first_line(exc)
            best = min((t for t in self.trials if t.passed and t.error is None), key=lambda t: t.score)
            self.runner, self.backend = candidates[best.backend], best.backend
        elif self.requested not in ("auto", self.backend) and module is not None:
            self.runner, _, self.backend = prepare(
                module, backend=self.requested, device=self.runner.device, spec=self.spec
            )
        for n in (1, batch):  # first calls allocate and pick kernels: not the first user's cost
            _median_ms(self.runner, x[:n], budget=0.1, runs=3)

    # -------------------------------------------------------------------------------------- use
    def preprocess(self, data: bytes) -> torch.Tensor:
        """An uploaded image file -> the model's input ``(C, H, W)`` (``InputError`` if unreadable)."""
        return load_image(data, self.spec, self._transform)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ``(N, C, H, W)`` -> softmax probabilities ``(N, classes)``, as ``torchkeep.predict``."""
        import torch

        with torch.inference_mode():
            return torch.softmax(self.runner(x), dim=1)  # runners return float32 logits

    def class_names(self) -> list[str]:
        names = list(self.spec.class_names or [])
        n = self.spec.num_classes or len(names)
        return [names[i] if i < len(names) else f"class {i}" for i in range(n)]

    def rank(self, probs: torch.Tensor, topk: int) -> list[ClassScore]:
        """One row of probabilities -> its top-k classes, best first."""
        k = max(1, min(topk, probs.shape[0]))
        values, indices = probs.topk(k)
        names = self.class_names()
        return [
            ClassScore(c, names[c] if c < len(names) else f"class {c}", v)
            for v, c in zip(values.tolist(), indices.tolist())
        ]

    @property
    def input_shape(self) -> list[int]:
        return [self.spec.in_channels, *self.spec.input_size]

    def describe(self) -> dict[str, Any]:
        """``GET /v1/models/{name}``."""
        pre = self.spec.preprocessing
        return {
            "name": self.name,
            "architecture": self.spec.arch,
            "classes": self.class_names(),
            "num_classes": len(self.class_names()),
            "input_size": list(self.spec.input_size),
            "in_channels": self.spec.in_channels,
            "preprocessing": asdict(pre),
            "backend": self.backend,
            "backend_requested": self.requested,
            "backend_trials": [asdict(t) for t in self.trials],
            "file": self.path.name,
            "format": self.file_format,
            "sha256": self.sha256,
            "state": self.state,
            "error": self.error,
            "warmup_seconds": self.warmup_seconds,
        }


_lock = threading.Lock()  # one measurement at a time: parallel warm-ups would time each other


def _median_ms(runner: Runner, x: torch.Tensor, *, budget: float = 0.4, runs: int = 25) -> float:
    import torch

    times: list[float] = []
    with _lock, torch.inference_mode():
        runner(x)
        runner(x)
        start = time.perf_counter()
        # a median of several: on a shared machine single calls jump 100x when a thread is descheduled
        while len(times) < runs and (len(times) < min(runs, 7) or time.perf_counter() - start < budget):
            t = time.perf_counter()
            runner(x)
            times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 3)
