"""torchkeep serve: a real server in a subprocess on a free loopback port, driven by real clients.

One server (two models, a token, a 1 MB upload limit) answers most tests; a second one (backend auto) shows the
warm-up race, /readyz turning 200, and SIGTERM finishing a request in flight before exiting 0. Clients: httpx,
the official Triton client (tritonclient[http]) on the Open Inference Protocol v2, and headless Debian Chromium
driven by selenium on the page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import torchkeep
from torchkeep.models import build

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
STARTUP_S = 240  # a cold start imports torch, torchvision, FastAPI on a shared 2-core machine


# --------------------------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``torchkeep serve ...`` in a subprocess; always stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchkeep", "serve", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=log.open("w"), env=env, text=True,
        )

    def wait_ready(self, seen: list[int] | None = None) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                if seen is not None:
                    seen.append(r.status_code)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {STARTUP_S} s: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two model files (the seeds' digits CNN, and an RGB CNN), digit PNGs in several modes, bad uploads."""
    from torchkeep.data import digits_images

    d = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    out = {"digits": torchkeep.save(build("cifar10_cnn", in_channels=1, input_size=8, class_names=DIGITS),
                                    d / "digits.safetensors")}
    torch.manual_seed(1)
    out["rgb"] = torchkeep.save(build("cifar10_cnn", in_channels=3, input_size=16,
                                      class_names=["red", "green", "blue", "gray"]), d / "rgb.safetensors")
    images, _ = digits_images()
    modes = ("L", "RGB", "RGBA")
    for i in range(16):
        img = Image.fromarray(images[i * 7], mode="L").resize((8 + 8 * (i % 4),) * 2, Image.Resampling.NEAREST)
        img = img.convert(modes[i % 3])
        out[f"img{i}"] = d / f"digit{i:02d}.png"
        img.save(out[f"img{i}"])
    jpg = Image.fromarray(images[3], mode="L").resize((64, 48)).convert("RGB")
    out["jpg"] = d / "photo.jpg"
    jpg.save(out["jpg"], quality=90)
    out["text"] = d / "notes.png"
    out["text"].write_text("this is not a picture\n")
    data = out["jpg"].read_bytes()
    out["truncated"] = d / "truncated.jpg"
    out["truncated"].write_bytes(data[: len(data) // 2])
    side = int((Image.MAX_IMAGE_PIXELS or 89_478_485) ** 0.5 * 2) + 10
    out["bomb"] = _png_with_size(d / "bomb.png", side, side)
    out["big"] = _png_with_size(d / "big.png", side * 3 // 4, side * 3 // 4)  # Pillow only warns: refused too
    return out


@pytest.fixture(scope="module")
def server(files, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    srv = Server([os.fspath(files["digits"]), f"colors={files['rgb']}", "--backend", "eager", "--token", TOKEN,
                  "--max-upload-mb", "1", "--max-images", "8"], log)
    try:
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop()
    assert code == 0, f"SIGTERM should end the server with 0, not {code}: {log.read_text()}"
    assert "Traceback" not in log.read_text()


def _post(server: Server, model: str, paths: list[Path], topk: int = 5, **kw) -> httpx.Response:
    multipart = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return httpx.post(f"{server.url}/v1/models/{model}/predict", params={"topk": topk}, files=multipart,
                      headers=kw.pop("headers", AUTH), timeout=60, **kw)


def _same(served: list[dict], expected: list, tol: float = 1e-5) -> None:
    """Same classes in the same order; probabilities equal to float32 precision.

    Batches of different sizes pick different CPU kernels (as ``predict --batch-size`` does), so the last bits
    of a probability may differ; labels, indices and the top-k order may not.
    """
    assert len(served) == len(expected)
    for s, e in zip(served, expected):
        e = e if isinstance(e, dict) else {
            "label": e.label, "index": e.index, "probability": e.probability,
            "topk": [{"label": c.label, "index": c.index, "probability": c.probability} for c in e.topk]}
        assert (s["label"], s["index"]) == (e["label"], e["index"])
        assert [c["index"] for c in s["topk"]] == [c["index"] for c in e["topk"]]
        assert [c["label"] for c in s["topk"]] == [c["label"] for c in e["topk"]]
        for a, b in zip(s["topk"], e["topk"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=tol)


def _assert_refused(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    doc = r.json()
    assert set(doc) >= {"error", "detail"}, doc
    assert words.lower() in (doc["error"] + " " + doc["detail"]).lower(), doc
    assert "Traceback" not in r.text


# ----------------------------------------------------------------------------------------------- tests
def test_health_metrics_docs_and_page(server, files):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {"digits": "ready", "colors": "ready"}
    assert httpx.get(server.url + "/docs").status_code == 200
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "/v1/models/{name}/predict" in paths and "/v2/models/{name}/infer" in paths
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # served from the package, nothing from a CDN: the page works offline
    for asset in ("static/app.js", "static/style.css"):
        assert f'"{asset}"' in page.text
        r = httpx.get(f"{server.url}/{asset}")
        assert r.status_code == 200 and len(r.text) > 500
        assert "https://" not in r.text and "http://" not in r.text
    assert "https://" not in page.text and "http://" not in page.text

    _post(server, "digits", [files["img0"]])
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'torchkeep_requests_total{code="200",model="digits"}' in text
    for name in ("torchkeep_request_seconds_bucket", "torchkeep_batch_size_bucket", 'torchkeep_queue_depth{model="digits"}'):
        assert name in text


def test_models_describe_classes_preprocessing_backend_and_sha256(server, files):
    r = httpx.get(server.url + "/v1/models", headers=AUTH)
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"digits", "colors"}
    one = httpx.get(server.url + "/v1/models/digits", headers=AUTH).json()
    assert one == models["digits"]
    assert one["architecture"] == "cifar10_cnn"
    assert one["classes"] == DIGITS and one["input_size"] == [8, 8] and one["in_channels"] == 1
    assert one["preprocessing"]["channels"] == "L" and one["preprocessing"]["resize"] == [8, 8]
    assert one["backend"] == "eager" and one["state"] == "ready"
    assert one["sha256"] == hashlib.sha256(files["digits"].read_bytes()).hexdigest()
    assert models["colors"]["classes"] == ["red", "green", "blue", "gray"]


def test_predict_multipart_and_base64_give_predicts_numbers(server, files):
    paths = [files[f"img{i}"] for i in range(6)] + [files["jpg"]]
    expected = torchkeep.predict(files["digits"], paths, topk=5, device="cpu")
    r = _post(server, "digits", paths, topk=5)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "digits" and [p["filename"] for p in doc["predictions"]] == [p.name for p in paths]
    _same(doc["predictions"], expected)

    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in paths]}
    r2 = httpx.post(f"{server.url}/v1/models/digits/predict?topk=5", json=body, headers=AUTH, timeout=60)
    assert r2.status_code == 200, r2.text
    _same(r2.json()["predictions"], expected)

    # a second model, other channels and size: its own preprocessing
    rgb = _post(server, "colors", paths[:3], topk=2)
    assert rgb.status_code == 200
    _same(rgb.json()["predictions"], torchkeep.predict(files["rgb"], paths[:3], topk=2, device="cpu"))


def test_bad_requests_are_4xx_json_and_the_next_one_is_served(server, files):
    url = f"{server.url}/v1/models/digits/predict"
    big_body = b"x" * (1024 * 1024 + 10)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        for _ in range(40):
            yield b"y" * 65536

    cases = [
        (lambda: _post(server, "digits", [files["text"]]), 400, "cannot read the image"),
        (lambda: _post(server, "digits", [files["truncated"]]), 400, "truncated"),
        (lambda: _post(server, "digits", [files["bomb"]]), 400, "decompression bomb"),
        (lambda: _post(server, "digits", [files["big"]]), 400, "decompression bomb"),
        (lambda: httpx.post(url, content=big_body, headers={**AUTH, "Content-Type": "application/json"}), 413,
         "1 MB"),
        (lambda: httpx.post(url, content=chunked(), headers={**AUTH, "Content-Type": "application/json"}), 413,
         "--max-upload-mb"),
        (lambda: httpx.post(url, content=files["jpg"].read_bytes(), headers={**AUTH, "Content-Type": "image/jpeg"}),
         415, "multipart/form-data"),
        (lambda: httpx.post(url, json={"images": ["not base64 %%%"]}, headers=AUTH), 400, "base64"),
        (lambda: httpx.post(url, content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}), 400,
         "json"),
        (lambda: httpx.post(url, json={"pictures": []}, headers=AUTH), 400, "images"),
        (lambda: _post(server, "digits", [files["img0"]] * 9), 400, "too many images"),
        (lambda: httpx.post(url, json={"images": ["aGk="] * 9}, headers=AUTH), 400, "too many images"),
        (lambda: httpx.post(url, data={"note": "x"}, files=[("other", ("a.txt", b"", "text/plain"))],
                            headers=AUTH), 400, "cannot read"),
        (lambda: _post(server, "nope", [files["img0"]]), 404, "no model named 'nope'"),
        (lambda: _post(server, "digits", [files["img0"]], headers={}), 401, "token"),
        (lambda: _post(server, "digits", [files["img0"]], headers={"Authorization": "Bearer wrong"}), 401,
         "wrong token"),
        (lambda: httpx.get(server.url + "/v1/models"), 401, "Authorization: Bearer"),
        (lambda: _post(server, "digits", [files["img0"]], topk=0), 400, "topk"),
        (lambda: httpx.get(url, headers=AUTH), 405, "not accepted"),
        (lambda: httpx.get(server.url + "/nothing/here"), 404, "no endpoint"),
        (lambda: httpx.post(f"{server.url}/v2/models/digits/infer", content=b"garbage", headers=AUTH), 400, "json"),
        (lambda: httpx.post(url, content=b"x", headers={**AUTH, "Content-Type": "application/json",
                                                        "Content-Encoding": "gzip"}), 415, "uncompressed"),
    ]
    for i, (send, status, words) in enumerate(cases):
        _assert_refused(send(), status, words)
        if i % 4 == 0:  # and the server goes on serving
            assert _post(server, "digits", [files["img1"]]).status_code == 200
    assert server.proc.poll() is None
    assert _post(server, "digits", [files["img1"], files["img2"]]).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'code="500"' not in metrics
    assert 'model="<unknown>"' in metrics  # an unknown name is not a new label (no unbounded series)


def test_refuses_a_dangerous_file_before_serving(cli, tmp_path):
    import pickle

    marker = tmp_path / "PWNED_MARKER"

    class Payload:
        def __reduce__(self):
            return (open, (os.fspath(marker), "w"))

    torch.save({"weights": torch.zeros(2), "x": Payload()}, tmp_path / "evil.pt", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    code, _, err = cli("serve", tmp_path / "evil.pt", "--port", str(_free_port()))
    assert code == 2 and "refused" in err
    assert not marker.exists()
    code, _, err = cli("serve", "a=x.safetensors", "a=y.safetensors")
    assert code == 64 and "two models are named 'a'" in err


# -------------------------------------------------------------------------------------- OIP v2 / Triton
def test_tritonclient_on_the_v2_endpoints(server, files):
    tc = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    paths = [files["img3"], files["jpg"], files["img5"]]
    expected = torchkeep.predict(files["digits"], paths, topk=10, device="cpu")
    want = np.zeros((3, 10), dtype=np.float32)
    for row, p in zip(want, expected):
        for c in p.topk:
            row[c.index] = c.probability
    # (tritonclient adds its Inference-Header-Content-Length to the headers dict it is given: a copy each time)
    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}", connection_timeout=30, network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits", headers=dict(AUTH))
        meta = client.get_model_metadata("digits", headers=dict(AUTH))
        assert {i["name"] for i in meta["inputs"]} == {"image", "input"}
        assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"probabilities": [-1, 10], "label": [-1]}

        # encoded files as BYTES, sent with the binary-data extension; outputs binary and JSON
        inp = tc.InferInput("image", [3], "BYTES")
        inp.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=np.object_), binary_data=True)
        for binary in (True, False):
            outs = [tc.InferRequestedOutput("probabilities", binary_data=binary),
                    tc.InferRequestedOutput("label", binary_data=binary)]
            res = client.infer("digits", [inp], outputs=outs, headers=dict(AUTH), request_id="r1")
            np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-5)
            labels = [x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("label")]
            assert labels == [p.label for p in expected]
            assert res.get_response()["id"] == "r1"
        # no outputs named: all of them, binary
        res = client.infer("digits", [inp], headers=dict(AUTH))
        np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-5)

        # already preprocessed FP32, binary and JSON
        x = torch.stack([torchkeep.load_image(p, torchkeep.read_spec(files["digits"])) for p in paths]).numpy()
        for binary in (True, False):
            t = tc.InferInput("input", list(x.shape), "FP32")
            t.set_data_from_numpy(x, binary_data=binary)
            res = client.infer("digits", [t], headers=dict(AUTH))
            np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-5)

        with pytest.raises(InferenceServerException, match="no model named"):
            client.infer("missing", [inp], headers=dict(AUTH))
        bad = tc.InferInput("input", [1, 3, 8, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
        with pytest.raises(InferenceServerException, match=r"shape \[-1, 1, 8, 8\]"):
            client.infer("digits", [bad], headers=dict(AUTH))
        with pytest.raises(InferenceServerException, match="token"):
            client.infer("digits", [inp])
    finally:
        client.close()
    # plain JSON, base64 images (as KServe's JSON clients send BYTES)
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "data": [base64.b64encode(paths[0].read_bytes()).decode()]}]}
    r = httpx.post(f"{server.url}/v2/models/digits/infer", json=doc, headers=AUTH)
    assert r.status_code == 200 and r.json()["outputs"][1]["data"] == [expected[0].label]
    assert httpx.get(f"{server.url}/v2/models/digits/versions/2", headers=AUTH).status_code == 404


# ------------------------------------------------------------------------------------------- load test
def test_load_2000_requests_at_concurrency_32_zero_errors_same_answers(server, files):
    pool = [files[f"img{i}"] for i in range(16)]
    single = {}
    for p in pool:  # one at a time: the answers to compare with
        r = _post(server, "digits", [p], topk=3)
        assert r.status_code == 200
        single[p.name] = r.json()["predictions"][0]
    total, concurrency = 2000, 32
    bodies = [{"images": [base64.b64encode(p.read_bytes()).decode()], "filenames": [p.name]} for p in pool]
    errors: list[str] = []
    answers: list[dict] = []

    async def worker(client: httpx.AsyncClient, start: int) -> None:
        for i in range(start, total, concurrency):
            r = await client.post("/v1/models/digits/predict?topk=3", json=bodies[i % len(bodies)])
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
            else:
                answers.append(r.json()["predictions"][0])

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, limits=limits, timeout=60) as client:
            await asyncio.wait_for(asyncio.gather(*(worker(client, k) for k in range(concurrency))), 240)

    t0 = time.perf_counter()
    asyncio.run(main())
    seconds = time.perf_counter() - t0
    assert errors == [] and len(answers) == total
    for a in answers:
        _same([a], [single[a["filename"]]])
    metrics = httpx.get(server.url + "/metrics").text
    # requests were batched: fewer forward passes than images
    count = _metric(metrics, 'torchkeep_batch_size_count{model="digits"}')
    images = _metric(metrics, 'torchkeep_batch_size_sum{model="digits"}')
    assert images >= total and count < images, (count, images)
    print(f"{total} requests at concurrency {concurrency}: {seconds:.1f} s, {images / count:.1f} images per batch")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


# ------------------------------------------------------------------------------------- headless Chromium
def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_page_in_headless_chromium(server, files, tmp_path):
    found = _chromium()
    if found is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=found[1]))
    try:
        driver.set_page_load_timeout(60)
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        # the server wants a token: the page asks for it
        wait.until(lambda d: d.find_element(By.ID, "token-box").is_displayed())
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "token-save").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        info = driver.find_element(By.ID, "model-info").text
        assert "cifar10_cnn" in info and "eager" in info and "nine" in info
        paths = [files["img4"], files["jpg"]]
        driver.find_element(By.ID, "file").send_keys("\n".join(os.fspath(p) for p in paths))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".prediction .label")) == 2)
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".prediction .label")]
        bars = driver.find_elements(By.CSS_SELECTOR, ".prediction .bar-row")
        driver.save_screenshot(os.fspath(tmp_path / "serve-page.png"))
    finally:
        driver.quit()
    expected = torchkeep.predict(files["digits"], paths, topk=5, device="cpu")
    assert labels == [p.label for p in expected]
    assert len(bars) == 10  # top-5 bars per image
    assert (tmp_path / "serve-page.png").stat().st_size > 10_000
    keep = os.environ.get("TORCHKEEP_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "serve-page.png", Path(keep) / "serve-page.png")


# ------------------------------------------------------------------------ auto backend, readiness, SIGTERM
def test_auto_backend_readiness_and_sigterm_finishes_the_request_in_flight(files, tmp_path):
    srv = Server([os.fspath(files["digits"]), "--backend", "auto"], tmp_path / "server.log")
    try:
        seen: list[int] = []
        srv.wait_ready(seen)
        assert 503 in seen and seen[-1] == 200  # not ready while warming up, then ready
        model = httpx.get(srv.url + "/v1/models/digits").json()  # no token on this one
        trials = {t["backend"]: t for t in model["backend_trials"]}
        assert set(trials) == {"eager", "torchscript", "onnxruntime"}
        ok = {b: t for b, t in trials.items() if t["passed"]}
        assert "eager" in ok and model["backend"] == min(ok, key=lambda b: ok[b]["ms_batch1"] + ok[b]["ms_batch"])
        paths = [files["img7"], files["jpg"]]
        r = _post(srv, "digits", paths, headers={})
        assert r.status_code == 200 and r.json()["backend"] == model["backend"]
        _same(r.json()["predictions"], torchkeep.predict(files["digits"], paths, backend=model["backend"], device="cpu"))

        # a request whose body is still arriving when SIGTERM comes is answered, then the server exits 0
        started, go_on = threading.Event(), threading.Event()
        multipart_head = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"late.png\"\r\n"
                          b"Content-Type: image/png\r\n\r\n")
        data = multipart_head + files["img7"].read_bytes() + b"\r\n--XyZ--\r\n"

        def body() -> Iterator[bytes]:
            yield data[:40]
            started.set()
            go_on.wait(30)
            yield data[40:]

        result: dict = {}

        def send() -> None:
            try:
                result["r"] = httpx.post(srv.url + "/v1/models/digits/predict", content=body(), timeout=60,
                                         headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
            except Exception as exc:  # reported below
                result["error"] = exc

        t = threading.Thread(target=send)
        t.start()
        assert started.wait(30)
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None  # still finishing the request
        go_on.set()
        t.join(60)
        assert "error" not in result, result
        assert result["r"].status_code == 200
        assert result["r"].json()["predictions"][0]["label"] == r.json()["predictions"][0]["label"]
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "terminate called" not in log
