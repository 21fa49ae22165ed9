"""The README's main command, shortened (--epochs 1): trains, evaluates, predicts held-out PNGs."""

from __future__ import annotations

import importlib.util

from PIL import Image


def test_demo_runs_end_to_end(cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = cli("demo", "--out", out, "--epochs", "1", "--quiet")
    assert code == 0, err
    run = out / "run"
    for name in ("best.safetensors", "last.safetensors", "checkpoint.pt", "curves.png", "confusion.png"):
        assert (run / name).is_file(), name
    assert (run / "tensorboard").is_dir()
    pngs = sorted((out / "pngs").glob("*.png"))
    modes = {}
    for p in pngs:
        with Image.open(p) as im:
            modes[im.mode] = modes.get(im.mode, 0) + 1
    assert modes == {"L": 3, "RGB": 3, "RGBA": 3}
    assert "trained 1 epochs" in stdout and "evaluated 359 held-out digits" in stdout
    assert "predicted 9 held-out PNGs" in stdout and "true " in stdout
    # nine different held-out digits, each file named after its true class
    assert len({p.name.split("-")[1] for p in pngs}) == 9
    assert f"tensorboard --logdir {run / 'tensorboard'}" in stdout
    assert str(run / "best.safetensors") in stdout
    if importlib.util.find_spec("torchkeep._tour") is not None:  # the formats tour step
        assert "saved every way" in stdout and (out / "formats" / "model.onnx").is_file()
