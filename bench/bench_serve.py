"""torchkeep serve vs a minimal hand-written FastAPI server: images/s and p50/p99 latency at concurrency 1, 8, 32.

Run:  .venv/bin/python bench/bench_serve.py [--seconds S] [--models cnn,resnet18] [--concurrency 1,8,32] [--json]

Models: the seeds' digits CNN (``cifar10_cnn``, 1 channel, 8x8; 32x32 digit PNGs) and resnet18 (random init,
224x224 after resize 256 + center crop; 320x240 JPEG crops of scikit-learn's sample photos). Model files are
written to ``bench/_work/serve``.

Baseline: the server LitServe measures itself against — one uvicorn process, a FastAPI ``def`` endpoint that
decodes the upload with the same preprocessing and runs the eager model on it, one request at a time per
thread (FastAPI's thread pool), no batching. torchkeep: ``torchkeep serve MODEL --backend auto`` (default
--max-batch 32, --max-wait-ms 5). Both run as subprocesses on 127.0.0.1 and are driven by the same client
(httpx, asyncio, C concurrent workers, one multipart image per request) for ``--seconds`` after a short warm-up.
The client runs on the same machine, so its CPU time counts against both servers alike.
"""

# no `from __future__ import annotations`: FastAPI reads the baseline endpoint's annotations at run time

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).parent / "_work" / "serve"


# ------------------------------------------------------------------------------------------ baseline
def baseline_app(model_path: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """The hand-written server: eager inference per request (what one writes without a serving tool)."""
    import torch
    from fastapi import FastAPI, File, UploadFile

    import torchkeep
    from torchkeep._preprocess import load_image, transform_for

    model = torchkeep.load(model_path, device=device)
    spec = model.torchkeep_spec
    transform = transform_for(spec)
    names = spec.class_names or [f"class {i}" for i in range(spec.num_classes or 0)]
    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict:
        x = load_image(file.file.read(), spec, transform).unsqueeze(0).to(device)
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)[0].cpu()
        p, i = probs.max(dim=0)
        return {"label": names[int(i)] if int(i) < len(names) else str(int(i)), "probability": float(p)}

    return app


def _serve_baseline(model_path: str, port: int, device: str) -> None:
    import uvicorn

    uvicorn.run(baseline_app(model_path, device), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ------------------------------------------------------------------------------------------ fixtures
def _models() -> dict[str, tuple[Path, Path]]:
    """name -> (model file, image file)."""
    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_images

    import torchkeep
    from torchkeep.data import digits_images
    from torchkeep.models import build

    WORK.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cnn = WORK / "digits_cnn.safetensors"
    torchkeep.save(build("cifar10_cnn", in_channels=1, input_size=8, class_names=[str(i) for i in range(10)]), cnn)
    digit = WORK / "digit.png"
    Image.fromarray(digits_images()[0][5], mode="L").resize((32, 32), Image.Resampling.NEAREST).save(digit)
    resnet = WORK / "resnet18.safetensors"
    torchkeep.save(build("resnet18", num_classes=1000), resnet)
    photo = WORK / "photo.jpg"
    Image.fromarray(load_sample_images().images[0]).crop((100, 60, 420, 300)).save(photo, quality=90)
    return {"cnn": (cnn, digit), "resnet18": (resnet, photo)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kind: str, model: Path, log: Path, device: str, backend: str = "auto") -> tuple[subprocess.Popen, str]:
    port = _free_port()
    if kind == "baseline":
        cmd = [sys.executable, __file__, "--baseline-server", os.fspath(model), str(port), device]
        ready = "/docs"
    else:
        cmd = [sys.executable, "-m", "torchkeep", "serve", os.fspath(model), "--port", str(port), "--backend", backend,
               "--device", device]
        ready = "/readyz"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + ready, timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{kind} server not ready in 600 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------------------------------ the client
async def _drive(url: str, image: bytes, filename: str, concurrency: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def worker(client: httpx.AsyncClient, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            r = await client.post(url, files={"file": (filename, image, "application/octet-stream")})
            if r.status_code != 200:
                errors += 1
            elif record:
                latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        stop_at = time.perf_counter() + min(2.0, seconds / 4)  # warm-up: connections, first batches
        await asyncio.gather(*(worker(client, False) for _ in range(concurrency)))
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker(client, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "errors": errors,
        "images_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 2) if lat else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per case")
    ap.add_argument("--models", default="cnn,resnet18")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both servers)")
    ap.add_argument("--backend", default="auto", help="torchkeep serve's --backend")
    ap.add_argument("--servers", default="baseline,torchkeep")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--baseline-server", nargs=3, metavar=("MODEL", "PORT", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        _serve_baseline(args.baseline_server[0], int(args.baseline_server[1]), args.baseline_server[2])
        return

    levels = [int(c) for c in args.concurrency.split(",")]
    models = _models()
    rows = []
    for name in args.models.split(","):
        model, image = models[name]
        data = image.read_bytes()
        for kind in args.servers.split(","):
            proc, url = _start(kind, model, WORK / f"{kind}-{name}.log", args.device, args.backend)
            try:
                info = {}
                if kind == "torchkeep":
                    import httpx

                    info = httpx.get(f"{url}/v1/models/{model.stem}").json()
                endpoint = f"{url}/predict" if kind == "baseline" else f"{url}/v1/models/{model.stem}/predict?topk=1"
                for c in levels:
                    r = asyncio.run(_drive(endpoint, data, image.name, c, args.seconds))
                    r.update(model=name, server=kind, concurrency=c, backend=info.get("backend", "eager"))
                    rows.append(r)
                    if not args.json:
                        print(f"{name:9} {kind:9} c={c:<3} {r['images_per_s']:8.1f} img/s  p50 {r['p50_ms']:7.2f} ms  "
                              f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}  ({r['backend']})", flush=True)
            finally:
                _stop(proc)
    summary = []
    for name in args.models.split(","):
        for c in levels:
            base = next((r for r in rows if r["model"] == name and r["server"] == "baseline" and r["concurrency"] == c),
                        None)
            ours = next((r for r in rows if r["model"] == name and r["server"] == "torchkeep" and r["concurrency"] == c),
                        None)
            if base is None or ours is None or not base["images_per_s"] or not base["p50_ms"] or not ours["p50_ms"]:
                continue
            summary.append({
                "model": name, "concurrency": c,
                "throughput_ratio": round(ours["images_per_s"] / base["images_per_s"], 2),
                "p50_ratio": round(ours["p50_ms"] / base["p50_ms"], 2),
            })
    meta = {"cpus": len(os.sched_getaffinity(0)), "device": args.device, "python": platform.python_version(),
            "seconds": args.seconds,
            "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
        return
    print(f"\n{meta}")
    print("model     c    torchkeep/baseline throughput   p50 ratio")
    for s in summary:
        print(f"{s['model']:9} {s['concurrency']:<4} {s['throughput_ratio']:>10.2f}x {s['p50_ratio']:>22.2f}")


if __name__ == "__main__":
    main()
