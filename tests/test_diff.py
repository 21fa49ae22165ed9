"""torchkeep diff: real files in tmp_path, real load_state_dict, assertions on the report and the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import torchkeep
from torchkeep.errors import InputError


def _cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.Linear(16, num_classes),
    )


def _save_pt(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _save_st(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_identical_across_formats_exit_0(tmp_path, cli):
    m = _cnn()
    a = _save_pt(m, tmp_path / "a.pt")
    b = _save_st(m, tmp_path / "b.safetensors")
    report = torchkeep.diff(a, b)
    assert report.identical and report.exit_code == 0
    assert report.verdict.startswith("identical")
    assert report.unchanged == report.common == len(m.state_dict())
    code, out, _ = cli("diff", a, b)
    assert code == 0 and "identical" in out


def test_finetuned_head_backbone_unchanged(tmp_path, cli):
    base = _cnn()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned[7].weight.add_(0.05)
        tuned[7].bias.sub_(0.5)
    a = _save_pt(base, tmp_path / "base.pt")
    b = _save_st(tuned, tmp_path / "tuned.safetensors")
    report = torchkeep.diff(a, b)
    assert not report.identical
    assert report.head == ["7"]
    assert "the backbone is unchanged, the head differs (7)" in report.verdict
    assert "2 of 13 tensors changed" in report.verdict
    w = next(d for d in report.changed if d.name == "7.weight")
    assert w.kind == "values"
    assert w.max_abs == pytest.approx(0.05, rel=1e-5)
    assert w.cosine is not None and 0 < w.cosine <= 1
    expected_rel = float(torch.full_like(base[7].weight, 0.05).norm() / base[7].weight.detach().norm())
    assert w.rel_l2 == pytest.approx(expected_rel, rel=1e-5)
    code, out, _ = cli("diff", a, b, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["identical"] is False and data["head"] == ["7"]
    assert {d["name"] for d in data["changed"]} == {"7.weight", "7.bias"}


def test_frozen_backbone_with_moving_batchnorm_stats(tmp_path):
    base = _cnn()
    tuned = copy.deepcopy(base)
    tuned.train()
    tuned(torch.randn(4, 3, 8, 8))  # train-mode forward moves BatchNorm running statistics
    with torch.no_grad():
        tuned[7].weight.mul_(1.5)
    report = torchkeep.diff(_save_pt(base, tmp_path / "a.pt"), _save_pt(tuned, tmp_path / "b.pt"))
    assert report.head == ["7.weight"]
    assert "the backbone is unchanged" in report.verdict
    assert "BatchNorm running statistics moved" in report.verdict


def test_head_replaced_for_new_classes(tmp_path, cli):
    base = _cnn(10)
    new = _cnn(3)
    new.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("7.")}, strict=False)
    report = torchkeep.diff(_save_pt(base, tmp_path / "a.pt"), _save_pt(new, tmp_path / "b.pt"))
    shapes = {d.name: (d.shape_a, d.shape_b) for d in report.changed if d.kind == "shape"}
    assert shapes == {"7.weight": ([10, 16], [3, 16]), "7.bias": ([10], [3])}
    assert "the head was replaced" in report.verdict
    code, out, _ = cli("diff", tmp_path / "a.pt", tmp_path / "b.pt")
    assert code == 1 and "shape [10, 16] → [3, 16]" in out


def test_change_in_the_middle_is_located(tmp_path):
    base = _cnn()
    other = copy.deepcopy(base)
    with torch.no_grad():
        other[3].weight.mul_(2)
    report = torchkeep.diff(base, other)
    assert report.head is None
    assert "in 3.weight" in report.verdict
    assert report.changed_modules == ["3.weight"]


def test_keys_only_on_one_side_and_wrapper_prefix(tmp_path):
    m = _cnn()
    sd = m.state_dict()
    extra = dict(sd)
    extra["9.weight"] = torch.zeros(2, 10)
    report = torchkeep.diff(sd, extra)
    assert report.only_in_b == ["9.weight"] and report.only_in_a == []
    assert "1 only in B" in report.verdict

    wrapped = {f"module.{k}": v for k, v in sd.items()}
    report = torchkeep.diff(
        _save_pt(m, tmp_path / "a.pt"), _save_st_dict(wrapped, tmp_path / "ddp.safetensors")
    )
    assert "wrapper prefix" in report.verdict and "'module.'" in report.verdict


def _save_st_dict(sd: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def test_dtype_change_and_tolerance(tmp_path):
    m = _cnn()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}
    report = torchkeep.diff(m.state_dict(), half)
    assert all(d.kind == "dtype" for d in report.changed)
    assert "another dtype (float32 → float16)" in report.verdict
    close = copy.deepcopy(m)
    with torch.no_grad():
        close[0].weight.add_(1e-7)
    assert not torchkeep.diff(m, close).identical
    assert torchkeep.diff(m, close, atol=1e-6).identical


def test_independent_initialisations(tmp_path):
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    b = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    report = torchkeep.diff(a, b)
    assert "every tensor differs" in report.verdict


def test_missing_and_bad_files_are_one_line_errors(tmp_path, cli):
    a = _save_pt(_cnn(), tmp_path / "a.pt")
    with pytest.raises(InputError, match=r"missing\.pt"):
        torchkeep.diff(a, tmp_path / "missing.pt")
    bad = tmp_path / "notes.pt"
    bad.write_text("just some text, not a model\n")
    code, _, err = cli("diff", a, bad)
    assert code == 3
    assert "notes.pt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_nan_and_inf_in_the_same_places_are_equal_and_complex_parts_both_count(tmp_path):
    """A file diffed with its copy is identical even with NaN / -inf (attention masks); an imaginary part counts."""
    sd = {"mask": torch.tensor([0.0, float("-inf"), float("inf")]), "w": torch.tensor([float("nan"), 1.0]),
          "z": torch.tensor([1 + 1j, 2 - 1j])}
    torch.save(sd, tmp_path / "a.pt")
    torch.save({k: v.clone() for k, v in sd.items()}, tmp_path / "b.pt")
    report = torchkeep.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    assert report.identical and report.changed == []
    changed = {**sd, "w": torch.tensor([1.0, 1.0]), "z": torch.tensor([1 + 2j, 2 - 1j])}
    torch.save(changed, tmp_path / "c.pt")
    report = torchkeep.diff(tmp_path / "a.pt", tmp_path / "c.pt")
    by_name = {d.name: d for d in report.changed}
    assert sorted(by_name) == ["w", "z"]
    assert by_name["w"].max_abs == float("inf") and by_name["z"].max_abs == 1.0
    torch.save({**sd, "z": torch.tensor([1.0, 2.0])}, tmp_path / "d.pt")  # complex vs real: a dtype change
    report = torchkeep.diff(tmp_path / "a.pt", tmp_path / "d.pt")
    assert [(d.name, d.kind, d.max_abs) for d in report.changed] == [("z", "dtype", 1.0)]
