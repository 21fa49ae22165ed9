"""Differential fuzzer: torchkeep's scanner against the real loaders.

    python fuzz/run.py --target pickle --seconds 600 [--seed N] [--jobs 1]
    python fuzz/run.py --target all --seconds 15 --seed 1 --json out.json
    python fuzz/run.py --replay fuzz/findings/pickle/<sha>.bin --target pickle

Each case is a seed (``fuzz/seeds.py``: the corpus of ``tests/corpus/make_corpus.py`` plus benign files)
mutated by ``fuzz/mutators.py``. The case goes to ``torchkeep.scan`` (``fuzz/scanner_worker.py``) and to
the real loaders of its target, run in a sandboxed child with an audit hook that records and refuses
(``fuzz/oracle.py``). ``fuzz/policy.py`` decides whether the scanner's verdict is a failure. Failing
inputs land in ``fuzz/findings/<target>/<sha>.bin`` with a ``.json`` sidecar saying what the loader did
and what the scanner said. See fuzz/README.md.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import mutators  # noqa: E402
import policy  # noqa: E402

TARGETS = ("pickle", "zip", "tar", "npy")
LOADERS = {
    "pickle": ["pickle", "pypickle", "torch"],
    "zip": ["torch", "zip-members"],
    "tar": ["torch"],
    "npy": ["numpy"],
}
SCAN_TIMEOUT = 30.0


# -- workers -------------------------------------------------------------------------------------------
class Proc:
    """A worker speaking one JSON object per line on stdin/stdout."""

    def __init__(
        self, argv: list[str], name: str, mem_limit: int | None = None, ready_timeout: float = 180, pythonpath: str | None = None
    ) -> None:
        self.argv = argv
        self.pythonpath = pythonpath
        self.name = name
        self.mem_limit = mem_limit
        self.ready_timeout = ready_timeout
        self.p: subprocess.Popen | None = None
        self.buf = b""
        self.starts = 0
        self.pids: list[int] = []

    def start(self) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.pythonpath, env.get("PYTHONPATH")) if p)
        limit = self.mem_limit

        def pre() -> None:
            os.setsid()
            if limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        self.p = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=tempfile.gettempdir(),
            env=env,
            preexec_fn=pre,
        )
        self.buf = b""
        self.starts += 1
        self.pids.append(self.p.pid)
        ready = self.read(self.ready_timeout)
        if not ready or not ready.get("ready"):
            self.kill()
            raise RuntimeError(f"the {self.name} worker did not start")
        return ready

    def send(self, obj: dict) -> None:
        assert self.p is not None and self.p.stdin is not None
        self.p.stdin.write((json.dumps(obj) + "\n").encode())
        self.p.stdin.flush()

    def fileno(self) -> int:
        assert self.p is not None and self.p.stdout is not None
        return self.p.stdout.fileno()

    def poll_line(self) -> dict | None:
        """A complete line already read, if any."""
        if b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            return json.loads(line)
        return None

    def feed(self) -> bool:
        """Read what is available; False at EOF."""
        chunk = os.read(self.fileno(), 1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.poll_line()
            if line is not None:
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fileno()], [], [], left)
            if ready and not self.feed():
                return None

    def kill(self) -> None:
        if self.p is None:
            return
        try:
            os.killpg(self.p.pid, 9)
        except OSError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for fh in (self.p.stdin, self.p.stdout):
            try:
                if fh:
                    fh.close()
            except OSError:
                pass
        self.p = None

    def close(self) -> None:
        if self.p is None:
            return
        try:
            assert self.p.stdin is not None
            self.p.stdin.close()
            self.p.wait(timeout=15)
        except Exception:
            pass
        self.kill()


class Pair:
    """One scanner worker and one oracle worker, asked about the same file at the same time."""

    def __init__(self, timeout: float, scanner_src: str | None = None) -> None:
        py = sys.executable
        self.timeout = timeout
        self.scanner = Proc([py, str(HERE / "scanner_worker.py")], "scanner", mem_limit=6 << 30, pythonpath=scanner_src)
        self.oracle = Proc([py, str(HERE / "oracle.py")], "oracle")
        self.n = 0
        self.oracle_restarts = 0
        self.scanner_restarts = 0

    def start(self) -> None:
        self.scanner.start()
        self.oracle.start()

    def close(self) -> None:
        self.scanner.close()
        self.oracle.close()

    def ask(self, path: str, loaders: list[str]) -> tuple[dict, dict | None]:
        self.n += 1
        rid = self.n
        self.scanner.send({"id": rid, "path": path})
        self.oracle.send({"id": rid, "path": path, "loaders": loaders, "timeout": self.timeout})
        scan: dict | None = None
        runs: dict | None = None
        t0 = time.monotonic()
        oracle_deadline = t0 + self.timeout * (len(loaders) + 1) + 20
        scan_deadline = t0 + SCAN_TIMEOUT
        while scan is None or runs is None:
            now = time.monotonic()
            if scan is None and now > scan_deadline:
                scan = {"timeout": True, "verdict": None}
                self.scanner.kill()
                self.scanner.start()
                self.scanner_restarts += 1
            if runs is None and now > oracle_deadline:
                runs = {}
                self.oracle.kill()
                self.oracle.start()
                self.oracle_restarts += 1
            if scan is not None and runs is not None:
                break
            for proc, kind in ((self.scanner, "scan"), (self.oracle, "runs")):
                if (kind == "scan" and scan is not None) or (kind == "runs" and runs is not None):
                    continue
                line = proc.poll_line()
                if line is not None:
                    if kind == "scan":
                        scan = line
                    else:
                        runs = line.get("runs", {})
            waiting = []
            if scan is None and self.scanner.p is not None:
                waiting.append(self.scanner)
            if runs is None and self.oracle.p is not None:
                waiting.append(self.oracle)
            if not waiting:
                continue
            ready, _, _ = select.select(waiting, [], [], 0.5)
            for proc in ready:
                if not proc.feed():  # the worker died
                    if proc is self.scanner:
                        scan = {"died": True, "verdict": None}
                        self.scanner.kill()
                        self.scanner.start()
                        self.scanner_restarts += 1
                    else:
                        runs = {}
                        self.oracle.kill()
                        self.oracle.start()
                        self.oracle_restarts += 1
        return scan, runs


# -- seeds ---------------------------------------------------------------------------------------------
def _seed_cache_key() -> str:
    h = hashlib.sha256()
    for p in (ROOT / "tests" / "corpus" / "make_corpus.py", HERE / "seeds.py"):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def ensure_seeds(corpus: str | None) -> Path:
    if corpus:
        d = Path(corpus)
    else:
        d = HERE / ".seeds" / _seed_cache_key()
    if (d / "seeds.json").exists():
        return d
    d = d.resolve()
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seeds-", dir=d.parent))  # built beside, renamed when complete
    (tmp / "_tmp").mkdir()
    cmd = [sys.executable, str(HERE / "seeds.py"), str(tmp), "--markers", str(d / "markers")]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    try:
        os.replace(tmp, d)
    except OSError:  # another run made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def load_seeds(d: Path) -> tuple[dict[str, list[mutators.Seed]], str]:
    manifest = json.loads((d / "seeds.json").read_text())
    seeds: dict[str, list[mutators.Seed]] = {t: [] for t in TARGETS}
    for e in manifest["entries"]:
        seeds[e["target"]].append(mutators.Seed(e["file"], (d / e["file"]).read_bytes(), e["origin"]))
    return seeds, manifest["markers"]


# -- statistics ----------------------------------------------------------------------------------------
class Stats:
    def __init__(self, target: str) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.cases = 0
        self.baseline = 0
        self.seconds = 0.0
        self.verdicts: collections.Counter = collections.Counter()
        self.oracle: collections.Counter = collections.Counter()
        self.cross: collections.Counter = collections.Counter()
        self.loader_status: collections.Counter = collections.Counter()
        self.loader_errors: collections.Counter = collections.Counter()
        self.globals: collections.Counter = collections.Counter()
        self.events: collections.Counter = collections.Counter()
        self.failures: collections.Counter = collections.Counter()
        self.signatures: dict[str, dict] = {}
        self.saved: list[str] = []
        self.notes: collections.Counter = collections.Counter()
        self.scan_seconds = 0.0
        self.mutator_errors = 0

    def summary(self) -> dict:
        return {
            "target": self.target,
            "cases": self.cases,
            "baseline_cases": self.baseline,
            "seconds": round(self.seconds, 1),
            "cases_per_s": round(self.cases / self.seconds, 2) if self.seconds else 0.0,
            "failures": sum(self.failures.values()),
            "failures_by_class": dict(self.failures),
            "signatures": list(self.signatures.values()),
            "saved": self.saved,
            "verdicts": dict(self.verdicts),
            "oracle": dict(self.oracle),
            "verdict_x_oracle": {f"{v}/{o}": n for (v, o), n in sorted(self.cross.items(), key=str)},
            "coverage": {
                "distinct_globals": len(self.globals),
                "distinct_events": len(self.events),
                "distinct_loader_outcomes": len(self.loader_errors),
                "events": dict(self.events.most_common()),
                "top_globals": dict(self.globals.most_common(25)),
                "loader_status": {f"{k[0]}:{k[1]}": n for k, n in sorted(self.loader_status.items())},
            },
            "notes": dict(self.notes),
            "mean_scan_ms": round(1000 * self.scan_seconds / self.cases, 2) if self.cases else 0.0,
            "mutator_errors": self.mutator_errors,
        }


def _signature(klass: str, obs: policy.Observation, scan: dict) -> str:
    globs = sorted({f"{m}.{n}" for m, n in obs.code_globals})[:4]
    events = sorted({e for _, e, _ in obs.dangerous})[:4]
    raised = f" | raised={scan['exception'].split(':')[0]}" if scan.get("exception") else ""
    return f"{klass} | scan={scan.get('verdict')}{raised} | globals={','.join(globs)} | events={','.join(events)}"


def record(
    stats: Stats,
    data: bytes,
    ext: str,
    origin: dict,
    scan: dict,
    runs: dict,
    findings_dir: Path,
    max_per_signature: int,
) -> list[tuple[str, str]]:
    obs = policy.observe(runs)
    fails = policy.judge(obs, scan) if runs else []
    if scan.get("timeout") or scan.get("died"):
        fails = [f for f in fails if f[0].startswith("scanner-")]
    with stats.lock:
        stats.cases += 1
        stats.scan_seconds += scan.get("seconds", 0.0)
        verdict = scan.get("verdict") or ("timeout" if scan.get("timeout") else "died" if scan.get("died") else "raised")
        stats.verdicts[verdict] += 1
        klass = obs.klass if runs else "oracle-lost"
        stats.oracle[klass] += 1
        stats.cross[(verdict, klass)] += 1
        for loader, run in runs.items():
            stats.loader_status[(loader, run.get("status"))] += 1
            if run.get("status") == "crash" and stats.notes["loader-crash-saved"] < max_per_signature:
                stats.notes["loader-crash-saved"] += 1
                out = findings_dir / stats.target / "loader-crash"
                out.mkdir(parents=True, exist_ok=True)
                sha = hashlib.sha256(data).hexdigest()[:16]
                (out / f"{sha}.bin").write_bytes(data)
                (out / f"{sha}.json").write_text(json.dumps({"loader": loader, "run": run, "origin": origin}, indent=1) + "\n")
            err = run.get("error", "")
            stats.loader_errors[(loader, run.get("status"), err.split(":")[0][:60])] += 1
            for kind, event, _detail in run.get("events", []):
                if kind == "global":
                    stats.globals[_detail.replace("\x00", ".")] += 1
                else:
                    stats.events[f"{kind}:{event}"] += 1
        if scan.get("timeout"):
            stats.notes["scanner-timeout"] += 1
        if scan.get("died"):
            stats.notes["scanner-died"] += 1
        if not runs:
            stats.notes["oracle-lost"] += 1
        if policy.unreported_when_dangerous(obs, scan):
            stats.notes["dangerous-verdict-missing-imports"] += 1
        if obs.unimportable and verdict == "safe":
            stats.notes["safe-with-unimportable-global"] += 1
        if verdict in ("dangerous", "custom-code") and klass == "clean" and obs.accepted:
            stats.notes[f"{verdict}-on-clean-load"] += 1
        for f, _why in fails:
            stats.failures[f] += 1
        if not fails:
            return fails
        sha = hashlib.sha256(data).hexdigest()[:16]
        for f, why in fails:
            sig = _signature(f, obs, scan)
            entry = stats.signatures.setdefault(sig, {"signature": sig, "class": f, "count": 0, "example": why, "files": []})
            entry["count"] += 1
            if len(entry["files"]) < max_per_signature:
                out = findings_dir / stats.target
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{sha}.bin"
                if not path.exists():
                    path.write_bytes(data)
                    side = {
                        "target": stats.target,
                        "extension": ext,
                        "failures": [{"class": c, "why": w} for c, w in fails],
                        "origin": origin,
                        "scanner": {k: scan.get(k) for k in ("verdict", "error", "imports", "findings", "exception", "traceback", "format")},
                        "loaders": {
                            ld: {
                                "status": run.get("status"),
                                "error": run.get("error"),
                                "events": [e for e in run.get("events", []) if e[0] != "allowed"][:60],
                            }
                            for ld, run in runs.items()
                        },
                    }
                    path.with_suffix(".json").write_text(json.dumps(side, indent=1, default=str) + "\n")
                    stats.saved.append(str(path))
                if str(path) not in entry["files"]:
                    entry["files"].append(str(path))
    return fails


# -- the loop ------------------------------------------------------------------------------------------
def fuzz_target(
    target: str,
    seconds: float,
    seed: int,
    pairs: list[Pair],
    seeds: dict[str, list[mutators.Seed]],
    markers: str,
    findings_dir: Path,
    max_per_signature: int,
    baseline: bool,
    verbose: bool,
) -> Stats:
    stats = Stats(target)
    pool_pickles = [s.data for s in seeds["pickle"]]
    payloads = [b for b in (mutators.payload_body(s.data) for s in seeds["pickle"] if s.origin == "malicious") if b]
    workdir = Path(tempfile.mkdtemp(prefix=f"torchkeep-fuzz-{target}-"))
    t_start = time.monotonic()
    deadline = t_start + seconds
    base_queue = list(seeds[target]) if baseline else []
    base_lock = threading.Lock()
    errors: list[BaseException] = []

    def job(j: int) -> None:
        rng = random.Random(seed * 1000 + j)
        pools = mutators.Pools(pickles=pool_pickles, payloads=payloads, marker_dir=markers)
        mut = mutators.Mutators(rng, pools)
        pair = pairs[j]
        restarts = (pair.oracle_restarts, pair.scanner_restarts)
        try:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                with base_lock:
                    s = base_queue.pop(0) if base_queue else None
                if s is not None:
                    data, done, origin_seed, is_base = s.data, ["(unmutated seed)"], s, True
                else:
                    origin_seed = rng.choice(seeds[target])
                    try:
                        data, done = mut.mutate(target, origin_seed, seeds[target])
                    except Exception as exc:
                        with stats.lock:
                            stats.mutator_errors += 1
                        if verbose:
                            print(f"  mutator error: {type(exc).__name__}: {exc}", file=sys.stderr)
                        continue
                    is_base = False
                ext = os.path.splitext(origin_seed.name)[1] or ".bin"
                if target == "pickle":
                    ext = ".pkl"
                elif target == "tar":
                    ext = ".pt"
                path = workdir / f"case{j}{ext}"
                path.write_bytes(data)
                scan, runs = pair.ask(str(path), LOADERS[target])
                origin = {"seed": origin_seed.name, "seed_origin": origin_seed.origin, "mutations": done, "rng_seed": seed, "job": j, "case": i}
                fails = record(stats, data, ext, origin, scan, runs or {}, findings_dir, max_per_signature)
                if is_base:
                    with stats.lock:
                        stats.baseline += 1
                if fails and verbose:
                    print(f"  FAIL {target} {[f for f, _ in fails]} seed={origin_seed.name} {done[:3]}", file=sys.stderr)
        except BaseException as exc:  # surfaced after the join
            errors.append(exc)
        finally:
            with stats.lock:
                stats.notes["oracle-restarts"] += pair.oracle_restarts - restarts[0]
                stats.notes["scanner-restarts"] += pair.scanner_restarts - restarts[1]

    threads = [threading.Thread(target=job, args=(j,), daemon=True) for j in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.seconds = time.monotonic() - t_start
    shutil.rmtree(workdir, ignore_errors=True)
    if errors:
        raise errors[0]
    return stats


def print_stats(st: dict) -> None:
    print(f"== target {st['target']}: {st['cases']} cases in {st['seconds']} s ({st['cases_per_s']}/s), "
          f"{st['baseline_cases']} unmutated seeds; scan {st['mean_scan_ms']} ms/case")  # fmt: skip
    print(f"   scanner verdicts: {st['verdicts']}")
    print(f"   loaders (clean/code/dangerous): {st['oracle']}")
    print(f"   verdict x loader: {st['verdict_x_oracle']}")
    cov = st["coverage"]
    print(
        f"   coverage: {cov['distinct_globals']} distinct globals resolved, {cov['distinct_events']} distinct "
        f"events, {cov['distinct_loader_outcomes']} distinct loader outcomes"
    )
    print(f"   events: {cov['events']}")
    print(f"   loader status: {cov['loader_status']}")
    if st["notes"]:
        print(f"   notes: {st['notes']}")
    print(f"   FAILURES: {st['failures']} {st['failures_by_class']}")
    for sig in sorted(st["signatures"], key=lambda s: -s["count"]):
        print(f"     {sig['count']:5d}  {sig['signature']}")
        print(f"            e.g. {sig['example'][:200]}")
        for f in sig["files"][:3]:
            print(f"            {f}")


def _scanner_version(scanner_src: str | None) -> str:
    """Which torchkeep the scanner worker runs: a given src/ directory, or this checkout's commit (+dirty)."""
    if scanner_src:
        return f"torchkeep from {scanner_src}"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return f"torchkeep at {head.stdout.strip()}{' + uncommitted changes in src/' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        return "torchkeep (installed)"


def check_markers(markers: str) -> list[str]:
    try:
        return sorted(os.listdir(markers))
    except FileNotFoundError:
        return []


def replay(path: str, target: str, timeout: float, scanner_src: str | None = None) -> int:
    pair = Pair(timeout, scanner_src)
    pair.start()
    try:
        scan, runs = pair.ask(os.path.abspath(path), LOADERS[target])
    finally:
        pair.close()
    obs = policy.observe(runs or {})
    print(json.dumps({"scan": {k: scan.get(k) for k in ("verdict", "error", "imports", "findings", "exception")}}, indent=1, default=str))
    for loader, run in (runs or {}).items():
        print(f"{loader}: {run['status']} {run['error'][:150]!r}")
        for ev in run["events"]:
            if ev[0] != "allowed":
                print(f"    {ev[0]:16} {ev[1]:22} {ev[2][:140]!r}")
    print("loader class:", obs.klass, "| failures:", policy.judge(obs, scan))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="torchkeep differential fuzzer (scanner vs real loaders)")
    ap.add_argument("--target", default="all", choices=[*TARGETS, "all"])
    ap.add_argument("--seconds", type=float, default=60.0, help="per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--corpus", help="seed directory (built by fuzz/seeds.py when missing; default: a cache in fuzz/.seeds)")
    ap.add_argument("--findings", default=str(HERE / "findings"), help="where failing inputs go")
    ap.add_argument("--timeout", type=float, default=5.0, help="per loader run, seconds")
    ap.add_argument("--max-per-signature", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true", help="do not run the unmutated seeds first")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--replay", help="run one file through scanner and loaders and print what each did")
    ap.add_argument(
        "--scanner-src",
        help="a src/ directory whose torchkeep the scanner worker imports (e.g. a `git archive` of a commit); "
        "default: the installed one",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    if args.replay:
        return replay(args.replay, args.target if args.target != "all" else "pickle", args.timeout, args.scanner_src)
    corpus = ensure_seeds(args.corpus)
    seeds, markers = load_seeds(corpus)
    os.makedirs(markers, exist_ok=True)
    os.chmod(markers, 0o1777)  # writable by the sandbox user: a payload that escapes the hook shows up here
    before = check_markers(markers)
    targets = TARGETS if args.target == "all" else (args.target,)
    scanner = _scanner_version(args.scanner_src)
    print(f"seeds: {corpus} ({', '.join(f'{t} {len(seeds[t])}' for t in TARGETS)}); seed {args.seed}; jobs {args.jobs}")
    print(f"scanner: {scanner}")
    results = []
    pairs = [Pair(args.timeout, args.scanner_src) for _ in range(max(1, args.jobs))]
    try:
        starters = [threading.Thread(target=p.start, daemon=True) for p in pairs]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        for t in targets:
            st = fuzz_target(
                t, args.seconds, args.seed, pairs, seeds, markers, Path(args.findings), args.max_per_signature,
                not args.no_baseline, args.verbose,
            )  # fmt: skip
            summary = st.summary()
            results.append(summary)
            print_stats(summary)
            sys.stdout.flush()
    finally:
        for p in pairs:
            p.close()
    pids = [pid for p in pairs for pid in p.scanner.pids + p.oracle.pids]
    escaped = [m for m in check_markers(markers) if m not in before]
    total = sum(r["failures"] for r in results)
    print(f"total: {sum(r['cases'] for r in results)} cases, {total} failures; payload markers created: {len(escaped)}")
    if escaped:
        print(f"!! a payload ran despite the oracle's hook: {escaped}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"targets": results, "escaped_markers": escaped, "seed": args.seed, "scanner": scanner, "worker_pids": pids},
                indent=1,
            )
            + "\n"
        )
    return 1 if (total or escaped) else 0


if __name__ == "__main__":
    sys.exit(main())
