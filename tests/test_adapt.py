"""load_into / adapt / explain_error on real torchvision architectures (random init: same keys and shapes
as the published weights) and real files written with torch.save in tmp_path."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torchvision
from torch import nn

import torchkeep
from torchkeep._adapt import collapse_keys, explain_error, load_into, parse_rename
from torchkeep.errors import CompatibilityError, UsageError

torch.set_num_threads(1)


def _model(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, **kw).eval()


def _out(model: nn.Module, size: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return _model("resnet18")


def _fresh(name: str = "resnet18", **kw) -> nn.Module:
    torch.manual_seed(123)  # different init from the source, so an identical output proves the copy
    return torchvision.models.get_model(name, **kw).eval()


# ------------------------------------------------------------------------ wrappers: DDP, compile, Lightning


def test_ddp_file_loads_fully_with_identical_outputs(resnet, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in resnet.state_dict().items()}, path)
    target = _fresh()
    report = load_into(target, path)
    assert report.prefix_stripped == "module."
    assert report.complete and report.fraction == 1.0 and report.applied
    assert report.params_loaded == report.params_expected == sum(p.numel() for p in resnet.parameters())
    assert report.verdict.startswith("OK: all weights loaded") and "'module.'" in report.verdict
    assert torch.equal(_out(target), _out(resnet))


def test_torch_compile_state_dict_into_plain_and_back(tmp_path):
    src = _model("mobilenet_v3_small")
    compiled = torch.compile(src)  # compiling happens lazily on first call: no compile cost here
    keys = list(compiled.state_dict())
    assert keys[0].startswith("_orig_mod.")
    path = tmp_path / "compiled.pt"
    torch.save(compiled.state_dict(), path)
    target = _fresh("mobilenet_v3_small")
    report = load_into(target, path)
    assert report.prefix_stripped == "_orig_mod." and report.complete
    assert torch.equal(_out(target), _out(src))
    # plain weights into a compiled (wrapped) model: the prefix is added
    wrapped = torch.compile(_fresh("mobilenet_v3_small"))
    report = load_into(wrapped, src.state_dict())
    assert report.prefix_added == "_orig_mod." and report.complete


def test_lightning_checkpoint_model_prefix_inside_state_dict(tmp_path):
    src = _model("mobilenet_v3_small")
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.2.0",
        "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        "hyper_parameters": {"lr": 0.1},
    }
    path = tmp_path / "epoch=3.ckpt"
    torch.save(ckpt, path)
    target = _fresh("mobilenet_v3_small")
    report = load_into(target, path)
    assert report.unwrapped == "state_dict" and report.prefix_stripped == "model."
    assert report.complete and report.fraction == 1.0
    assert torch.equal(_out(target), _out(src))
    # the same checkpoint passed as a dict (not a file) is unwrapped by load_into itself
    report = load_into(_fresh("mobilenet_v3_small"), ckpt)
    assert report.unwrapped == "state_dict" and report.complete


def test_combined_prefix_and_nested_checkpoint(resnet):
    sd = {f"module._orig_mod.{k}": v for k, v in resnet.state_dict().items()}
    target = _fresh()
    report = load_into(target, {"model": {"model_state_dict": sd}, "epoch": 1, "ema": {"x": torch.ones(1)}})
    assert report.unwrapped == "model.model_state_dict"
    assert report.prefix_stripped == "module._orig_mod." and report.complete
    assert any("EMA" in n for n in report.notes)
    assert torch.equal(_out(target), _out(resnet))


def test_nn_module_source_and_strip_none(resnet):
    report = load_into(_fresh(), resnet)
    assert report.source == "<ResNet module>" and report.complete
    sd = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    with pytest.raises(CompatibilityError, match=r"only 0% of ResNet's parameters would load"):
        load_into(_fresh(), sd, strip_prefix="none", match_by_order=False)


def test_explicit_strip_prefix(resnet):
    sd = {f"backbone.{k}": v for k, v in resnet.state_dict().items()}
    report = load_into(_fresh(), sd, strip_prefix="backbone")
    assert report.prefix_stripped == "backbone." and report.complete


# -------------------------------------------------------------------------------------- new heads, shapes


def test_1000_class_source_into_10_class_target_skips_exactly_the_head(resnet, tmp_path):
    path = tmp_path / "imagenet.pth"
    torch.save(resnet.state_dict(), path)
    target = _fresh(num_classes=10)
    report = load_into(target, path)
    assert [(m.key, m.source_shape, m.target_shape) for m in report.shape_mismatched] == [
        ("fc.weight", [1000, 512], [10, 512]),
        ("fc.bias", [1000], [10]),
    ]
    assert not report.missing and not report.unexpected
    assert report.params_expected - report.params_loaded == 10 * 512 + 10
    assert report.verdict.startswith("PARTIAL") and "fc.{weight,bias}" in report.verdict
    assert "100%" not in report.verdict  # 99.9...% is never rounded up to a lie
    for k, v in target.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, resnet.state_dict()[k]), k
    with pytest.raises(CompatibilityError, match=r"fc\.weight: source \[1000, 512\] vs model \[10, 512\]"):
        load_into(_fresh(num_classes=10), path, on_shape_mismatch="error")


def test_vgg_head_skipped():
    from torchkeep.models._signatures import no_init

    # keys and shapes are what matters here; skipping VGG's 133M-value random init saves seconds
    with no_init():
        src = torchvision.models.vgg11()
        target = torchvision.models.vgg11(num_classes=10)
    report = load_into(target, src.state_dict())
    assert report.collapsed("shape_mismatched") == ["classifier.6.{weight,bias}"]
    assert report.fraction > 0.99 and report.structural_mismatches == []
    # uninitialised memory may hold NaNs: compare the bits
    assert torch.equal(target.features[0].weight.view(torch.int32), src.features[0].weight.view(torch.int32))


def test_strict_and_dtype_conversion(resnet):
    half = {k: v.half() if v.is_floating_point() else v for k, v in resnet.state_dict().items()}
    report = load_into(_fresh(), half)
    (change,) = report.dtype_converted
    assert (change.source_dtype, change.target_dtype) == ("float16", "float32")
    assert change.count == sum(1 for v in half.values() if v.is_floating_point())
    with pytest.raises(CompatibilityError, match=r"strict load failed: 2 shape-mismatched \(fc\.weight"):
        load_into(_fresh(num_classes=10), resnet, strict=True)


# ----------------------------------------------------------------------------------- renames and by-order


def test_rename_with_captured_groups(resnet):
    sd = {k.replace("layer", "stage").replace("fc.", "head."): v for k, v in resnet.state_dict().items()}
    target = _fresh()
    report = load_into(target, sd, renames=[r"^stage(\d)\.=>layer\1.", "^head\\.=>fc."], match_by_order=False)
    assert report.complete and report.matched_by_order == 0
    assert report.renamed["stage1.0.conv1.weight"] == "layer1.0.conv1.weight"
    assert report.renamed["head.bias"] == "fc.bias"
    assert torch.equal(_out(target), _out(resnet))
    # $1 works as well as \1; a rule that hits nothing is reported
    report = load_into(_fresh(), sd, renames={r"^stage(\d)\.": "layer$1.", r"^head\.": "fc.", "nothing": "x"})
    assert report.complete and any("'nothing=>x' matched no key" in n for n in report.notes)


def test_the_old_keyword_rename_warns_and_still_works(resnet):
    sd = {k.replace("fc.", "head."): v for k, v in resnet.state_dict().items()}
    target = _fresh()
    with pytest.warns(DeprecationWarning, match=r"load_into\(rename=\.\.\.\) is deprecated.*load_into\(renames="):
        report = load_into(target, sd, rename=["^head\\.=>fc."], match_by_order=False)
    assert report.complete and report.renamed["head.bias"] == "fc.bias"
    assert torch.equal(_out(target), _out(resnet))
    with pytest.raises(UsageError, match=r"load_into\(\) got both renames= and its old name rename="):
        load_into(_fresh(), sd, renames=["^head\\.=>fc."], rename=["^head\\.=>fc."])


def test_rename_collision_is_an_error(resnet):
    with pytest.raises(CompatibilityError, match=r"maps both 'layer1\.0\.conv1\.weight' and 'layer2\.0\.conv1"):
        load_into(_fresh(), resnet.state_dict(), renames=[r"layer\d=>layer"])


def test_parse_rename_errors():
    assert parse_rename(r"a(\d)=>b$1") == (r"a(\d)", r"b\g<1>")
    with pytest.raises(UsageError, match="has no '=>'"):
        parse_rename("fc.=fc2.")
    with pytest.raises(UsageError, match="not a valid regular expression"):
        load_into(_fresh(), {"x": torch.ones(1)}, renames=["(=>x"])
    # a replacement with a missing group or a bad escape fails before any key is renamed
    for rule in [r"^layer(\d)=>block$3", r"^layer(?P<n>\d)=>block\g<m>", r"^layer=>\q"]:
        with pytest.raises(UsageError, match=r"rename replacement .* is invalid for the pattern '\^layer"):
            load_into(_fresh(), {"layer1.x": torch.ones(1)}, renames=[rule])


def test_match_by_order_when_names_differ_but_architecture_agrees(resnet):
    sd = {f"p{i}": v for i, v in enumerate(resnet.state_dict().values())}
    target = _fresh()
    report = load_into(target, sd)
    assert report.matched_by_order == len(sd) and report.complete
    assert "matched by order" in report.verdict
    assert any("by order and shape" in n for n in report.notes)
    assert report.renamed["p0"] == "conv1.weight"
    assert torch.equal(_out(target), _out(resnet))
    # a re-headed copy: pairs by order, the head becomes a shape mismatch
    report = load_into(_fresh(num_classes=10), sd)
    assert [m.source_key for m in report.shape_mismatched] == ["p120", "p121"]
    assert report.matched_by_order == len(sd)
    with pytest.raises(CompatibilityError, match="cannot match by order"):
        load_into(_fresh(), dict(list(sd.items())[1:]), match_by_order=True)


def test_partial_below_threshold_is_refused_and_model_untouched(resnet):
    target = _fresh("mobilenet_v3_small")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CompatibilityError, match=r"only \d+% of MobileNetV3's parameters would load \(threshold 50%\)"):
        load_into(target, resnet)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    report = load_into(target, resnet, allow_partial=True)
    assert report.applied and report.verdict.startswith("PARTIAL") and report.fraction < 0.5


def test_dry_run_leaves_model_unchanged(resnet):
    target = _fresh()
    before = _out(target)
    report = load_into(target, resnet, dry_run=True)
    assert report.complete and not report.applied
    assert torch.equal(_out(target), before)


def test_report_to_dict_is_json(resnet):
    report = load_into(_fresh(num_classes=10), resnet)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["shape_mismatched"][0] == {
        "key": "fc.weight", "source_key": "fc.weight", "source_shape": [1000, 512], "target_shape": [10, 512]
    }
    assert d["collapsed"]["shape_mismatched"] == ["fc.{weight,bias}"]
    assert d["params_expected"] > d["params_loaded"] > 0 and d["complete"] is False
    assert d["verdict"] == report.verdict


def test_collapse_keys_is_truthful(resnet):
    keys = [k for k in resnet.state_dict() if k.endswith("conv1.weight") and k.startswith("layer")]
    assert collapse_keys(keys) == ["layer{1..4}.{0,1}.conv1.weight"]
    assert collapse_keys(["fc.weight", "fc.bias"]) == ["fc.{weight,bias}"]
    # not a full product: layer1 has 2 blocks, layer2 has 3 -> never claim layer2.{0,1} only or layer1.2
    out = collapse_keys(["layer1.0.w", "layer1.1.w", "layer2.0.w", "layer2.1.w", "layer2.2.w"])
    assert out == ["layer1.{0,1}.w", "layer2.{0..2}.w"]


def test_no_weights_in_source():
    with pytest.raises(CompatibilityError, match="no tensors found in the source"):
        load_into(_fresh(), {"epoch": 3, "lr": 0.1})
    with pytest.raises(UsageError, match="cannot load weights from a int"):
        load_into(_fresh(), 3)


# ---------------------------------------------------------------------------------- errors that teach


class Net(nn.Module):
    def __init__(self, n: int = 10):
        super().__init__()
        self.fc = nn.Linear(4, n)


def _raised(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def test_explain_size_mismatch():
    exc = _raised(lambda: Net(5).load_state_dict(Net(10).state_dict()))
    text = explain_error(exc)
    assert text and "fc.weight is [10, 4] in the checkpoint but [5, 4] in the model" in text
    assert "number of classes" in text and "on_shape_mismatch='skip'" in text and "--num-classes" in text


@pytest.mark.parametrize(
    ("prefix", "who"),
    [("module.", "DataParallel"), ("_orig_mod.", "torch.compile"), ("model.", "Lightning")],
)
def test_explain_prefixed_keys(prefix, who):
    exc = _raised(lambda: Net().load_state_dict({prefix + k: v for k, v in Net().state_dict().items()}))
    assert "Missing key(s) in state_dict" in str(exc)
    text = explain_error(exc)
    assert text and repr(prefix) in text and who in text and "strip_prefix='auto'" in text


def test_explain_missing_unexpected_and_renames():
    exc = _raised(lambda: Net().load_state_dict({"head.weight": torch.ones(10, 4), "head.bias": torch.ones(10)}))
    text = explain_error(exc)
    assert text and "fc.{weight,bias}" in text and "head.{weight,bias}" in text and "--rename" in text
    exc = _raised(lambda: Net().load_state_dict({"fc.weight": torch.ones(10, 4)}))
    assert "lacks 1 of the model's tensors (fc.bias)" in (explain_error(exc) or "")
    sd = {**Net().state_dict(), "extra.weight": torch.ones(1)}
    exc = _raised(lambda: Net().load_state_dict(sd))
    assert "1 tensors the model does not (extra.weight)" in (explain_error(exc) or "")


def test_explain_cuda_file_and_load_into_reads_it_on_cpu(tmp_path, monkeypatch):
    # A file exactly as a GPU machine writes it: every storage tagged "cuda:0".
    import torch.serialization as ser

    path = tmp_path / "gpu.pth"
    src = Net()
    with monkeypatch.context() as m:
        m.setattr(ser, "location_tag", lambda storage: "cuda:0")
        torch.save(src.state_dict(), path)
    if not torch.cuda.is_available():
        exc = _raised(lambda: torch.load(path))
        text = explain_error(exc)
        assert text and "saved from a GPU" in text and "map_location='cpu'" in text
    target = Net()
    report = load_into(target, path)
    assert report.complete and target.fc.weight.device.type == "cpu"
    assert torch.equal(target.fc.weight, src.fc.weight)


def test_explain_full_pickled_model_class_missing_and_weights_only(tmp_path, monkeypatch):
    # torch.save(model) from a script: the pickle names __main__.Net, which a later process lacks.
    path = tmp_path / "full.pth"
    main = sys.modules["__main__"]
    monkeypatch.setattr(Net, "__module__", "__main__")
    monkeypatch.setattr(main, "Net", Net, raising=False)
    src = Net()
    torch.save(src, path)
    monkeypatch.delattr(main, "Net")

    exc = _raised(lambda: torch.load(path))
    assert "Weights only load failed" in str(exc)
    text = explain_error(exc)
    assert text and "__main__.Net" in text and "torchkeep.load_state_dict(path)" in text

    exc = _raised(lambda: torch.load(path, weights_only=False))
    assert "Can't get attribute 'Net'" in str(exc)
    text = explain_error(exc)
    assert text and "whole pickled model" in text and "the script that saved it" in text
    assert "torchkeep adapt PATH --arch NAME" in text

    # and torchkeep itself reads its weights without the class
    monkeypatch.setattr(Net, "__module__", __name__)
    target = Net()
    report = load_into(target, path)
    assert report.complete and torch.equal(target.fc.weight, src.fc.weight)
    assert any("whole pickled model" in n for n in report.notes) and report.unwrapped is None


def test_explain_not_a_torch_file(tmp_path):
    path = tmp_path / "lfs.pth"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    assert "Git LFS pointer" in (explain_error(_raised(lambda: torch.load(path))) or "")
    exc = _raised(lambda: torch.load(path, weights_only=False))
    assert "Git LFS pointer" in (explain_error(exc) or "")


def test_explain_unknown_architecture_and_forward_errors():
    exc = _raised(lambda: torchvision.models.get_model("resnt18"))
    text = explain_error(exc)
    assert text and "did you mean" in text and "resnet18" in text and "torchkeep models" in text
    exc = _raised(lambda: nn.Linear(4, 2)(torch.ones(1, 5)))
    assert "expected 4 input features but got 5" in (explain_error(exc) or "")
    assert explain_error("something else entirely") is None
    err = CompatibilityError("bad", fix="do this")
    assert explain_error(err) == str(err)


def test_public_api():
    assert torchkeep.load_into is load_into
    assert torchkeep.LoadReport.__name__ == "LoadReport"



# ----------------------------------------------------------------------------------------- adapt + CLI


class UserCNN(nn.Module):
    """The seeds' CIFAR-10 CNN as a user writes it: named layers, not the registry's Sequential."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 32, 5, padding=2)
        self.conv3 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(1024, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        pool = nn.functional.max_pool2d
        x = pool(self.conv3(pool(self.conv2(pool(self.conv1(x), 2)), 2)), 2)
        return self.fc2(self.fc1(x.flatten(1)))


def test_adapt_ddp_file_to_model_file_round_trip(resnet, tmp_path):
    import hashlib

    src = tmp_path / "ddp.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()}, "epoch": 9}, src)
    out = tmp_path / "resnet18.safetensors"
    result = torchkeep.adapt(src, arch="resnet18", out=out)
    assert result.out == str(out) and result.num_classes == 1000 and result.report.complete
    model = torchkeep.load(out, device="cpu")
    assert torch.equal(_out(model), _out(resnet))
    spec = model.torchkeep_spec
    assert spec.provenance.source_file == str(src)
    assert spec.provenance.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest() == result.source_sha256
    assert spec.extra["adapt"]["verdict"] == result.report.verdict
    assert spec.extra["adapt"]["prefix_stripped"] == "module."


def test_adapt_user_cnn_by_order_into_the_registry_architecture(tmp_path):
    torch.manual_seed(3)
    user = UserCNN().eval()
    src = tmp_path / "tudui.pth"
    torch.save(user.state_dict(), src)
    result = torchkeep.adapt(src, arch="cifar10_cnn", out=tmp_path / "cnn.safetensors",
                             class_names=[f"c{i}" for i in range(10)])
    assert result.report.matched_by_order == 10 and result.report.complete
    assert result.report.renamed["conv1.weight"] == "model.0.weight"
    model = torchkeep.load(tmp_path / "cnn.safetensors", device="cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), user(x))
    assert model.torchkeep_spec.class_names[3] == "c3"
    # a fresh process that never saw UserCNN gets the same outputs from the file alone
    import subprocess

    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, torchkeep; m = torchkeep.load(sys.argv[1], device='cpu'); "
        "x = torch.load(sys.argv[2]); torch.save(m(x).detach(), sys.argv[3]); "
        "assert 'tests.test_adapt' not in sys.modules and 'test_adapt' not in sys.modules"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cnn.safetensors"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True, cwd=tmp_path,
    )
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), user(x))


def test_adapt_infers_classes_from_a_fine_tuned_head(tmp_path):
    src_model = _model("mobilenet_v3_small", num_classes=7)
    src = tmp_path / "ft.pt"
    torch.save(src_model.state_dict(), src)
    result = torchkeep.adapt(src, arch="mobilenet_v3_small", dry_run=True)
    assert result.num_classes == 7 and result.report.complete and result.out is None
    assert any("num_classes=7 taken from the source's head" in n for n in result.report.notes)


def test_cli_adapt_1000_to_10_classes_json(tmp_path, cli):
    src_model = _model("mobilenet_v3_small")
    src = tmp_path / "imagenet.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src_model.state_dict().items()}, src)
    out = tmp_path / "m10.safetensors"
    code, stdout, err = cli("adapt", src, "--arch", "mobilenet_v3_small", "--num-classes", "10", "-o", out, "--json")
    assert code == 0, err
    d = json.loads(stdout)
    assert d["out"] == str(out) and d["num_classes"] == 10 and d["verdict"].startswith("PARTIAL")
    assert d["report"]["collapsed"]["shape_mismatched"] == ["classifier.3.{weight,bias}"]
    assert [m["source_shape"] for m in d["report"]["shape_mismatched"]] == [[1000, 1024], [1000]]
    assert d["report"]["missing"] == [] and d["report"]["unexpected"] == []
    assert out.exists()
    # human output: the table and the verdict line
    code, stdout, _ = cli("adapt", src, "--arch", "mobilenet_v3_small", "--num-classes", "10", "-o", out)
    assert code == 0 and "shape mismatch" in stdout and "verdict: PARTIAL" in stdout and f"wrote {out}" in stdout


def test_cli_adapt_rename_dry_run(resnet, tmp_path, cli):
    src = tmp_path / "renamed.pt"
    torch.save({k.replace("fc.", "head."): v for k, v in resnet.state_dict().items()}, src)
    out = tmp_path / "never.safetensors"
    code, stdout, err = cli("adapt", src, "--arch", "resnet18", "--rename", r"^head\.=>fc.", "--dry-run",
                            "--no-match-by-order", "-o", out, "--json")
    assert code == 0, err
    d = json.loads(stdout)
    assert d["dry_run"] is True and d["out"] is None and not out.exists()
    assert d["report"]["renamed"] == {"head.weight": "fc.weight", "head.bias": "fc.bias"}
    assert d["report"]["complete"] is True


def test_cli_adapt_refusals_and_usage_errors(resnet, tmp_path, cli):
    src = tmp_path / "resnet.pth"
    torch.save(resnet.state_dict(), src)
    out = tmp_path / "m.safetensors"
    code, stdout, err = cli("adapt", src, "--arch", "mobilenet_v3_small", "-o", out, "--json")
    assert code == 4 and not out.exists()
    d = json.loads(stdout)
    assert d["refused"] is True and d["verdict"].startswith("REFUSED") and d["report"]["params_loaded"] == 0
    # nothing fits: the refusal names the architecture that does and never offers a 0% "partial" model
    assert "threshold 50%" in err and len(err.strip().splitlines()) == 1
    assert "the weights fit resnet18: pass --arch resnet18" in err and "--allow-partial" not in err
    code, stdout, err = cli("adapt", src, "--arch", "mobilenet_v3_small", "-o", out)
    assert code == 4 and "refused: nothing written" in stdout
    code, _, err = cli("adapt", src, "--arch", "mobilenet_v3_small", "-o", out, "--allow-partial")
    assert code == 0 and out.exists()
    code, _, err = cli("adapt", src, "--arch", "resnet18", "--num-classes", "10", "--on-shape-mismatch", "error",
                       "-o", out)
    assert code == 4 and "fc.weight: source [1000, 512] vs model [10, 512]" in err
    code, _, err = cli("adapt", src, "--arch", "resnet18")
    assert code == 64 and "-o OUT.safetensors" in err
    code, _, err = cli("adapt", src, "--arch", "resnt18", "--dry-run")
    assert code == 64 and "resnet18" in err
    code, _, err = cli("adapt", src, "--arch", "resnet18", "--rename", "fc.", "--dry-run")
    assert code == 64 and "has no '=>'" in err
    code, _, err = cli("adapt", tmp_path / "nope.pth", "--arch", "resnet18", "--dry-run")
    assert code == 3


def test_alphabetical_safetensors_order_is_not_trusted_for_by_order(tmp_path):
    from safetensors.torch import save_file

    from torchkeep.models import build

    src = tmp_path / "user.safetensors"
    save_file(UserCNN().state_dict(), src)  # safetensors stores keys sorted: conv1.bias, conv1.weight, ...
    with pytest.raises(CompatibilityError, match="only 0%") as info:
        load_into(build("cifar10_cnn"), src)
    assert any("alphabetical order" in n for n in info.value.report.notes)


def test_by_order_with_a_new_head(tmp_path):
    torch.manual_seed(3)
    user = UserCNN()
    src = tmp_path / "tudui.pth"
    torch.save(user.state_dict(), src)
    result = torchkeep.adapt(src, arch="cifar10_cnn", num_classes=5, dry_run=True)
    r = result.report
    assert r.matched_by_order == 10 and not r.missing and not r.unexpected
    assert "renamed" not in r.verdict and "10 matched by order" in r.verdict
    assert [(m.key, m.source_key, m.source_shape, m.target_shape) for m in r.shape_mismatched] == [
        ("model.8.weight", "fc2.weight", [10, 64], [5, 64]),
        ("model.8.bias", "fc2.bias", [10], [5]),
    ]
    # without --num-classes the source's 10 classes are kept, names matched by order
    result = torchkeep.adapt(src, arch="cifar10_cnn", dry_run=True)
    assert result.num_classes == 10 and result.report.complete


def test_explain_class_module_moved(tmp_path, monkeypatch):
    # torch.save(model) where the class lived in a module that has since been renamed/moved
    pkg = tmp_path / "oldmodels.py"
    pkg.write_text("import torch.nn as nn\nclass Net(nn.Module):\n    def __init__(self):\n"
                   "        super().__init__()\n        self.fc = nn.Linear(4, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("oldmodels")
    path = tmp_path / "full.pt"
    torch.save(mod.Net(), path)
    monkeypatch.delitem(sys.modules, "oldmodels")
    pkg.unlink()
    exc = _raised(lambda: torch.load(path, weights_only=False))
    assert "No module named 'oldmodels'" in str(exc)
    text = explain_error(exc)
    assert text and "module 'oldmodels'" in text and "torchkeep.load_state_dict(path)" in text
    # the same words from a plain import are not blamed on a file
    assert explain_error(_raised(lambda: importlib.import_module("surely_not_a_module_xyz"))) is None


def test_callable_rename_and_prefix_collision(resnet):
    sd = {f"net.{k}": v for k, v in resnet.state_dict().items()}
    report = load_into(_fresh(), sd, renames=lambda k: k.removeprefix("net."), strip_prefix="none")
    assert report.complete and len(report.renamed) == len(sd)
    clash = {"module.fc.bias": torch.zeros(1000), "fc.bias": torch.zeros(1000)}
    with pytest.raises(CompatibilityError, match=r"stripping 'module\.' makes two source keys collide"):
        load_into(_fresh(), clash, strip_prefix="module.", allow_partial=True)


def test_wrong_arch_is_refused_with_the_architecture_that_fits(tmp_path, cli):
    src = tmp_path / "r50.pth"
    torch.save(_model("resnet50", num_classes=7).state_dict(), src)
    # load_into loads what fits (54% here) but says the network itself differs
    report = load_into(_fresh(), src)
    assert report.structural_mismatches and "another architecture?" in report.verdict
    # adapt refuses, and names the registry architecture the weights fit (head size included)
    with pytest.raises(CompatibilityError, match=r"inside the network differ in shape.*--arch resnet50") as info:
        torchkeep.adapt(src, arch="resnet18", out=tmp_path / "x.safetensors")
    assert "layer1.0.conv1.weight" in info.value.report.structural_mismatches
    assert any("the weights fit resnet50 (7 classes)" in n for n in info.value.report.notes)
    code, _, err = cli("adapt", src, "--arch", "resnet18", "-o", tmp_path / "x.safetensors")
    assert code == 4 and "pass --arch resnet50" in err and not (tmp_path / "x.safetensors").exists()
    # a head with another number of classes is not "structural"
    assert load_into(_fresh(num_classes=10), _model("resnet18")).structural_mismatches == []


def test_key_picks_the_ema_weights(tmp_path, cli):
    model, ema = _model("mobilenet_v3_small"), _fresh("mobilenet_v3_small")
    ckpt = {"model": model.state_dict(), "ema": ema.state_dict(), "epoch": 4}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    report = load_into(_fresh("mobilenet_v3_small"), ckpt)
    assert report.unwrapped == "model" and any("key='ema' (CLI: --key ema)" in n for n in report.notes)
    target = _fresh("mobilenet_v3_small")
    torch.nn.init.zeros_(target.classifier[3].weight)
    report = load_into(target, ckpt, key="ema")
    assert report.unwrapped == "ema" and torch.equal(target.classifier[3].weight, ema.classifier[3].weight)
    with pytest.raises(UsageError, match=r"no entry 'emma' \(it has: model, ema, epoch\)"):
        load_into(target, ckpt, key="emma")
    out = tmp_path / "ema.safetensors"
    code, stdout, err = cli("adapt", path, "--arch", "mobilenet_v3_small", "--key", "ema", "-o", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["report"]["unwrapped"] == "ema"
    loaded = torchkeep.load(out, device="cpu")
    assert torch.equal(loaded.classifier[3].weight, ema.classifier[3].weight)


def test_load_into_a_model_with_versioned_modules():
    # MNASNet refuses a state_dict without module versions (_metadata); a renamed or safetensors dict has none
    src = _model("mnasnet0_5")
    plain = {k: v.clone() for k, v in src.state_dict().items()}  # a plain dict: no _metadata
    dst = _fresh("mnasnet0_5")
    report = load_into(dst, plain, strict=True)
    assert report.applied and report.complete
    assert torch.equal(_out(src), _out(dst))


# ------------------------------------------------------------------- the seeds' VGG16 recipe from the CLI


def test_cli_adapt_appends_a_head_and_records_the_preprocessing_it_prints(tmp_path, cli):
    """``vgg.classifier.add_module("add_linear", nn.Linear(1000, 10))`` from the CLI (a small torchvision
    classifier of the same shape of head): the source's whole 1000-class head loads, the new layer is fresh."""
    src = tmp_path / "mnv3.pth"
    base = torchvision.models.mobilenet_v3_small()
    torch.save(base.state_dict(), src)
    out = tmp_path / "m.safetensors"
    code, stdout, err = cli("adapt", src, "--arch", "mobilenet_v3_small", "--head", "append", "--num-classes", "10",
                            "--input-size", "64", "--mean", "0.5", "--std", "0.25,0.5,0.75", "-o", out)
    assert code == 0, err
    assert ("preprocessing (records; change with --input-size/--mean/--std): RGB, resize 64x64 (bilinear), "
            "mean [0.5, 0.5, 0.5], std [0.25, 0.5, 0.75]") in stdout
    assert "classifier.add_linear is the appended head: it starts fresh" in stdout
    model = torchkeep.load(out, device="cpu")
    spec = model.torchkeep_spec
    assert (spec.head.mode, spec.head.added_path, spec.num_classes) == ("append", "classifier.add_linear", 10)
    assert (spec.preprocessing.mean, spec.preprocessing.std, spec.preprocessing.resize) == (
        [0.5, 0.5, 0.5], [0.25, 0.5, 0.75], [64, 64])
    assert torch.equal(model.state_dict()["classifier.3.weight"], base.state_dict()["classifier.3.weight"])
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    # --json carries the same preprocessing; without flags it is the architecture's (ImageNet's)
    code, stdout, _ = cli("adapt", src, "--arch", "mobilenet_v3_small", "--dry-run", "--json")
    pre = json.loads(stdout)["preprocessing"]
    assert code == 0 and (pre["resize"], pre["crop"], pre["mean"]) == ([256], [224, 224], [0.485, 0.456, 0.406])
    code, stdout, _ = cli("adapt", src, "--arch", "mobilenet_v3_small", "--dry-run")
    assert ("would record; change with --input-size/--mean/--std): RGB, resize 256 (shorter side, bilinear), "
            "center crop 224x224, mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]") in stdout


def test_cli_adapt_head_and_normalisation_usage_errors(tmp_path, cli):
    src = tmp_path / "cnn.pth"
    torch.save(torchkeep.models.build("cifar10_cnn", 10).state_dict(), src)
    for args, message in (
        (("--head", "append"), "--head append adds Linear(outputs, N) after the model's head: it needs"),
        (("--mean", "0.5"), "--mean and --std go together"),
        (("--mean", "0.1,0.2", "--std", "1"), "--mean has 2 values; the input has 3 channels (RGB)"),
        (("--mean", "0.5", "--std", "0"), "--std must be positive"),
        (("--mean", "half", "--std", "1"), "--mean takes numbers separated by commas, not 'half'"),
    ):
        code, _, err = cli("adapt", src, "--arch", "cifar10_cnn", "-o", tmp_path / "o.safetensors", *args)
        assert code == 64 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "o.safetensors").exists()


def test_a_file_and_the_same_dict_load_the_same_entry(tmp_path):
    # issue 11: {"module": A, "net": B} loaded A from the file but B from the dict (two lists, two orders)
    a = {"weight": torch.ones(2, 2), "bias": torch.ones(2)}
    b = {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}
    ckpt = {"module": a, "net": b}
    torch.save(ckpt, tmp_path / "two.pt")
    from_file, from_dict = nn.Linear(2, 2), nn.Linear(2, 2)
    assert load_into(from_file, tmp_path / "two.pt").unwrapped == load_into(from_dict, ckpt).unwrapped
    assert torch.equal(from_file.weight, from_dict.weight) and torch.equal(from_file.bias, from_dict.bias)


def test_load_state_dict_with_trust_honours_key(tmp_path):
    # issue 11: load_state_dict(path, trust=True, key="ema") ignored key and returned the main weights
    ema = {"0.weight": torch.full((2, 2), 7.0), "0.bias": torch.zeros(2)}
    torch.save({"model": nn.Sequential(nn.Linear(2, 2)), "ema": ema}, tmp_path / "full.pt")
    got = torchkeep.load_state_dict(tmp_path / "full.pt", trust=True, key="ema")
    assert torch.equal(got["0.weight"], ema["0.weight"])
    assert not torch.equal(torchkeep.load_state_dict(tmp_path / "full.pt", trust=True)["0.weight"], ema["0.weight"])
