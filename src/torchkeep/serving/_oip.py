"""Open Inference Protocol v2 (KServe, Triton): parsing requests and writing responses.

A request is JSON, or — Triton's binary-data extension, which ``tritonclient`` uses by default — a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the raw bytes of the inputs whose
``parameters.binary_data_size`` is set, in input order. BYTES tensors in raw form are a 4-byte little-endian
length before each element; in JSON form the served images are base64 strings.

Served model inputs: ``image`` (BYTES ``[N]``: encoded image files) or ``input`` (FP32 ``[N, C, H, W]``:
already preprocessed). Outputs: ``probabilities`` (FP32 ``[N, classes]``) and ``label`` (BYTES ``[N]``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OipError", "OipRequest", "encode_response", "model_metadata", "parse_request"]

HEADER_LENGTH = "inference-header-content-length"
IMAGE_INPUT = "image"
TENSOR_INPUT = "input"
OUTPUTS = ("probabilities", "label")


class OipError(Exception):
    """A request that does not follow the protocol (answered 400 with ``error`` and ``detail``)."""

    def __init__(self, error: str, detail: str, status: int = 400):
        super().__init__(error)
        self.error, self.detail, self.status = error, detail, status


@dataclass
class OipRequest:
    """A parsed inference request: either ``images`` (encoded files) or ``tensor`` (``N, C, H, W``)."""

    id: str | None
    images: list[bytes] | None
    tensor: np.ndarray | None
    outputs: list[str]
    binary_outputs: set[str]


def model_metadata(name: str, input_shape: list[int], num_classes: int, platform: str) -> dict[str, Any]:
    """``GET /v2/models/{name}``."""
    return {
        "name": name,
        "versions": ["1"],
        "platform": platform,
        "inputs": [
            {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, *input_shape]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise OipError(
                "bad Inference-Header-Content-Length",
                f"the header says {header_length!r}; the body has {len(body)} bytes",
            )
        json_part, binary = body[:n], body[n:]
    try:
        doc = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OipError("malformed JSON", f"the inference request is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise OipError("no inputs", 'the request needs "inputs": [{"name", "shape", "datatype", "data"}]')
    return doc, binary


def _shape(spec: dict[str, Any]) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise OipError("bad shape", f"input {spec.get('name')!r}: shape must be a list of sizes, not {shape!r}")
    return shape


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise OipError("bad BYTES tensor", f"input {name!r}: a length prefix is cut off at byte {i}")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise OipError("bad BYTES tensor", f"input {name!r}: element of {n} bytes runs past the data")
        out.append(raw[i : i + n])
        i += n
    return out


def _decode_b64(text: Any, name: str, k: int) -> bytes:
    if not isinstance(text, str):
        raise OipError("bad BYTES tensor", f"input {name!r}: element {k} must be a base64 string in JSON form")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise OipError(
            "bad base64",
            f"input {name!r}: element {k} is not valid base64; send image files base64-encoded, "
            "or as binary data (Inference-Header-Content-Length)",
        ) from None


def parse_request(
    body: bytes, header_length: str | None, *, input_shape: list[int], max_images: int
) -> OipRequest:
    """Parse an inference request for a model taking ``input_shape`` ``[C, H, W]``.

    Raises:
        OipError: anything that does not fit the protocol or the model.
    """
    doc, binary = _split(body, header_length)
    offset = 0
    images: list[bytes] | None = None
    tensor: np.ndarray | None = None
    for spec in doc["inputs"]:
        if not isinstance(spec, dict):
            raise OipError("bad input", "each input is an object {name, shape, datatype, data}")
        name, datatype = spec.get("name"), spec.get("datatype")
        shape = _shape(spec)
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        raw: bytes | None = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise OipError("bad binary data", f"input {name!r}: binary_data_size {size!r} does not fit the body")
            raw, offset = binary[offset : offset + size], offset + size
        if name == IMAGE_INPUT:
            images = _image_input(spec, datatype, shape, raw)
        elif name == TENSOR_INPUT:
            tensor = _tensor_input(spec, datatype, shape, raw, input_shape)
        else:
            raise OipError("unknown input", f"input {name!r}: this model takes 'image' (BYTES) or 'input' (FP32)")
    if (images is None) == (tensor is None):
        raise OipError("one input", "send either 'image' (encoded files) or 'input' (preprocessed FP32), not both")
    n = len(images) if images is not None else int(tensor.shape[0])  # type: ignore[union-attr]
    if n == 0:
        raise OipError("no images", "the request holds no image")
    if n > max_images:
        raise OipError("too many images", f"{n} images in one request; the limit is {max_images} (--max-images)")
    outputs, binary_outputs = _requested_outputs(doc)
    rid = doc.get("id")
    return OipRequest(str(rid) if rid is not None else None, images, tensor, outputs, binary_outputs)


def _image_input(spec: dict[str, Any], datatype: Any, shape: list[int], raw: bytes | None) -> list[bytes]:
    """The encoded image files of input ``image`` (BYTES ``[N]``): binary data or base64 strings."""
    name = IMAGE_INPUT
    if datatype != "BYTES":
        raise OipError("bad datatype", f"input 'image' is BYTES (encoded image files), not {datatype!r}")
    if raw is not None:
        images = _bytes_elements(raw, name)
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise OipError("no data", "input 'image' needs \"data\" (base64 strings) or binary data")
        images = [_decode_b64(v, name, k) for k, v in enumerate(_flatten(data))]
    if len(shape) != 1 or shape[0] != len(images):
        raise OipError("bad shape", f"input 'image' has {len(images)} elements; its shape says {shape}")
    return images


def _tensor_input(spec: dict[str, Any], datatype: Any, shape: list[int], raw: bytes | None,
                  input_shape: list[int]) -> np.ndarray:
    """The preprocessed batch of input ``input`` (FP32 ``[N, C, H, W]``): binary data or numbers, all finite."""
    if datatype != "FP32":
        raise OipError("bad datatype", f"input 'input' is FP32, not {datatype!r}")
    want = [-1, *input_shape]
    if len(shape) != 4 or shape[1:] != input_shape:
        raise OipError("bad shape", f"input 'input' must have shape {want} (N, C, H, W), not {shape}")
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != 4 * count:
            raise OipError("bad binary data", f"input 'input': {len(raw)} bytes for {count} FP32 values")
        arr = np.frombuffer(raw, dtype="<f4")
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise OipError("no data", "input 'input' needs \"data\" (numbers) or binary data")
        try:
            arr = np.asarray(_flatten(data), dtype=np.float32)
        except (TypeError, ValueError):
            raise OipError("bad data", "input 'input': data must be numbers") from None
        if arr.size != count:
            raise OipError("bad data", f"input 'input': {arr.size} values for shape {shape}")
    if not np.isfinite(arr).all():
        raise OipError("bad data", "input 'input' holds NaN or infinite values")
    return arr.reshape(shape).astype(np.float32, copy=True)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _requested_outputs(doc: dict[str, Any]) -> tuple[list[str], set[str]]:
    params = doc.get("parameters")
    if not isinstance(params, dict):
        params = {}
    all_binary = bool(params.get("binary_data_output", False))
    wanted = doc.get("outputs")
    if not wanted:
        return list(OUTPUTS), set(OUTPUTS) if all_binary else set()
    names: list[str] = []
    binary: set[str] = set()
    for out in wanted:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OUTPUTS:
            raise OipError("unknown output", f"output {name!r}: this model gives 'probabilities' and 'label'")
        names.append(name)
        p = out.get("parameters") or {}
        if all_binary or (isinstance(p, dict) and p.get("binary_data")):
            binary.add(name)
    return names, binary


def encode_response(
    model: str, req: OipRequest, probabilities: np.ndarray, labels: list[str]
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (binary outputs after a JSON header when asked for)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in req.outputs:
        if name == "probabilities":
            arr = np.ascontiguousarray(probabilities, dtype="<f4")
            entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
            raw = arr.tobytes()
            values: list[Any] = arr.reshape(-1).tolist()
        else:
            entry = {"name": name, "datatype": "BYTES", "shape": [len(labels)]}
            encoded = [s.encode("utf-8") for s in labels]
            raw = b"".join(struct.pack("<I", len(b)) + b for b in encoded)
            values = list(labels)
        if name in req.binary_outputs:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = values
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if req.id is not None:
        doc["id"] = req.id
    header = json.dumps(doc).encode()
    if not blobs:
        return header, {}
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}
