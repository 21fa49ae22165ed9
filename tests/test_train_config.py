"""TrainConfig resolved once into a typed RunConfig; progress reported through a callback; the CLI's choices
and defaults come from the library without importing torch."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from torchkeep.errors import UsageError
from torchkeep.training import RunConfig, TrainConfig, TrainProgress, train
from torchkeep.training._config import DEFAULT_LR, DEFAULT_WD, DEFAULTS, METRICS, OPTIMIZERS
from torchkeep.training._state import RunState

# fields whose None means "none" or "what the run finds" (dataset, device): the rest must be resolved
STILL_OPTIONAL = {"amp", "num_classes", "input_size", "threads", "pretrained", "freeze", "subset", "data_root",
                  "resume", "checkpoint_every", "find_unused_parameters", "progress", "on_epoch_end"}


def test_resolving_fills_every_default_once_into_a_frozen_typed_config():
    cfg = TrainConfig().resolved()
    assert isinstance(cfg, RunConfig)
    unresolved = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is None]
    assert set(unresolved) <= STILL_OPTIONAL, unresolved
    for name, default in DEFAULTS.items():
        assert getattr(cfg, name) == default, name
    assert isinstance(cfg.out, Path) and cfg.out == Path("runs/cifar10_cnn-digits")
    for opt in OPTIMIZERS:
        r = TrainConfig(optimizer=opt).resolved()
        assert (r.lr, r.weight_decay) == (DEFAULT_LR[opt], DEFAULT_WD[opt])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]
    assert TrainConfig(metric="val_loss").resolved().lower_is_better and not cfg.lower_is_better
    assert TrainConfig(input_size=[16, 12]).resolved().input_size == (16, 12)  # type: ignore[arg-type]


def test_a_resumed_run_takes_its_saved_settings_but_not_its_callbacks():
    saved = {"arch": "fashion_mlp", "lr": 0.01, "epochs": 4, "progress": True, "resume": "elsewhere",
             "out": "runs/old"}
    cfg = TrainConfig(epochs=9, resume="runs/old").resolved(saved)
    assert (cfg.arch, cfg.lr, cfg.epochs, cfg.out) == ("fashion_mlp", 0.01, 9, Path("runs/old"))
    assert cfg.progress is None and cfg.resume == Path("runs/old")
    # the settings written to config.json: every TrainConfig field but the callbacks, JSON-ready
    d = cfg.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(TrainConfig) if f.name != "on_epoch_end"]
    assert d["progress"] is False and d["out"] == "runs/old" and json.loads(json.dumps(d)) == d


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be at least 1, not 0"),
        ("batch_size", 0, "batch-size must be at least 1, not 0"),
        ("keep", 0, "keep must be at least 1, not 0"),
        ("num_classes", 0, "num-classes must be at least 1, not 0"),
        ("subset", 1, "subset must be at least 2 images, not 1"),
        ("checkpoint_every", 0, "checkpoint-every must be at least 1 step, not 0"),
        ("val_fraction", 1.0, r"val-fraction must be in \[0, 1\), not 1.0"),
        ("threads", 0, "threads must be >= 1, not 0"),
        ("workers", -1, "workers must be >= 0, not -1"),
        ("lr", -1.0, "learning rate must be positive"),
        ("optimizer", "adam", "unknown optimizer 'adam'.*adamw, sgd"),
        ("scheduler", "linear", "unknown scheduler 'linear'.*cosine, step, none"),
        ("metric", "acc", "unknown metric 'acc'.*" + ", ".join(METRICS)),
        ("head", "swap", "unknown head 'swap'.*--head replace or --head append"),
        ("freeze", "all", "cannot freeze 'all'.*--freeze backbone"),
        ("checkpoint_format", "zip", "unknown checkpoint format 'zip'.*torch, dcp"),
        ("device", "tpu", "unknown device 'tpu'"),
    ],
)
def test_a_bad_value_is_a_one_line_usage_error(field, value, message):
    with pytest.raises(UsageError, match=message) as info:
        TrainConfig(**{field: value}).resolved()
    assert "\n" not in str(info.value) and info.value.exit_code == 64


def test_progress_is_a_callback_and_true_is_refused():
    assert TrainConfig(progress=False).resolved().progress is None
    events: list[TrainProgress] = []
    assert TrainConfig(progress=events.append).resolved().progress == events.append
    with pytest.raises(UsageError, match="progress must be a callable taking a TrainProgress") as info:
        TrainConfig(progress=True).resolved()
    assert "torchkeep train draws progress bars" in str(info.value)


def test_a_run_reports_its_progress_through_the_callback(tmp_path):
    events: list[TrainProgress] = []
    result = train(TrainConfig(out=tmp_path / "run", subset=120, epochs=2, batch_size=8, plots=False,
                               tensorboard=False, progress=events.append))
    kinds = [e.kind for e in events]
    assert kinds[0] == "epoch_start" and kinds[-1] == "run_end"
    assert kinds.count("epoch_start") == kinds.count("epoch_end") == 2
    # 96 training images in batches of 8: 12 steps, reported at 10 and at the last
    steps = [e for e in events if e.kind == "step"]
    assert [(e.epoch, e.step, e.steps) for e in steps] == [(1, 10, 12), (1, 12, 12), (2, 10, 12), (2, 12, 12)]
    assert all(0 <= (e.acc or 0) <= 1 and e.loss is not None and math.isfinite(e.loss) for e in steps)
    ends = [e for e in events if e.kind == "epoch_end"]
    assert [e.metrics for e in ends] == result.history
    assert [e.epoch for e in ends if e.improved][-1] == result.best_epoch


def test_the_cli_draws_one_line_per_epoch_from_the_reports(capsys):
    from torchkeep._cli.train import TrainBars

    row = {"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.25, "val_acc": 0.9, "seconds": 1.25}
    with TrainBars() as bars:
        bars(TrainProgress("epoch_start", 2, 10, step=0, steps=5))
        bars(TrainProgress("step", 2, 10, step=5, steps=5, loss=0.5, acc=0.8))
        bars(TrainProgress("epoch_end", 2, 10, metrics=row, improved=True))
        bars(TrainProgress("run_end", 2, 10))
    err = capsys.readouterr().err
    assert "epoch  2/10  train loss 0.5000 acc 80.0%  val loss 0.2500 acc 90.0%  1.2s  best" in err


def test_best_and_top_k_follow_the_metric_direction():
    st = RunState()
    assert st.improved(0.5, lower_is_better=False) and not st.improved(math.nan, lower_is_better=False)
    for epoch, loss in enumerate([0.9, 0.4, 0.7, 0.2], start=1):
        st.epoch = epoch
        st.end_epoch({"epoch": epoch}, [[1]], loss, lower_is_better=True)
        st.update_top_k(loss, 2, "val_loss", lower_is_better=True)
    assert (st.best_epoch, st.best_value) == (4, 0.2)
    assert [(t["epoch"], t["file"]) for t in st.top_k] == [
        (4, "top/epoch004-val_loss=0.2000.safetensors"), (2, "top/epoch002-val_loss=0.4000.safetensors")
    ]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_reads_the_library_choices_without_importing_torch(command):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "torchkeep", command, "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    if command == "train":
        assert "[adamw|sgd]" in proc.stdout and "[val_acc|val_loss|train_acc|train_loss]" in proc.stdout
    else:
        assert "[val|test|train|all]" in proc.stdout and "256" in proc.stdout
