"""Scan benchmark: torchkeep.scan vs picklescan on the malicious/benign corpus and on VGG16-size files.

Run:  .venv/bin/pip install -e '.[bench]'   (picklescan)
      .venv/bin/python bench/bench_scan.py

Builds (once) under bench/_work/: the corpus of tests/corpus/make_corpus.py (payloads would only create
marker files in bench/_work/scan_markers, which the script checks stay absent), and a VGG16 state_dict
with random weights (~528 MB) saved both as a torch zip and as a legacy (non-zip) torch file.

Prints in one run: per corpus file, each tool's result; detections (caught / missed malicious files,
false positives on benign ones); then scan times side by side (corpus: median of 3 passes over all files;
each VGG16 file: median of 5 runs; page cache warm).

How results are counted. torchkeep: caught = verdict ``dangerous``; a benign file is a false positive if
its verdict is ``dangerous``. picklescan (``scan_file_path``): caught = at least one dangerous global
(``issues_count > 0``); a file it could not parse (``scan_err``) without an issue is counted as an error,
not a catch (its CLI exits 2 "error" there, not 1 "infected"); a benign file is a false positive if it
reports an issue.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

from _util import median_time

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work"
CORPUS = WORK / "scan_corpus"
MARKERS = WORK / "scan_markers"


def _make_corpus():
    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "tests" / "corpus" / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module
    spec.loader.exec_module(module)
    return module


def build_files() -> tuple[list[dict], list[Path]]:
    import torch
    import torchvision

    MARKERS.mkdir(parents=True, exist_ok=True)
    entries = _make_corpus().build(CORPUS, MARKERS)
    big = [WORK / "scan_vgg16_state_dict.pt", WORK / "scan_vgg16_legacy.pt"]
    if not all(p.exists() for p in big):
        torch.manual_seed(0)
        sd = torchvision.models.vgg16(weights=None).state_dict()
        torch.save(sd, big[0])
        torch.save(sd, big[1], _use_new_zipfile_serialization=False)
    for p in big:
        p.read_bytes()  # page cache warm for both tools
    return entries, big


def picklescan_result(path: Path) -> str:
    from picklescan.scanner import scan_file_path

    try:
        res = scan_file_path(str(path))
    except Exception as exc:  # picklescan raises on some inputs
        return f"error ({type(exc).__name__})"
    if res.issues_count > 0:
        return "dangerous"
    if res.scan_err:
        return "error"
    if res.scanned_files == 0:
        return "not scanned"
    suspicious = any(g.safety.value == "suspicious" for g in res.globals)
    return "suspicious" if suspicious else "innocuous"


def main() -> int:
    try:
        import picklescan
    except ImportError:
        print("picklescan is not installed: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    logging.getLogger("picklescan").setLevel(logging.CRITICAL)  # it logs every finding to stderr

    from torchkeep._scan import scan

    entries, big = build_files()
    version = getattr(picklescan, "__version__", None)
    if version is None:
        from importlib.metadata import version as pkg_version

        version = pkg_version("picklescan")

    rows = [(e, scan(CORPUS / e["file"]).verdict, picklescan_result(CORPUS / e["file"])) for e in entries]
    paths = [CORPUS / e["file"] for e in entries]
    t_tk = median_time(lambda: [scan(p) for p in paths], repeat=3)
    t_ps = median_time(lambda: [picklescan_result(p) for p in paths], repeat=3)

    print(f"torchkeep scan vs picklescan {version} — corpus from tests/corpus/make_corpus.py\n")
    print(f"{'file':<48} {'expected':<11} {'torchkeep':<11} {'picklescan'}")
    for e, tk, ps in rows:
        name = e["file"]
        print(f"{name:<48} {e['expected']:<11} {tk:<11} {ps}")

    mal = [(e, tk, ps) for e, tk, ps in rows if e["kind"] == "malicious"]
    ben = [(e, tk, ps) for e, tk, ps in rows if e["kind"] == "benign"]
    tk_caught = sum(tk == "dangerous" for _, tk, _ in mal)
    ps_caught = sum(ps == "dangerous" for _, _, ps in mal)
    ps_errors = sum(ps.startswith("error") for _, _, ps in mal)
    tk_fp = sum(tk == "dangerous" for _, tk, _ in ben)
    ps_fp = sum(ps == "dangerous" for _, _, ps in ben)
    tk_exact = sum(tk == e["expected"] for e, tk, _ in ben)
    print("\ndetections")
    print(f"{'':<34} {'torchkeep':>10} {'picklescan':>11}")
    print(f"{'malicious caught (of ' + str(len(mal)) + ')':<34} {tk_caught:>10} {ps_caught:>11}")
    print(f"{'malicious missed':<34} {len(mal) - tk_caught:>10} {len(mal) - ps_caught:>11}")
    print(f"{'  of which scan errors':<34} {0:>10} {ps_errors:>11}")
    print(f"{'benign false positives (of ' + str(len(ben)) + ')':<34} {tk_fp:>10} {ps_fp:>11}")
    print(f"{'benign verdict as expected':<34} {tk_exact:>10} {'-':>11}")
    missed = [e["file"] for e, _, ps in mal if ps != "dangerous"]
    if missed:
        print("picklescan missed: " + ", ".join(Path(m).name for m in missed))

    print("\ntime (seconds)")
    print(f"{'':<42} {'torchkeep':>10} {'picklescan':>11}")
    print(f"{'corpus, ' + str(len(rows)) + ' files, one pass':<42} {t_tk:>10.3f} {t_ps:>11.3f}")
    print(f"{'  per file':<42} {t_tk / len(rows) * 1000:>8.2f}ms {t_ps / len(rows) * 1000:>9.2f}ms")
    for path in big:
        mb = path.stat().st_size / 1e6
        tk_t = median_time(lambda p=path: scan(p))
        ps_t = median_time(lambda p=path: picklescan_result(p))
        verdicts = f"{scan(path).verdict} / {picklescan_result(path)}"
        label = f"{path.name} ({mb:.0f} MB = {mb * 1e6 / 2**20:.0f} MiB)"
        print(f"{label:<42} {tk_t:>10.3f} {ps_t:>11.3f}   ({verdicts})")

    leaked = list(MARKERS.glob("*PWNED_MARKER*"))
    print(f"\nmarker files created by payloads: {len(leaked)} (must be 0)")
    return 1 if leaked or tk_caught != len(mal) or tk_fp else 0


if __name__ == "__main__":
    sys.exit(main())
