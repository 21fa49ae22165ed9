"""Spec-driven preprocessing: any PNG mode to the model's channels, size and range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchkeep._preprocess import load_image, transform_for
from torchkeep._spec import ModelSpec, Preprocessing
from torchkeep.errors import InputError, UsageError


def spec(
    channels: str = "RGB", resize=(32, 32), crop=None, mean=None, std=None, input_size=(32, 32)
) -> ModelSpec:
    return ModelSpec(
        arch="cifar10_cnn",
        in_channels={"L": 1, "RGB": 3, "RGBA": 4}[channels],
        input_size=input_size,
        preprocessing=Preprocessing(
            resize=list(resize) if resize else None,
            crop=list(crop) if crop else None,
            mean=mean,
            std=std,
            channels=channels,
        ),
    )


@pytest.fixture
def pngs(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {}
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    files["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    files["palette"] = tmp_path / "palette.png"
    Image.fromarray(rgba[:, :, :3]).convert("P").save(files["palette"])
    files["gray"] = tmp_path / "gray.png"
    Image.fromarray(rgba[:, :, 0]).save(files["gray"])
    files["gray16"] = tmp_path / "gray16.png"
    Image.fromarray(np.full((40, 50), 65535, dtype=np.uint16)).save(files["gray16"])
    files["cmyk"] = tmp_path / "cmyk.jpg"
    Image.fromarray(rgba[:, :, :3]).convert("CMYK").save(files["cmyk"])
    return files


@pytest.mark.parametrize("kind", ["rgba", "palette", "gray", "gray16", "cmyk"])
@pytest.mark.parametrize(("channels", "n"), [("RGB", 3), ("L", 1)])
def test_every_mode_becomes_the_model_input(pngs, kind, channels, n):
    t = load_image(pngs[kind], spec(channels))
    assert type(t) is torch.Tensor
    assert t.shape == (n, 32, 32) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def test_16_bit_png_is_scaled_not_clipped(pngs, tmp_path: Path):
    assert Image.open(pngs["gray16"]).mode.startswith("I")
    white = load_image(pngs["gray16"], spec("L", resize=None, input_size=(40, 50)))
    assert torch.allclose(white, torch.ones(1, 40, 50))
    half = tmp_path / "half16.png"
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(half)
    t = load_image(half, spec("RGB", resize=(8, 8)))
    assert t.shape == (3, 8, 8) and torch.allclose(t, torch.full_like(t, 32768 / 65535))


def test_rgba_to_rgb_matches_pil_convert(pngs):
    """The seeds' recipe: image.convert('RGB'), Resize, ToTensor."""
    t = load_image(pngs["rgba"], spec("RGB", resize=(40, 50), input_size=(40, 50)))
    expected = torch.from_numpy(np.array(Image.open(pngs["rgba"]).convert("RGB"))).permute(2, 0, 1) / 255
    assert torch.allclose(t, expected)


def test_normalisation_and_imagenet_style_resize_crop():
    s = spec(
        "RGB",
        resize=[256],
        crop=[224, 224],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        input_size=(224, 224),
    )
    img = Image.new("RGB", (400, 300), (255, 128, 0))
    t = transform_for(s)(img)
    assert t.shape == (3, 224, 224)
    assert torch.allclose(t[:, 100, 100], torch.tensor([2.0, (128 / 255 - 0.5) / 0.25, -2.0]), atol=1e-5)


def test_exif_orientation_is_honoured(tmp_path: Path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the photo is portrait
    img.save(tmp_path / "phone.jpg", exif=exif)
    t = load_image(tmp_path / "phone.jpg", spec("RGB", resize=[10], input_size=(20, 10)))
    assert t.shape == (3, 20, 10)


def test_numpy_and_tensor_inputs():
    s = spec("L", resize=(8, 8), input_size=(8, 8))
    tf = transform_for(s)
    arr = np.full((16, 16, 3), 255, dtype=np.uint8)
    assert torch.allclose(tf(arr), torch.ones(1, 8, 8))
    assert tf(torch.zeros(3, 16, 16, dtype=torch.uint8)).shape == (1, 8, 8)
    assert transform_for(spec("RGB"))(torch.rand(1, 32, 32)).shape == (3, 32, 32)


def test_training_augmentation_is_random_but_shaped():
    s = spec("RGB", resize=(32, 32))
    with pytest.raises(UsageError, match="train=True"):
        transform_for(s, augment=True)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    aug = transform_for(s, train=True, augment=True)
    torch.manual_seed(0)
    a = aug(img)
    b = aug(img)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    plain = transform_for(s, train=True)
    assert torch.equal(plain(img), transform_for(s)(img))  # no augment: identical to prediction


def test_same_pipeline_for_model_and_spec():
    from torchkeep.models import build

    m = build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8)
    img = Image.new("RGBA", (30, 30), (200, 100, 50, 128))
    assert torch.equal(load_image(img, m), transform_for(m.torchkeep_spec)(img))
    assert load_image(img, m).shape == (1, 8, 8)


def test_bad_inputs(tmp_path: Path):
    with pytest.raises(InputError, match="no such image file"):
        load_image(tmp_path / "missing.png", spec())
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match=r"notes\.png: cannot read the image"):
        load_image(tmp_path / "notes.png", spec())
    with pytest.raises(UsageError, match="ModelSpec"):
        transform_for(object())
    with pytest.raises(UsageError, match="mean has 2 values for 3-channel input"):
        transform_for(spec(mean=[0.5, 0.5], std=[0.2, 0.2]))


def test_unreadable_pil_image_is_an_input_error(tmp_path: Path):
    # A PIL image handed over directly fails like a path does: truncated data, a mode with no conversion.
    png = tmp_path / "cut.png"
    Image.new("RGB", (40, 30), (9, 9, 9)).save(png)
    png.write_bytes(png.read_bytes()[:60])
    with Image.open(png) as im, pytest.raises(InputError, match="cannot read the image"):
        load_image(im, spec())
    with pytest.raises(InputError, match=r"cannot read the image.*LAB"):
        load_image(Image.new("LAB", (8, 8)), spec(channels="L"))
