"""Inspect cost does not grow with file size: torchkeep.inspect vs torch.load on three state_dicts.

Run:  .venv/bin/python bench/bench_inspect.py        (files are built under bench/_work/, ~700 MB)

Prints, for mobilenet_v3_small (~10 MB), resnet50 (~100 MB) and vgg16 (~528 MB) state_dicts with random
weights: in-process time of ``torchkeep.inspect`` and of ``torch.load(weights_only=True)`` (and with
``mmap=True``), then the whole command a user runs, cold process included: ``torchkeep inspect FILE``
versus ``python -c "import torch; torch.load(FILE)"``. Median of several runs, files in the page cache.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _util import median_time

WORK = Path(__file__).parent / "_work"
MODELS = ["mobilenet_v3_small", "resnet50", "vgg16"]


def build(name: str) -> Path:
    import torch
    import torchvision

    path = WORK / f"{name}.pth"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(name).state_dict(), path)
    path.read_bytes()  # warm the page cache so both sides read from memory
    return path


def main() -> None:
    import torch

    import torchkeep

    exe = Path(sys.executable).parent
    rows = []
    for name in MODELS:
        path = build(name)
        mb = path.stat().st_size / 1e6
        t_inspect = median_time(lambda p=path: torchkeep.inspect(p))
        t_load = median_time(lambda p=path: torch.load(p, weights_only=True), repeat=3)
        t_mmap = median_time(lambda p=path: torch.load(p, weights_only=True, mmap=True), repeat=3)
        t_cli = median_time(lambda p=path: subprocess.run([exe / "torchkeep", "inspect", str(p), "--json"],
                                                   check=True, capture_output=True), repeat=3)
        t_cli_torch = median_time(lambda p=path: subprocess.run(
            [sys.executable, "-c", f"import torch; sd = torch.load({str(p)!r}, weights_only=True); print(len(sd))"],
            check=True, capture_output=True), repeat=3)
        rows.append((name, mb, t_inspect, t_load, t_mmap, t_cli, t_cli_torch))
    print(f"{'file':<22}{'size':>9}{'tk.inspect':>12}{'torch.load':>12}{'load mmap':>11}{'ratio':>8}"
          f"{'tk CLI':>9}{'torch CLI':>11}{'ratio':>7}")
    for name, mb, ti, tl, tm, tc, tt in rows:
        print(f"{name + '.pth':<22}{mb:>7.0f}MB{ti * 1e3:>10.1f}ms{tl * 1e3:>10.1f}ms{tm * 1e3:>9.1f}ms"
              f"{tl / ti:>7.0f}x{tc:>8.2f}s{tt:>10.2f}s{tt / tc:>6.1f}x")
    small, big = rows[0], rows[-1]
    print(f"\ninspect: {big[1]:.0f} MB costs {big[2] / small[2]:.1f}x the time of {small[1]:.0f} MB "
          f"(torch.load: {big[3] / small[3]:.1f}x); neither inspect path imports torch.")


if __name__ == "__main__":
    main()
