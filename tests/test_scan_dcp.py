"""The scan of torch.distributed.checkpoint (DCP) directories judges what DCP loads (red-team round 6).

Each attack is built from a real small ``dcp.save`` in tmp_path with a harmless payload (it creates a marker
file); a subprocess checks that torch's own loader runs it, and the scan, ``load_state_dict`` and resume must
refuse the directory.
"""

from __future__ import annotations

import io
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import torchkeep
from torchkeep._cli.main import run as cli
from torchkeep._pickle import read_pickle
from torchkeep.errors import InputError, UnsafeFileError
from torchkeep.training import TrainConfig, load_checkpoint, train

dcp = pytest.importorskip("torch.distributed.checkpoint")
from torch.distributed.checkpoint.filesystem import _StorageInfo  # noqa: E402
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex  # noqa: E402

try:
    import zstandard
except ImportError:
    zstandard = None

_LOADER = """
import sys, warnings
warnings.filterwarnings("ignore")
import torch, torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
how, path, out = sys.argv[1:]
try:
    if how == "convert":
        dcp_to_torch_save(path, out)
    else:
        dcp.load({"w": torch.zeros(3), "note": None}, checkpoint_id=path)
except Exception as exc:
    print("loader failed:", type(exc).__name__, exc)
"""


class _Payload:
    """Creates ``marker`` when unpickled (by eval; the value is a float, so loaders go on)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close() or 0.003",))


def _torch_save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _save(d: Path, sd: dict | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd if sd is not None else {"w": torch.zeros(3), "note": [1, 2]}, checkpoint_id=d, no_dist=True)


def _metadata(d: Path, name: str = ".metadata"):
    return pickle.loads((d / name).read_bytes())


def _runs_payload(d: Path, marker: Path, how: str) -> bool:
    marker.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-c", _LOADER, how, str(d), str(d.parent / "out.pt")],
                   capture_output=True, timeout=120, check=False)
    return marker.exists()


def _refused(d: Path, marker: Path, verdict: str) -> None:
    """load_state_dict (tensors only, read by torchkeep) refuses what is dangerous; resume (dcp.load, which runs
    every non-tensor entry) anything not safe."""
    marker.unlink(missing_ok=True)
    if verdict == "dangerous":
        with pytest.raises(UnsafeFileError):
            torchkeep.load_state_dict(d)
    with pytest.raises((UnsafeFileError, InputError)):
        load_checkpoint(d)
    assert not marker.exists()


# -- the attacks ------------------------------------------------------------------------------------------
def _with_payload(d: Path, marker: Path, fqn: str = "note"):
    """A checkpoint in ``d``, a payload blob written beside its data, its metadata and the key of ``fqn``."""
    if not d.exists():
        _save(d)
    evil = _torch_save(_Payload(marker))
    (d / "__evil_0.distcp").write_bytes(evil)
    md = _metadata(d)
    return md, evil, next(k for k in md.storage_data if k.fqn == fqn)


def _dup_index(d: Path, marker: Path) -> None:
    """Two storage items for one entry: DCP reads MetadataIndex(fqn), a reader keying by name may take the other."""
    md, evil, key = _with_payload(d, marker)
    benign = md.storage_data.pop(key)
    md.storage_data[MetadataIndex("note")] = _StorageInfo("__evil_0.distcp", 0, len(evil))
    md.storage_data[MetadataIndex("note", offset=[0])] = benign
    (d / ".metadata").write_bytes(pickle.dumps(md))


def _two_builds(d: Path, marker: Path) -> None:
    """A second BUILD on the Metadata: pickle merges it into __dict__ (storage_data stays)."""
    md, evil, key = _with_payload(d, marker)
    md.storage_data[key] = _StorageInfo("__evil_0.distcp", 0, len(evil))
    first = pickle.dumps(md, protocol=2)
    frag = io.BytesIO()
    p = pickle.Pickler(frag, protocol=2)
    p.fast = True
    p.dump({"state_dict_metadata": {"note": BytesStorageMetadata()}})
    (d / ".metadata").write_bytes(first[:-1] + frag.getvalue()[2:-1] + b"b.")
    assert _metadata(d).storage_data  # pickle merged the second state in


def _rank_fallback(d: Path, marker: Path) -> None:
    """A .metadata pickle.load cannot load (a slot-state pair on the frozen MetadataIndex): DCP reads __0.metadata."""
    _save(d)
    md = _metadata(d)
    MetadataIndex.__reduce_ex__ = lambda self, proto: (  # type: ignore[method-assign]
        __import__("copyreg").__newobj__, (MetadataIndex,), (None, {"fqn": self.fqn, "offset": self.offset, "index": self.index}))
    try:
        data = pickle.dumps(md, protocol=2)
    finally:
        del MetadataIndex.__reduce_ex__
    (d / ".metadata").write_bytes(data)
    with pytest.raises(Exception):  # noqa: B017 (FrozenInstanceError)
        pickle.loads(data)
    (d / "__0.metadata").write_bytes(pickle.dumps(_Payload(marker), protocol=2))


def _zstd_frame(data: bytes) -> bytes:
    """A zstd frame of raw (stored) blocks, as any zstd decoder reads it (written here without zstandard)."""
    out = struct.pack("<IB", 0xFD2FB528, 0x60) + struct.pack("<H", len(data) - 256)  # single segment, 2-byte size
    for i in range(0, len(data), 1 << 16):
        block = data[i : i + (1 << 16)]
        last = i + (1 << 16) >= len(data)
        out += (int(last) | (len(block) << 3)).to_bytes(3, "little") + block
    return out


def _zstd(d: Path, marker: Path) -> None:
    """An entry saved through DCP's ZStandard stream transform: DCP inflates it, then torch.load(weights_only=False)."""
    _save(d)
    evil = _torch_save(_Payload(marker))
    assert len(evil) > 256
    blob = _zstd_frame(evil)
    if zstandard is not None:
        assert zstandard.ZstdDecompressor().decompress(blob) == evil
    (d / "__z_0.distcp").write_bytes(blob)
    md = _metadata(d)
    key = next(k for k in md.storage_data if k.fqn == "note")
    md.storage_data[key] = _StorageInfo("__z_0.distcp", 0, len(blob), ["stream.zstd/1"])
    (d / ".metadata").write_bytes(pickle.dumps(md))


ATTACKS = {"dup-index": _dup_index, "two-builds": _two_builds, "rank-fallback": _rank_fallback, "zstd": _zstd}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_dcp_attacks_that_torch_loads_are_refused(name, tmp_path):
    d, marker = tmp_path / "ckpt", tmp_path / "marker"
    ATTACKS[name](d, marker)
    if name != "zstd" or zstandard is not None:  # torch's loader needs zstandard (or pyzstd) for the zstd case
        assert _runs_payload(d, marker, "convert"), "dcp_to_torch_save no longer runs this payload"
        if name != "two-builds":  # dcp.load with a {"w", "note"} state dict
            assert _runs_payload(d, marker, "load")
    report = torchkeep.scan(d)
    if name == "zstd" and zstandard is None:
        assert report.verdict == "error" and any(f.rule == "dcp-transform" for f in report.findings)
    else:
        assert report.verdict == "dangerous", report.findings
    _refused(d, marker, report.verdict)


def test_each_shape_is_named(tmp_path):
    findings = {}
    for name, make in ATTACKS.items():
        make(tmp_path / name, tmp_path / "marker")
        findings[name] = torchkeep.scan(tmp_path / name).findings
    assert any(f.rule == "dcp-storage" and "two storage items" not in f.why and "'note'" in f.why
               for f in findings["dup-index"])
    assert any(f.rule == "unexpected-build" and "second BUILD" in f.why for f in findings["two-builds"])
    assert any(f.rule == "dangerous-import" and f.name == "eval" for f in findings["two-builds"])  # the blob DCP reads
    assert any(f.rule == "unexpected-build" and "slotstate" in f.why for f in findings["rank-fallback"])
    assert any(f.stream.startswith("__0.metadata") and f.name == "eval" for f in findings["rank-fallback"])
    if zstandard is not None:
        assert any(f.name == "eval" and "note" in f.stream for f in findings["zstd"])


class _Holder:
    pass


def test_the_reader_merges_builds_as_pickle_does():
    from torchkeep._pickle import Placeholder

    data = pickle.dumps(_Holder(), protocol=2)  # NEWOBJ, no BUILD (empty __dict__)
    one = b"}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02ub"  # BUILD {'a': 1, 'b': 2}
    two = b"N}X\x01\x00\x00\x00bK\x03s\x86b"  # BUILD (None, {'b': 3}): setattr
    crafted = data[:-1] + one + two + b"."
    assert vars(pickle.loads(crafted)) == {"a": 1, "b": 3}
    obj = read_pickle(crafted).obj
    assert isinstance(obj, Placeholder) and obj.tk_state_dict == {"a": 1, "b": 3} and obj._tk_builds == 2


def test_storage_items_torch_never_writes_are_dangerous(tmp_path):
    d = tmp_path / "ckpt"
    _save(d)
    md = _metadata(d)
    md.storage_data[MetadataIndex("nowhere")] = next(iter(md.storage_data.values()))  # no entry reads it
    (d / ".metadata").write_bytes(pickle.dumps(md))
    assert torchkeep.scan(d).verdict == "dangerous"
    _save(d)
    md = _metadata(d)
    key = next(k for k in md.storage_data if k.fqn == "note")
    info = md.storage_data[key]
    info.extra = 1  # a state key that is no field of _StorageInfo
    (d / ".metadata").write_bytes(pickle.dumps(md))
    rep = torchkeep.scan(d)
    assert rep.verdict == "dangerous" and any("not fields" in f.why for f in rep.findings)


def test_every_file_of_a_dcp_directory_is_judged(tmp_path):
    d = tmp_path / "ckpt"
    _save(d)
    assert torchkeep.scan(d).verdict == "safe"
    (d / "README.txt").write_text("notes\n")  # not a pickle, DCP never reads it
    assert torchkeep.scan(d).verdict == "safe"
    (d / "extra.pkl").write_bytes(pickle.dumps(_Payload(tmp_path / "marker"), protocol=2))
    rep = torchkeep.scan(d)
    assert rep.verdict == "dangerous" and any(f.stream.startswith("extra.pkl") for f in rep.dangerous)


def test_a_torch_written_zstd_checkpoint(tmp_path):
    if zstandard is None:
        pytest.skip("zstandard is not installed (torch cannot write a zstd DCP checkpoint)")
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint._extension import ZStandard

    d = tmp_path / "ckpt"
    sd = {"w": torch.randn(4, 3), "lr": 0.1, "names": ["a", "b"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=FileSystemWriter(d, _extensions=[ZStandard()]), no_dist=True)
    assert torchkeep.scan(d).verdict == "safe"
    assert torch.equal(torchkeep.load_state_dict(d)["w"], sd["w"])


@pytest.fixture(scope="module")
def dcp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dcprun") / "run"
    prev = torch.get_num_threads()
    try:
        train(TrainConfig(out=out, subset=120, epochs=2, checkpoint_format="dcp", plots=False, tensorboard=False,
                          progress=False, on_epoch_end=lambda row: True))
    finally:
        torch.set_num_threads(prev)
    return out


def test_resume_refuses_a_dcp_checkpoint_that_is_not_safe(dcp_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(dcp_run, run)
    d = run / "checkpoint.dcp"
    assert torchkeep.scan(d).verdict == "safe"
    fqn = "optimizer.param_groups.0.lr"
    md, evil, key = _with_payload(d, tmp_path / "marker", fqn)
    orig = md.storage_data.pop(key)
    md.storage_data[MetadataIndex(fqn)] = _StorageInfo("__evil_0.distcp", 0, len(evil))
    md.storage_data[MetadataIndex(fqn, offset=[0])] = orig
    (d / ".metadata").write_bytes(pickle.dumps(md))
    assert cli(["train", "--resume", str(run), "--epochs", "2", "--device", "cpu"]) != 0
    out = capsys.readouterr()
    assert "refused" in out.err + out.out
    assert not (tmp_path / "marker").exists()
    # an entry the scan cannot judge (verdict error) is refused too: dcp.load would run it
    md = pickle.loads((dcp_run / "checkpoint.dcp" / ".metadata").read_bytes())
    md.storage_data[key] = _StorageInfo("__evil_0.distcp", 0, len(evil), ["stream.unknown/1"])
    (d / ".metadata").write_bytes(pickle.dumps(md))
    assert torchkeep.scan(d).verdict == "error"
    with pytest.raises(InputError):
        load_checkpoint(run)
