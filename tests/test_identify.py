"""torchkeep identify: every torchvision classifier named from names and shapes alone, in real files of every
kind (state_dicts, checkpoints, wrapper prefixes, half precision, appended heads), unknown weights described,
and weights without a spec loaded, predicted and exported through the identification."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import torchkeep
from torchkeep._identify import identify, rank
from torchkeep.errors import InputError, TorchkeepWarning
from torchkeep.models import build
from torchkeep.models._signatures import Signature, cache_files, load_signatures, meta_build

TV_NAMES = torchvision.models.list_models(module=torchvision.models)


@pytest.fixture(scope="module", autouse=True)
def _signature_cache(tmp_path_factory):
    """One signature cache for the module (built on first use), never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHKEEP_CACHE_DIR", os.fspath(tmp_path_factory.mktemp("tkcache")))
        yield


def _meta(name: str, **kw) -> dict[str, torch.Tensor]:
    return meta_build(lambda: torchvision.models.get_model(name, weights=None, **kw)).state_dict()


# ------------------------------------------------------------------------------------ every classifier


def test_every_torchvision_classifier_is_named_with_its_classes_and_head():
    from torchkeep._modelfile import build_identified
    from torchkeep.models import find_head

    wrong = []
    for name in TV_NAMES:
        model = meta_build(lambda n=name: torchvision.models.get_model(n, weights=None, num_classes=7))
        seven = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        # the same weights with torchvision's 1000 classes: the head's (and auxiliary heads') first dim
        head = find_head(model)
        heads = [head.path, *head.aux_paths]
        thousand = {k: (1000, *s[1:]) if k.rpartition(".")[0] in heads else s for k, s in seven.items()}
        for num_classes, sd in ((7, seven), (1000, thousand)):
            r = identify(sd)
            got = (r.architecture, r.num_classes, r.head, r.match, r.tie, r.missing, r.unexpected, r.reshaped)
            want = (name, num_classes, "original" if num_classes == 1000 else "replaced", "exact", [], [], [], [])
            if got != want:
                wrong.append((name, got))
        # and what load / predict / export build from the identification takes these very weights
        built = build_identified(identify(seven))[0].state_dict()
        if {k: tuple(v.shape) for k, v in built.items()} != seven:
            wrong.append((name, "built differently"))
    assert not wrong, wrong
    assert len(TV_NAMES) >= 80


def test_the_seeds_and_their_channels_classes_and_input_size():
    r = identify(build("cifar10_cnn", 4, in_channels=1, input_size=8).state_dict())
    assert (r.architecture, r.num_classes, r.in_channels, r.input_size, r.head) == ("cifar10_cnn", 4, 1, [8, 8], "replaced")
    r = identify(build("cifar10_cnn").state_dict())
    assert (r.architecture, r.num_classes, r.in_channels, r.input_size, r.head) == ("cifar10_cnn", 10, 3, [32, 32], "original")
    r = identify(build("fashion_mlp", 3).state_dict())
    assert (r.architecture, r.num_classes, r.in_channels, r.input_size) == ("fashion_mlp", 3, 1, [28, 28])
    assert any("C*H*W = 784" in n for n in r.notes)  # what the weights cannot say is said


def test_variants_without_auxiliary_heads_and_vit_at_another_resolution():
    # torchvision's published GoogLeNet/Inception weights drop the auxiliary classifiers
    r = identify(_meta("googlenet", aux_logits=False, init_weights=False))
    assert (r.architecture, r.arch_kwargs, r.match) == ("googlenet", {"aux_logits": False}, "exact")
    r = identify(_meta("inception_v3", num_classes=5, aux_logits=False, init_weights=False))
    assert (r.architecture, r.arch_kwargs, r.num_classes) == ("inception_v3", {"aux_logits": False}, 5)
    # vit_b_16's SWAG weights are at 384x384: the position embedding says so
    r = identify(_meta("vit_b_16", image_size=384, num_classes=3))
    assert (r.architecture, r.arch_kwargs, r.input_size, r.num_classes) == ("vit_b_16", {"image_size": 384}, [384, 384], 3)


# ------------------------------------------------------------------------------------ real files


@pytest.fixture(scope="module")
def mnv3(tmp_path_factory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    return model, tmp_path_factory.mktemp("mnv3")


def test_files_of_every_kind_are_identified(mnv3):
    model, d = mnv3
    sd = model.state_dict()
    files = {
        "bare.pth": lambda p: torch.save(sd, p),
        "bare.safetensors": lambda p: save_file({k: v.contiguous() for k, v in sd.items()}, p),
        "ddp.pt": lambda p: torch.save({f"module.{k}": v for k, v in sd.items()}, p),
        "compiled_lightning.ckpt": lambda p: torch.save(
            {"epoch": 3, "state_dict": {f"model._orig_mod.{k}": v for k, v in sd.items()},
             "optimizer_states": [{"state": {}, "param_groups": []}]}, p),
        "nested.pth": lambda p: torch.save({"model": {"state_dict": sd}, "optimizer": {"state": {}, "param_groups": []}}, p),
        "half.pth": lambda p: torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, p),
        "bf16.safetensors": lambda p: save_file(
            {k: (v.bfloat16() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, p),
        "full_model.pt": lambda p: torch.save(model, p),
        # a Lightning module: the model under "model.", its loss's class weights beside it
        "lightning.ckpt": lambda p: torch.save(
            {"state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "criterion.weight": torch.ones(10)}}, p),
    }
    where = {}
    for fname, write in files.items():
        write(d / fname)
        r = identify(d / fname)
        assert (r.architecture, r.num_classes, r.head, r.match) == ("mobilenet_v3_small", 10, "replaced", "exact"), fname
        where[fname] = (r.weights_location, r.prefix)
    assert where["ddp.pt"] == ("", "module.")
    assert where["compiled_lightning.ckpt"] == ("state_dict", "model._orig_mod.")
    assert where["nested.pth"][0] == "model.state_dict"
    assert where["lightning.ckpt"] == ("state_dict", "model.")
    assert identify(d / "lightning.ckpt").ignored == ["criterion.weight"]
    assert identify(d / "half.pth").dtypes == ["float16", "int64"]
    assert "bfloat16" in identify(d / "bf16.safetensors").dtypes


def test_a_truncated_file_is_an_input_error_not_a_guess(mnv3, tmp_path, cli):
    model, _ = mnv3
    for name, write in (("t.pth", torch.save), ("t.safetensors", save_file)):
        path = tmp_path / name
        write({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError):
            identify(path)
        code, out, err = cli("identify", path, "--json")
        assert code == 3 and json.loads(out)["error"]["type"] in ("InputError", "UnknownFormatError"), err


def test_appended_heads_beside_or_wrapping_the_original(tmp_path):
    # the seeds' VGG16 recipe: classifier.add_module("add_linear", Linear(1000, 10)) (a conv head here)
    r = identify(meta_build(lambda: build("squeezenet1_1", 10, head="append")).state_dict())
    assert (r.architecture, r.num_classes, r.head, r.match) == ("squeezenet1_1", 10, "appended", "exact")
    assert (r.appended.path, r.appended.in_features, r.appended.out_features) == ("classifier.add_linear", 1000, 10)
    # by hand: model.fc = nn.Sequential(model.fc, nn.Linear(1000, 4)), keys fc.0.* and fc.1.*
    m = meta_build(lambda: torchvision.models.resnet18())
    m.fc = nn.Sequential(m.fc, nn.Linear(1000, 4, device="meta"))
    r = identify(m.state_dict())
    assert (r.architecture, r.num_classes, r.head) == ("resnet18", 4, "appended")
    assert (r.appended.path, r.appended.base_head, r.appended.weight, r.appended.bias) == ("fc.1", "fc.0", [4, 1000], [4])
    # a new head of several layers is not "appended": the 512 -> 256 layer replaced the original one
    m.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 5)).to("meta")
    r = identify(m.state_dict())
    assert (r.architecture, r.match, r.head, r.num_classes) == ("resnet18", "close", "custom", 5)
    assert (r.missing, r.unexpected) == (["fc.weight", "fc.bias"], ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"])
    assert any("fc.0: Linear 512→256; fc.2: Linear 256→5" in n for n in r.notes)


def test_close_matches_list_their_differences():
    sd = dict(_meta("resnet18", num_classes=10))
    del sd["layer4.1.bn2.running_var"]
    sd["layer1.0.conv1.weight"] = torch.empty(64, 64, 1, 1, device="meta")
    sd["extra.weight"] = torch.empty(3, device="meta")
    r = identify(sd)
    assert (r.architecture, r.match, r.num_classes) == ("resnet18", "close", 10)
    assert r.missing == ["layer4.1.bn2.running_var"] and r.unexpected == ["extra.weight"]
    assert [(m.name, m.shape, m.expected) for m in r.reshaped] == [("layer1.0.conv1.weight", [64, 64, 1, 1], [64, 64, 3, 3])]
    assert 0.95 < r.confidence < 1 and r.differences == 3
    # files from before PyTorch 0.4.1 have no num_batches_tracked: still exact, said in a note
    old = {k: v for k, v in _meta("resnet18").items() if not k.endswith("num_batches_tracked")}
    r = identify(old)
    assert r.match == "exact" and any("num_batches_tracked" in n for n in r.notes)


def test_ties_are_reported_never_broken_by_a_guess():
    names = ["a.weight", "a.bias"]
    twins = [Signature(k, k, "torchvision", {}, 1000, 3, "a", names, ["N,8", "N"]) for k in ("twin_b", "twin_a")]
    from torchkeep._identify import _best_per_signature

    cands, tie = rank(_best_per_signature(twins, {"a.weight": (5, 8), "a.bias": (5,)}))
    assert tie == ["twin_a", "twin_b"] and [c.match for c in cands] == ["exact", "exact"]
    cands, tie = rank(_best_per_signature(twins, {"b.weight": (5, 8)}))
    assert tie == [] and cands[0].match == "none"  # nothing fits: no tie either


def test_with_many_signatures_a_shortlist_by_name_sketch_still_finds_close_matches(monkeypatch):
    import torchkeep._identify as identify_module
    from torchkeep.models._signatures import similarity, sketch

    names = list(_meta("resnet18"))
    assert similarity(sketch(names), sketch(names)) == 1.0
    assert similarity(sketch(names), sketch([f"other.{n}" for n in names])) < 0.2
    # as with timm's ~1,400 signatures: only the SHORTLIST closest by sketch are compared in full
    monkeypatch.setattr(identify_module, "FULL_SCAN", 10)
    monkeypatch.setattr(identify_module, "SHORTLIST", 3)
    m = meta_build(lambda: torchvision.models.resnet18())
    m.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 5)).to("meta")
    r = identify(m.state_dict())
    assert (r.architecture, r.match, r.head, len(r.candidates)) == ("resnet18", "close", "custom", 3)


def test_timm_architectures_when_timm_is_installed():
    timm = pytest.importorskip("timm")
    m = meta_build(lambda: timm.create_model("resnet18", pretrained=False, num_classes=10))
    r = identify(m.state_dict(), architectures=["resnet18", "timm/resnet18", "timm/mobilenetv3_small_100"])
    # timm's resnet18 and torchvision's have the same names and shapes: a tie, not a guess
    assert r.architecture is None and r.tie == ["resnet18", "timm/resnet18"] and r.match == "exact"
    m = meta_build(lambda: timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=3))
    r = identify(m.state_dict(), architectures=["mobilenet_v3_small", "timm/mobilenetv3_small_100"])
    assert (r.architecture, r.num_classes, r.source) == ("timm/mobilenetv3_small_100", 3, "timm")


# ------------------------------------------------------------------------------------ unknown weights


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, groups=6, bias=False)
        self.fc1 = nn.Linear(6 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, 10)


def _loads(skeleton: str, sd: dict) -> None:
    ns: dict = {}
    exec(compile(skeleton, "skeleton.py", "exec"), ns)
    ns["Net"]().load_state_dict(sd, strict=True)


def test_unknown_weights_get_their_layers_and_a_skeleton_that_loads_strictly(tmp_path, cli):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(20, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 64), nn.GELU(),
                        nn.LayerNorm(64), nn.Linear(64, 3))
    torch.save(mlp.state_dict(), tmp_path / "mlp.pth")
    r = identify(tmp_path / "mlp.pth")
    assert r.architecture is None and r.match == "none" and r.tie == []
    assert r.summary().startswith("not a known architecture; closest: ")
    assert [ly.description for ly in r.layers][:2] == ["Linear 20→64", "Linear 64→64"]
    assert "nn.Identity(),  # 2: holds no weights" in r.skeleton
    _loads(r.skeleton, mlp.state_dict())

    net = LeNet()
    r = identify(net.state_dict())
    assert [ly.description for ly in r.layers] == [
        "Conv2d 5×5 3→6", "BatchNorm 6", "Conv2d 3×3 6→6, groups 6, no bias", "Linear 150→32", "Linear 32→10"]
    assert "x = torch.flatten(x, 1)" in r.skeleton and "nn.Conv2d(6, 6, kernel_size=3, groups=6, bias=False)" in r.skeleton
    _loads(r.skeleton, net.state_dict())

    # a Sequential CNN: the slot before the first Linear flattens
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
    r = identify({f"body.{k}": v for k, v in cnn.state_dict().items()})
    assert "nn.Flatten(),  # 3: holds no weights: flattens for the Linear after it" in r.skeleton
    _loads(r.skeleton, {f"body.{k}": v for k, v in cnn.state_dict().items()})

    code, out, _ = cli("identify", tmp_path / "mlp.pth", "--skeleton", tmp_path / "net.py")
    assert code == 1 and "not a known architecture; closest:" in out and "Linear 20→64" in out
    _loads((tmp_path / "net.py").read_text(), mlp.state_dict())


# ------------------------------------------------------------------------------------ CLI and cache


def test_cli_json_fields(mnv3, cli):
    model, d = mnv3
    path = d / "cli.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    code, out, err = cli("identify", path, "--json", "--top", "3")
    assert code == 0, err
    doc = json.loads(out)
    for field_ in ("architecture", "num_classes", "in_channels", "head", "appended", "weights_location", "prefix",
                   "match", "confidence", "missing", "unexpected", "reshaped", "candidates", "tie", "summary"):
        assert field_ in doc, field_
    assert (doc["architecture"], doc["num_classes"], doc["head"], doc["weights_location"], doc["prefix"]) == (
        "mobilenet_v3_small", 10, "replaced", "model_state_dict", "module.")
    assert (doc["match"], doc["confidence"], len(doc["candidates"])) == ("exact", 1.0, 3)
    assert doc["candidates"][0]["architecture"] == "mobilenet_v3_small"
    assert doc["candidates"][1]["differences"] > 0
    code, out, _ = cli("identify", path)
    assert code == 0 and "looks like  mobilenet_v3_small, 10 classes, head replaced" in out


def test_signatures_are_cached_by_versions_and_rebuilt_when_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHKEEP_CACHE_DIR", os.fspath(tmp_path))
    sigs = load_signatures(["cifar10_cnn"])
    assert [s.arch for s in sigs] == ["cifar10_cnn"]
    (index,) = cache_files()
    data = json.loads(index.read_text())
    assert data["versions"]["torchvision"] == torchvision.__version__.split("+")[0] or data["versions"]["torchvision"]
    assert data["complete"] is False  # only what was asked was built
    blob = tmp_path / data["blob"]
    assert blob.is_file() and "model.0.weight" in blob.read_text()

    def rebuilt(change) -> dict:
        change()
        os.utime(index, ns=(1, 1))  # the process reads the index again
        sig = load_signatures(["cifar10_cnn"])[0]
        assert "model.0.weight" in sig.names and sig.table["model.8.weight"] == "N,64"
        return json.loads(index.read_text())

    stale = {**data, "versions": {**data["versions"], "torchvision": "0.0.1"}}
    assert rebuilt(lambda: index.write_text(json.dumps(stale)))["versions"] == data["versions"]
    assert rebuilt(lambda: blob.unlink())["blob"]  # the blob gone: built again
    assert rebuilt(lambda: index.write_text("{not json"))["versions"] == data["versions"]


# ------------------------------------------------------------------------------------ everything else uses it


def test_predict_export_and_load_a_bare_state_dict(tmp_path, cli):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    bare = tmp_path / "bare_state_dict.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, bare)
    img = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (200, 30, 40)).save(img)

    code, out, err = cli("predict", bare, img, "--json")
    assert code == 0, err
    assert "has no torchkeep spec: identified by `torchkeep identify` as resnet18, 10 classes, head replaced" in err
    assert "prefix 'module.' stripped" in err and "class names unknown" in err
    pred = json.loads(out)
    pred = pred["predictions"][0] if isinstance(pred, dict) else pred[0]
    x = torchkeep.load_image(img, build("resnet18", 10).torchkeep_spec).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    assert pred["index"] == int(probs.argmax()) and abs(pred["probability"] - float(probs.max())) < 1e-4

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = torchkeep.load(bare, device="cpu")
    assert any(issubclass(w.category, TorchkeepWarning) for w in caught)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    spec = loaded.torchkeep_spec
    assert (spec.arch, spec.num_classes, spec.extra["identified"]["match"]) == ("resnet18", 10, "exact")

    # export (with its parity check) of a small bare state_dict
    small = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1(num_classes=3).state_dict(), small)
    code, out, err = cli("export", small, "--format", "safetensors", "-o", tmp_path / "m.safetensors")
    assert code == 0, err
    assert "identified by `torchkeep identify` as squeezenet1_1, 3 classes" in err
    written = torchkeep.read_spec(tmp_path / "m.safetensors")  # the model file records the identification
    assert (written.arch, written.num_classes, written.extra["identified"]["summary"]) == (
        "squeezenet1_1", 3, "squeezenet1_1, 3 classes, head replaced")


def test_load_half_precision_and_appended_head_files(tmp_path):
    torch.manual_seed(0)
    base = build("squeezenet1_1", 10, head="append").eval()
    sd = {k.replace("classifier.add_linear", "classifier.extra"): v.half() if v.is_floating_point() else v
          for k, v in base.state_dict().items()}
    path = tmp_path / "sq.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    with pytest.warns(TorchkeepWarning, match=r"head appended .*half-precision tensors cast to float32"):
        model = torchkeep.load(path, device="cpu")
    assert model.torchkeep_spec.head.mode == "append"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), base.half().float()(x), atol=1e-3)


def test_load_architectures_that_do_not_build_on_the_meta_device(tmp_path):
    # RegNet computes with tensors in __init__ (FIELD-NOTES): built with its parameters moved to meta instead
    torch.manual_seed(0)
    model = torchvision.models.regnet_x_400mf(num_classes=7).eval()
    torch.save(model.state_dict(), tmp_path / "regnet.pth")
    with pytest.warns(TorchkeepWarning, match="regnet_x_400mf, 7 classes, head replaced"):
        loaded = torchkeep.load(tmp_path / "regnet.pth", device="cpu")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_weights_of_no_known_architecture_still_explain_themselves(tmp_path):
    torch.save(LeNet().state_dict(), tmp_path / "lenet.pth")
    with pytest.raises(InputError, match=r"no architecture; not a known architecture; closest: .*torchkeep adapt"):
        torchkeep.load(tmp_path / "lenet.pth")


def test_adapt_arch_auto_and_inspect_say_what_the_weights_are(tmp_path, cli):
    torch.manual_seed(0)
    base = build("squeezenet1_1", 10, head="append").eval()
    # the appended layer under another name than build() gives it, in a DDP checkpoint
    src = tmp_path / "sq.pth"
    torch.save({"model": {f"module.{k.replace('add_linear', 'extra')}": v for k, v in base.state_dict().items()}}, src)
    out = tmp_path / "sq.safetensors"
    code, stdout, err = cli("adapt", src, "--arch", "auto", "-o", out)
    assert code == 0, err
    assert "--arch auto: squeezenet1_1, 10 classes, head appended (classifier.extra: 1000→10)" in stdout
    model = torchkeep.load(out, device="cpu")
    spec = model.torchkeep_spec
    assert (spec.arch, spec.num_classes, spec.head.mode, spec.extra["identified"]["match"]) == (
        "squeezenet1_1", 10, "append", "exact")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))

    torch.save(LeNet().state_dict(), tmp_path / "lenet.pth")
    code, _, err = cli("adapt", tmp_path / "lenet.pth", "--arch", "auto", "-o", tmp_path / "x.safetensors")
    assert code == 4 and "--arch auto: not a known architecture; closest:" in err

    # inspect says it in one line, from the cached signatures, without importing torch
    assert torchkeep.inspect(src).looks_like == "squeezenet1_1, 10 classes, head appended (classifier.extra: 1000→10)"
    code, stdout, _ = cli("inspect", src)
    assert code == 0 and "looks like squeezenet1_1, 10 classes, head appended" in stdout
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", "import sys, torchkeep; r = torchkeep.inspect(sys.argv[1]); "
         "print(r.looks_like, 'torch' in sys.modules)", os.fspath(src)],
        capture_output=True, text=True, timeout=120, env={**os.environ})
    assert probe.stdout.strip() == "squeezenet1_1, 10 classes, head appended (classifier.extra: 1000→10) False", probe.stderr


def test_files_in_old_layouts_and_half_changed_models(tmp_path):
    import re

    # torchvision's own DenseNet files keep old PyTorch's names (denselayer1.norm.1.weight), no counters
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=4).eval()
    old = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12]\.(?:weight|bias|running_mean|running_var))$")
    sd = {(f"{m.group(1)}.{m.group(2)}" if (m := old.match(k)) else k): v for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in sd
    torch.save(sd, tmp_path / "densenet121-old.pth")
    r = identify(tmp_path / "densenet121-old.pth")
    assert (r.architecture, r.num_classes, r.match, len(r.renamed)) == ("densenet121", 4, "exact", 580)
    with pytest.warns(TorchkeepWarning, match="densenet121, 4 classes"):
        loaded = torchkeep.load(tmp_path / "densenet121-old.pth", device="cpu")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)

    # Inception with fc replaced but not AuxLogits.fc: the head decides the classes, the aux head differs
    inc = _meta("inception_v3", init_weights=False)
    inc = {**inc, "fc.weight": torch.empty(10, 2048, device="meta"), "fc.bias": torch.empty(10, device="meta")}
    r = identify(inc)
    assert (r.architecture, r.num_classes, r.match) == ("inception_v3", 10, "close")
    assert [m.name for m in r.reshaped] == ["AuxLogits.fc.weight", "AuxLogits.fc.bias"]
    # a ResNet whose stem takes grayscale: close, and said
    gray = {**_meta("resnet18"), "conv1.weight": torch.empty(64, 1, 7, 7, device="meta")}
    r = identify(gray)
    assert r.match == "close" and any("conv1.weight takes 1 input channel(s) instead of 3" in n for n in r.notes)
