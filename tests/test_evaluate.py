"""torchkeep.evaluate / torchkeep eval: the same split and preprocessing as training, per-class metrics."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import torchkeep
from torchkeep.errors import CompatibilityError, UsageError
from torchkeep.models import build
from torchkeep.training import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    return train(TrainConfig(out=out, epochs=3, subset=300, progress=False, tensorboard=False, plots=False))


def test_evaluate_reproduces_the_validation_accuracy_of_training(run, tmp_path):
    report = torchkeep.evaluate(run.best_path, png=tmp_path / "cm.png")
    # same seeded split, same spec preprocessing, eval mode: the number training reported for its best epoch
    assert report.data == "digits" and report.split == "val" and report.images == run.val_size == 60
    assert report.accuracy == pytest.approx(run.best_value, abs=1e-12)
    best = run.history[run.best_epoch - 1]
    assert report.loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert report.classes == [str(i) for i in range(10)]
    assert sum(c.support for c in report.per_class) == 60
    assert sum(map(sum, report.confusion)) == 60
    assert sum(report.confusion[i][i] for i in range(10)) == round(report.accuracy * 60)
    for c in report.per_class:
        assert 0.0 <= c.precision <= 1.0 and 0.0 <= c.recall <= 1.0 and 0.0 <= c.f1 <= 1.0
    assert report.png == tmp_path / "cm.png"
    with Image.open(report.png) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_evaluate_in_memory_model_and_other_splits(run):
    model = torchkeep.load(run.last_path, device="cpu")
    model.train()  # evaluate switches to eval mode itself, then restores the mode
    all_ = torchkeep.evaluate(model, "digits", split="all", subset=300)
    assert all_.images == 300 and model.training
    train_split = torchkeep.evaluate(model, split="train")
    assert train_split.images == 240
    with pytest.raises(UsageError, match="digits has no separate test split"):
        torchkeep.evaluate(model, split="test")
    with pytest.raises(UsageError, match="unknown split 'holdout'"):
        torchkeep.evaluate(model, split="holdout")


def test_dataset_with_unknown_classes_is_refused(run, tmp_path):
    root = tmp_path / "animals"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        Image.new("L", (8, 8), 128).save(root / cls / "a.png")
    with pytest.raises(CompatibilityError, match=r"dataset folder:.* has classes the model does not know: cat, dog"):
        torchkeep.evaluate(run.best_path, f"folder:{root}", split="all")


def test_folder_classes_are_matched_by_name(run, tmp_path):
    """A folder holding only some of the digits, in its own order: matched to the model's classes by name."""
    from torchkeep.data import digits_images

    images, labels = digits_images()
    root = tmp_path / "few"
    for name in ("7", "3"):
        (root / name).mkdir(parents=True)
        for i in [j for j in range(len(labels)) if str(labels[j]) == name][:3]:
            Image.fromarray(images[i], mode="L").save(root / name / f"{i}.png")
    report = torchkeep.evaluate(run.best_path, f"folder:{root}", split="all")
    assert report.images == 6 and report.classes == [str(i) for i in range(10)]
    assert report.per_class[3].support == 3 and report.per_class[7].support == 3
    assert report.per_class[0].support == 0


def test_model_without_a_recorded_dataset_needs_data(tmp_path):
    model = build("cifar10_cnn", num_classes=10, in_channels=1, input_size=8)
    path = torchkeep.save(model, tmp_path / "untrained.safetensors")
    with pytest.raises(UsageError, match=r"does not record which dataset.*--data digits"):
        torchkeep.evaluate(path)
    report = torchkeep.evaluate(path, "digits")
    assert report.images == 359  # 20% of 1,797


def test_eval_cli_table_json_and_png(cli, run, tmp_path):
    code, out, err = cli("eval", run.best_path)
    assert code == 0, err
    assert "accuracy" in out and "precision" in out and "confusion matrix" in out
    code, out, err = cli("eval", run.best_path, "--json", "--png", tmp_path / "c.png")
    assert code == 0, err
    data = json.loads(out)
    assert data["images"] == 60 and len(data["confusion"]) == 10 and len(data["per_class"]) == 10
    assert set(data["per_class"][0]) == {"name", "precision", "recall", "f1", "support"}
    assert (tmp_path / "c.png").is_file()
    code, _, err = cli("eval", tmp_path / "missing.safetensors")
    assert code == 3 and "missing.safetensors" in err and "Traceback" not in err


def test_a_run_directory_or_its_checkpoint_stands_for_its_best_model_file(cli, run, tmp_path):
    """Issue 10: predict/eval given a run directory or its checkpoint.pt used to say "adapt --arch NAME"."""
    import numpy as np

    from torchkeep.data import digits_images
    from torchkeep.errors import InputError, TorchkeepWarning

    run_dir = run.best_path.parent
    with pytest.warns(TorchkeepWarning, match=r"is a training run: using its best model file .*best\.safetensors"):
        report = torchkeep.evaluate(run_dir)
    assert report.accuracy == pytest.approx(run.best_value, abs=1e-12)
    images, _ = digits_images()
    png = tmp_path / "digit.png"
    Image.fromarray(np.asarray(images[0])).save(png)
    want = torchkeep.predict(run.best_path, [png])[0]
    for target in (run_dir, run_dir / "checkpoint.pt"):
        code, out, err = cli("eval", target, "--json")
        assert code == 0, err
        assert json.loads(out)["accuracy"] == pytest.approx(run.best_value, abs=1e-12)
        assert "using its best model file" in err and "adapt" not in err
        code, out, err = cli("predict", target, png, "--json")
        assert code == 0, err
        got = json.loads(out)[0]
        assert (got["label"], got["probability"]) == (want.label, pytest.approx(want.probability, abs=1e-6))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is a directory, not a model file or a training run"):
        torchkeep.predict(tmp_path / "empty", [png])


def test_a_digit_drawn_only_in_alpha_is_composited_onto_the_training_background(run, tmp_path):
    """Issue 10: a transparent-background PNG of a digit (black strokes, the drawing in alpha) became a blank
    input and still got a confident class. It is composited onto the training images' background (digits:
    black), in ink that stands out (white): exactly the digit the model was trained on."""
    import warnings

    import numpy as np

    from torchkeep.data import digits_images
    from torchkeep.errors import TorchkeepWarning

    images, _ = digits_images()
    plain, drawn, blank = tmp_path / "plain.png", tmp_path / "drawn.png", tmp_path / "blank.png"
    digit = np.asarray(images[-1])
    Image.fromarray(digit).save(plain)
    rgba = np.zeros((*digit.shape, 4), dtype=np.uint8)  # black everywhere; the strokes only in alpha
    rgba[..., 3] = digit
    Image.fromarray(rgba, "RGBA").save(drawn)
    Image.fromarray(rgba[..., :3]).save(blank)  # what dropping alpha used to give: nothing at all
    with warnings.catch_warnings():
        warnings.simplefilter("error", TorchkeepWarning)  # the background is known: no warning
        want, got, empty = torchkeep.predict(run.best_path, [plain, drawn, blank])
    assert (got.label, got.probability) == (want.label, pytest.approx(want.probability, abs=1e-6))
    assert empty.topk != got.topk
    # a model whose training data is unknown here: composited onto white (the strokes are dark), with a warning
    model = torchkeep.load(run.best_path)
    model.torchkeep_spec.extra.pop("training", None)
    model.torchkeep_spec.provenance.dataset = None
    with pytest.warns(TorchkeepWarning, match="drawing is only in its alpha channel.*dark strokes on white"):
        torchkeep.predict(model, [drawn, drawn])
    x = torchkeep.load_image(drawn, model.torchkeep_spec)
    assert float(x.max()) > float(x.min())  # not blank
