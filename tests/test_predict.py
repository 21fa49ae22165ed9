"""torchkeep predict on real images: scikit-learn's sample photos, PNGs in every mode, broken files."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

import torchkeep
from torchkeep.errors import InputError, UsageError
from torchkeep.models import build

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real pictures in every mode predict must handle, plus broken files."""
    d = tmp_path_factory.mktemp("images")
    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    files = {"china": d / "china.jpg", "flower": d / "flower.jpg"}
    china.save(files["china"], quality=90)
    flower.save(files["flower"], quality=90)

    # each PNG shows another part of the photos, so a model can learn to tell them apart
    def part(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
        return img.crop(box).resize((96, 64))

    (d / "pngs").mkdir()
    files["rgba"] = d / "pngs" / "rgba.png"
    rgba = part(china, (0, 0, 320, 213)).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(files["rgba"])
    files["palette"] = d / "pngs" / "palette.png"
    part(flower, (320, 0, 640, 213)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(
        files["palette"]
    )
    files["gray"] = d / "pngs" / "gray.png"
    part(china, (320, 213, 640, 427)).convert("L").save(files["gray"])
    files["gray16"] = d / "pngs" / "gray16.png"
    arr16 = np.asarray(part(flower, (0, 213, 320, 427)).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(arr16.astype(np.uint16)).save(files["gray16"])
    assert Image.open(files["gray16"]).mode.startswith("I")
    bad = d / "bad"
    bad.mkdir()
    data = files["china"].read_bytes()
    files["truncated"] = bad / "truncated.jpg"
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["text"] = bad / "notes.png"
    files["text"].write_text("this is not a picture\n")
    side = int((Image.MAX_IMAGE_PIXELS or 89_478_485) ** 0.5 * 2) + 10  # beyond 2x the limit: an error
    files["bomb"] = _png_with_size(bad / "bomb.png", side, side)
    files["big"] = _png_with_size(bad / "big.png", side * 3 // 4, side * 3 // 4)  # 1x-2x: Pillow only warns
    return files


def _cnn(images: list[Path] | None = None) -> torch.nn.Module:
    """The seeds' CIFAR-10 CNN, trained for a moment to tell ``images`` apart (image i -> class i)."""
    from torchkeep._preprocess import load_image

    torch.manual_seed(0)
    model = build("cifar10_cnn", num_classes=10, class_names=CLASSES)
    if images:
        x = torch.stack([load_image(p, model.torchkeep_spec) for p in images])
        y = torch.arange(len(images))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory, photos) -> Path:
    model = _cnn(_good(photos))
    return Path(torchkeep.save(model, tmp_path_factory.mktemp("models") / "cnn.safetensors"))


def _good(photos) -> list[Path]:
    return [photos[k] for k in ("china", "flower", "rgba", "palette", "gray", "gray16")]


def test_predict_matches_a_hand_written_eager_loop(cnn_file, photos):
    model = torchkeep.load(cnn_file, device="cpu")
    preds = torchkeep.predict(cnn_file, _good(photos), topk=3, device="cpu")
    assert [p.input for p in preds] == [str(p) for p in _good(photos)]
    # the tutorial way: open, convert to RGB, resize to 32x32, ToTensor, eval, no_grad, argmax
    for pred, path in zip(preds, _good(photos)):
        img = Image.open(path)
        if img.mode.startswith("I;16"):
            arr = np.asarray(img, dtype=np.float32) / 65535.0
            x = torch.from_numpy(arr)[None].expand(3, -1, -1)[None]
            x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
        else:
            img = img.convert("RGBA").convert("RGB") if img.mode == "P" else img.convert("RGB")
            arr = np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
            x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        assert pred.ok and pred.index == int(probs.argmax())
        assert pred.label == CLASSES[pred.index]
        assert pred.probability == pytest.approx(float(probs.max()), abs=0.02)
        assert len(pred.topk) == 3 and pred.topk[0].label == pred.label
        assert pred.topk[0].probability >= pred.topk[1].probability >= pred.topk[2].probability


def test_every_backend_gives_the_same_top1(cnn_file, photos):
    eager = torchkeep.predict(cnn_file, _good(photos), device="cpu", backend="eager")
    assert [p.label for p in eager] == CLASSES[:6]  # the model learnt image i -> class i
    for backend in ("torchscript", "onnxruntime"):
        other = torchkeep.predict(cnn_file, _good(photos), device="cpu", backend=backend)
        assert [p.index for p in other] == [p.index for p in eager], backend
        for a, b in zip(eager, other):
            assert b.probability == pytest.approx(a.probability, abs=1e-4)


def test_resnet18_same_top1_on_every_backend(tmp_path, photos):
    torch.manual_seed(0)
    model = build("resnet18", num_classes=10, input_size=64)
    path = torchkeep.save(model, tmp_path / "r18.safetensors")
    images = [photos["china"], photos["flower"], photos["rgba"], photos["gray"]]
    results = {
        b: torchkeep.predict(path, images, backend=b, device="cpu")
        for b in ("eager", "torchscript", "onnxruntime")
    }
    for backend, preds in results.items():
        assert [p.index for p in preds] == [p.index for p in results["eager"]], backend
        assert preds[0].label.startswith("class ")  # no class names in the spec
        for a, b in zip(results["eager"], preds):
            assert b.probability == pytest.approx(a.probability, abs=1e-4)


def test_in_memory_module_and_pil_images(photos):
    model = _cnn(_good(photos))
    img = Image.open(photos["flower"])
    model.train()  # e.g. a check in the middle of training
    (pred,) = torchkeep.predict(model, img)
    assert model.training, "predict must give the model back in the mode it was in"
    (from_file,) = torchkeep.predict(model, photos["flower"], device="cpu")
    assert pred.input == "<image 0>" and pred.index == from_file.index
    assert pred.probability == pytest.approx(from_file.probability, abs=1e-5)


def test_unreadable_images_are_reported_and_skipped(cnn_file, photos):
    inputs = [
        photos["china"],
        photos["truncated"],
        photos["text"],
        photos["bomb"],
        photos["big"],
        photos["flower"],
    ]
    preds = torchkeep.predict(cnn_file, inputs, device="cpu")
    by_name = {Path(p.input).name: p for p in preds}
    assert by_name["china.jpg"].ok and by_name["flower.jpg"].ok
    assert "truncated" in by_name["truncated.jpg"].error
    assert "cannot identify image file" in by_name["notes.png"].error
    assert "decompression bomb" in by_name["bomb.png"].error
    assert "decompression bomb" in by_name["big.png"].error
    assert Image.MAX_IMAGE_PIXELS is not None  # the limit still holds after predict
    assert [p.ok for p in preds] == [True, False, False, False, False, True]


def test_folders_globs_and_missing(cnn_file, photos):
    root = photos["china"].parent
    preds = torchkeep.predict(cnn_file, root / "pngs", device="cpu")
    assert sorted(Path(p.input).name for p in preds) == ["gray.png", "gray16.png", "palette.png", "rgba.png"]
    preds = torchkeep.predict(cnn_file, str(root / "**" / "*.jpg"), device="cpu")
    assert {Path(p.input).name for p in preds} == {"china.jpg", "flower.jpg", "truncated.jpg"}
    # the whole tree: recursive, each file once even when named twice
    preds = torchkeep.predict(cnn_file, [root, photos["china"]], device="cpu")
    assert len(preds) == 10 and sum(p.ok for p in preds) == 6
    preds = torchkeep.predict(
        cnn_file, [photos["china"], root / "nope.jpg", str(root / "*.gif")], device="cpu"
    )
    assert preds[1].error == "no such file or folder" and preds[2].error == "the pattern matches no file"
    with pytest.raises(InputError, match=r"nope\.jpg: no such file"):
        torchkeep.predict(cnn_file, root / "nope.jpg")


def test_batching_does_not_change_results(cnn_file, photos):
    one = torchkeep.predict(cnn_file, _good(photos), batch_size=1, device="cpu")
    many = torchkeep.predict(cnn_file, _good(photos), batch_size=64, device="cpu")
    seen = []
    torchkeep.predict(
        cnn_file, _good(photos), batch_size=4, device="cpu", progress=lambda d, t: seen.append((d, t))
    )
    assert [p.index for p in one] == [p.index for p in many]
    assert seen[-1] == (6, 6) and seen[0] == (4, 6)


def test_half_precision(cnn_file, photos):
    full = torchkeep.predict(cnn_file, _good(photos), device="cpu")
    half = torchkeep.predict(cnn_file, _good(photos), device="cpu", half=True)
    assert [p.index for p in half] == [p.index for p in full]
    for a, b in zip(full, half):
        assert b.probability == pytest.approx(a.probability, abs=2e-2)


def test_bad_arguments(cnn_file, photos):
    with pytest.raises(UsageError, match="unknown backend"):
        torchkeep.predict(cnn_file, photos["china"], backend="tensorrt")
    with pytest.raises(UsageError, match="topk"):
        torchkeep.predict(cnn_file, photos["china"], topk=0)
    with pytest.raises(UsageError, match="no torchkeep spec"):
        torchkeep.predict(torch.nn.Linear(3, 2), photos["china"])


def test_not_a_model_file(tmp_path, photos):
    # weights of no architecture torchkeep knows: refused, naming the file and the adapt command
    weights = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3, 3), "b": torch.zeros(3)}, weights)
    with pytest.raises(InputError, match=r"weights\.pt.*not a torchkeep model file") as info:
        torchkeep.predict(weights, photos["china"])
    assert "torchkeep adapt" in (info.value.fix or "")
    # weights `torchkeep identify` names run as that architecture, with a warning that says so
    known = tmp_path / "cnn_weights.pt"
    torch.save(_cnn().state_dict(), known)
    with pytest.warns(torchkeep.TorchkeepWarning, match="has no torchkeep spec: identified"):
        assert torchkeep.predict(known, photos["china"])[0].ok


def test_cli_table_json_csv_and_exit_codes(cnn_file, photos, cli, tmp_path):
    code, out, err = cli(
        "predict", cnn_file, photos["china"], photos["flower"], "--topk", "2", "--device", "cpu"
    )
    assert code == 0, err
    assert "china.jpg" in out and "2 classified" in out
    assert any(name in out for name in CLASSES)

    code, out, err = cli("predict", cnn_file, photos["china"], photos["text"], "--json", "--device", "cpu")
    assert code == 1
    data = json.loads(out)
    assert data[0]["label"] in CLASSES and data[0]["error"] is None
    assert len(data[0]["topk"]) == 3 and set(data[0]["topk"][0]) == {"index", "label", "probability"}
    assert data[1]["label"] is None and "cannot identify" in data[1]["error"]

    table = tmp_path / "out.csv"
    code, out, err = cli("predict", cnn_file, photos["china"].parent, "--csv", table, "--topk", "2")
    assert code == 1 and "unreadable" in out and "truncated.jpg" in err
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 10
    assert set(rows[0]) == {"input", "label", "index", "probability", "label_2", "probability_2", "error"}
    assert sum(1 for r in rows if r["error"]) == 4

    code, _, err = cli("predict", cnn_file, tmp_path / "missing.png")
    assert code == 3 and "missing.png" in err and "Traceback" not in err
    code, _, err = cli("predict", cnn_file, photos["china"], "--backend", "nope")
    assert code == 64


def test_trained_digits_model_on_png_files_every_backend(tmp_path):
    """The README story: a digits model, held-out digits written as grayscale/RGB/RGBA PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    names = [f"digit {i}" for i in range(10)]
    torch.manual_seed(0)
    model = build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8, class_names=names)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, 1500, (64,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    path = torchkeep.save(model.eval(), tmp_path / "digits.safetensors")
    files, truth = [], []
    for n, i in enumerate(range(1500, 1530)):  # held out
        pixels = (digits.images[i] * 255 / 16).round().astype(np.uint8)
        img = Image.fromarray(pixels, "L").convert(("L", "RGB", "RGBA")[n % 3])
        files.append(tmp_path / f"{i}_{img.mode}.png")
        img.save(files[-1])
        truth.append(names[digits.target[i]])
    by_backend = {
        b: torchkeep.predict(path, files, backend=b, device="cpu")
        for b in ("eager", "torchscript", "onnxruntime")
    }
    eager = [p.label for p in by_backend["eager"]]
    accuracy = sum(a == b for a, b in zip(eager, truth)) / len(truth)
    assert accuracy >= 0.8, f"predicted {eager} for {truth}"
    for backend, preds in by_backend.items():
        assert [p.label for p in preds] == eager, backend


def test_user_class_model_needs_trust(tmp_path, photos, cli, monkeypatch):
    (tmp_path / "tk_user_net.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, num_classes=3):\n"
        "        super().__init__()\n"
        "        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())\n"
        "        self.head = torch.nn.Linear(4, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.body(x))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = torchkeep.save(
        build("tk_user_net:Net", num_classes=3, input_size=16), tmp_path / "user.safetensors"
    )
    with pytest.raises(torchkeep.UntrustedCodeError):
        torchkeep.predict(path, photos["china"])
    (pred,) = torchkeep.predict(path, photos["china"], trust=True, device="cpu")
    assert pred.ok and pred.label.startswith("class ")
    code, _, err = cli("predict", path, photos["china"])
    assert code == 1 and "trust" in err
    code, out, _ = cli("predict", path, photos["china"], "--trust", "--json")
    assert code == 0 and json.loads(out)[0]["index"] in (0, 1, 2)
