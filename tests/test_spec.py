"""ModelSpec: JSON round trip, validation, versioning, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torchkeep._spec import SPEC_VERSION, HeadRecipe, ModelSpec, Preprocessing, Provenance
from torchkeep.errors import InputError


def full_spec() -> ModelSpec:
    return ModelSpec(
        arch="vgg16",
        arch_kwargs={"dropout": 0.3},
        num_classes=3,
        class_names=["cat", "dog", "bird"],
        in_channels=3,
        input_size=(224, 224),
        preprocessing=Preprocessing(
            resize=[256], crop=[224, 224], interpolation="bicubic", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]
        ),
        head=HeadRecipe(
            "append", "classifier.6", "linear", 4096, 1000, 3, added_path="classifier.add_linear"
        ),
        freeze="backbone",
        tied={"dec.weight": "enc.weight"},
        versions={"torch": "2.4.0", "torchvision": "0.19.0", "torchkeep": "0.1.0"},
        provenance=Provenance(
            created="2026-01-01T00:00:00Z", pretrained="VGG16_Weights.IMAGENET1K_V1", dataset="cifar10"
        ),
        extra={"epochs": 3},
    )


def test_json_round_trip_is_exact():
    spec = full_spec()
    text = spec.to_json()
    assert json.loads(text)["spec_version"] == SPEC_VERSION == 1
    assert next(iter(json.loads(text))) == "spec_version"
    back = ModelSpec.from_json(text)
    assert back == spec
    assert ModelSpec.from_json(spec.to_json(indent=2)) == spec
    assert back.input_size == (224, 224) and isinstance(back.head, HeadRecipe)


def test_minimal_spec_gets_defaults():
    spec = ModelSpec.from_json('{"spec_version": 1, "arch": "resnet18"}')
    assert spec.arch == "resnet18" and spec.in_channels == 3 and spec.input_size == (224, 224)
    assert spec.preprocessing == Preprocessing() and spec.head is None and spec.tied == {}


def test_newer_spec_version_is_a_clear_error():
    data = full_spec().to_dict() | {"spec_version": SPEC_VERSION + 1}
    with pytest.raises(
        InputError,
        match=r"m\.safetensors: the model spec has spec_version 2, newer than.*pip install -U torchkeep",
    ):
        ModelSpec.from_dict(data, path="m.safetensors")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spec_version": None}, "no valid spec_version"),
        ({"arch": None}, "arch must be a string"),
        ({"num_classes": -1}, "num_classes must be a non-negative integer"),
        ({"class_names": ["a"]}, "class_names has 1 names but num_classes is 3"),
        ({"input_size": [224]}, r"input_size must be \[H, W\]"),
        ({"preprocessing": {"interpolation": "sharp"}}, "interpolation 'sharp'"),
        ({"preprocessing": {"mean": [0.5]}}, "mean and preprocessing.std must both be set"),
        ({"preprocessing": {"channels": "CMYK"}}, "channels 'CMYK'"),
        ({"head": {"mode": "graft", "path": "fc"}}, "head.mode must be 'replace' or 'append'"),
        ({"freeze": "all"}, "freeze must be 'backbone'"),
        ({"head": {"mode": "replace", "path": "fc", "aux_paths": 5}}, "head.aux_paths must be a list of strings"),
        ({"head": {"mode": "replace", "path": "fc", "aux_paths": "aux.fc"}}, "head.aux_paths must be a list"),
    ],
)
def test_malformed_fields_name_the_field(change, message):
    data = full_spec().to_dict() | change
    with pytest.raises(InputError, match=message):
        ModelSpec.from_dict(data, path="x.safetensors")


def test_invalid_json_and_non_object():
    with pytest.raises(InputError, match="not valid JSON"):
        ModelSpec.from_json("{nope")
    with pytest.raises(InputError, match="JSON list, not an object"):
        ModelSpec.from_json("[]")


def test_unknown_fields_of_a_later_writer_are_kept_in_extra():
    data = full_spec().to_dict() | {"new_thing": {"a": 1}}
    spec = ModelSpec.from_dict(data)
    assert spec.extra["unknown_fields"] == {"new_thing": {"a": 1}}


def test_replace_copies_deeply():
    spec = full_spec()
    other = spec.replace(num_classes=3)
    other.class_names.append("fish")  # type: ignore[union-attr]
    assert spec.class_names == ["cat", "dog", "bird"]


def test_spec_module_does_not_import_torch():
    code = (
        "import sys, torchkeep._spec as s\n"
        'spec = s.ModelSpec.from_json(\'{"spec_version": 1, "arch": "resnet18"}\')\n'
        "assert spec.to_json()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_values_json_cannot_store_are_a_usage_error():
    from pathlib import Path

    from torchkeep.errors import UsageError

    for extra in ({"path": Path("/data")}, {"acc": {1, 2}}):
        with pytest.raises(UsageError, match="the model spec holds a value JSON cannot store"):
            ModelSpec("cifar10_cnn", extra=extra).to_json()
