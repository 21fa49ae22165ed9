"""Build the seed corpus of the fuzzer: ``python fuzz/seeds.py OUTDIR``.

Writes ``OUTDIR/<target>/<name>`` (``--markers DIR``: where payloads would write) for the targets ``pickle``, ``zip``, ``tar`` and ``npy``, from

- ``tests/corpus/make_corpus.py`` (its malicious files, whose payloads only create a marker file in
  ``OUTDIR/markers``, and its benign files), sorted into targets by container, and the pickles pulled out
  of containers (``data.pkl`` of every torch zip, the object pickle of ``.npy`` payloads) as pickle seeds;
- benign files written here with real torch/numpy: state dicts and checkpoints saved with pickle
  protocols 2 and 4, zip and legacy formats, ``argparse.Namespace``, Python-2-spelled builtins, numpy
  arrays of plain, structured, object and ``StringDType`` dtypes, a legacy *tar* checkpoint written
  member by member the way torch < 0.1.10 wrote it.

``OUTDIR/seeds.json`` lists every seed with its target, origin (``malicious``/``benign``) and source.
Nothing here is ever unpickled.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKE_CORPUS = ROOT / "tests" / "corpus" / "make_corpus.py"
TARGETS = ("pickle", "zip", "tar", "npy")


def _make_corpus_module():
    spec = importlib.util.spec_from_file_location("torchkeep_fuzz_make_corpus", MAKE_CORPUS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _kind(data: bytes) -> str:
    if data[:2] == b"PK":
        return "zip"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    if len(data) >= 512 and data[257:262] == b"ustar":
        return "tar"
    return "pickle"


def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                try:
                    out.append((info.filename, zf.read(info)))
                except Exception:  # a deliberately broken member (bad CRC): its stored bytes are still a seed
                    continue
    except Exception:
        pass
    return out


def _npy_payload(data: bytes) -> bytes | None:
    if data[:6] != b"\x93NUMPY":
        return None
    major = data[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", data[8:10])
        start = 10 + hlen
    else:
        (hlen,) = struct.unpack("<I", data[8:12])
        start = 12 + hlen
    body = data[start:]
    return body if body[:1] == b"\x80" else None


class _Out:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[dict[str, str]] = []
        self.names: set[tuple[str, str]] = set()
        for t in TARGETS:
            (root / t).mkdir(parents=True, exist_ok=True)

    def add(self, target: str, name: str, data: bytes, origin: str, source: str) -> None:
        base, ext = os.path.splitext(name.replace("/", "__"))
        name, i = base + ext, 1
        while (target, name) in self.names:
            i += 1
            name = f"{base}_{i}{ext}"
        self.names.add((target, name))
        (self.root / target / name).write_bytes(data)
        self.entries.append({"target": target, "file": f"{target}/{name}", "origin": origin, "source": source})


def _legacy_tar(obj_pickle: bytes | None = None) -> bytes:
    """A pre-0.1.10 torch checkpoint: a tar of ``storages``, ``tensors`` and ``pickle`` (no ``sys_info``
    needed): one float storage of 4 elements, one tensor viewing it, and a dict referencing the tensor."""
    import torch

    storages = io.BytesIO()
    pickle.dump(1, storages, protocol=2)
    pickle.dump((0, "cpu", torch.FloatStorage), storages, protocol=2)
    storages.write(struct.pack("<q", 4) + struct.pack("<4f", 1.0, 2.0, 3.0, 4.0))
    pickle.dump([], storages, protocol=2)  # storage views
    tensors = io.BytesIO()
    pickle.dump(1, tensors, protocol=2)
    pickle.dump((1, 0, torch.FloatTensor), tensors, protocol=2)
    tensors.write(struct.pack("<i", 1) + b"\0" * 4 + struct.pack("<q", 4) + struct.pack("<q", 1) + struct.pack("<q", 0))

    class P(pickle.Pickler):
        def persistent_id(self, obj: object) -> str | None:
            return "1" if obj is _TENSOR else None

    main = io.BytesIO()
    P(main, protocol=2).dump({"weight": _TENSOR, "epoch": 3})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (
            ("storages", storages.getvalue()),
            ("tensors", tensors.getvalue()),
            ("pickle", obj_pickle if obj_pickle is not None else main.getvalue()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_TENSOR = object()


def _benign_extra(out: _Out, tmp: Path) -> None:
    import argparse as _argparse

    import numpy as np
    import torch

    torch.manual_seed(0)
    sd = {"fc.weight": torch.randn(3, 4), "fc.bias": torch.zeros(3), "n": torch.tensor(5)}
    ckpt = {
        "state_dict": sd,
        "epoch": 2,
        "steps": range(0, 10, 2),
        "types": (int, str, float, bytes, range),
        "lr": 0.1,
        "name": "model",
        "raw": b"\x00\xffbytes",
        "shape": torch.Size([3, 4]),
        "dtype": torch.float16,
        "arr": np.arange(4, dtype=np.float32),
        "seen": {1, 2},
        "frozen": frozenset({"a"}),
        "c": complex(1, 2),
    }
    for proto in (2, 4):
        for zipped in (True, False):
            for label, obj in (("sd", sd), ("ckpt", ckpt)):
                p = tmp / f"{label}_p{proto}_{'zip' if zipped else 'legacy'}.pt"
                torch.save(obj, p, pickle_protocol=proto, _use_new_zipfile_serialization=zipped)
                data = p.read_bytes()
                out.add("zip" if zipped else "pickle", p.name, data, "benign", "torch.save")
                if zipped:
                    for name, member in _zip_members(data):
                        if name.endswith("data.pkl"):
                            out.add("pickle", f"{label}_p{proto}_data.pkl", member, "benign", f"{p.name}:{name}")
    ns = _argparse.Namespace(lr=0.1, epochs=3, arch="resnet")
    for proto in (0, 2, 4, 5):
        out.add("pickle", f"namespace_p{proto}.pkl", pickle.dumps({"args": ns, "sd": {}}, protocol=proto), "benign", "argparse")
        out.add("pickle", f"builtins_p{proto}.pkl", pickle.dumps(ckpt["types"] + (ckpt["steps"], ckpt["raw"]), protocol=proto), "benign", "types")
    out.add("pickle", "tensors_p2.pkl", pickle.dumps({"t": torch.ones(2, 2), "h": torch.ones(2, dtype=torch.float16)}, protocol=2), "benign", "pickle.dumps(tensor)")
    out.add("pickle", "numpy_p2.pkl", pickle.dumps({"a": np.ones((2, 2)), "s": np.float64(1.5)}, protocol=2), "benign", "pickle.dumps(ndarray)")
    out.add("pickle", "numpy_p5.pkl", pickle.dumps({"a": np.ones((2, 2)), "s": np.int32(3)}, protocol=5), "benign", "pickle.dumps(ndarray)")
    # numpy files
    arrays = {
        "f4.npy": np.arange(6, dtype="<f4").reshape(2, 3),
        "f8_fortran.npy": np.asfortranarray(np.ones((3, 2))),
        "u1.npy": np.arange(5, dtype=np.uint8),
        "bool_scalar.npy": np.array(True),
        "str.npy": np.array(["ab", "c"]),
        "bytes.npy": np.array([b"ab", b"c"]),
        "structured.npy": np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8", (2,))]),
        "nested.npy": np.zeros(1, dtype=[("a", [("b", "<f4")])]),
        "object_ints.npy": np.array([1, "two", None], dtype=object),
        "object_field.npy": np.array([(1.0, "x")], dtype=[("f", "<f4"), ("o", "O")]),
        "stringdtype.npy": np.array(["a", "bb"], dtype=np.dtypes.StringDType()),
        "empty.npy": np.zeros((0,)),
    }
    import warnings

    for name, arr in arrays.items():
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.save(buf, arr, allow_pickle=True)
        out.add("npy", name, buf.getvalue(), "benign", "np.save")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ones(3), version=(2, 0))
    out.add("npy", "v2_header.npy", buf.getvalue(), "benign", "np.save version 2")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array(["é"]), version=(3, 0))
    out.add("npy", "v3_header.npy", buf.getvalue(), "benign", "np.save version 3")
    buf = io.BytesIO()
    np.savez(buf, w=np.ones(2), o=np.array([{"k": 1}], dtype=object))
    out.add("npy", "mixed.npz", buf.getvalue(), "benign", "np.savez")
    buf = io.BytesIO()
    np.savez_compressed(buf, w=np.arange(3))
    out.add("npy", "compressed.npz", buf.getvalue(), "benign", "np.savez_compressed")
    # legacy tar checkpoints
    out.add("tar", "legacy_tar_benign.pt", _legacy_tar(), "benign", "torch<0.1.10 tar")
    ns_pickle = pickle.dumps({"args": ns, "epoch": 1}, protocol=2)
    out.add("tar", "legacy_tar_namespace.pt", _legacy_tar(ns_pickle), "benign", "torch<0.1.10 tar + Namespace")


def build(outdir: str | os.PathLike[str], marker_dir: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    """Write the seeds to ``outdir``; the payloads create their markers in ``marker_dir`` (default
    ``outdir/markers``: pass the final place when ``outdir`` is renamed afterwards)."""
    root = Path(outdir)
    corpus = root / "_corpus"
    markers = Path(marker_dir) if marker_dir is not None else root / "markers"
    if marker_dir is None:
        markers.mkdir(parents=True, exist_ok=True)
    mc = _make_corpus_module()
    entries = mc.build(corpus, markers, benign=True)
    out = _Out(root)
    for e in entries:
        path = corpus / e["file"]
        data = path.read_bytes()
        origin = e["kind"]
        name = path.name
        kind = _kind(data)
        if name.endswith((".npy", ".npz")):
            out.add("npy", name, data, origin, e["file"])
            payload = _npy_payload(data)
            if payload:
                out.add("pickle", name + ".pkl", payload, origin, e["file"] + ":payload")
            for mname, member in _zip_members(data) if name.endswith(".npz") else []:
                payload = _npy_payload(member)
                if payload:
                    out.add("pickle", f"{name}_{mname}.pkl", payload, origin, f"{e['file']}:{mname}:payload")
            continue
        if name.endswith((".onnx", ".safetensors")) and origin == "benign":
            continue
        if kind == "zip" or e.get("container") in ("zip", "torch-zip", "torchscript", "torch-export"):
            if kind == "zip":
                out.add("zip", name, data, origin, e["file"])
            for mname, member in _zip_members(data):
                if mname.lower().endswith("pkl") or (member[:1] == b"\x80" and "/data/" not in mname):
                    out.add("pickle", f"{name}_{mname}", member, origin, f"{e['file']}:{mname}")
            if kind != "zip":
                out.add("pickle", name, data, origin, e["file"])
                if zipfile.is_zipfile(io.BytesIO(data)):
                    out.add("zip", name, data, origin, e["file"])
            continue
        if e.get("container") == "tar" or (kind == "tar" and "polyglot" not in name):
            out.add("tar", name, data, origin, e["file"])
            try:
                with tarfile.open(fileobj=io.BytesIO(data)) as tf:
                    for m in tf.getmembers():
                        fh = tf.extractfile(m)
                        if fh is not None:
                            out.add("pickle", f"{name}_{m.name}.pkl", fh.read(), origin, f"{e['file']}:{m.name}")
            except tarfile.TarError:
                pass
            continue
        if "tar_pickle_polyglot" in name:
            out.add("tar", name, data, origin, e["file"])
        out.add("pickle", name, data, origin, e["file"])
    _benign_extra(out, root / "_tmp")
    manifest = {"entries": out.entries, "markers": str(markers)}
    (root / "seeds.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out.entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--markers", help="the directory the payloads write their markers to (default OUTDIR/markers)")
    args = parser.parse_args(argv)
    (Path(args.outdir) / "_tmp").mkdir(parents=True, exist_ok=True)
    entries = build(args.outdir, args.markers)
    counts = {t: sum(e["target"] == t for e in entries) for t in TARGETS}
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
