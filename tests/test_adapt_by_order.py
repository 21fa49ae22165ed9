"""Issue 10, item 4: weights published under another naming scheme, whose names partly collide with the
model's (the same name, another shape), are paired by order across the whole module sequence.

The source is a real reimplementation of torchvision's mobilenet_v2 with other attribute names (``stem``,
blocks counted from 0, ``conv_head``, ``fc``): its state_dict lines up one for one by order and shape with
torchvision's, while 86 of its names exist in torchvision's model with other shapes (``features.1.conv.0.0``
is the second block's expand conv in the source, the first block's depthwise conv in torchvision).
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

import torchkeep
from torchkeep._adapt import load_into
from torchkeep.errors import CompatibilityError

torch.set_num_threads(1)


class RenamedMobileNetV2(nn.Module):
    """torchvision's mobilenet_v2, laid out the way another project names it."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.stem = source.features[0]
        self.features = nn.Sequential(*source.features[1:18])  # blocks counted from 0: names shift by one
        self.conv_head = source.features[18]
        self.fc = source.classifier[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_head(self.features(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def original() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():  # real running statistics, so that buffers are checked too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture(scope="module")
def renamed(original) -> nn.Module:
    return RenamedMobileNetV2(original).eval()


def _x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


def _backbone(renamed: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in renamed.state_dict().items() if not k.startswith("fc.")}


def test_the_names_collide_and_name_matching_alone_refuses(original, renamed):
    sd = _backbone(renamed)
    assert len(sd) == 312
    target = original.state_dict()
    collisions = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    assert len(collisions) == 86
    with pytest.raises(CompatibilityError, match=r"only .*% of MobileNetV2's parameters would load"):
        load_into(torchvision.models.mobilenet_v2(), sd, match_by_order=False)


def test_backbone_file_adapts_by_order_bit_exact(original, renamed, tmp_path):
    src = tmp_path / "mobilenet_v2_backbone.pth"
    torch.save(_backbone(renamed), src)  # a pickled state_dict keeps the order it was written in
    out = tmp_path / "m.safetensors"
    result = torchkeep.adapt(src, arch="mobilenet_v2", num_classes=10, out=out)
    r = result.report
    assert r.order_pairing == "whole sequence" and r.matched_by_order == 312
    assert r.missing == ["classifier.1.weight", "classifier.1.bias"] and not r.unexpected
    assert r.verdict.startswith("PARTIAL: 312/314 tensors") and "312 matched by order" in r.verdict
    assert any("by their order in the file" in n and "86 names exist on both sides with other shapes" in n
               for n in r.notes)
    assert any(n.startswith("classifier.1.{weight,bias} keep their fresh initialisation") for n in r.notes)
    # every tensor of the backbone, parameters and buffers, bit-exact
    model = torchkeep.load(out, device="cpu")
    got = model.state_dict()
    want = original.state_dict()
    for key in list(want)[:312]:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    assert model.torchkeep_spec.num_classes == 10


def test_whole_file_with_its_head_gives_the_same_model(original, renamed, tmp_path):
    src = tmp_path / "mobilenet_v2_full.pth"
    torch.save(renamed.state_dict(), src)
    out = tmp_path / "m.safetensors"
    result = torchkeep.adapt(src, arch="mobilenet_v2", out=out)  # 1000 classes: the source's head fits
    assert result.report.complete and result.report.matched_by_order == 314
    assert result.report.renamed["fc.weight"] == "classifier.1.weight"
    model = torchkeep.load(out, device="cpu")
    with torch.no_grad():
        assert torch.equal(model(_x()), original(_x()))
    # another number of classes: the head pairs by order too and becomes a shape mismatch
    r = torchkeep.adapt(src, arch="mobilenet_v2", num_classes=10, dry_run=True).report
    assert [(m.key, m.source_key) for m in r.shape_mismatched] == [
        ("classifier.1.weight", "fc.weight"), ("classifier.1.bias", "fc.bias")]


def test_torchscript_keeps_the_order_too(original, renamed, tmp_path):
    src = tmp_path / "renamed_scripted.pt"
    torch.jit.script(renamed).save(str(src))
    model = torchvision.models.mobilenet_v2().eval()
    report = load_into(model, src)
    assert report.complete and report.order_pairing == "whole sequence"
    with torch.no_grad():
        assert torch.equal(model(_x()), original(_x()))


def test_safetensors_keeps_no_order_and_says_so(renamed, tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "renamed.safetensors"
    save_file({k: v.contiguous() for k, v in renamed.state_dict().items()}, src)
    with pytest.raises(CompatibilityError) as info:
        torchkeep.adapt(src, arch="mobilenet_v2", dry_run=True)
    assert "a safetensors file keeps no order" in info.value.fix
    assert any("keeps no order" in n for n in info.value.report.notes)


def test_refusal_names_the_architecture_that_fits(renamed, tmp_path, cli):
    src = tmp_path / "mobilenet_v2_backbone.pth"
    torch.save(_backbone(renamed), src)
    with pytest.raises(CompatibilityError, match="only 0% of ResNet") as info:
        torchkeep.adapt(src, arch="resnet18", dry_run=True)
    assert "pass --arch mobilenet_v2" in info.value.fix and "paired by order" in info.value.fix
    assert "allow-partial" not in info.value.fix and "allow_partial" not in info.value.fix  # 0%: no partial
    code, stdout, _ = cli("adapt", src, "--arch", "mobilenet_v2", "--num-classes", "10", "--dry-run", "--json")
    assert code == 0
    d = json.loads(stdout)
    assert d["report"]["order_pairing"] == "whole sequence" and d["report"]["matched_by_order"] == 312


def test_a_full_mismatch_never_suggests_allow_partial(tmp_path, cli):
    src = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(3, 3), "b": torch.zeros(3)}, src)
    code, _, err = cli("adapt", src, "--arch", "resnet18", "-o", tmp_path / "m.safetensors")
    assert code == 4 and "only 0%" in err and "nothing in the source fits" in err
    assert "allow-partial" not in err
