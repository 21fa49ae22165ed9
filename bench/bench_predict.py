"""Predict throughput (images/s) per backend, batch 1 and 64, vs a minimal hand-written eager loop.

Run:  .venv/bin/python bench/bench_predict.py [--images N] [--repeat R] [--json]

Models: the seeds' CIFAR-10 CNN (``cifar10_cnn``, 32x32 PNGs) and resnet18 (random init, 224x224
after resize 256 + center crop, JPEGs of 256x256). Images are crops of scikit-learn's sample photos
written to ``bench/_work``.

Two figures per row:
- end to end: files -> decode -> preprocess -> model -> top-k, what ``torchkeep predict`` does;
- model only: the forward pass on pre-decoded batches (where backends differ).

"hand loop" is the tutorial code: ``model.eval()``, ``torch.inference_mode()``, PIL open + the same
torchvision transform, ``torch.stack``, ``softmax``, ``topk``. The overhead of torchkeep's eager
path is measured against it. Each figure is the best of R rounds; the cases run round-robin so load from other processes
hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

WORK = Path(__file__).parent / "_work" / "predict"


def _write_images(folder: Path, n: int, size: int, suffix: str) -> list[Path]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    paths = []
    for i in range(n):
        p = folder / f"img{i:04d}{suffix}"
        paths.append(p)
        if p.exists():
            continue
        img = photos[i % 2]
        w, h = img.size
        side = 120 + (i * 7) % 200
        x0, y0 = (i * 37) % (w - side), (i * 53) % (h - side)
        img.crop((x0, y0, x0 + side, y0 + side)).resize((size, size)).save(p)
    return paths


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def hand_loop(model, transform, paths, batch_size: int, k: int = 5):
    """The minimal eager inference loop a user writes by hand."""
    import torch
    from PIL import Image

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch_size):
            batch = []
            for p in paths[i : i + batch_size]:
                with Image.open(p) as im:
                    batch.append(transform(im.convert("RGB")))
            probs = torch.softmax(model(torch.stack(batch)), dim=1)
            values, indices = probs.topk(k, dim=1)
            out.extend(zip(indices.tolist(), values.tolist()))
    return out


def bench_model(arch: str, n_images: int, repeat: int) -> list[dict]:
    """Rows of figures for one architecture."""
    import torch
    from PIL import Image

    import torchkeep
    from torchkeep._predict import collect_inputs, prepare, run_batches
    from torchkeep._preprocess import transform_for
    from torchkeep.models import build

    torch.manual_seed(0)
    model = build(arch, num_classes=10)
    spec = model.torchkeep_spec
    model_file = WORK / f"{arch}.safetensors"
    torchkeep.save(model, model_file)
    size, suffix = (32, ".png") if arch == "cifar10_cnn" else (256, ".jpg")
    paths = _write_images(WORK / arch, n_images, size, suffix)
    items = collect_inputs(paths)
    transform = transform_for(spec)
    decoded = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])

    backends = [
        ("eager", {"backend": "eager"}),
        ("eager channels_last", {"backend": "eager", "channels_last": True}),
        ("torchscript (frozen)", {"backend": "torchscript"}),
        ("onnxruntime", {"backend": "onnxruntime"}),
    ]
    ref = torchkeep.load(model_file, device="cpu")
    runners = []
    for name, kw in backends:
        t = time.perf_counter()
        runner, rspec, _ = prepare(model_file, device="cpu", **kw)
        runners.append((name, runner, rspec, time.perf_counter() - t))
    # (name, batch, setup seconds, end-to-end fn, model-only fn)
    cases = []
    for bs in (1, 64):
        cases.append(
            (
                "hand loop (eager)",
                bs,
                0.0,
                lambda bs=bs: hand_loop(ref, transform, paths, bs),
                lambda bs=bs: _forward(ref, decoded, bs),
            )
        )
        for name, runner, rspec, setup in runners:
            cases.append(
                (
                    f"torchkeep {name}",
                    bs,
                    setup,
                    lambda r=runner, s=rspec, bs=bs: run_batches(r, s, items, topk=5, batch_size=bs),
                    lambda r=runner, bs=bs: _forward(r, decoded, bs),
                )
            )
    # round-robin over the cases, best of `repeat`: load from other processes hits every case alike
    best_e2e = [float("inf")] * len(cases)
    best_fwd = [float("inf")] * len(cases)
    for rep in range(repeat + 1):
        for i, (_, _, _, e2e_fn, fwd_fn) in enumerate(cases):
            e2e, fwd = _timed(e2e_fn), _timed(fwd_fn)
            if rep:  # round 0 warms up: first-call allocations, oneDNN primitives, ORT arenas
                best_e2e[i], best_fwd[i] = min(best_e2e[i], e2e), min(best_fwd[i], fwd)
    return [
        _row(arch, name, bs, len(paths), best_e2e[i], best_fwd[i], setup)
        for i, (name, bs, setup, _, _) in enumerate(cases)
    ]


def _forward(fn, x, bs: int) -> None:
    import torch

    with torch.inference_mode():
        for i in range(0, x.shape[0], bs):
            fn(x[i : i + bs])


def _row(arch: str, name: str, bs: int, n: int, e2e: float, fwd: float, setup: float) -> dict:
    return {
        "model": arch,
        "backend": name,
        "batch": bs,
        "images": n,
        "end_to_end_img_s": n / e2e,
        "model_only_img_s": n / fwd,
        "setup_s": setup,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=0, help="images per model (default: 256 CNN, 32 resnet18)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats per figure, best taken (default 3)")
    ap.add_argument("--models", default="cifar10_cnn,resnet18")
    ap.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (default: torch's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import onnxruntime
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for arch in args.models.split(","):
        rows += bench_model(arch, args.images or (256 if arch == "cifar10_cnn" else 32), args.repeat)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
    }
    if args.json:
        json.dump({"env": env, "rows": rows}, sys.stdout, indent=2)
        print()
        return
    print(f"# predict throughput, {env}")
    print("| model | backend | batch | end to end img/s | vs hand | model only img/s | vs eager | setup s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        hand = next(
            x
            for x in rows
            if x["model"] == r["model"] and x["batch"] == r["batch"] and "hand" in x["backend"]
        )
        eager = next(
            x
            for x in rows
            if x["model"] == r["model"] and x["batch"] == r["batch"] and x["backend"] == "torchkeep eager"
        )
        print(
            f"| {r['model']} | {r['backend']} | {r['batch']} | {r['end_to_end_img_s']:.0f} | "
            f"{r['end_to_end_img_s'] / hand['end_to_end_img_s']:.2f}x | {r['model_only_img_s']:.0f} | "
            f"{r['model_only_img_s'] / eager['model_only_img_s']:.2f}x | {r['setup_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
