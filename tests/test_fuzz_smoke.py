"""Smoke run of the differential fuzzer (``fuzz/run.py``, see fuzz/README.md).

Every target (pickle, zip, tar, npy) for 15 s with a fixed seed: the unmutated seeds first, then mutated
cases, each scanned by ``torchkeep.scan`` and loaded by the real loaders in the fuzzer's sandboxed oracle.
No case may be a failure (a loader ran code the verdict does not account for), no payload may have
escaped the oracle, and the workers must be gone afterwards. The long runs (>= 10 minutes per target)
are done by hand; their figures are in fuzz/README.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECONDS_PER_TARGET = 15
MIN_CASES = 25  # per target; a quiet machine runs 150-250 in 15 s


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def test_fuzz_smoke(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    cmd = [
        sys.executable, str(ROOT / "fuzz" / "run.py"), "--target", "all", "--seconds", str(SECONDS_PER_TARGET),
        "--seed", "1", "--corpus", str(tmp_path / "seeds"), "--findings", str(tmp_path / "findings"),
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        raise AssertionError(f"the fuzzer ran past 10 minutes:\n{log[-4000:]}") from None
    assert out.exists(), f"the fuzzer did not finish (exit {proc.returncode}):\n{log[-4000:]}"
    summary = json.loads(out.read_text())
    assert not summary["escaped_markers"], f"a payload ran despite the oracle: {summary['escaped_markers']}"
    by_target = {t["target"]: t for t in summary["targets"]}
    assert set(by_target) == {"pickle", "zip", "tar", "npy"}
    for name, t in by_target.items():
        assert t["cases"] >= MIN_CASES, f"{name}: only {t['cases']} cases ran\n{log[-3000:]}"
        assert t["baseline_cases"] > 0, f"{name}: no seed was run"
        assert t["notes"].get("oracle-lost", 0) <= t["cases"] // 10, f"{name}: the oracle lost cases: {t['notes']}"
    # every worker (scanner, oracle) is gone
    left = [pid for pid in summary["worker_pids"] if _alive(pid)]
    assert not left, f"fuzzer workers still running: {left}"
    failures = {name: t["signatures"] for name, t in by_target.items() if t["failures"]}
    assert not failures, "the fuzzer found failures (inputs under findings/):\n" + json.dumps(failures, indent=1)[:6000]
    assert proc.returncode == 0, log[-4000:]
