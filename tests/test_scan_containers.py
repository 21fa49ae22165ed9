"""Containers read the way their loaders read them (issue 9, classes 1, 2, 3 and 5).

Every shape is built here by code, with a harmless payload that only creates a marker file in
``tmp_path``. Each malicious shape must scan ``dangerous``; the same builder without its quirk and with a
benign pickle must scan ``safe``; and ``test_real_loaders_run_every_shape`` proves, in subprocesses, that
the real loader (``torch.load(weights_only=False)``, ``np.load(allow_pickle=True)``, ``pickle.loads``)
does run each payload, i.e. that the shapes are real.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import random
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import torchkeep
from torchkeep import _inflate, _walk_npy, scan
from torchkeep import _streams as streams

_spec = importlib.util.spec_from_file_location("make_corpus", Path(__file__).parent / "corpus" / "make_corpus.py")
assert _spec is not None and _spec.loader is not None
mc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_corpus", mc)
_spec.loader.exec_module(mc)

MARKER = "PWNED_MARKER"


# -- payloads ---------------------------------------------------------------------------------------------
def os_system(marker: Path) -> bytes:
    """A pickle that runs ``touch marker``."""
    return mc.pk(mc.call(mc.G("os", "system"), mc.U(f"touch '{marker}'")))


def computed_os_system(marker: Path) -> bytes:
    """``os.system`` reached through a STACK_GLOBAL whose module name is computed by a call: the global
    named is only known at load time (the shape the old relaxed mode let through)."""
    return mc.pk(
        mc.call(mc.G("copyreg", "_reconstructor"), mc.G("builtins", "str"), mc.G("builtins", "str"), mc.U("os"))
        + mc.U("system")
        + mc.STACK_GLOBAL
        + mc.MARK
        + mc.U(f"touch '{marker}'")
        + mc.TUPLE
        + mc.REDUCE,
        mc.PROTO4,
    )


BENIGN = pickle.dumps({"epoch": 3, "lr": 0.1, "names": ["a", "b"]}, protocol=2)


# -- zip archives written byte by byte --------------------------------------------------------------------
@dataclass
class Member:
    name: bytes
    data: bytes
    flags: int = 0
    method: int = 0  # 0 stored, 8 deflated
    level: int = 6  # deflate level (0: stored blocks inside the deflate stream)
    version: int = 20  # version needed to extract (zipfile refuses above 63)


def _local_and_central(m: Member, offset: int) -> tuple[bytes, bytes]:
    if m.method == 8:
        c = zlib.compressobj(m.level, zlib.DEFLATED, -15)
        body = c.compress(m.data) + c.flush()
    else:
        body = m.data
    crc = zlib.crc32(m.data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", m.version, m.flags, m.method, 0, 0x21, crc, len(body), len(m.data), len(m.name), 0)
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, m.version, m.flags, m.method, 0, 0x21, crc, len(body), len(m.data),
        len(m.name), 0, 0, 0, 0, 0, offset,
    )  # fmt: skip
    return local + m.name + body, central + m.name


def zip_bytes(members: list[Member], *, prefix: bytes = b"", cd_slack: int = 0, comment: bytes = b"") -> bytes:
    """A zip archive; ``prefix`` is written before it without shifting any offset (as if the archive
    had been appended to other data), ``cd_slack`` is added to the directory size the end record gives."""
    out, central = bytearray(), bytearray()
    for m in members:
        local, cd = _local_and_central(m, len(out))
        out += local
        central += cd
    cd_at = len(out)
    out += central
    n = len(members)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central) + cd_slack, cd_at, len(comment)) + comment
    return prefix + bytes(out)


def zip64_split(torch_members: list[Member], zipfile_members: list[Member]) -> bytes:
    """One file, two archives: the ZIP64 locator points (by offset, as miniz follows it) at the ZIP64 end
    record of the first directory, while Python's zipfile reads the ZIP64 end record right before the
    locator, whatever it says: the one of the second directory."""
    out = bytearray()
    directories = []
    for group in (torch_members, zipfile_members):
        central = bytearray()
        for m in group:
            local, cd = _local_and_central(m, len(out))
            out += local
            central += cd
        directories.append((central, len(group)))
    records = []
    for central, n in directories:
        cd_at = len(out)
        out += central
        records.append(len(out))
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(central), cd_at)
    out += struct.pack("<4sLQL", b"PK\x06\x07", 0, records[0], 1)  # locator -> the first ZIP64 record
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


def zip_decoy_directory(torch_members: list[Member], decoy_members: list[Member]) -> bytes:
    """The real directory is followed by a decoy of the same size before the end record. miniz reads the
    directory at its recorded offset; zipfile infers ``end record - size - offset`` bytes of "data before
    the archive", shifts every offset by that, and reads the decoy, which lists other members."""
    out = bytearray()
    real, decoy = bytearray(), bytearray()
    decoy_size = sum(46 + len(m.name) for m in decoy_members)
    for group, central, shift in ((torch_members, real, 0), (decoy_members, decoy, decoy_size)):
        for m in group:
            local, cd = _local_and_central(m, len(out) - shift)
            out += local
            central += cd
    assert len(real) == len(decoy), "the decoy directory must be as long as the real one"
    cd_at = len(out)
    out += real + decoy
    n = len(torch_members)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(real), cd_at, 0)
    return bytes(out)


def torch_members(data_pkl: bytes, *, method: int = 0) -> list[Member]:
    """The records torch.load needs (no tensors)."""
    return [
        Member(b"archive/data.pkl", data_pkl, method=method),
        Member(b"archive/byteorder", b"little"),
        Member(b"archive/version", b"3\n"),
        Member(b"archive/.data/serialization_id", b"1" * 40),
    ]


def npy_bytes(descr: object, data: bytes) -> bytes:
    """A .npy (format 1.0) of one element of dtype ``descr``, followed by ``data``."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': (1,), }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def float_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.float32))
    return buf.getvalue()


# -- tar archives (the oldest torch.save format) ----------------------------------------------------------
def tar_bytes(entries: list[tuple[str, bytes, bytes | str]]) -> bytes:
    """(name, tar type, data or link target) per member."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if isinstance(data, str):
                info.linkname = data
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR_RECORDS = [
    ("storages", tarfile.REGTYPE, pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)),
    ("tensors", tarfile.REGTYPE, pickle.dumps(0, protocol=2)),
]
UNKNOWN_TYPE = b"Z"  # no tar type: tarfile serves such a member as a regular file


# -- the shapes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """``build(dir, pickle, quirk)`` writes the file; ``loader`` loads it the way a user would; ``rules``
    are the findings the quirk itself must give (with a benign pickle), beyond the payload's own."""

    build: Callable[[Path, bytes, bool], Path]
    loader: str  # "torch", "numpy" or "member:<name>" (pickle.loads of that zip member)
    payload: Callable[[Path], bytes]
    rules: frozenset[str]


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def _utf8_flag_bad_name(d: Path, pkl: bytes, quirk: bool) -> Path:
    # Bit 11 says "UTF-8" but the name is not: zipfile refuses the whole archive, miniz reads raw bytes (and
    # torch's record listing stops at the NUL, so torch.load goes on).
    extra = Member(b"archive/extra\x00\xff\xfe", b"x", flags=0x800) if quirk else Member(b"archive/extra", b"x")
    return _write(d, "utf8_flag.pt", zip_bytes([*torch_members(pkl), extra]))


def _version_needed(d: Path, pkl: bytes, quirk: bool) -> Path:
    members = torch_members(pkl)
    members[1].version = 64 if quirk else 20  # zipfile: "zip file version 6.4" (NotImplementedError)
    return _write(d, "version_needed.pt", zip_bytes(members))


def _cd_slack(d: Path, pkl: bytes, quirk: bool) -> Path:
    # miniz reads the directory from its recorded offset and ignores unused bytes; zipfile infers data
    # before the archive from the size and reads the directory from the wrong place.
    return _write(d, "cd_slack.pt", zip_bytes(torch_members(pkl), cd_slack=9 if quirk else 0))


def _eocd_in_comment(d: Path, pkl: bytes, quirk: bool) -> Path:
    # zipfile takes the last "PK\5\6" even 17 bytes from the end (too short to be a record) and gives up;
    # miniz skips it and finds the real end record.
    comment = b"PK\x05\x06" + b"z" * 17 if quirk else b"a comment, no signature"
    return _write(d, "eocd_comment.pt", zip_bytes(torch_members(pkl), comment=comment))


def _zip64_split(d: Path, pkl: bytes, quirk: bool) -> Path:
    if not quirk:
        return _write(d, "zip64_split.pt", zip_bytes(torch_members(pkl)))
    decoy = [Member(b"decoy/" + m.name, m.data) for m in torch_members(BENIGN)]
    return _write(d, "zip64_split.pt", zip64_split(torch_members(pkl), decoy))


def _decoy_directory(d: Path, pkl: bytes, quirk: bool) -> Path:
    if not quirk:
        return _write(d, "decoy.pt", zip_bytes(torch_members(pkl)))
    decoy = [Member(b"decoy!!/" + m.name[8:], m.data) for m in torch_members(BENIGN)]
    return _write(d, "decoy.pt", zip_decoy_directory(torch_members(pkl), decoy))


def _computed_global_member(d: Path, pkl: bytes, quirk: bool) -> Path:
    # A member not named like a pickle holding a pickle whose global is computed at load time.
    return _write(d, "odd_member.zip", zip_bytes([*torch_members(BENIGN), Member(b"archive/extra/state", pkl)]))


def _deflated_past_window(d: Path, pkl: bytes, quirk: bool) -> Path:
    # data.pkl deflated, its payload after 4 MiB of padding: inflated to the end, past the memory window.
    padded = mc.PROTO2 + mc.B(b"\x00" * (4 << 20)) + mc.POP + pkl[2:] if quirk else pkl
    return _write(d, "deflated.pt", zip_bytes(torch_members(padded, method=8)))


def _tar_unknown_type(d: Path, pkl: bytes, quirk: bool) -> Path:
    return _write(d, "unknown_type.tar.pt", tar_bytes([*TAR_RECORDS, ("pickle", UNKNOWN_TYPE if quirk else tarfile.REGTYPE, pkl)]))


def _tar_symlink(d: Path, pkl: bytes, quirk: bool) -> Path:
    # "pickle" is a symbolic link: tarfile.extractfile serves the member it points to.
    entries = [*TAR_RECORDS, ("blob", tarfile.REGTYPE, pkl), ("pickle", tarfile.SYMTYPE, "blob")]
    return _write(d, "symlink.tar.pt", tar_bytes(entries if quirk else [*TAR_RECORDS, ("pickle", tarfile.REGTYPE, pkl)]))


def _tar_hardlink(d: Path, pkl: bytes, quirk: bool) -> Path:
    entries = [*TAR_RECORDS, ("blob", UNKNOWN_TYPE, pkl), ("pickle", tarfile.LNKTYPE, "blob")]
    return _write(d, "hardlink.tar.pt", tar_bytes(entries if quirk else [*TAR_RECORDS, ("pickle", tarfile.REGTYPE, pkl)]))


def _tar_symlink_outside(d: Path, pkl: bytes, quirk: bool) -> Path:
    # "storages" links to a file outside the archive: torch.load's tar.extract makes the link and unpickles
    # what it leads to. The scanner cannot see that file, so the link itself is the finding.
    outside = d / "outside_storages.bin"
    outside.write_bytes(pkl + pickle.dumps([], protocol=2))
    storages: bytes | str = str(outside) if quirk else TAR_RECORDS[0][2]
    entries = [("storages", tarfile.SYMTYPE if quirk else tarfile.REGTYPE, storages), TAR_RECORDS[1], ("pickle", tarfile.REGTYPE, BENIGN)]
    return _write(d, "symlink_outside.tar.pt", tar_bytes(entries))


def _npy_descr(descr: object, name: str) -> Callable[[Path, bytes, bool], Path]:
    def build(d: Path, pkl: bytes, quirk: bool) -> Path:
        return _write(d, name, npy_bytes(descr, pkl) if quirk else float_npy())

    return build


def frame_crossing(pkl: bytes) -> bytes:
    """A pickle with a BINUNICODE that starts inside a FRAME and runs past its end. From a file with peek()
    (np.load, pickle.load(open(...))) or from bytes the C unpickler reads the string on across the frame's
    end and then runs ``pkl``; from a BytesIO (torch.load's zip records) it drops the frame's rest, reads
    the string from after the frame, and only returns a string."""
    body = pkl[2:]  # without PROTO
    length = len(body) + 64
    frame = b"X" + struct.pack("<I", length) + b"A" * len(body)
    after = b"x" * (length - len(body)) + body
    return mc.PROTO4 + b"\x95" + struct.pack("<Q", len(frame)) + frame + after + b"."


def test_frame_crossings_under_any_protocol(tmp_path):
    for proto in (mc.PROTO2, mc.PROTO4):
        data = proto + frame_crossing(os_system(tmp_path / MARKER))[2:]
        report = scan(_write(tmp_path, "f.npy", npy_bytes("|O", data)))
        assert {"frame-differential", "dangerous-import"} <= {f.rule for f in report.dangerous}, report.findings
    # frames that nothing crosses (what pickle writes) are not a finding
    framed = pickle.dumps([list(range(3000)), "x" * 20000, {"a": 1}], protocol=5)
    assert scan(_write(tmp_path, "ok.npy", npy_bytes("|O", framed))).verdict == "safe"


def _npy_frame_crossing(d: Path, pkl: bytes, quirk: bool) -> Path:
    return _write(d, "frames.npy", npy_bytes("|O", frame_crossing(pkl) if quirk else pickle.dumps([pkl] * 3, protocol=4)))


def _npz_string_dtype(d: Path, pkl: bytes, quirk: bool) -> Path:
    data = npy_bytes("T", pkl) if quirk else float_npy()
    return _write(d, "strings.npz", zip_bytes([Member(b"w.npy", data, method=8)]))


SHAPES: dict[str, Shape] = {
    "zip_utf8_flag_bad_name": Shape(_utf8_flag_bad_name, "torch", os_system, frozenset({"zip-reader-mismatch"})),
    "zip_version_needed": Shape(_version_needed, "torch", os_system, frozenset({"zip-reader-mismatch"})),
    "zip_cd_slack": Shape(_cd_slack, "torch", os_system, frozenset({"zip-reader-mismatch"})),
    "zip_eocd_in_comment": Shape(_eocd_in_comment, "torch", os_system, frozenset({"zip-reader-mismatch"})),
    "zip64_split_directories": Shape(_zip64_split, "torch", os_system, frozenset({"zip-reader-mismatch"})),
    "zip_decoy_directory": Shape(_decoy_directory, "torch", os_system, frozenset({"zip-reader-mismatch"})),
    "zip_computed_global_member": Shape(_computed_global_member, "member:archive/extra/state", computed_os_system, frozenset()),
    "zip_deflated_past_window": Shape(_deflated_past_window, "torch", os_system, frozenset()),
    "tar_unknown_type": Shape(_tar_unknown_type, "torch", os_system, frozenset({"tar-not-plain"})),
    "tar_symlink_computed_global": Shape(_tar_symlink, "torch", computed_os_system, frozenset({"tar-not-plain"})),
    "tar_hardlink_to_unknown_type": Shape(_tar_hardlink, "torch", os_system, frozenset({"tar-not-plain"})),
    "tar_symlink_outside": Shape(_tar_symlink_outside, "torch", os_system, frozenset({"tar-link", "tar-not-plain"})),
    "npy_string_dtype": Shape(_npy_descr("T", "strings.npy"), "numpy", os_system, frozenset()),
    "npy_string_dtype_field": Shape(_npy_descr("f4,T", "fields.npy"), "numpy", os_system, frozenset()),
    "npy_nested_string_field": Shape(_npy_descr([("a", [("c", "T")])], "nested.npy"), "numpy", os_system, frozenset()),
    "npy_string_subarray": Shape(_npy_descr(("T", (2,)), "subarray.npy"), "numpy", os_system, frozenset()),
    "npz_string_dtype_deflated": Shape(_npz_string_dtype, "numpy", os_system, frozenset()),
    "npy_frame_crossing": Shape(_npy_frame_crossing, "numpy", os_system, frozenset({"frame-differential", "parser-differential"})),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_shape_is_dangerous(tmp_path, name):
    shape = SHAPES[name]
    marker = tmp_path / f"{MARKER}_{name}"
    report = scan(shape.build(tmp_path, shape.payload(marker), True))
    assert report.verdict == "dangerous", report.findings
    assert shape.rules <= {f.rule for f in report.dangerous}, report.findings
    if name != "tar_symlink_outside":  # there the payload lies outside the archive: the link is the finding
        assert any(f.module in ("os", "posix", "copyreg", "builtins") or f.rule == "non-constant-global" for f in report.dangerous), report.findings
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(n for n, s in SHAPES.items() if s.rules))
def test_the_quirk_alone_is_a_finding(tmp_path, name):
    shape = SHAPES[name]
    report = scan(shape.build(tmp_path, BENIGN, True))
    assert report.verdict == "dangerous" and {f.rule for f in report.dangerous} == shape.rules, report.findings
    assert all(f.why for f in report.dangerous)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_benign_counterparts_are_safe(tmp_path, name):
    report = scan(SHAPES[name].build(tmp_path, BENIGN, False))
    assert report.verdict == "safe", (report.findings, report.error)


_LOADER = r"""
import io, pickle, sys, zipfile
path, loader = sys.argv[1], sys.argv[2]
try:
    if loader == "torch":
        import torch
        torch.load(path, weights_only=False)
    elif loader == "numpy":
        import numpy as np
        obj = np.load(path, allow_pickle=True)
        if hasattr(obj, "files"):
            [obj[k] for k in obj.files]
    elif loader.startswith("member:"):
        pickle.loads(zipfile.ZipFile(path).read(loader[7:]))
except Exception as exc:  # loaders may fail after the payload ran; the marker is the proof
    print(type(exc).__name__, exc)
"""


def test_real_loaders_run_every_shape(tmp_path):
    """The shapes are real: the loader each one targets runs its payload (in a subprocess)."""
    missing = []
    for name, shape in SHAPES.items():
        marker = tmp_path / f"{MARKER}_{name}"
        path = shape.build(tmp_path, shape.payload(marker), True)
        proc = subprocess.run(
            [sys.executable, "-c", _LOADER, str(path), shape.loader], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        if not marker.exists():
            missing.append((name, proc.stdout[-300:], proc.stderr[-300:]))
        marker.unlink(missing_ok=True)
    assert not missing, missing


# -- one strict mode ---------------------------------------------------------------------------------------
def test_members_are_judged_by_content_not_name(tmp_path):
    mc_ = mc
    # A tensor member that happens to parse as a tiny pickle and names no global: not a pickle.
    tensor_like = mc_.torch_zip_bytes(BENIGN, extra=(("archive/data/0", b"N." + bytes(64)),))
    assert scan(_write(tmp_path, "t.pt", tensor_like)).verdict == "safe"
    # The same member naming a global keeps every finding, whatever its name.
    evil = mc_.torch_zip_bytes(BENIGN, extra=(("archive/data/0", computed_os_system(tmp_path / MARKER)),))
    report = scan(_write(tmp_path, "e.pt", evil))
    assert report.verdict == "dangerous" and any(f.stream == "archive/data/0" for f in report.dangerous), report.findings


# -- inflating: to the end, within a budget that fails closed -----------------------------------------------
def test_deflated_members_past_the_budget_fail_closed(tmp_path, monkeypatch):
    pkl = mc.PROTO2 + mc.B(b"\x00" * (3 << 20)) + mc.POP + os_system(tmp_path / MARKER)[2:]
    path = _write(tmp_path, "big.pt", zip_bytes(torch_members(pkl, method=8)))
    assert "os.system" in scan(path).imports  # the default budget reaches the payload
    monkeypatch.setattr(streams, "INFLATE_MAX_BYTES", 1 << 20)
    report = scan(path)
    assert report.verdict == "dangerous" and "os.system" not in report.imports
    (f,) = [f for f in report.dangerous if f.rule == "zip-inflate-budget"]
    assert f.stream == "archive/data.pkl" and "1 MiB" in f.why and "INFLATE_MAX_BYTES" in f.why
    monkeypatch.setattr(streams, "INFLATE_MAX_BYTES", 1 << 30)
    monkeypatch.setattr(streams, "INFLATE_MAX_SECONDS", 0.0)
    assert "zip-inflate-budget" in {f.rule for f in scan(path).dangerous}


def test_inflated_members_are_followed_past_the_memory_window(tmp_path, monkeypatch):
    # Only the first _HEAD bytes stay in memory; reads behind the inflater resume from checkpoints.
    monkeypatch.setattr(_inflate._Inflated, "_HEAD", 64 << 10)
    monkeypatch.setattr(_inflate._Inflated, "_STEP", 256 << 10)
    monkeypatch.setattr(_inflate._Inflated, "_OUT", 16 << 10)
    big = pickle.dumps(list(range(400_000)), protocol=2)[:-1] + mc.POP + os_system(tmp_path / MARKER)[2:]
    path = _write(tmp_path, "window.zip", zip_bytes([*torch_members(BENIGN), Member(b"archive/extra/blob", big, method=8)]))
    report = scan(path)
    assert [(f.target, f.stream) for f in report.dangerous] == [("os.system", "archive/extra/blob")], report.findings
    assert not any(f.rule in ("zip-bad-crc", "zip-size-mismatch", "zip-corrupt") for f in report.findings)


def test_inflated_size_and_crc_are_checked(tmp_path):
    data = bytearray(zip_bytes(torch_members(BENIGN, method=8)))
    cd = data.index(b"PK\x01\x02")
    data[cd + 16] ^= 0xFF  # CRC in the central directory
    assert "zip-bad-crc" in {f.rule for f in scan(_write(tmp_path, "crc.pt", bytes(data))).dangerous}
    data = bytearray(zip_bytes(torch_members(BENIGN, method=8)))
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # the uncompressed size, in both headers: torch refuses it
        at = data.index(sig) + (22 if sig == b"PK\x03\x04" else 24)
        data[at : at + 4] = struct.pack("<L", len(BENIGN) - 1)
    assert "zip-size-mismatch" in {f.rule for f in scan(_write(tmp_path, "size.pt", bytes(data))).dangerous}


# -- torch's own zip reader ------------------------------------------------------------------------------------
def test_miniz_reader_sees_what_torch_sees(tmp_path):
    from torchkeep._zipdir import ZipDirError, read_central_directory

    data = zip_bytes(torch_members(BENIGN), cd_slack=5, comment=b"hi")
    entries = read_central_directory(io.BytesIO(data), len(data))
    assert [e.raw_name for e in entries] == [m.name for m in torch_members(BENIGN)]
    with pytest.raises(ZipDirError, match="past the end"):
        slack = zip_bytes(torch_members(BENIGN), cd_slack=100)  # more slack than the end record covers
        read_central_directory(io.BytesIO(slack), len(slack))
    split = zip64_split(torch_members(BENIGN), [Member(b"other/x", b"y")])
    assert next(e.raw_name for e in read_central_directory(io.BytesIO(split), len(split))) == b"archive/data.pkl"
    with pytest.raises(ZipDirError):
        read_central_directory(io.BytesIO(b"PK\x03\x04" + bytes(60)), 64)


def test_case_insensitive_pickle_duplicates(tmp_path):
    members = [*torch_members(BENIGN), Member(b"archive/DATA.PKL", os_system(tmp_path / MARKER))]
    report = scan(_write(tmp_path, "dup.pt", zip_bytes(members)))
    assert {"zip-duplicate", "dangerous-import"} <= {f.rule for f in report.dangerous}, report.findings


# -- numpy judges its own dtypes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "descr",
    ["|O", "O8", "object", "T", "f4,T", "f4,O", ("T", (2,)), [("a", "<f4"), ("b", [("c", "T")])], "<f4", "V8", "p", "|S3"],
    ids=repr,
)
def test_npy_is_a_pickle_exactly_when_numpy_unpickles_it(tmp_path, descr):
    path = _write(tmp_path, "a.npy", npy_bytes(descr, BENIGN))
    try:
        np.load(path, allow_pickle=False)  # refuses before unpickling anything
        unpickles = False
    except ValueError as exc:
        assert "Object arrays cannot be loaded" in str(exc)
        unpickles = True
    report = scan(path)
    assert (report.streams == ["array (object array pickle)"]) == unpickles, report.streams
    assert report.verdict == "safe", report.findings


def test_npy_headers_numpy_cannot_parse(tmp_path):
    header = b"{'descr': 'Object', 'fortran_order': False, 'shape': (1,), }"  # not a dtype numpy knows
    raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + 1) + header + b"\n"
    report = scan(_write(tmp_path, "bad.npy", raw + BENIGN))
    assert report.verdict == "error" and any(f.rule == "npy-header" and "numpy cannot read" in f.why for f in report.findings)
    # what follows an unreadable header is still looked at
    report = scan(_write(tmp_path, "bad_evil.npy", raw + os_system(tmp_path / MARKER)))
    assert report.verdict == "dangerous" and "os.system" in report.imports
    # a header too large to parse here is not judged: fail closed
    big = b"\x93NUMPY\x02\x00" + struct.pack("<L", _walk_npy.NPY_MAX_HEADER + 1)
    report = scan(_write(tmp_path, "huge.npy", big + b" " * 64))
    assert report.verdict == "dangerous" and any(f.rule == "npy-header" for f in report.dangerous)


def test_deflate_streams_zlib_cannot_finish_fail_closed(tmp_path):
    # Two stored deflate blocks; the second one's length check is broken. zlib stops there; torch's
    # inflater (miniz) does not stop at every error zlib reports, so what follows may reach torch.load.
    pkl = os_system(tmp_path / MARKER)[:-1] + mc.B(b"\x00" * (100 << 10)) + mc.POP + b"."
    data = bytearray(zip_bytes([Member(b"archive/data.pkl", pkl, method=8, level=0), *torch_members(BENIGN)[1:]]))
    stream = 30 + len(b"archive/data.pkl")  # the first local header has no extra field
    first = int.from_bytes(data[stream + 1 : stream + 3], "little")  # LEN of the first stored block
    data[stream + 5 + first + 3] ^= 0xFF  # NLEN of the second block no longer complements its LEN
    report = scan(_write(tmp_path, "corrupt.pt", bytes(data)))
    rules = {f.rule for f in report.dangerous}
    assert {"zip-corrupt", "dangerous-import"} <= rules, report.findings  # the payload before the break is seen
    (f,) = [f for f in report.dangerous if f.rule == "zip-corrupt"]
    assert f.offset == first and "miniz" in f.why


def test_members_torch_takes_for_directories(tmp_path):
    data = bytearray(zip_bytes(torch_members(BENIGN)))
    cd = data.index(b"PK\x01\x02")
    data[cd + 38] |= 0x10  # DOS directory attribute on data.pkl: miniz serves uninitialized memory instead
    path = _write(tmp_path, "dir.pt", bytes(data))
    report = scan(path)
    assert [f.rule for f in report.dangerous] == ["zip-directory-data"], report.findings
    code = f"import torch\ntry:\n    print(torch.load({str(path)!r}, weights_only=False))\nexcept Exception as e:\n    print(e)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout and "'epoch': 3" not in proc.stdout, proc.stdout  # torch did not unpickle the member's bytes


def test_stored_members_whose_sizes_differ(tmp_path):
    data = bytearray(zip_bytes([Member(b"archive/data.pkl", BENIGN + b"\x00" * 8), *torch_members(BENIGN)[1:]]))
    cd = data.index(b"PK\x01\x02")
    data[cd + 20 : cd + 24] = struct.pack("<L", len(BENIGN))  # compressed size 8 bytes short of the real one
    report = scan(_write(tmp_path, "sizes.pt", bytes(data)))
    assert "zip-size-mismatch" in {f.rule for f in report.dangerous}, report.findings


def test_zip_directory_reader_agrees_with_torchs_on_mutated_archives():
    """Differential check of torchkeep._zipdir against torch's own reader (miniz, through
    torch._C.PyTorchFileReader, which only reads records and unpickles nothing): the same archives accepted,
    the same names, the same bytes for stored members."""
    import random

    import torch

    from torchkeep._zipdir import ZipDirError, local_data_offset, read_central_directory

    seeds = [
        zip_bytes(torch_members(BENIGN)),
        zip_bytes(torch_members(BENIGN), cd_slack=9, comment=b"PK\x05\x06" + b"z" * 17),
        zip64_split(torch_members(BENIGN), [Member(b"decoy/" + m.name, m.data) for m in torch_members(BENIGN)]),
        zip_decoy_directory(torch_members(BENIGN), [Member(b"decoy!!/" + m.name[8:], m.data) for m in torch_members(BENIGN)]),
    ]
    rng = random.Random(9)
    compared = 0
    for _ in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data_b = bytes(data)
        try:
            entries = read_central_directory(io.BytesIO(data_b), len(data_b))
        except ZipDirError:
            entries = None
        try:
            reader = torch._C.PyTorchFileReader(io.BytesIO(data_b))
            records = reader.get_all_records()
        except Exception as exc:
            # torch also refuses archives for reasons past the directory (no version record, names
            # outside the first member's folder); only a refused *directory* must match
            assert entries is None or "reading zip archive" not in str(exc), (data_b, exc)
            continue
        assert entries is not None, data_b
        root = entries[0].raw_name.split(b"/")[0] + b"/"
        names = [e.raw_name[len(root) :].split(b"\0")[0].decode("utf-8", "replace") for e in entries]
        assert names == records, (names, records)
        compared += 1
        for e, name in zip(entries, records):
            if e.method or e.is_directory or e.flags & 0x61 or e.error or [x.raw_name.lower() for x in entries].count(e.raw_name.lower()) > 1:
                continue
            try:
                start, _ = local_data_offset(io.BytesIO(data_b), len(data_b), e.header_offset, e.compress_size)
                mine = data_b[start : start + e.file_size] if start + e.file_size <= len(data_b) else None
            except ZipDirError:
                mine = None
            try:
                theirs = bytes(reader.get_record(name))
            except Exception:
                theirs = None
            assert mine == theirs, (name, mine, theirs)
    assert compared > 1000


def test_a_zip_without_a_pickle_is_not_called_safe(tmp_path):
    # scan says what inspect says: not a model file (nothing runs, but nothing loads it as a model either)
    import zipfile

    import torchkeep
    from torchkeep.errors import InputError

    p = tmp_path / "data.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("notes.txt", "hello")
    rep = torchkeep.scan(p)
    assert rep.verdict == "error" and rep.unknown_format
    assert "no data.pkl" in rep.findings[0].why
    with pytest.raises(InputError, match=r"no data\.pkl"):
        torchkeep.inspect(p)


# -- round 5: the tar format as torch.load reads it (extracts, falls back to byte 0) and joblib's "ZF" files --
def _storages(*records: tuple[int, bytes, bytes]) -> bytes:
    """A tar ``storages`` member: count, per storage (key, 'cpu', type) then int64 numel and data, then views."""
    out = pickle.dumps(len(records), protocol=2)
    for key, storage_type, data in records:
        out += mc.pk(mc.MARK + mc.I1(key) + mc.U("cpu") + storage_type + mc.TUPLE) + struct.pack("<q", len(data) // 4) + data
    return out + pickle.dumps([], protocol=2)


def torch_legacy_tar(values: tuple[float, ...] = (1.0, 2.0, 3.0)) -> bytes:
    """What torch < 0.1.10's torch.save wrote: a PAX-format tar of sys_info, pickle, tensors and storages (one
    FloatStorage, one FloatTensor on it, integer keys). The object pickle names the tensor by a string
    persistent id (``"2"``), as torch's writer did."""
    sys_info = pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2)
    tensor = object()

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> str | None:
            return "2" if obj is tensor else None

    out = io.BytesIO()
    _Pickler(out, protocol=2).dump({"epoch": 3, "n": len(values), "w": tensor})
    obj = out.getvalue()
    n = len(values)
    tensors = (pickle.dumps(1, protocol=2) + mc.pk(mc.MARK + mc.I1(2) + mc.I1(1) + mc.G("torch", "FloatTensor") + mc.TUPLE)
               + struct.pack("<i", 1) + bytes(4) + struct.pack("<qqq", n, 1, 0))  # fmt: skip
    storages = _storages((1, mc.G("torch", "FloatStorage"), struct.pack(f"<{n}f", *values)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("sys_info", sys_info), ("pickle", obj), ("tensors", tensors), ("storages", storages)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_490_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data) if data else None)


def _tar(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    return buf.getvalue()


_EMPTY_STORAGES = pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)


def _tar_sparse_overlap(d: Path, evil_storages: bytes) -> bytes:
    """'storages' is a pax 0.1 sparse file with two chunks at offset 0: extractfile serves the first (benign),
    tar.extract writes the second over it."""
    n = max(len(evil_storages), len(_EMPTY_STORAGES)) + 8
    good, evil = _EMPTY_STORAGES.ljust(n, b"\0"), evil_storages.ljust(n, b"\0")

    def build(tf: tarfile.TarFile) -> None:
        _add(tf, "storages", good + evil, pax_headers={"GNU.sparse.map": f"0,{n},0,{n}", "GNU.sparse.realsize": str(n)})
        _add(tf, "tensors", pickle.dumps(0, protocol=2))
        _add(tf, "pickle", BENIGN)

    return _tar(build)


def _tar_hardlink_duplicate(d: Path, evil_storages: bytes) -> bytes:
    """'tensors' is a hard link to 'storages', and 'storages' comes twice: extractfile resolves the link to the
    first one (S1), tar.extract links to the file it extracted as 'storages' (the last one, S2), so torch reads
    S2 twice: as storages (clean) and with the tensors layout, whose record 1 geometry is 8 bytes longer than a
    storage record: record 2's args are then read from inside the first string of S2's record 2 pickle."""
    hidden = evil_storages[2:]  # the payload without PROTO, hidden in a string
    key2 = b"A" + hidden
    s2 = (pickle.dumps(2, protocol=2)
          + mc.pk(mc.MARK + mc.U("cpu") + mc.U("cpu") + mc.G("torch", "ComplexDoubleStorage") + mc.TUPLE)
          + struct.pack("<q", 1) + struct.pack("<qq", 0, 1)  # numel 1 (16 bytes) / tensor: ndim 1, size 0, stride 1
          + mc.PROTO2 + b"X" + struct.pack("<I", len(key2)) + key2 + mc.U("cpu") + mc.G("torch", "ComplexDoubleStorage") + b"\x87."
          + struct.pack("<q", 0) + pickle.dumps([], protocol=2))  # fmt: skip

    def build(tf: tarfile.TarFile) -> None:
        _add(tf, "storages", _EMPTY_STORAGES)
        _add(tf, "tensors", type=tarfile.LNKTYPE, linkname="storages")
        _add(tf, "storages", s2)
        _add(tf, "pickle", BENIGN)

    return _tar(build)


def _tar_symlink_to_member_name(d: Path, evil_storages: bytes) -> bytes:
    """'storages' is a symbolic link to an absolute path that is also the name of a benign member: extractfile
    serves that member, tar.extract makes a real link and torch reads the file on disk (the red team used
    /proc/self/fd/N, the model file itself)."""
    outside = d / "outside_storages"
    outside.write_bytes(evil_storages)

    def build(tf: tarfile.TarFile) -> None:
        _add(tf, str(outside), _EMPTY_STORAGES)
        _add(tf, "storages", type=tarfile.SYMTYPE, linkname=str(outside))
        _add(tf, "tensors", pickle.dumps(0, protocol=2))
        _add(tf, "pickle", BENIGN)

    return _tar(build)


TAR_EXTRACTION_SHAPES = {
    "sparse_overlap": _tar_sparse_overlap,
    "hardlink_to_duplicate": _tar_hardlink_duplicate,
    "symlink_to_member_name": _tar_symlink_to_member_name,
}


def _fallback_name(command: str) -> str:
    """A protocol-0 pickle that fits a tar header's name field (under 100 bytes, no NUL): torch.load's
    fallback reads it from byte 0. It starts with INT, which no pickle detector takes for a pickle start."""
    name = f"I0\n0cos\nsystem\n(V{command}\ntR."
    assert len(name) < 100 and "\0" not in name
    return name


def _tar_fallback_truncated(first: str) -> bytes:
    """The last member claims more bytes than the file holds: tar.extract raises ReadError (a TarError) and
    torch.load reads the file as a pickle from byte 0: the first member's name."""

    def build(tf: tarfile.TarFile) -> None:
        _add(tf, first)
        _add(tf, "tensors", pickle.dumps(0, protocol=2))
        _add(tf, "pickle", BENIGN)

    data = _tar(build)
    members_end = data.rindex(BENIGN) + len(BENIGN)
    data = data[: members_end + (-members_end % 512)]  # no end-of-archive blocks
    info = tarfile.TarInfo("storages")
    info.size = 1 << 20
    return data + info.tobuf(tarfile.USTAR_FORMAT) + _EMPTY_STORAGES


def _tar_fallback_sparse(first: str) -> bytes:
    """The 'storages' sparse map points past the end of the file: extraction fails with ReadError, torch.load
    reads byte 0 as a pickle (the scan of extractfile's bytes never reads that far)."""

    def build(tf: tarfile.TarFile) -> None:
        _add(tf, first)
        _add(tf, "tensors", pickle.dumps(0, protocol=2))
        _add(tf, "pickle", BENIGN)
        n = len(_EMPTY_STORAGES)
        _add(tf, "storages", _EMPTY_STORAGES, pax_headers={"GNU.sparse.map": f"0,{n},{1 << 24},{1 << 20}",
                                                          "GNU.sparse.realsize": str((1 << 24) + (1 << 20))})

    return _tar(build)


def _torch_load_runs(tmp_path: Path, path: Path, marker: Path) -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", _LOADER, str(path), "torch"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran, proc.stdout[-300:] + proc.stderr[-300:]


def test_a_legacy_tar_as_torch_wrote_it_loads_and_scans_safe(tmp_path):
    path = _write(tmp_path, "old.pt", torch_legacy_tar())
    code = f"import torch\nprint(torch.load({str(path)!r}, weights_only=False))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "{'epoch': 3, 'n': 3, 'w': tensor([1., 2., 3.])}", proc.stderr[-500:]  # every record
    report = scan(path)
    assert report.verdict == "safe" and report.format == "tar", report.findings
    assert not any("byte 0" in s for s in report.streams)  # 'sys_info' at byte 0 names nothing: not a pickle


@pytest.mark.parametrize("name", sorted(TAR_EXTRACTION_SHAPES))
def test_tar_members_extracted_unlike_extractfile_fail_closed(tmp_path, name):
    marker = tmp_path / f"{MARKER}_{name}"
    evil = mc.pk(mc.call(mc.G("os", "system"), mc.U(f"touch '{marker}'")))  # the count pickle runs it
    path = _write(tmp_path, f"{name}.pt", TAR_EXTRACTION_SHAPES[name](tmp_path, evil))
    ran, out = _torch_load_runs(tmp_path, path, marker)
    assert ran, out  # the shape is real: torch.load extracts the member and runs the payload
    report = scan(path)
    assert report.verdict == "dangerous" and "tar-not-plain" in {f.rule for f in report.dangerous}, report.findings
    assert all("extraction" in f.why for f in report.dangerous if f.rule == "tar-not-plain")


def test_only_plain_tars_holding_torchs_members_are_judged(tmp_path):
    plain = torch_legacy_tar()
    variants = {
        "duplicate": _tar(lambda tf: (_add(tf, "pickle", BENIGN), _add(tf, "pickle", BENIGN))),
        "directory": _tar(lambda tf: (_add(tf, "d", type=tarfile.DIRTYPE), _add(tf, "pickle", BENIGN))),
        "fifo": _tar(lambda tf: (_add(tf, "pickle", BENIGN), _add(tf, "f", type=tarfile.FIFOTYPE))),
        "path": _tar(lambda tf: (_add(tf, "pickle", BENIGN), _add(tf, "../x", b"x"))),
        "long_name": _tar(lambda tf: (_add(tf, "pickle", BENIGN), _add(tf, "n" * 120, b"x"))),
        "trailing": plain + b"PK\x03\x04 not an archive",
    }
    for what, data in variants.items():
        report = scan(_write(tmp_path, f"{what}.pt", data))
        assert "tar-not-plain" in {f.rule for f in report.dangerous}, (what, report.findings)
    # a tar without torch's members is not read by torch.load (KeyError: 'storages'): not judged as one
    other = _tar(lambda tf: (_add(tf, "data", type=tarfile.DIRTYPE), _add(tf, "data/notes.txt", b"hi\n")))
    report = scan(_write(tmp_path, "other.tar", other))
    assert report.verdict == "error" and report.unknown_format, report.findings


@pytest.mark.parametrize("shape", [_tar_fallback_truncated, _tar_fallback_sparse], ids=["truncated", "sparse_past_end"])
def test_tar_read_as_a_pickle_from_byte_0(tmp_path, shape):
    marker = tmp_path / f"{MARKER}_fallback"
    path = _write(tmp_path, "fallback.pt", shape(_fallback_name(f"touch {marker.name}")))
    ran, out = _torch_load_runs(tmp_path, path, marker)
    assert ran, out  # torch.load fell back to reading byte 0 as a pickle
    report = scan(path)
    assert report.verdict == "dangerous" and "os.system" in report.imports, report.findings
    assert any(f.stream.endswith("(torch.load's fallback)") and f.offset is not None for f in report.dangerous)
    # the same archive whose first name is a plain name: byte 0 is no pickle, nothing to report there
    benign = scan(_write(tmp_path, "benign.pt", shape("sys_info")))
    assert benign.verdict != "dangerous" or {f.rule for f in benign.dangerous} == {"tar-not-plain"}, benign.findings
    assert not any("byte 0" in f.stream for f in benign.findings)


def _zf(pkl: bytes, space: bool = False) -> bytes:
    """joblib < 0.9.3's compressed format: b"ZF", the length in hex padded to 19 characters, a zlib stream
    (joblib <= 0.8.4 wrote one more space)."""
    return b"ZF" + f"{len(pkl):#x}".ljust(19 + space).encode() + zlib.compress(pkl)


@pytest.mark.parametrize("space", [False, True], ids=["0.9", "0.8"])
def test_joblib_zf_files_are_inflated_and_scanned(tmp_path, space):
    import torchkeep

    marker = tmp_path / f"{MARKER}_zf"
    evil = _write(tmp_path, "evil.pkl", _zf(mc.pk(mc.call(mc.G("os", "system"), mc.U(f"touch '{marker}'"))), space))
    code = f"import joblib, warnings\nwarnings.simplefilter('ignore')\njoblib.load({str(evil)!r})"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert marker.exists()  # joblib.load inflates and unpickles it
    marker.unlink()
    report = scan(evil)
    assert report.verdict == "dangerous" and report.format == "joblib-zf-compressed", report.findings
    assert [f.target for f in report.dangerous] == ["os.system"]
    ok = _write(tmp_path, "ok.pkl", _zf(pickle.dumps({"a": [1, 2.5], "b": "x"}, protocol=2), space))
    assert scan(ok).verdict == "safe"
    # a ZF header over bytes that do not inflate is an error, listed (not skipped) in a directory scan
    bad = tmp_path / "dir"
    bad.mkdir()
    _write(bad, "model.joblib", _zf(b"x")[:21 + space] + b"\x78\x9cnot deflate")
    (rep,) = torchkeep.scan_paths([bad])
    assert rep.verdict == "error" and not rep.unknown_format, rep.findings


def test_a_compressed_file_that_is_also_a_tar(tmp_path):
    """The first tar header's name field holds a zlib stream of a benign pickle (what joblib.load inflates);
    torch.load reads the same file as a tar and extracts its 'storages' member."""
    marker = tmp_path / f"{MARKER}_ztar"
    evil = mc.pk(mc.call(mc.G("os", "system"), mc.U(f"touch '{marker}'")))
    data = bytearray(_tar(lambda tf: (_add(tf, "n" * 99, b"x"), _add(tf, "storages", evil), _add(tf, "tensors", pickle.dumps(0, protocol=2)),
                                      _add(tf, "pickle", BENIGN))))  # fmt: skip
    stream = zlib.compress(pickle.dumps({"a": 1}, protocol=2), 9)
    assert len(stream) < 99
    data[: len(stream)] = stream
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    path = _write(tmp_path, "ztar.pkl", bytes(data))
    ran, out = _torch_load_runs(tmp_path, path, marker)
    assert ran, out
    report = scan(path)
    assert report.format == "zlib-compressed" and report.verdict == "dangerous", report.findings
    assert {"polyglot", "dangerous-import"} <= {f.rule for f in report.dangerous}, report.findings


class _Touch:
    """A harmless payload: creates ``marker`` when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch '{self.marker}'",))


def _joblib_runs(tmp_path: Path, path: Path, marker: Path) -> bool:
    """Whether joblib.load really runs the payload of ``path`` (a fresh interpreter)."""
    code = f"import joblib\ntry:\n    joblib.load({str(path)!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, cwd=tmp_path)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


@pytest.mark.skipif(importlib.util.find_spec("joblib") is None, reason="joblib is not installed")
def test_compressed_files_are_found_by_joblibs_own_prefixes(tmp_path):
    import lzma

    marker = tmp_path / f"{MARKER}_lzma"
    evil = pickle.dumps(_Touch(str(marker)), protocol=2)
    # an .lzma header with a 256-byte dictionary: joblib's prefix is 5d 00, liblzma inflates it
    comp = bytearray(lzma.compress(evil, format=lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 4096}]))
    comp[1:5] = struct.pack("<I", 0x100)
    lz = _write(tmp_path, "model.pkl", bytes(comp))
    assert _joblib_runs(tmp_path, lz, marker)
    assert scan(lz).verdict == "dangerous"
    # a gzip stream corrupt at its end: pickle.load(gzip.open(f)) unpickles while it inflates, so the payload
    # has run before the CRC fails; the scanner scans what came out before the error
    import gzip

    marker2 = tmp_path / f"{MARKER}_gzip"
    padding = random.Random(0).randbytes(1 << 17)  # incompressible: inflated in several reads
    stream = gzip.compress(pickle.dumps(_Touch(str(marker2)), protocol=2) + padding)
    trunc = _write(tmp_path, "trunc.pkl", stream[:-8] + b"garbage!")
    code = f"import gzip, pickle\ntry:\n    pickle.load(gzip.open({str(trunc)!r}))\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, cwd=tmp_path)
    assert marker2.exists()
    marker2.unlink()
    report = scan(trunc)
    assert report.verdict == "dangerous" and "unreadable" in {f.rule for f in report.findings}, report.findings


def test_lz4_without_the_package_is_not_called_safe_nor_skipped(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    _write(d, "model.joblib", b"\x04\x22\x4d\x18" + bytes(range(40)))
    (d / "xnotes.txt").write_text("x marks a zlib stream for joblib; this is just text\n")
    reports = {Path(r.path).name: r for r in torchkeep.scan_paths([d], recursive=True)}
    if importlib.util.find_spec("lz4") is None:
        assert reports["model.joblib"].verdict == "error" and not reports["model.joblib"].unknown_format
    else:
        assert reports["model.joblib"].verdict != "safe"
    assert reports["xnotes.txt"].unknown_format  # nothing inflates: not a model file, skipped


def test_a_safetensors_file_that_starts_like_a_zlib_stream(tmp_path):
    import json

    raw = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    raw += b" " * (120 - len(raw))  # header length 120: the file's first byte is "x"
    p = _write(tmp_path, "w.safetensors", struct.pack("<Q", len(raw)) + raw + np.array([1, 2], "<f4").tobytes())
    report = scan(p)
    assert report.verdict == "safe" and report.format == "safetensors", report.findings


def test_pickles_stacked_after_a_benign_first_one_in_a_safetensors_file(tmp_path):
    """Fuzz finding 4a2d840b64acaad6: a safetensors-shaped file whose bytes from byte 0 are a pickle that imports
    nothing (BINBYTES over the header start, STOP) and then a second pickle that calls os.system. A loader that
    calls pickle.load in a loop runs the second one; the first one importing nothing must not clear the file."""
    marker = tmp_path / f"{MARKER}_stacked"
    n_header = 0x4042  # the length field's bytes read as BINBYTES of 64 bytes: b"B" b"@\0\0\0" b"\0\0\0"
    head = b'{"__metadata__":{"a":"' + b"x" * 39 + b"."
    assert 8 + len(head) - 1 == 5 + 64  # STOP right after the 64 bytes
    body = head + os_system(marker)
    body += b" " * (n_header - len(body) - 3) + b'"}}'
    p = _write(tmp_path, "w.safetensors", struct.pack("<Q", n_header) + body)
    report = scan(p)
    assert report.verdict == "dangerous", report.findings
    assert any(f.rule == "polyglot" for f in report.findings) and "os.system" in report.imports
    code = ("import pickle, sys\nwith open(sys.argv[1], 'rb') as fh:\n    while True:\n        try: pickle.load(fh)\n"
            "        except Exception: break\n")
    subprocess.run([sys.executable, "-c", code, str(p)], check=True, timeout=60)
    assert marker.exists()  # the shape is real: a pickle.load loop runs the payload
    marker.unlink()


def test_a_safetensors_header_that_is_a_clean_pickle_stays_safe(tmp_path):
    """The same start with a benign second pickle (no import): nothing can run, the file is safe."""
    n_header = 0x4042
    head = b'{"__metadata__":{"a":"' + b"x" * 39 + b"."
    body = head + b"N."
    body += b" " * (n_header - len(body) - 3) + b'"}}'
    p = _write(tmp_path, "w.safetensors", struct.pack("<Q", n_header) + body)
    assert scan(p).verdict == "safe", scan(p).findings


def test_pickles_stacked_in_a_tar_header_after_a_benign_first_one(tmp_path):
    """torch.load's fallback reads byte 0 of a tar as a pickle; a pickle.load loop reads what is stacked after it."""
    marker = Path(MARKER)  # relative (the name field holds 100 bytes); the test never runs it
    buf = io.BytesIO()
    info = tarfile.TarInfo("placeholder")
    info.size = 5
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"hello"))
    raw = bytearray(buf.getvalue())
    name = b"N." + os_system(marker)
    assert len(name) <= 100
    raw[: len(name)] = name
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    p = _write(tmp_path, "model.tar", bytes(raw))
    report = scan(p)
    assert report.format == "tar" and report.verdict == "dangerous" and "os.system" in report.imports, report.findings
