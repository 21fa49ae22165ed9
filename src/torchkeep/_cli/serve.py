"""``torchkeep serve MODEL [NAME=MODEL ...]``: an HTTP service and a web page for model files."""

from __future__ import annotations

import json
import sys

import click

from torchkeep._cli.common import json_option, to_jsonable


def _ready_line(url: str, served) -> None:
    for m in served:
        trials = ", ".join(
            f"{t.backend} {t.ms_batch1:.2f}/{t.ms_batch:.2f} ms" if t.error is None else f"{t.backend} failed"
            for t in m.trials
        )
        chosen = f"{m.backend} (auto: {trials}; batch 1/{m.trials[0].batch})" if m.trials else m.backend
        classes = len(m.class_names())
        click.echo(f"torchkeep: {m.name}: {m.spec.arch}, {classes} classes, input {m.input_shape}, "
                   f"backend {chosen}, ready in {m.warmup_seconds:.1f} s", err=True)
    click.echo(f"torchkeep: ready at {url} (page: {url}, API: {url}docs); Ctrl-C or SIGTERM to stop", err=True)


@click.command(
    help="Serve model files over HTTP: a web page at /, a JSON API (/v1), the Open Inference Protocol v2 "
    "(/v2, KServe and Triton clients), /healthz, /readyz and Prometheus /metrics.\n\n"
    "MODEL: a torchkeep model file or a TorchScript/ONNX export; NAME=MODEL names it (default: the file stem). "
    "Every file is scanned first: dangerous files are refused, custom code needs --trust. Requests for one model "
    "are batched together. SIGTERM finishes the requests in flight, then exits 0."
)
@click.argument("models", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0 exposes the server to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "eager", "torchscript", "onnxruntime"]), default="auto",
              show_default=True,
              help="auto measures the backends at warm-up and keeps the fastest that passes the parity check.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, auto...")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="The most images in one forward pass.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long the oldest image waits for others to fill a batch.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="The largest request body (413 beyond, refused before it is read).")
@click.option("--max-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="The most images in one request.")
@click.option("--token", envvar="TORCHKEEP_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on /v1 and /v2/models (env TORCHKEEP_TOKEN).")
@click.option("--trust", is_flag=True,
              help="Load files whose scan found custom code (user classes, TorchScript code). Only for files "
              "you trust.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="warning", show_default=True, help="uvicorn's log level (info logs each request).")
@json_option
def command(models: tuple[str, ...], host: str, port: int, backend: str, device: str, max_batch: int,
            max_wait_ms: float, max_upload_mb: float, max_images: int, token: str | None, trust: bool,
            log_level: str, as_json: bool) -> int:
    from torchkeep.serving import serve

    def ready(url: str, served) -> None:
        if as_json:
            doc = {"url": url, "models": [m.describe() for m in served]}
            sys.stdout.write(json.dumps(to_jsonable(doc)) + "\n")
            sys.stdout.flush()
        else:
            _ready_line(url, served)

    click.echo(f"torchkeep: scanning and loading {len(models)} model file(s), then serving at http://{host}:{port}/ "
               "(ready once warmed up)", err=True)
    result = serve(list(models), host=host, port=port, on_ready=ready, log_level=log_level, backend=backend,
                   device=device, max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb,
                   max_images=max_images, token=token, trust=trust)
    click.echo("torchkeep: stopped" if result.exit_code == 0 else "torchkeep: stopped with errors", err=True)
    return result.exit_code
