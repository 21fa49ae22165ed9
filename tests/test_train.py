"""torchkeep.train: the run directory, exact resume, refusals, and the CLI (in-process, tiny runs)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchkeep
from torchkeep.errors import CompatibilityError, UsageError
from torchkeep.models import build
from torchkeep.training import TrainConfig, load_checkpoint, train

# 300 digits, 240 for training: a few tenths of a second per epoch
TINY = {"subset": 300, "progress": False}


def _weights_equal(a: Path, b: Path) -> bool:
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_defaults_are_the_measured_digits_recipe():
    cfg = TrainConfig().resolved()
    assert (cfg.arch, cfg.data, cfg.epochs, cfg.batch_size) == ("cifar10_cnn", "digits", 15, 32)
    assert (cfg.optimizer, cfg.lr, cfg.scheduler, cfg.metric) == ("adamw", 3e-3, "cosine", "val_acc")
    assert Path(cfg.out) == Path("runs/cifar10_cnn-digits")
    assert TrainConfig(optimizer="sgd").resolved().lr == 0.05


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    result = train(TrainConfig(out=out, epochs=3, keep=2, **TINY))
    return result


def test_run_directory_has_every_artifact(run):
    d = run.run_dir
    for name in ("best.safetensors", "last.safetensors", "checkpoint.pt", "config.json", "metrics.csv",
                 "curves.png", "confusion.png"):
        assert (d / name).is_file(), name
    assert run.epochs_done == 3 and len(run.history) == 3 and run.resumed_from == 0
    assert (run.train_size, run.val_size) == (240, 60)
    assert run.best_epoch in (1, 2, 3) and run.best_value == max(h["val_acc"] for h in run.history)
    assert json.loads((d / "config.json").read_text())["epochs"] == 3
    assert not list(d.glob(".*.tmp"))
    with open(d / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    # --keep 2: two top files named after their epoch and metric
    assert len(run.top_k) == 2 and all(p.is_file() and "val_acc=" in p.name for p in run.top_k)
    assert len(list((d / "top").glob("*.safetensors"))) == 2


def test_model_files_are_self_describing_with_class_names(run):
    model = torchkeep.load(run.best_path, device="cpu")
    spec = model.torchkeep_spec
    assert spec.class_names == [str(i) for i in range(10)]
    assert (spec.arch, spec.in_channels, tuple(spec.input_size)) == ("cifar10_cnn", 1, (8, 8))
    assert spec.provenance.dataset == "digits"
    assert spec.extra["training"] == {"seed": 0, "val_fraction": 0.2, "subset": 300, "data": "digits"}
    assert not model.training


def test_resume_checkpoint_loads_with_weights_only(run):
    ckpt = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "torchkeep.train-checkpoint" and ckpt["epoch"] == 3
    assert {"model", "optimizer", "scheduler", "rng", "history", "best_value", "step"} <= set(ckpt)
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and isinstance(ckpt["rng"]["python"]["state"], torch.Tensor)
    assert ckpt["optimizer"]["state"]  # AdamW moments are there


def test_tensorboard_has_scalars_images_and_graph(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.tensorboard_dir))
    acc.Reload()
    tags = acc.Tags()
    assert {"Loss/train", "Loss/val", "Accuracy/train", "Accuracy/val", "LR"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("Accuracy/val")] == [1, 2, 3]
    assert tags["images"] == ["inputs"]
    assert tags["graph"] is True


def test_resume_to_4_epochs_is_bit_identical_to_4_straight(tmp_path):
    straight = train(TrainConfig(out=tmp_path / "straight", epochs=4, **TINY))
    # cosine over 4 epochs, stopped after 2 (the run stays resumable), then resumed
    first = train(TrainConfig(out=tmp_path / "split", epochs=4, on_epoch_end=lambda m: m["epoch"] == 2, **TINY))
    assert first.stopped_early and first.epochs_done == 2
    assert load_checkpoint(tmp_path / "split")["epoch"] == 2
    resumed = train(TrainConfig(resume=tmp_path / "split", progress=False))
    assert resumed.resumed_from == 2 and resumed.epochs_done == 4 and resumed.epochs_this_run == 2
    assert _weights_equal(straight.last_path, resumed.last_path)
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in resumed.history]
    assert straight.best_epoch == resumed.best_epoch


def test_resume_with_more_epochs_matches_a_longer_run(tmp_path):
    # no scheduler: "--epochs 2, then --resume --epochs 4" is exactly "--epochs 4"
    train(TrainConfig(out=tmp_path / "a", epochs=2, scheduler="none", **TINY))
    resumed = train(TrainConfig(resume=tmp_path / "a", epochs=4, progress=False))
    straight = train(TrainConfig(out=tmp_path / "b", epochs=4, scheduler="none", **TINY))
    assert _weights_equal(straight.last_path, resumed.last_path)


def test_extending_a_finished_run_trains_a_new_segment_and_accuracy_holds(tmp_path, cli):
    """The README's and the demo's "try next": cosine had ended at lr 0, so every added epoch trained at lr 0
    and left the weights bit-identical. Now the added epochs are a new cosine segment (a warm restart)."""
    first = train(TrainConfig(out=tmp_path / "run", epochs=6, subset=900, progress=False, plots=False,
                              tensorboard=False))
    before = load_file(first.last_path)
    code, out, err = cli("train", "--resume", tmp_path / "run", "--epochs", "9", "--quiet", "--no-plots",
                         "--no-tensorboard")
    assert code == 0, err
    assert "epochs 7-9: a new cosine segment of the schedule from lr 0.003 (warm restart" in out
    after = load_file(first.last_path)
    assert all(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["scheduler"]["segments"] == [[0, 6, 0.003, "cosine"], [6, 9, 0.003, "cosine"]]
    lrs = [h["lr"] for h in ckpt["history"]]
    assert lrs[0] == lrs[6] == 0.003 and lrs[6] > lrs[7] > lrs[8] > 0
    # accuracy holds: the restart's first epochs may dip, the segment ends at least where the first one did
    accs = [h["val_acc"] for h in ckpt["history"]]
    assert accs[-1] >= accs[5] - 0.02 and max(accs) >= max(accs[:6])


def test_an_extended_run_resumes_exactly_and_takes_a_new_lr(tmp_path):
    """The segments are in the checkpoint: stopping inside the added segment and resuming changes nothing."""
    train(TrainConfig(out=tmp_path / "a", epochs=2, **TINY))
    straight = train(TrainConfig(resume=tmp_path / "a", epochs=4, lr=1e-3, progress=False))
    train(TrainConfig(out=tmp_path / "b", epochs=2, **TINY))
    stopped = train(TrainConfig(resume=tmp_path / "b", epochs=4, lr=1e-3, progress=False,
                                on_epoch_end=lambda m: m["epoch"] == 3))
    assert stopped.stopped_early and stopped.epochs_done == 3
    resumed = train(TrainConfig(resume=tmp_path / "b", progress=False))
    assert not any("segment" in n for n in resumed.notes)  # it continues the segment, no new one
    assert _weights_equal(straight.last_path, resumed.last_path)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in straight.history]
    assert resumed.history[2]["lr"] == 1e-3  # --lr on resume: the peak of the new segment


def test_schedule_segments_stretch_an_unfinished_run_and_read_old_checkpoints():
    from torchkeep.training._schedule import Segment, extend, from_checkpoint, lr_at

    run = [Segment(0, 4, 0.01, "cosine")]
    stretched, note = extend(run, 2, 6, 0.5, "step")  # stopped early at 2 of 4: the cosine now ends at 6
    assert stretched == [Segment(0, 6, 0.01, "cosine")] and "now ends at epoch 6" in (note or "")
    assert extend(run, 4, 4, 0.01, "cosine") == (run, None)
    assert [round(lr_at([Segment(0, 6, 0.3, "step")], e), 6) for e in range(6)] == [0.3, 0.3, 0.03, 0.03, 0.003, 0.003]
    # a checkpoint written before segments held torch's CosineAnnealingLR state
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.003)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5).state_dict()
    assert from_checkpoint(old, {"epochs": 5, "lr": 0.003, "scheduler": "cosine"}, 0.1, "step") == [
        Segment(0, 5, 0.003, "cosine")
    ]


def test_resume_refuses_another_architecture_or_dataset(run, tmp_path):
    with pytest.raises(CompatibilityError, match=r"this run was trained with --arch cifar10_cnn, not fashion_mlp"):
        train(TrainConfig(resume=run.run_dir, arch="fashion_mlp", progress=False))
    with pytest.raises(CompatibilityError, match=r"trained with --data digits, not folder:.*leave out --data"):
        train(TrainConfig(resume=run.run_dir, data=f"folder:{tmp_path}", progress=False))
    with pytest.raises(CompatibilityError, match=r"trained with --num-classes None, not 12"):
        train(TrainConfig(resume=run.run_dir, num_classes=12, progress=False))


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(torchkeep.InputError, match=r"checkpoint.pt: no resume checkpoint here"):
        train(TrainConfig(resume=tmp_path))
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(torchkeep.InputError, match="checkpoint cannot be read"):
        train(TrainConfig(resume=tmp_path))


def test_resume_from_a_malicious_or_truncated_checkpoint_is_one_line_refusal(run, tmp_path):
    import os

    marker = tmp_path / "PWNED_MARKER"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil").mkdir()
    torch.save({"format": "torchkeep.train-checkpoint", "x": Payload()}, tmp_path / "evil" / "checkpoint.pt")
    with pytest.raises(torchkeep.UnsafeFileError, match=r"checkpoint.pt: refused: the file can execute code.*system"):
        train(TrainConfig(resume=tmp_path / "evil"))
    assert not marker.exists()
    (tmp_path / "cut").mkdir()
    data = (run.run_dir / "checkpoint.pt").read_bytes()
    (tmp_path / "cut" / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(torchkeep.InputError, match="checkpoint cannot be read") as info:
        train(TrainConfig(resume=tmp_path / "cut"))
    assert "\n" not in str(info.value)


def test_new_run_in_a_used_directory_is_refused(run):
    with pytest.raises(UsageError, match=r"already holds a training run.*--resume"):
        train(TrainConfig(out=run.run_dir, epochs=1, **TINY))


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(UsageError, match=r"unknown architecture .resnet9000.*resnet50.*torchkeep models"):
        train(TrainConfig(arch="resnet9000", out=tmp_path / "x", epochs=1, **TINY))
    with pytest.raises(UsageError, match=r"unknown dataset 'digitz'.*digits, cifar10"):
        train(TrainConfig(data="digitz", out=tmp_path / "y", epochs=1, **TINY))
    with pytest.raises(UsageError, match=r"unknown optimizer 'adam'.*adamw, sgd"):
        train(TrainConfig(optimizer="adam", out=tmp_path / "z"))


def test_folder_dataset_with_transfer_options(tmp_path):
    """ImageFolder with unreadable files, pretrained weights from a file and a frozen backbone."""
    from PIL import Image

    root = tmp_path / "shapes"
    for c, (cls, color) in enumerate((("dark", 30), ("light", 220))):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (16, 16), (color + i, color, 255 - color if c else color)).save(root / cls / f"{i}.png")
    (root / "dark" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    base = build("cifar10_cnn", num_classes=10, in_channels=3, input_size=16)
    torch.save(base.state_dict(), tmp_path / "base.pth")
    result = train(TrainConfig(
        arch="cifar10_cnn", data=f"folder:{root}", out=tmp_path / "run", epochs=2, batch_size=4,
        input_size=16, pretrained=str(tmp_path / "base.pth"), freeze="backbone", progress=False, plots=False,
        tensorboard=False,
    ))
    assert result.skipped_files == 1 and any("skipped 1" in n for n in result.notes)
    assert result.classes == ["dark", "light"] and result.train_size + result.val_size == 16
    model = torchkeep.load(result.best_path, device="cpu")
    assert model.torchkeep_spec.class_names == ["dark", "light"] and model.torchkeep_spec.freeze == "backbone"
    # frozen backbone: the first convolution is still the pretrained one
    assert torch.equal(model.state_dict()["model.0.weight"], base.state_dict()["model.0.weight"])


def test_disk_full_while_saving_keeps_the_previous_checkpoint(run, tmp_path, monkeypatch):
    """A writer that fails half-way (ENOSPC): the checkpoint of epoch 3 stays, no temp file is left."""
    import errno
    import shutil

    from torchkeep.training import CheckpointWriteError, _checkpoint

    d = tmp_path / "copy"
    shutil.copytree(run.run_dir, d)
    before = (d / "checkpoint.pt").read_bytes()

    def full_disk(payload, path):
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_checkpoint, "_torch_save", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"checkpoint.pt: could not write checkpoint.pt \(no space left on "
                       r"device\); the previous checkpoint is intact.*--resume"):
        train(TrainConfig(resume=d, epochs=4, progress=False))
    assert (d / "checkpoint.pt").read_bytes() == before
    assert not list(d.glob(".*.tmp"))
    monkeypatch.undo()
    resumed = train(TrainConfig(resume=d, epochs=4, progress=False, plots=False))
    assert resumed.resumed_from == 3 and resumed.epochs_done == 4


def test_cli_train_json_and_resume(cli, tmp_path):
    out = tmp_path / "cli"
    code, stdout, err = cli("train", "--subset", "200", "--epochs", "1", "--out", out, "--quiet", "--json",
                            "--no-tensorboard")
    assert code == 0, err
    data = json.loads(stdout)
    assert data["epochs_done"] == 1 and data["best_path"].endswith("best.safetensors")
    assert data["tensorboard_dir"] is None
    code, stdout, err = cli("train", "--resume", out, "--epochs", "2", "--quiet")
    assert code == 0, err
    assert "resumed from epoch 1" in stdout and "best.safetensors" in stdout
    code, _, err = cli("train", "--resume", out, "--arch", "resnet18", "--quiet")
    assert code == 4 and "this run was trained with --arch cifar10_cnn, not resnet18" in err
    code, _, err = cli("train", "--data", "nope", "--out", tmp_path / "n", "--quiet")
    assert code == 64 and "unknown dataset 'nope'" in err and "Traceback" not in err


def test_frozen_backbone_keeps_batchnorm_statistics(tmp_path):
    """--freeze backbone on a BatchNorm network: weights *and* running statistics stay the pretrained ones."""
    from PIL import Image

    root = tmp_path / "photos"
    for cls, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40 + i, 30), tuple(v + 3 * i for v in color)).save(root / cls / f"{i}.jpg")
    base = build("resnet18")
    torch.save(base.state_dict(), tmp_path / "resnet18.pth")
    result = train(TrainConfig(arch="resnet18", data=f"folder:{root}", pretrained=str(tmp_path / "resnet18.pth"),
                               freeze="backbone", input_size=32, epochs=1, batch_size=4, out=tmp_path / "run",
                               progress=False, plots=False, tensorboard=False))
    trained = torchkeep.load(result.best_path, device="cpu").state_dict()
    for key in ("bn1.running_mean", "layer4.1.bn2.running_var", "layer1.0.conv1.weight"):
        assert torch.equal(trained[key], base.state_dict()[key]), key
    assert trained["fc.weight"].shape == (2, 512)


def test_resume_is_exact_with_augmentation_and_worker_processes(tmp_path):
    """Random crops/rotations in 2 DataLoader workers: the data order and worker seeds come from (seed, epoch)."""
    base = {"subset": 200, "epochs": 3, "augment": True, "workers": 2, "progress": False, "plots": False,
            "tensorboard": False}
    straight = train(TrainConfig(out=tmp_path / "a", **base))
    train(TrainConfig(out=tmp_path / "b", on_epoch_end=lambda m: m["epoch"] == 1, **base))
    resumed = train(TrainConfig(resume=tmp_path / "b", workers=2, progress=False, plots=False, tensorboard=False))
    assert resumed.resumed_from == 1
    assert _weights_equal(straight.last_path, resumed.last_path)


def test_resume_refuses_a_dataset_that_changed(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (8, 8), 40 * i + (100 if cls == "b" else 0)).save(root / cls / f"{i}.png")
    cfg = {"data": f"folder:{root}", "epochs": 1, "batch_size": 4, "progress": False, "plots": False,
           "tensorboard": False}
    train(TrainConfig(out=tmp_path / "run", **cfg))
    Image.new("L", (8, 8), 7).save(root / "a" / "new.png")
    with pytest.raises(CompatibilityError, match=r"the dataset has 11 images, the run was trained on 10"):
        train(TrainConfig(resume=tmp_path / "run", epochs=2, progress=False))
    (root / "a" / "new.png").unlink()
    (root / "c").mkdir()
    Image.new("L", (8, 8), 9).save(root / "c" / "x.png")
    with pytest.raises(CompatibilityError, match=r"classes changed since the checkpoint"):
        train(TrainConfig(resume=tmp_path / "run", epochs=2, progress=False))


def test_torchvision_arch_on_grayscale_data_gets_rgb_input(tmp_path):
    """resnet18 takes 3 channels: the 1-channel digits are converted to RGB by the model's preprocessing."""
    result = train(TrainConfig(arch="resnet18", data="digits", subset=40, epochs=1, input_size=32,
                               out=tmp_path / "run", progress=False, plots=False, tensorboard=False))
    spec = torchkeep.load(result.best_path, device="cpu").torchkeep_spec
    assert (spec.in_channels, spec.preprocessing.channels, tuple(spec.input_size)) == (3, "RGB", (32, 32))


def test_architectures_with_auxiliary_outputs_train(tmp_path):
    """GoogLeNet (like Inception v3) returns (logits, aux...) in train mode: the loss is taken on the logits."""
    result = train(TrainConfig(arch="googlenet", data="digits", subset=12, epochs=1, batch_size=4, input_size=32,
                               out=tmp_path / "run", progress=False, plots=False, tensorboard=True))
    assert result.epochs_done == 1 and result.train_size == 10
    model = torchkeep.load(result.best_path, device="cpu")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_batchnorm_model_with_a_last_batch_of_one_image_trains(tmp_path):
    """9 training images in batches of 4: BatchNorm cannot train on the lone 9th (1x1 features in resnet18 at 32)."""
    result = train(TrainConfig(arch="resnet18", data="digits", subset=11, epochs=2, batch_size=4, input_size=32,
                               out=tmp_path / "run", progress=False, plots=False, tensorboard=False))
    assert (result.train_size, result.epochs_done) == (9, 2)
    assert any("1 training image per epoch left out" in n for n in result.notes)


def test_run_directory_that_cannot_be_created_is_a_one_line_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(torchkeep.TorchkeepError, match=r"a_file/run: cannot create the run directory"):
        train(TrainConfig(out=tmp_path / "a_file" / "run", epochs=1, **TINY))


def test_negative_weight_decay_and_infinite_lr_are_refused_up_front():
    with pytest.raises(UsageError, match=r"weight-decay must be >= 0, not -1"):
        TrainConfig(weight_decay=-1).resolved()
    with pytest.raises(UsageError, match=r"learning rate must be positive"):
        TrainConfig(lr=float("inf")).resolved()


def test_cli_train_head_append_and_a_frozen_random_backbone_warns(cli, tmp_path):
    """The seeds' VGG16 recipe on the CLI: --head append --freeze backbone; without --pretrained that warns."""
    out = tmp_path / "run"
    code, stdout, err = cli("train", "--head", "append", "--freeze", "backbone", "--subset", "60", "--epochs", "1",
                            "--out", out, "--quiet", "--no-plots", "--no-tensorboard", "--json")
    assert code == 0, err
    warning = "freezing the backbone of cifar10_cnn without pretrained weights: it keeps its random initialisation"
    assert f"torchkeep: warning: {warning}" in err and "pass pretrained weights (--pretrained FILE)" in err
    assert any(n.startswith(warning) for n in json.loads(stdout)["notes"])
    spec = torchkeep.load(out / "best.safetensors", device="cpu").torchkeep_spec
    assert (spec.head.mode, spec.head.added_path, spec.freeze) == ("append", "model.add_linear", "backbone")
    code, _, err = cli("train", "--resume", out, "--head", "replace", "--quiet")
    assert code == 4 and "this run was trained with --head append, not replace" in err
    # a run recorded before --head existed used "replace": resuming it with --head replace is no change
    from torchkeep.training._resume import check_identity as _check_identity

    saved = {k: v for k, v in json.loads((out / "config.json").read_text()).items() if k != "head"}
    _check_identity(TrainConfig(head="replace"), saved, out / "checkpoint.pt")
    with pytest.raises(CompatibilityError, match="trained with --head replace, not append"):
        _check_identity(TrainConfig(head="append"), saved, out / "checkpoint.pt")
    # with pretrained weights the same recipe is silent
    torch.save(build("cifar10_cnn", 10, in_channels=1, input_size=8).state_dict(), tmp_path / "pre.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchkeep.TorchkeepWarning)
        result = train(TrainConfig(out=tmp_path / "pre", pretrained=str(tmp_path / "pre.pth"), freeze="backbone",
                                   head="append", epochs=1, subset=60, progress=False, plots=False, tensorboard=False))
    assert not result.notes
