"""How long ``torchkeep identify`` takes, cold (signatures built) and warm (signatures cached), and the cache size.

Run:  .venv/bin/python bench/bench_identify.py        (the cache goes to a fresh folder under bench/_work/)
      .venv/bin/python bench/bench_identify.py --cache DIR   (warm figures only, with the cache in DIR: e.g. one
                                                               holding timm's ~1,400 signatures)

Prints:
- cold: building every architecture's signature on the meta device (seeds + torchvision, and timm's when it
  is installed), in a fresh process, as the first ``identify`` of a new environment does;
- warm, in a fresh process: ``torchkeep identify FILE`` as a user runs it (interpreter start included), and
  ``torchkeep.identify(path)`` in-process (first call: the cache index is read) then repeated (median);
- the same for a file whose names no architecture has exactly (a close match: every signature is compared);
- for scale: ``torch.load(weights_only=True)`` of the same file, the cheapest thing a user could do with it;
- the cache's size on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _util import median_time

WORK = Path(__file__).parent / "_work"
CACHE = WORK / "identify-cache"


def _files() -> dict[str, Path]:
    import torch
    import torchvision

    WORK.mkdir(parents=True, exist_ok=True)
    exact = WORK / "identify_resnet50_10classes.pth"
    close = WORK / "identify_resnet50_custom_head.pth"
    if not exact.exists():
        model = torchvision.models.resnet50(num_classes=10)
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, exact)
        model.fc = torch.nn.Sequential(torch.nn.Linear(2048, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        torch.save(model.state_dict(), close)
    for p in (exact, close):
        p.read_bytes()  # page cache
    return {"exact (resnet50, 10 classes, DDP checkpoint)": exact, "close (resnet50 with a 2-layer head)": close}


def _run(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TORCHKEEP_CACHE_DIR": str(CACHE)},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    global CACHE
    files = _files()
    cold = None
    if "--cache" in sys.argv:
        CACHE = Path(sys.argv[sys.argv.index("--cache") + 1])
    else:
        shutil.rmtree(CACHE, ignore_errors=True)
    os.environ["TORCHKEEP_CACHE_DIR"] = str(CACHE)
    if "--cache" not in sys.argv:
        cold = _run("from torchkeep.models._signatures import load_signatures; print(len(load_signatures()))")
    from torchkeep.models._signatures import cache_size, load_signatures, sources

    n = len(load_signatures())
    print(f"signatures: {n} architectures/variants ({', '.join(sources())}); cache {cache_size() / 1e6:.1f} MB "
          f"in {CACHE}")
    if cold is not None:
        print(f"cold: building them all, fresh process: {cold:.1f} s (once per torch/torchvision/timm/torchkeep "
              "version)")
    exe = Path(sys.executable).parent / "torchkeep"
    for label, path in files.items():
        t0 = time.perf_counter()
        subprocess.run([str(exe), "identify", str(path)], env={**os.environ}, stdout=subprocess.DEVNULL)
        command = time.perf_counter() - t0
        first = _run(f"import time, torchkeep; t = time.perf_counter(); torchkeep.identify({str(path)!r}); "
                     "print(time.perf_counter() - t)")
        import torch

        import torchkeep

        torchkeep.identify(path)
        again = median_time(lambda p=path: torchkeep.identify(p), repeat=5)
        load = median_time(lambda p=path: torch.load(p, weights_only=True), repeat=3)
        print(f"{label}: `torchkeep identify FILE` {command:.2f} s (whole command); in-process repeated "
              f"{again * 1000:.0f} ms; fresh process incl. imports {first:.2f} s; torch.load {load * 1000:.0f} ms")


if __name__ == "__main__":
    main()
