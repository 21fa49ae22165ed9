"""Convert a VGG16-size state_dict to safetensors: torchkeep vs torch.load + safetensors.torch.save_file.

Run:  .venv/bin/python bench/bench_convert.py      (builds bench/_work/vgg16.pth, ~553 MB)

Each side runs in a fresh process (so peak RSS is its own), three times, alternating; prints the median
wall time and its peak RSS, and the peak above a process that only imports torch + safetensors (the
cost of the conversion itself). torchkeep's time includes the scan, the sha256 of the source and an
fsync of the output (durable, atomic); the reference does none of these.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORK = Path(__file__).parent / "_work"

CHILD = r"""
import json, sys, time
import torch, safetensors.torch
mode, src, dst = sys.argv[1:4]
t0 = time.perf_counter()
if mode == "baseline":
    pass
elif mode == "torchkeep":
    import torchkeep
    torchkeep.convert(src, dst)
else:
    sd = torch.load(src, weights_only=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, dst)
dt = time.perf_counter() - t0
# VmHWM is this process's own peak (ru_maxrss would include the parent's RSS inherited at fork)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": dt, "peak_mb": hwm / 1024}))
"""


def run(mode: str, src: Path, dst: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(dst)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    import torch
    import torchvision

    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "vgg16.pth"
    if not src.exists():
        torch.save(torchvision.models.vgg16().state_dict(), src)
    src.read_bytes()  # page cache
    base = run("baseline", src, WORK / "unused")
    # alternate the two sides so that page-cache writeback from one run hits both alike; median of 3
    runs: dict[str, list[dict]] = {"torchkeep": [], "reference": []}
    for _ in range(3):
        for mode, out in (("torchkeep", WORK / "vgg16.tk.safetensors"), ("reference", WORK / "vgg16.ref.safetensors")):
            out.unlink(missing_ok=True)
            runs[mode].append(run(mode, src, out))
    tk, ref = (sorted(runs[m], key=lambda r: r["seconds"])[1] for m in ("torchkeep", "reference"))
    from safetensors.torch import load_file

    a, b = load_file(WORK / "vgg16.tk.safetensors"), load_file(WORK / "vgg16.ref.safetensors")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    size = src.stat().st_size / 1e6
    print(f"vgg16 state_dict: {size:.0f} MB; outputs identical: {same}")
    print(f"{'':<44}{'time':>8}{'peak RSS':>11}{'above import':>14}")
    for name, r in (("torchkeep convert (scan + restricted read)", tk),
                    ("torch.load + safetensors.torch.save_file", ref)):
        print(f"{name:<44}{r['seconds']:>7.2f}s{r['peak_mb']:>9.0f}MB{r['peak_mb'] - base['peak_mb']:>12.0f}MB")
    print(f"ratio (reference / torchkeep): time {ref['seconds'] / tk['seconds']:.2f}x, "
          f"memory above import {(ref['peak_mb'] - base['peak_mb']) / (tk['peak_mb'] - base['peak_mb']):.2f}x")


if __name__ == "__main__":
    main()
