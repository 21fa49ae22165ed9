"""Builders of tiny real model files for the tests (each writes into a directory and returns the path)."""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv + BatchNorm + Linear, with a non-persistent buffer (must not appear in a state_dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class SetstateSaves(nn.Module):
    """A malicious TorchScript module: __setstate__ writes a file with torch.save (aten::save), which runs inside
    torch.jit.load (tests pass a marker path in tmp_path)."""

    def __init__(self, marker: str):
        super().__init__()
        self.p = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.p, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.p = state[0]
        self.training = state[1]
        torch.save(torch.zeros(1), self.p)


def tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    m = TinyNet()
    m.bn.running_mean.uniform_()  # non-trivial buffers so that comparisons mean something
    m.bn.num_batches_tracked.fill_(7)
    return m


def state_dict_pt(d: Path, name: str = "sd.pt", prefix: str = "") -> Path:
    sd = {prefix + k: v for k, v in tiny_model().state_dict().items()}
    torch.save(sd, d / name)
    return d / name


def checkpoint_pt(d: Path, name: str = "ckpt.pth") -> Path:
    m = tiny_model()
    trained = tiny_model()  # gives the optimizer real momentum buffers; the saved weights stay tiny_model()'s
    opt = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    trained(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    torch.save(
        {
            "epoch": 5,
            "model_state_dict": m.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "best_acc": np.float64(0.875),
            "args": argparse.Namespace(lr=0.1, arch="tiny"),
        },
        d / name,
    )
    return d / name


def full_model_pt(d: Path, name: str = "full.pt") -> Path:
    torch.save(tiny_model(), d / name)
    return d / name


def legacy_pt(d: Path, name: str = "legacy.pt") -> Path:
    torch.save(tiny_model().state_dict(), d / name, _use_new_zipfile_serialization=False)
    return d / name


def torchscript_pt(d: Path, name: str = "scripted.pt") -> Path:
    torch.jit.script(tiny_model().eval()).save(str(d / name))
    return d / name


def safetensors_file(d: Path, name: str = "w.safetensors", metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file(tiny_model().state_dict(), str(d / name), metadata=metadata)
    return d / name


def onnx_file(d: Path, name: str = "m.onnx") -> Path:
    torch.onnx.export(tiny_model().eval(), (torch.randn(1, 3, 8, 8),), str(d / name), dynamo=False,
                      input_names=["image"], output_names=["logits"])
    return d / name


def npz_file(d: Path, name: str = "w.npz") -> Path:
    np.savez(d / name, **{k: v.numpy() for k, v in tiny_model().state_dict().items()})
    return d / name


def pt2_file(d: Path, name: str = "m.pt2") -> Path:
    ep = torch.export.export(tiny_model().eval(), (torch.randn(1, 3, 8, 8),))
    torch.export.save(ep, str(d / name))
    return d / name


def rewrite_zip_member(src: Path, dst: Path, member_suffix: str, edit) -> Path:
    """Copy a zip archive, passing the bytes of the member ending in ``member_suffix`` through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(member_suffix):
                data = edit(data)
            zout.writestr(info.filename, data)
    return dst


def cuda_saved_pt(d: Path, name: str = "gpu.pt") -> Path:
    """A state_dict whose storages say they were saved on cuda:0 (as torch.save on a GPU writes them)."""
    src = state_dict_pt(d, "cpu_src.pt")

    def to_cuda(data: bytes) -> bytes:
        return data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")

    return rewrite_zip_member(src, d / name, "data.pkl", to_cuda)


def buffer_of(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
