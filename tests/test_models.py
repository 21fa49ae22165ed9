"""The architecture registry, generic head finding, build / build_from_spec, pretrained weights."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from torchkeep.errors import CompatibilityError, InputError, UntrustedCodeError, UsageError
from torchkeep.models import ArchInfo, build, build_from_spec, find_head, list_models


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def meta_model(name: str, **kwargs) -> nn.Module:
    import torchvision.models as tvm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if name.startswith("regnet"):  # RegNet computes widths with tensors in __init__: no meta build
            return tvm.get_model(name, **kwargs)
        with torch.device("meta"):
            return tvm.get_model(name, **kwargs)


# ------------------------------------------------------------------------------------------- seeds


def test_cifar10_cnn_is_the_seed_network():
    m = build("cifar10_cnn")
    layers = list(m.model)
    assert [type(x).__name__ for x in layers] == [
        "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "Linear",
    ]  # fmt: skip
    assert (layers[0].in_channels, layers[0].out_channels, layers[0].kernel_size, layers[0].padding) == (
        3, 32, (5, 5), (2, 2),
    )  # fmt: skip
    assert (layers[7].in_features, layers[7].out_features) == (1024, 64)
    assert (layers[8].in_features, layers[8].out_features) == (64, 10)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    spec = m.torchkeep_spec
    assert (spec.arch, spec.num_classes, spec.in_channels, spec.input_size) == (
        "cifar10_cnn",
        10,
        3,
        (32, 32),
    )
    assert spec.preprocessing.resize == [32, 32] and spec.preprocessing.mean is None
    assert spec.versions["torch"] == torch.__version__


def test_cifar10_cnn_on_8x8_digits_flattens_to_64():
    m = build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8)
    assert m.model[0].in_channels == 1
    assert m.model[7].in_features == 64
    assert m(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    assert m.torchkeep_spec.preprocessing.channels == "L"


def test_fashion_mlp_matches_the_quickstart_keys():
    m = build("fashion_mlp")
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "linear_relu_stack.0.weight": (512, 784), "linear_relu_stack.0.bias": (512,),
        "linear_relu_stack.2.weight": (512, 512), "linear_relu_stack.2.bias": (512,),
        "linear_relu_stack.4.weight": (10, 512), "linear_relu_stack.4.bias": (10,),
    }  # fmt: skip
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_seed_too_small_input_is_a_usage_error():
    with pytest.raises(UsageError, match="at least 8x8"):
        build("cifar10_cnn", input_size=4)


# ------------------------------------------------------------------------------------------ listing


def test_list_models_has_seeds_and_every_torchvision_classifier():
    import torchvision.models as tvm

    infos = list_models()
    names = [i.name for i in infos]
    assert names[:2] == ["cifar10_cnn", "fashion_mlp"]
    assert set(tvm.list_models(module=tvm)) <= set(names)
    assert all(isinstance(i, ArchInfo) for i in infos)
    r18 = next(i for i in infos if i.name == "resnet18")
    assert (r18.source, r18.input_size, r18.num_classes, r18.num_params) == (
        "torchvision",
        (224, 224),
        1000,
        11689512,
    )
    assert "IMAGENET1K_V1" in r18.weights and "Residual" in r18.description
    vit = next(i for i in infos if i.name == "vit_b_16")
    assert "IMAGENET1K_SWAG_E2E_V1" in vit.weights
    assert [i.name for i in list_models("^resnet1")] == ["resnet101", "resnet152", "resnet18"]


def test_models_cli(cli):
    import json

    code, out, _ = cli("models", "--json", "--filter", "^(cifar10_cnn|vgg16)$")
    assert code == 0
    data = json.loads(out)
    assert [m["name"] for m in data["models"]] == ["cifar10_cnn", "vgg16"]
    assert data["models"][0]["source"] == "seed" and data["models"][0]["num_params"] > 0
    code, out, _ = cli("models", "--filter", "squeezenet")
    assert code == 0 and "squeezenet1_1" in out and "package.module:Class" in out
    code, _, err = cli("models", "--filter", "(")
    assert code == 64 and "invalid --filter" in err


def test_unknown_arch_suggests_the_name():
    with pytest.raises(
        UsageError, match=r"unknown architecture 'resnet19'; did you mean resnet18.*torchkeep models"
    ):
        build("resnet19")


# ---------------------------------------------------------------------------------------- user classes


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        textwrap.dedent(
            '''
            import torch
            from torch import nn

            class Net(nn.Module):
                """A small user network."""

                def __init__(self, width=8, num_classes=10):
                    super().__init__()
                    self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, width), nn.ReLU())
                    self.fc = nn.Linear(width, num_classes)

                def forward(self, x):
                    return self.fc(self.body(x))

            class Tied(nn.Module):
                def __init__(self, vocab=6, dim=4):
                    super().__init__()
                    self.enc = nn.Embedding(vocab, dim)
                    self.dec = nn.Linear(dim, vocab, bias=False)
                    self.dec.weight = self.enc.weight  # tied, as language models do

                def forward(self, idx):
                    return self.dec(self.enc(idx))

            def not_a_class(**kw):
                return kw
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


def test_user_class_with_json_kwargs(user_module):
    m = build("userpkg.nets:Net", num_classes=3, width=5, input_size=(2, 6), in_channels=1)
    assert m.fc.out_features == 3 and m.body[1].out_features == 5
    spec = m.torchkeep_spec
    assert spec.arch == "userpkg.nets:Net" and spec.arch_kwargs == {"width": 5, "num_classes": 3}
    assert (spec.in_channels, spec.input_size) == (1, (2, 6))
    with pytest.raises(UntrustedCodeError, match="trust=True"):
        build_from_spec(spec)
    again = build_from_spec(spec, trust=True)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in m.state_dict().items()
    }


def test_user_arch_must_be_a_module_class(user_module):
    with pytest.raises(UsageError, match=r"not an nn\.Module subclass"):
        build("userpkg.nets:not_a_class")
    with pytest.raises(UsageError, match=r"cannot import module 'nopkg_xyz.nets'.*PYTHONPATH"):
        build("nopkg_xyz.nets:Net")
    with pytest.raises(UsageError, match=r"does not take the argument.*depth"):
        build("userpkg.nets:Net", depth=3)


# ---------------------------------------------------------------------------------------- head finding

HEADS = {
    "alexnet": ("classifier.6", "linear", False),
    "convnext_tiny": ("classifier.2", "linear", False),
    "densenet121": ("classifier", "linear", True),
    "efficientnet_b0": ("classifier.1", "linear", False),
    "googlenet": ("fc", "linear", True),
    "inception_v3": ("fc", "linear", True),
    "maxvit_t": ("classifier.5", "linear", False),
    "mnasnet0_5": ("classifier.1", "linear", False),
    "mobilenet_v2": ("classifier.1", "linear", False),
    "mobilenet_v3_small": ("classifier.3", "linear", False),
    "regnet_x_400mf": ("fc", "linear", True),
    "resnet18": ("fc", "linear", True),
    "resnext50_32x4d": ("fc", "linear", True),
    "shufflenet_v2_x0_5": ("fc", "linear", True),
    "squeezenet1_1": ("classifier.1", "conv", False),
    "swin_t": ("head", "linear", True),
    "vgg16": ("classifier.6", "linear", False),
    "vit_b_32": ("heads.head", "linear", False),
    "wide_resnet50_2": ("fc", "linear", True),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_find_head_replace_append_across_torchvision(name):
    from torchkeep.models._heads import append_head, replace_head

    path, kind, wraps = HEADS[name]
    base = meta_model(name)
    head = find_head(base)
    assert (head.path, head.kind, head.out_features) == (path, kind, 1000)
    # torchvision's own num_classes argument changes exactly the layer we found
    own = find_head(meta_model(name, num_classes=7))
    assert (own.path, own.out_features) == (path, 7)
    if name == "inception_v3":
        assert head.aux_paths == ["AuxLogits.fc"]
    replace_head(base, head, 7)
    assert find_head(base).out_features == 7
    # append must keep forward() working: run it on meta tensors (shapes only, no compute)
    fresh = meta_model(name).eval()
    size = 299 if name == "inception_v3" else 224
    device = next(fresh.parameters()).device
    x = torch.empty(1, 3, size, size, device=device) if device.type == "meta" else torch.rand(1, 3, 64, 64)
    added, wrapped = append_head(fresh, find_head(fresh), 5)
    assert wrapped is wraps
    assert added == (f"{path}.add_linear" if wraps else f"{path.rpartition('.')[0]}.add_linear")
    assert fresh(x).shape == (1, 5)


def _all_torchvision_names() -> list[str]:
    import torchvision.models as tvm

    # RegNets cannot be built on the meta device (they compute widths with tensors in __init__)
    return [n for n in tvm.list_models(module=tvm) if n not in HEADS and not n.startswith("regnet")]


@pytest.mark.parametrize("name", _all_torchvision_names())
def test_find_head_finds_the_1000_class_layer_of_every_torchvision_model(name):
    head = find_head(meta_model(name))
    assert head.out_features == 1000
    assert head.path in {"fc", "classifier", "head", "heads.head"} or head.path.startswith("classifier.")


def test_find_head_on_a_model_without_classifier():
    with pytest.raises(CompatibilityError, match="cannot find a classifier head"):
        find_head(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


# ------------------------------------------------------------------------------ transfer-learning heads


def test_vgg_append_as_the_seeds_do_and_freeze_backbone():
    with torch.device("meta"):  # the structure is the point here; skip initialising 133M weights
        m = build("vgg11", num_classes=10, head="append", freeze="backbone")
    assert isinstance(m.classifier.add_linear, nn.Linear)
    assert (m.classifier.add_linear.in_features, m.classifier.add_linear.out_features) == (1000, 10)
    assert trainable(m) == 1000 * 10 + 10
    assert m.classifier[6].out_features == 1000
    recipe = m.torchkeep_spec.head
    assert (recipe.mode, recipe.path, recipe.added_path, recipe.out_features) == (
        "append", "classifier.6", "classifier.add_linear", 1000,
    )  # fmt: skip
    again = build_from_spec(m.torchkeep_spec, device="meta")
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in m.state_dict().items()
    }
    assert trainable(again) == trainable(m)


def test_replace_and_append_on_resnet18():
    plain = build("resnet18", num_classes=10)
    assert plain.fc.out_features == 10 and plain.torchkeep_spec.head is None
    assert trainable(plain) == sum(p.numel() for p in plain.parameters())
    frozen = build("resnet18", num_classes=10, freeze="backbone")
    assert trainable(frozen) == 512 * 10 + 10
    appended = build("resnet18", num_classes=4, head="append", freeze="backbone")
    assert list(appended.fc._modules) == ["0", "add_linear"] and appended.fc[0].out_features == 1000
    assert trainable(appended) == 1000 * 4 + 4
    assert appended(torch.rand(1, 3, 64, 64)).shape == (1, 4)
    again = build_from_spec(appended.torchkeep_spec)
    assert list(again.state_dict()) == list(appended.state_dict())


def test_torchvision_models_take_gray_data_as_rgb():
    from PIL import Image

    from torchkeep._preprocess import load_image

    m = build("resnet18", num_classes=10, in_channels=1, input_size=8)
    spec = m.torchkeep_spec
    assert (spec.in_channels, spec.preprocessing.channels, spec.input_size) == (3, "RGB", (8, 8))
    x = load_image(Image.new("L", (8, 8), 100), m)
    assert x.shape == (3, 8, 8) and m.eval()(x.unsqueeze(0)).shape == (1, 10)
    with pytest.raises(UsageError, match=r"3-channel input; in_channels=2 cannot be converted"):
        build("resnet18", in_channels=2)


def test_class_names_set_num_classes():
    m = build("cifar10_cnn", class_names=["cat", "dog"])
    assert m.torchkeep_spec.num_classes == 2 and m.torchkeep_spec.class_names == ["cat", "dog"]
    with pytest.raises(UsageError, match="2 class names given for num_classes=3"):
        build("cifar10_cnn", 3, class_names=["cat", "dog"])


# ---------------------------------------------------------------------------------------- pretrained


def test_pretrained_local_file_loads_before_the_new_head(tmp_path: Path):
    src = build("resnet18")  # a 1000-class "original", saved DDP-style with module. prefixes
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(sd, path)
    m = build("resnet18", num_classes=10, pretrained=path, freeze="backbone")
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    assert torch.equal(m.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)
    assert m.fc.weight.shape == (10, 512)
    prov = m.torchkeep_spec.provenance
    import hashlib

    assert prov.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov.pretrained == str(path.resolve())
    assert m.torchkeep_spec.head.mode == "replace" and m.torchkeep_spec.num_classes == 10


def test_pretrained_file_of_a_fine_tuned_model_keeps_its_head(tmp_path: Path):
    tuned = build("cifar10_cnn", num_classes=5)
    path = tmp_path / "tuned.pt"
    torch.save(tuned.state_dict(), path)
    m = build("cifar10_cnn", num_classes=5, pretrained=path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), tuned.state_dict().values()))


def test_pretrained_torchkeep_model_file_keeps_names_and_preprocessing(tmp_path: Path):
    import torchkeep

    first = build("cifar10_cnn", class_names=["a", "b", "c"], in_channels=1, input_size=16)
    first.torchkeep_spec.preprocessing.mean, first.torchkeep_spec.preprocessing.std = [0.5], [0.5]
    path = torchkeep.save(first, tmp_path / "first.safetensors")
    again = build("cifar10_cnn", num_classes=3, in_channels=1, pretrained=path)
    assert again.torchkeep_spec.class_names == ["a", "b", "c"]
    assert again.torchkeep_spec.input_size == (16, 16)
    assert again.torchkeep_spec.preprocessing.mean == [0.5]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), first.state_dict().values()))
    assert again(torch.rand(1, 1, 16, 16)).shape == (1, 3)
    five = build("cifar10_cnn", num_classes=5, pretrained=path)  # new head, same body and input contract
    assert torch.equal(five.model[0].weight, first.model[0].weight) and five.model[8].out_features == 5
    assert five.torchkeep_spec.class_names is None and five.torchkeep_spec.in_channels == 1


def test_pretrained_name_unknown_or_missing_file():
    with pytest.raises(
        InputError, match=r"neither a file nor a weights name of resnet18 \(weights: IMAGENET1K_V1"
    ):
        build("resnet18", pretrained="IMAGENET9K_V7")
    with pytest.raises(InputError, match="neither a file"):
        build("cifar10_cnn", pretrained="/nonexistent/weights.pt")


def test_pretrained_torchvision_weights_from_the_hub_cache(tmp_path: Path, monkeypatch):
    """The real torch.hub download path, served from $TORCH_HOME/hub/checkpoints (no network)."""
    import torchvision.models as tvm

    weights = tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    published = tvm.squeezenet1_1().state_dict()  # random init: same keys and shapes as the real file
    torch.save(published, cache / Path(weights.url).name)

    m = build("squeezenet1_1", pretrained="IMAGENET1K_V1")
    assert torch.equal(m.features[0].weight, published["features.0.weight"])
    spec = m.torchkeep_spec
    assert spec.class_names == list(weights.meta["categories"]) and spec.num_classes == 1000
    assert spec.provenance.pretrained == "SqueezeNet1_1_Weights.IMAGENET1K_V1"
    assert spec.provenance.pretrained_url == weights.url
    pre = spec.preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.interpolation) == (
        [256],
        [224, 224],
        [0.485, 0.456, 0.406],
        "bilinear",
    )

    tuned = build("squeezenet1_1", num_classes=10, pretrained="DEFAULT", freeze="backbone")
    assert torch.equal(tuned.features[3].squeeze.weight, published["features.3.squeeze.weight"])
    assert tuned.classifier[1].out_channels == 10 and tuned.torchkeep_spec.class_names is None
    assert trainable(tuned) == 512 * 10 + 10
    assert tuned(torch.rand(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("aux", ["nope", "model.1", "model.0"])
def test_spec_aux_heads_that_are_not_heads_are_refused(aux):
    # An edited spec (files come from anywhere) naming a missing layer, a pooling layer or a wrong-size
    # layer as an auxiliary head: one CompatibilityError, not an AttributeError from deep inside.
    from torchkeep._spec import HeadRecipe

    spec = build("cifar10_cnn", num_classes=3, in_channels=1, input_size=8).torchkeep_spec
    spec = spec.replace(head=HeadRecipe("replace", "model.8", "linear", 64, 3, 3, aux_paths=[aux]))
    with pytest.raises(CompatibilityError, match=f"head recipe names the auxiliary head {aux}"):
        build_from_spec(spec)


def test_constructor_assertions_and_bad_sizes_are_usage_errors():
    # torchvision asserts on some arguments (ViT's patch size), and negative sizes fail in torch.empty
    with torch.device("meta"), pytest.raises(UsageError, match=r"cannot build vit_b_32.*indivisible by patch size"):
        build("vit_b_32", input_size=100)
    from torchkeep._spec import ModelSpec

    with pytest.raises(UsageError, match=r"cannot build fashion_mlp.*negative dimension"):
        build_from_spec(ModelSpec("fashion_mlp", arch_kwargs={"num_classes": -1}))


# ------------------------------------------------------------------------------------- catalog, completion


def test_the_bundled_catalog_is_the_live_listing():
    from torchkeep.models import _catalog
    from torchkeep.models._registry import live_models

    tv = _catalog._torchvision_version()
    bundled = _catalog._read(_catalog.BUNDLED, tv)
    if bundled is None:
        pytest.skip(f"_catalog.json is for another torchvision than {tv} (listing falls back to the live one); "
                    'refresh it: python -c "from torchkeep.models._catalog import main; main()"')
    assert bundled == live_models()


def test_listing_reads_a_cache_made_on_first_use_when_no_catalog_fits(tmp_path, monkeypatch):
    from torchkeep.models import _catalog, _registry

    monkeypatch.setattr(_catalog, "BUNDLED", tmp_path / "none.json")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _catalog._catalog.cache_clear()
    try:
        first = list_models()
        cached = list((tmp_path / "cache" / "torchkeep").glob("models-torchvision*.json"))
        assert len(cached) == 1
        _catalog._catalog.cache_clear()

        def no_live_listing():
            raise AssertionError("the cache should have been read")

        monkeypatch.setattr(_registry, "live_models", no_live_listing)
        assert list_models() == first and first[0].name == "cifar10_cnn"
        # a cache made for another torchvision is not used
        text = cached[0].read_text().replace(_catalog._torchvision_version(), "0.0.0", 1)
        cached[0].write_text(text)
        _catalog._catalog.cache_clear()
        with pytest.raises(AssertionError, match="the cache should have been read"):
            list_models()
    finally:
        _catalog._catalog.cache_clear()


def test_models_command_imports_neither_torch_nor_torchvision():
    import subprocess
    import sys

    code = (
        "import sys, io, contextlib\n"
        "from torchkeep._cli.main import run\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out: rc = run(['models', '--json'])\n"
        "assert rc == 0 and 'resnet18' in out.getvalue()\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_shell_completion_completes_architecture_names():
    import os
    import subprocess
    import sys

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_TORCHKEEP_COMPLETE": "bash_complete", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        code = "from torchkeep._cli.main import main; main()"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("torchkeep train --arch resnet1") == ["resnet101", "resnet152", "resnet18"]
    assert complete("torchkeep adapt w.pth --arch cifar") == ["cifar10_cnn"]
