"""Mutators: byte-level for every target, structure-aware for pickles, zips, tars and ``.npy`` headers.

Every mutator takes the ``random.Random`` of the run, so a run is reproduced by its ``--seed``. Nothing
here unpickles or loads anything: pickles are split into opcodes with ``pickletools.genops`` and written
back opcode by opcode, zips with a hand-written reader/writer (so that fields Python's ``zipfile`` would
refuse to write can be set), tars with ``tarfile`` plus raw header edits (checksum recomputed).
"""

from __future__ import annotations

import ast
import io
import pickle
import pickletools
import random
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SIZE = 4 << 20

# -- pickle opcodes -----------------------------------------------------------------------------------
_OPS = {op.name: op for op in pickletools.opcodes}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_BYTES_OPS = {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}

# globals a mutation may write: what payloads use, what benign files use, and spellings that differ
DANGEROUS = [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("builtins", "exec"), ("builtins", "eval"),
    ("__builtin__", "eval"), ("__builtin__", "execfile"), ("builtins", "compile"), ("subprocess", "Popen"),
    ("subprocess", "call"), ("subprocess", "check_output"), ("os", "popen"), ("builtins", "open"),
    ("io", "open"), ("_io", "FileIO"), ("builtins", "__import__"), ("builtins", "getattr"),
    ("importlib", "import_module"), ("runpy", "run_path"), ("pty", "spawn"), ("_pickle", "loads"),
    ("pickle", "loads"), ("marshal", "loads"), ("types", "FunctionType"), ("operator", "attrgetter"),
    ("_operator", "methodcaller"), ("functools", "partial"), ("pkgutil", "resolve_name"), ("pydoc", "locate"),
    ("timeit", "timeit"), ("cProfile", "run"), ("code", "InteractiveInterpreter"), ("uuid", "_get_command_stdout"),
    ("logging", "FileHandler"), ("numpy.testing._private.utils", "runstring"), ("torch.utils.collect_env", "run"),
    ("torch.serialization", "load"), ("torch", "load"), ("numpy", "load"), ("copyreg", "add_extension"),
    ("argparse", "_os.system"), ("torch", "serialization.os.system"), ("ctypes", "CDLL"), ("socket", "socket"),
    ("shutil", "copyfile"), ("os", "execv"), ("os", "spawnlp"), ("tempfile", "mkdtemp"), ("glob", "glob"),
    ("webbrowser", "open"), ("sys", "exit"), ("numpy.lib.npyio", "load"), ("numpy.random._pickle", "__randomstate_ctor"),
]  # fmt: skip
BENIGN = [
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"), ("torch", "LongStorage"), ("_codecs", "encode"), ("__builtin__", "set"),
    ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "frozenset"), ("builtins", "complex"),
    ("builtins", "bytearray"), ("__builtin__", "bytes"), ("builtins", "slice"), ("builtins", "range"),
    ("__builtin__", "xrange"), ("__builtin__", "long"), ("__builtin__", "unicode"), ("__builtin__", "object"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.dtypes", "StringDType"),
    ("numpy.dtypes", "Float32DType"), ("argparse", "Namespace"), ("types", "SimpleNamespace"),
    ("torch.storage", "_load_from_bytes"), ("torch", "Size"), ("torch", "device"), ("torch", "float16"),
    ("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
    ("pathlib", "PosixPath"), ("datetime", "datetime"), ("UserDict", "UserDict"), ("exceptions", "ValueError"),
    ("collections", "Counter"), ("torch.serialization", "_get_layout"), ("numpy.random._pickle", "__generator_ctor"),
]  # fmt: skip
TRICKY = [
    ("os ", "system"), ("os", "system "), ("os\x00", "system"), ("OS", "system"), ("os.path", "os.system"),
    ("posixpath", "os.system"), ("torch._utils", "_rebuild_tensor_v2.__globals__"), ("__main__", "Model"),
    ("builtins", "getattr.__call__"), ("collections", "OrderedDict.fromkeys"), ("copyreg", "__dict__"),
    ("__builtin__", "apply"), ("commands", "getoutput"), ("cPickle", "loads"), ("subprocess ", "Popen"),
    ("torch.storage", "_load_from_bytes "), ("numpy.core", "multiarray._reconstruct"), ("", "system"),
]  # fmt: skip


def _marker_cmd(marker_dir: str) -> str:
    return f"touch '{marker_dir}/PWNED_MARKER_fuzz'"


@dataclass
class Seed:
    name: str
    data: bytes
    origin: str  # "malicious" / "benign"


@dataclass
class Pools:
    """What structure-aware mutations draw from: other seeds' pickles and their payload bodies."""

    pickles: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)  # bodies (no PROTO/FRAME/STOP) of malicious pickles
    marker_dir: str = "/nonexistent"


# -- small encoders -----------------------------------------------------------------------------------
def _long_bytes(n: int) -> bytes:
    return pickle.encode_long(n) if n else b""


def enc_int(rng: random.Random, n: int) -> bytes:
    """An opcode pushing the int ``n``, in a random one of its spellings."""
    forms = ["INT", "LONG", "LONG1", "LONG4"]
    if 0 <= n < 256:
        forms.append("BININT1")
    if 0 <= n < 65536:
        forms.append("BININT2")
    if -(2**31) <= n < 2**31:
        forms.append("BININT")
    form = rng.choice(forms)
    if form == "BININT1":
        return b"K" + bytes([n])
    if form == "BININT2":
        return b"M" + struct.pack("<H", n)
    if form == "BININT":
        return b"J" + struct.pack("<i", n)
    if form == "LONG1":
        b = _long_bytes(n)
        return b"\x8a" + bytes([len(b)]) + b
    if form == "LONG4":
        b = _long_bytes(n)
        return b"\x8b" + struct.pack("<i", len(b)) + b
    text = _int_text(rng, n)
    if form == "LONG":
        return b"L" + text + (b"L" if rng.random() < 0.5 else b"") + b"\n"
    return b"I" + text + b"\n"


def _int_text(rng: random.Random, n: int) -> bytes:
    """Text spellings of an int: base prefixes (C strtol and int(x, 0) read them; pickletools reads base 10),
    a leading zero (octal for strtol, an error for int(x, 0)), signs, spaces, underscores."""
    sign = "-" if n < 0 else rng.choice(["", "", "+"])
    a = abs(n)
    choice = rng.randrange(9)
    if choice == 0:
        body = hex(a)
    elif choice == 1:
        body = oct(a)
    elif choice == 2:
        body = bin(a)
    elif choice == 3:
        body = "0" + format(a, "o")  # strtol base 0: octal
    elif choice == 4:
        body = " " + str(a)
    elif choice == 5:
        s = str(a)
        body = s[:1] + "_" + s[1:] if len(s) > 1 else s
    elif choice == 6:
        body = hex(a).upper().replace("0X", "0X")
    else:
        body = str(a)
    return (sign + body).encode()


def enc_str(rng: random.Random, s: str, allow_bytes_forms: bool = True) -> bytes:
    """An opcode pushing the str ``s`` in a random string form (the byte-string forms decode to str with the
    unpickler's ``encoding``: ASCII for pickle.load, UTF-8 for torch.load, latin-1 for numpy)."""
    forms = ["SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"]
    if allow_bytes_forms:
        forms += ["STRING", "BINSTRING", "SHORT_BINSTRING"]
    form = rng.choice(forms)
    raw = s.encode("utf-8", "surrogatepass")
    if form == "SHORT_BINUNICODE" and len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    if form == "BINUNICODE8":
        return b"\x8d" + struct.pack("<Q", len(raw)) + raw
    if form == "UNICODE":
        return b"V" + s.encode("raw-unicode-escape").replace(b"\n", b"\\u000a") + b"\n"
    if form in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
        enc = rng.choice(["utf-8", "latin-1"]) if any(ord(c) > 127 for c in s) else "ascii"
        try:
            raw = s.encode(enc, "surrogateescape")
        except UnicodeEncodeError:
            raw = s.encode("utf-8", "surrogatepass")
        if form == "STRING":
            q = rng.choice([b"'", b'"'])
            esc = raw.replace(b"\\", b"\\\\").replace(q, b"\\" + q).replace(b"\n", b"\\n")
            if rng.random() < 0.5:
                esc = b"".join(b"\\x%02x" % c if c > 127 or rng.random() < 0.1 else bytes([c]) for c in esc)
            return b"S" + q + esc + q + b"\n"
        if form == "SHORT_BINSTRING" and len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<i", len(raw)) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def enc_global(rng: random.Random, module: str, name: str, proto: int = 4) -> bytes:
    """Push the global ``module.name``: GLOBAL, or STACK_GLOBAL from strings in any form (memoized or not)."""
    if rng.random() < 0.4 or "\n" in module + name:
        return b"c" + module.encode("utf-8", "surrogatepass") + b"\n" + name.encode("utf-8", "surrogatepass") + b"\n"
    m, n = enc_str(rng, module), enc_str(rng, name)
    if rng.random() < 0.3:  # through the memo, with the slots first filled with harmless names
        i = rng.randrange(200, 250)
        return (
            enc_str(rng, "collections") + b"q" + bytes([i]) + b"0"
            + m + b"q" + bytes([i]) + b"0" + n + b"h" + bytes([i]) + b"\x93"
        )  # fmt: skip
    return m + n + b"\x93"


def enc_call(rng: random.Random, module: str, name: str, arg: bytes) -> bytes:
    """``module.name(arg)`` through REDUCE, INST, OBJ, NEWOBJ or BUILD's ``__setstate__``."""
    how = rng.randrange(6)
    if how == 0:
        return b"(" + arg + b"i" + module.encode() + b"\n" + name.encode() + b"\n"
    if how == 1:
        return b"(" + enc_global(rng, module, name) + arg + b"o"
    if how == 2:
        return enc_global(rng, module, name) + arg + b"\x85R"
    if how == 3:
        return enc_global(rng, module, name) + b"(" + arg + b"tR"
    if how == 4:  # cls.__new__(cls, *args) — a real call only for classes
        return enc_global(rng, module, name) + arg + b"\x85\x81"
    return enc_global(rng, module, name) + b"]" + arg + b"a" + b"R"  # a list as args (REDUCE needs a tuple)


def _rand_arg(rng: random.Random, argdesc: pickletools.ArgumentDescriptor) -> bytes:
    n = argdesc.name
    if n == "uint1":
        return bytes([rng.randrange(256)])
    if n == "uint2":
        return struct.pack("<H", rng.randrange(65536))
    if n in ("int4", "uint4"):
        return struct.pack("<I", rng.choice([0, 1, 2, 255, 256, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(2**32)]))
    if n == "uint8":
        return struct.pack("<Q", rng.choice([0, 1, 8, 64, 1 << 20, 2**63, rng.randrange(2**16)]))
    if n == "long1":
        b = rng.randbytes(rng.randrange(0, 9))
        return bytes([len(b)]) + b
    if n == "long4":
        b = rng.randbytes(rng.randrange(0, 9))
        return struct.pack("<i", len(b)) + b
    if n in ("decimalnl_short", "decimalnl_long"):
        return _int_text(rng, rng.choice([0, 1, 7, 255, 2**31, -5, rng.randrange(10**6)])) + b"\n"
    if n == "floatnl":
        return _float_text(rng) + b"\n"
    if n == "float8":
        return struct.pack(">d", rng.choice([0.0, 1.5, float("inf"), float("nan"), -2.0]))
    if n in ("stringnl_noescape_pair",):
        m, g = rng.choice(DANGEROUS + BENIGN + TRICKY)
        return m.encode() + b"\n" + g.encode() + b"\n"
    if n == "stringnl_noescape":
        return rng.choice([b"0", b"1", b"storage", b"module", b"x"]) + b"\n"
    if n == "stringnl":
        return rng.choice([b"'abc'", b'"\\xff\\xfe"', b"'\xc3\xa9'", b"'\xff'", b"abc", b"''"]) + b"\n"
    if n == "unicodestringnl":
        return rng.choice([b"abc", b"\\u00e9", b"os", b"system", b"\xff"]) + b"\n"
    if n in ("string1", "bytes1", "unicodestring1"):
        b = rng.choice([b"os", b"system", b"\xff\xfe", b"collections", rng.randbytes(rng.randrange(8))])
        return bytes([len(b)]) + b
    if n in ("string4", "bytes4", "unicodestring4"):
        b = rng.choice([b"os", b"system", b"\xe9t\xe9", rng.randbytes(rng.randrange(8))])
        return struct.pack("<I", len(b)) + b
    if n in ("bytes8", "unicodestring8", "bytearray8"):
        b = rng.randbytes(rng.randrange(8))
        return struct.pack("<Q", len(b)) + b
    return b""


def _float_text(rng: random.Random) -> bytes:
    return rng.choice(
        [b"1.5", b"1.5\x00junk", b" 1.5", b"1.5 ", b"1e3", b"inf", b"-nan", b"0x1p3", b"1_0.5", b"1.5L", b"+.5", b"1.5\x00"]
    )


# -- pickle as a list of opcodes ---------------------------------------------------------------------
@dataclass
class Op:
    raw: bytes
    name: str  # opcode name, or "RAW" for bytes genops could not read
    arg: object = None


def split_ops(data: bytes) -> list[Op]:
    """Opcodes of every pickle in ``data`` (stacked pickles too); what cannot be parsed stays one RAW op."""
    ops: list[Op] = []
    pos = 0
    while pos < len(data):
        chunk = data[pos:]
        starts: list[tuple[int, str, object]] = []
        try:
            for opcode, arg, p in pickletools.genops(chunk):
                starts.append((p, opcode.name, arg))
        except Exception:
            for i, (p, name, arg) in enumerate(starts):
                end = starts[i + 1][0] if i + 1 < len(starts) else p
                if i + 1 < len(starts):
                    ops.append(Op(chunk[p:end], name, arg))
                else:
                    ops.append(Op(chunk[p:], "RAW"))
            if not starts:
                ops.append(Op(chunk, "RAW"))
            return ops
        if not starts:
            ops.append(Op(chunk, "RAW"))
            return ops
        for i, (p, name, arg) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else p + 1
            ops.append(Op(chunk[p:end], name, arg))
        pos += starts[-1][0] + 1
    return ops


def join_ops(ops: list[Op]) -> bytes:
    return b"".join(o.raw for o in ops)


def payload_body(data: bytes) -> bytes | None:
    """The opcodes of a pickle without PROTO, FRAME and STOP (to graft into another pickle)."""
    ops = split_ops(data)
    body = [o for o in ops if o.name not in ("PROTO", "FRAME", "STOP", "RAW")]
    if not body or len(body) > 400:
        return None
    stop = next((i for i, o in enumerate(ops) if o.name == "STOP"), len(ops))
    body = [o for o in ops[:stop] if o.name not in ("PROTO", "FRAME", "RAW")]
    return join_ops(body) or None


class PickleMutator:
    def __init__(self, rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.pools = pools
        self.ops: list[Callable[[list[Op]], str | None]] = [
            self.m_delete, self.m_duplicate, self.m_swap, self.m_insert_random, self.m_insert_other,
            self.m_graft_payload, self.m_graft_call, self.m_rewrite_global, self.m_reform_string,
            self.m_reform_int, self.m_reform_float, self.m_proto, self.m_frame, self.m_memo, self.m_stop,
            self.m_splice, self.m_global_strings,
        ]  # fmt: skip

    def mutate(self, data: bytes, n: int | None = None) -> tuple[bytes, list[str]]:
        ops = split_ops(data)
        done: list[str] = []
        for _ in range(n or self.rng.choice([1, 1, 1, 2, 2, 3])):
            m = self.rng.choice(self.ops)
            what = m(ops)
            if what:
                done.append(what)
        return join_ops(ops), done

    def _pos(self, ops: list[Op]) -> int:
        return self.rng.randrange(len(ops) + 1) if ops else 0

    def _body_pos(self, ops: list[Op]) -> int:
        """A position after PROTO/FRAME and before the first STOP (where grafted opcodes run)."""
        stops = [i for i, o in enumerate(ops) if o.name == "STOP"]
        hi = stops[0] if stops else len(ops)
        lo = 0
        while lo < hi and ops[lo].name in ("PROTO", "FRAME"):
            lo += 1
        return self.rng.randint(lo, hi) if hi >= lo else 0

    def m_delete(self, ops: list[Op]) -> str | None:
        if not ops:
            return None
        i = self.rng.randrange(len(ops))
        k = self.rng.choice([1, 1, 1, 2, 3])
        names = [o.name for o in ops[i : i + k]]
        del ops[i : i + k]
        return f"delete {names}"

    def m_duplicate(self, ops: list[Op]) -> str | None:
        if not ops:
            return None
        i = self.rng.randrange(len(ops))
        ops.insert(self._pos(ops), Op(ops[i].raw, ops[i].name, ops[i].arg))
        return f"duplicate {ops[i].name}"

    def m_swap(self, ops: list[Op]) -> str | None:
        if len(ops) < 2:
            return None
        i = self.rng.randrange(len(ops) - 1)
        ops[i], ops[i + 1] = ops[i + 1], ops[i]
        return f"swap {ops[i].name}/{ops[i + 1].name}"

    def m_insert_random(self, ops: list[Op]) -> str | None:
        op = self.rng.choice(pickletools.opcodes)
        raw = op.code.encode("latin-1") + (_rand_arg(self.rng, op.arg) if op.arg else b"")
        ops.insert(self._pos(ops), Op(raw, op.name))
        return f"insert {op.name}"

    def m_insert_other(self, ops: list[Op]) -> str | None:
        if not self.pools.pickles:
            return None
        other = split_ops(self.rng.choice(self.pools.pickles))
        if not other:
            return None
        o = self.rng.choice(other)
        ops.insert(self._pos(ops), o)
        return f"insert-from-other {o.name}"

    def m_graft_payload(self, ops: list[Op]) -> str | None:
        if not self.pools.payloads:
            return None
        body = self.rng.choice(self.pools.payloads)
        raw = body + (b"0" if self.rng.random() < 0.8 else b"")
        ops.insert(self._body_pos(ops), Op(raw, "GRAFT"))
        return "graft payload"

    def m_graft_call(self, ops: list[Op]) -> str | None:
        module, name = self.rng.choice(DANGEROUS + DANGEROUS + TRICKY)
        arg = enc_str(self.rng, _marker_cmd(self.pools.marker_dir))
        raw = enc_call(self.rng, module, name, arg) + b"0"
        ops.insert(self._body_pos(ops), Op(raw, "GRAFT"))
        return f"graft call {module}.{name}"

    def _global_sites(self, ops: list[Op]) -> list[tuple[int, int]]:
        """(start, end) op ranges that push a global: GLOBAL/INST, or two strings + STACK_GLOBAL."""
        sites = []
        for i, o in enumerate(ops):
            if o.name in ("GLOBAL",):
                sites.append((i, i + 1))
            elif o.name == "STACK_GLOBAL":
                j, found = i - 1, 0
                while j >= 0 and found < 2:
                    if ops[j].name in _STRING_OPS or ops[j].name in _MEMO_GET:
                        found += 1
                    elif ops[j].name not in _MEMO_PUT:
                        break
                    j -= 1
                if found == 2:
                    sites.append((j + 1, i + 1))
        return sites

    def m_rewrite_global(self, ops: list[Op]) -> str | None:
        sites = self._global_sites(ops)
        if not sites:
            return None
        a, b = self.rng.choice(sites)
        module, name = self.rng.choice(DANGEROUS + BENIGN + TRICKY)
        ops[a:b] = [Op(enc_global(self.rng, module, name), "GLOBAL*")]
        return f"rewrite global -> {module}.{name}"

    def m_global_strings(self, ops: list[Op]) -> str | None:
        """Re-spell the module or name of a GLOBAL/INST: fix_imports names, case, dotted paths, spaces."""
        idx = [i for i, o in enumerate(ops) if o.name in ("GLOBAL", "INST")]
        if not idx:
            return None
        i = self.rng.choice(idx)
        code = ops[i].raw[:1]
        try:
            module, name = ops[i].raw[1:].split(b"\n")[:2]
        except ValueError:
            return None
        alt = self.rng.choice(
            [
                (b"__builtin__", name), (module + b" ", name), (module, name + b" "), (module.upper(), name),
                (module, b"os.system"), (module, name + b".__call__"), (b"copy_reg", name), (module + b".x", name),
                (module, name.replace(b"_", b"-")), (b"posix", b"system"), (module, name + b"\r"),
            ]
        )
        ops[i] = Op(code + alt[0] + b"\n" + alt[1] + b"\n", ops[i].name)
        return f"respell {ops[i].name} -> {alt[0]!r} {alt[1]!r}"

    def m_reform_string(self, ops: list[Op]) -> str | None:
        idx = [i for i, o in enumerate(ops) if o.name in _STRING_OPS and isinstance(o.arg, (str, bytes))]
        if not idx:
            return None
        i = self.rng.choice(idx)
        val = ops[i].arg
        s = val if isinstance(val, str) else val.decode("latin-1")
        if self.rng.random() < 0.2:
            s = s + self.rng.choice(["\xe9", "\udcff", "\x00", "\u2028"])
        ops[i] = Op(enc_str(self.rng, s), "STRING*", s)
        return f"reform string {s[:20]!r}"

    def m_reform_int(self, ops: list[Op]) -> str | None:
        idx = [i for i, o in enumerate(ops) if o.name in _INT_OPS and isinstance(o.arg, int)]
        if not idx:
            return None
        i = self.rng.choice(idx)
        n = ops[i].arg
        assert isinstance(n, int)
        if self.rng.random() < 0.2:
            n = self.rng.choice([0, 1, -1, 255, 256, 2**31 - 1, 2**31, 2**63, n + 1])
        ops[i] = Op(enc_int(self.rng, n), "INT*", n)
        return f"reform int {n}"

    def m_reform_float(self, ops: list[Op]) -> str | None:
        idx = [i for i, o in enumerate(ops) if o.name in ("BINFLOAT", "FLOAT")]
        if idx:
            i = self.rng.choice(idx)
        else:
            i = self._body_pos(ops)
            ops.insert(i, Op(b"", "FLOAT"))
            ops.insert(i + 1, Op(b"0", "POP"))
        ops[i] = Op(b"F" + _float_text(self.rng) + b"\n", "FLOAT*")
        return "reform float"

    def m_proto(self, ops: list[Op]) -> str | None:
        p = self.rng.choice([0, 1, 2, 3, 4, 5, 6, 255])
        idx = [i for i, o in enumerate(ops) if o.name == "PROTO"]
        if idx and self.rng.random() < 0.3:
            del ops[self.rng.choice(idx)]
            return "drop PROTO"
        if idx:
            ops[self.rng.choice(idx)] = Op(b"\x80" + bytes([p]), "PROTO")
        else:
            ops.insert(0, Op(b"\x80" + bytes([p]), "PROTO"))
        return f"proto {p}"

    def m_frame(self, ops: list[Op]) -> str | None:
        idx = [i for i, o in enumerate(ops) if o.name == "FRAME"]
        if idx and self.rng.random() < 0.4:
            del ops[self.rng.choice(idx)]
            return "drop FRAME"
        i = self._pos(ops)
        rest = len(join_ops(ops[i:]))
        n = self.rng.choice([0, 1, rest, rest - 1, rest + 1, 2**32, self.rng.randrange(max(rest, 1))])
        ops.insert(i, Op(b"\x95" + struct.pack("<Q", max(n, 0) % 2**64), "FRAME"))
        return f"frame {n}"

    def m_memo(self, ops: list[Op]) -> str | None:
        r = self.rng.randrange(4)
        i = self._pos(ops)
        k = self.rng.choice([0, 1, 2, 3, 255, 256, self.rng.randrange(64)])
        if r == 0:
            raw = self.rng.choice([b"\x94", b"q" + bytes([k % 256]), b"r" + struct.pack("<I", k), b"p%d\n" % k])
            ops.insert(i, Op(raw, "PUT*"))
            return "insert memo put"
        if r == 1:
            raw = self.rng.choice([b"h" + bytes([k % 256]), b"j" + struct.pack("<I", k), b"g%d\n" % k])
            ops.insert(i, Op(raw, "GET*"))
            return "insert memo get"
        idx = [j for j, o in enumerate(ops) if o.name in _MEMO_PUT | _MEMO_GET]
        if not idx:
            return None
        j = self.rng.choice(idx)
        code = ops[j].raw[:1]
        if code in b"qh":
            ops[j] = Op(code + bytes([k % 256]), ops[j].name)
        elif code in b"jr":
            ops[j] = Op(code + struct.pack("<I", k), ops[j].name)
        elif code in b"pg":
            ops[j] = Op(code + _int_text(self.rng, k) + b"\n", ops[j].name)
        else:
            return None
        return f"memo index {k}"

    def m_stop(self, ops: list[Op]) -> str | None:
        r = self.rng.randrange(3)
        if r == 0:
            ops.insert(self._pos(ops), Op(b".", "STOP"))
            return "insert STOP"
        if r == 1:
            ops.append(Op(self.rng.randbytes(self.rng.randrange(1, 16)), "RAW"))
            return "append garbage"
        if self.pools.pickles:
            ops.append(Op(self.rng.choice(self.pools.pickles), "RAW"))
            return "append another pickle"
        return None

    def m_splice(self, ops: list[Op]) -> str | None:
        if not self.pools.pickles or not ops:
            return None
        other = split_ops(self.rng.choice(self.pools.pickles))
        if not other:
            return None
        a = self.rng.randrange(len(other))
        b = min(len(other), a + self.rng.randrange(1, 8))
        i = self.rng.randrange(len(ops))
        j = min(len(ops), i + self.rng.randrange(0, 4))
        ops[i:j] = other[a:b]
        return "splice ops"


# -- byte level ----------------------------------------------------------------------------------------
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def mutate_bytes(rng: random.Random, data: bytes, others: list[bytes], n: int | None = None) -> tuple[bytes, list[str]]:
    buf = bytearray(data)
    done = []
    for _ in range(n or rng.choice([1, 1, 2, 3, 4])):
        r = rng.randrange(8)
        if not buf:
            buf += rng.randbytes(4)
        i = rng.randrange(len(buf))
        if r == 0:
            buf[i] ^= 1 << rng.randrange(8)
            done.append(f"flip @{i}")
        elif r == 1:
            buf[i] = rng.randrange(256)
            done.append(f"set @{i}")
        elif r == 2:
            k = rng.randrange(1, 9)
            buf[i:i] = rng.randbytes(k)
            done.append(f"insert {k} @{i}")
        elif r == 3:
            k = rng.randrange(1, 17)
            del buf[i : i + k]
            done.append(f"delete {k} @{i}")
        elif r == 4:
            k = rng.randrange(1, 33)
            buf[i:i] = buf[i : i + k]
            done.append(f"repeat {k} @{i}")
        elif r == 5:
            v = rng.choice(_INTERESTING)
            w = rng.choice([1, 2, 4])
            buf[i : i + w] = (v % (1 << (8 * w))).to_bytes(w, "little")
            done.append(f"value {v:#x}/{w} @{i}")
        elif r == 6 and others:
            o = rng.choice(others)
            if o:
                a = rng.randrange(len(o))
                k = rng.randrange(1, 64)
                buf[i : i + rng.randrange(0, 16)] = o[a : a + k]
                done.append(f"splice-in {k} @{i}")
        else:
            del buf[i:]
            done.append(f"truncate @{i}")
    return bytes(buf[:MAX_SIZE]), done


# -- zip -----------------------------------------------------------------------------------------------
@dataclass
class ZEntry:
    name: bytes
    data: bytes  # uncompressed
    method: int = 0
    flags: int = 0
    version: int = 20
    version_made: int = 20
    cname: bytes | None = None  # the central directory's name, if different
    crc: int | None = None  # None: computed
    raw: bytes | None = None  # compressed bytes to store as they are
    extra: bytes = b""
    csize_delta: int = 0
    usize_delta: int = 0


def read_zip(data: bytes) -> list[ZEntry] | None:
    """Entries of a zip from its central directory (tolerates bad CRCs, duplicates, name mismatches)."""
    eocd = data.rfind(b"PK\x05\x06")
    if eocd < 0 or eocd + 22 > len(data):
        return None
    n, cd_size, cd_off = struct.unpack("<HII", data[eocd + 10 : eocd + 20])
    base = eocd - cd_size - cd_off  # bytes before the archive (a prefix)
    pos = eocd - cd_size
    entries = []
    for _ in range(n):
        if data[pos : pos + 4] != b"PK\x01\x02":
            break
        (vmade, vneed, flags, method, _t, _d, _crc, csize, _usize, nlen, xlen, clen, _dn, _ia, _ea, off) = struct.unpack(
            "<HHHHHHIIIHHHHHII", data[pos + 4 : pos + 46]
        )
        name = data[pos + 46 : pos + 46 + nlen]
        pos += 46 + nlen + xlen + clen
        lo = off + base
        if data[lo : lo + 4] != b"PK\x03\x04":
            continue
        lnlen, lxlen = struct.unpack("<HH", data[lo + 26 : lo + 30])
        lname = data[lo + 30 : lo + 30 + lnlen]
        start = lo + 30 + lnlen + lxlen
        comp = data[start : start + csize]
        if method == 8:
            try:
                body = zlib.decompressobj(-15).decompress(comp)
            except zlib.error:
                body = comp
        else:
            body = comp
        entries.append(ZEntry(lname, body, 0, flags & ~0x8, vneed, vmade, name if name != lname else None))
    return entries


def write_zip(entries: list[ZEntry], prefix: bytes = b"", slack: bytes = b"", comment: bytes = b"", count_delta: int = 0) -> bytes:
    out = bytearray(prefix)
    central = bytearray()
    for e in entries:
        if e.raw is not None:
            comp = e.raw
        elif e.method == 8:
            co = zlib.compressobj(6, zlib.DEFLATED, -15)
            comp = co.compress(e.data) + co.flush()
        else:
            comp = e.data
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        off = len(out) - len(prefix)
        csize = (len(comp) + e.csize_delta) % 2**32
        usize = (len(e.data) + e.usize_delta) % 2**32
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, e.version, e.flags, e.method, 0, 0x21, crc, csize, usize, len(e.name), len(e.extra)
        )
        out += e.name + e.extra + comp
        cname = e.cname if e.cname is not None else e.name
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, e.version_made, e.version, e.flags, e.method, 0, 0x21, crc, csize,
            usize, len(cname), 0, 0, 0, 0, 0, off,
        )  # fmt: skip
        central += cname
    out += slack
    cd_off = len(out) - len(prefix)
    out += central
    n = max(0, len(entries) + count_delta) % 65536
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_off, len(comment)) + comment
    return bytes(out)


class ZipMutator:
    def __init__(self, rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.pools = pools
        self.pm = PickleMutator(rng, pools)

    def mutate(self, data: bytes) -> tuple[bytes, list[str]]:
        rng = self.rng
        entries = read_zip(data)
        if not entries:
            return mutate_bytes(rng, data, self.pools.pickles)
        done: list[str] = []
        prefix = slack = comment = b""
        count_delta = 0
        for _ in range(rng.choice([1, 1, 2, 3])):
            r = rng.randrange(14)
            e = rng.choice(entries)
            if r == 0 or r == 1:  # the pickles are where code hides: mutate one
                pk = [x for x in entries if x.name.lower().endswith(b".pkl")] or entries
                e = rng.choice(pk)
                e.data, what = self.pm.mutate(e.data)
                e.raw = None
                done.append(f"pickle {e.name!r}: {what}")
            elif r == 2:
                e.name = self._rename(e.name)
                done.append(f"rename -> {e.name!r}")
            elif r == 3:
                e.method = rng.choice([0, 8, 8, 12, 14, 99])
                done.append(f"method {e.method} {e.name!r}")
            elif r == 4:
                e.flags ^= rng.choice([0x800, 0x800, 0x1, 0x8, 0x40, 0x2000])
                if e.flags & 0x800 and rng.random() < 0.7:
                    e.name = e.name.replace(b"/", b"/\xff", 1) if rng.random() < 0.5 else e.name + b"\xe9"
                done.append(f"flags {e.flags:#x} {e.name!r}")
            elif r == 5:
                e.version = rng.choice([10, 20, 45, 46, 51, 63, 99, 255, 0x333])
                done.append(f"version-needed {e.version}")
            elif r == 6:
                e.crc = rng.randrange(2**32)
                done.append(f"bad crc {e.name!r}")
            elif r == 7:
                e.cname = self._rename(e.name)
                done.append(f"central name {e.cname!r} vs local {e.name!r}")
            elif r == 8:  # a second member of the same name, holding a payload (or the same bytes)
                body = self._payload() or e.data
                dup = ZEntry(e.name, body, e.method)
                entries.insert(rng.randrange(len(entries) + 1), dup)
                done.append(f"duplicate {e.name!r}")
            elif r == 9:
                root = entries[0].name.split(b"/")[0]
                name = rng.choice([b"data.pkl", b"x.pkl", b"DATA.PKL", b"data/0", b"extra", b".data/x.pkl", b"../data.pkl"])
                entries.insert(rng.randrange(len(entries) + 1), ZEntry(root + b"/" + name, self._payload() or b"N."))
                done.append(f"add member {name!r}")
            elif r == 10 and len(entries) > 1:
                entries.remove(e)
                done.append(f"drop {e.name!r}")
            elif r == 11:
                rng.shuffle(entries)
                done.append("shuffle")
            elif r == 12:
                k = rng.randrange(4)
                if k == 0:
                    prefix = rng.choice([b"\x80\x02N.", rng.randbytes(rng.randrange(1, 64)), b"PK\x03\x04"])
                    done.append(f"prefix {len(prefix)}")
                elif k == 1:
                    slack = rng.randbytes(rng.randrange(1, 64))
                    done.append(f"slack {len(slack)}")
                elif k == 2:
                    comment = rng.randbytes(rng.randrange(1, 40))
                    done.append("comment")
                else:
                    count_delta = rng.choice([-1, 1])
                    done.append(f"count {count_delta}")
            else:
                e.csize_delta = rng.choice([-1, 1, 16, -16])
                e.usize_delta = rng.choice([0, -1, 1])
                done.append(f"size deltas {e.csize_delta}/{e.usize_delta}")
        out = write_zip(entries, prefix, slack, comment, count_delta)
        if rng.random() < 0.15:
            out, what = mutate_bytes(rng, out, self.pools.pickles, 1)
            done += what
        return out[:MAX_SIZE], done

    def _rename(self, name: bytes) -> bytes:
        rng = self.rng
        parts = name.split(b"/")
        r = rng.randrange(8)
        if r == 0:
            return b"./" + name
        if r == 1:
            return b"/" + name
        if r == 2:
            return name.upper()
        if r == 3:
            return name.replace(b"/", b"\\")
        if r == 4:
            return b"other/" + parts[-1]
        if r == 5:
            return b"/".join([*parts[:-1], b"x" + parts[-1]])
        if r == 6:
            return name + b"\x00junk"
        return parts[-1]

    def _payload(self) -> bytes | None:
        if not self.pools.payloads:
            return None
        return b"\x80\x02" + self.rng.choice(self.pools.payloads) + b"."


# -- tar -----------------------------------------------------------------------------------------------
_TAR_TYPES = [b"0", b"\0", b"7", b"1", b"2", b"5", b"3", b"6", b"Z", b"x", b"g", b"K", b"L", b"S", b"V", b"D", b"M", b"9"]


class TarMutator:
    def __init__(self, rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.pools = pools
        self.pm = PickleMutator(rng, pools)

    def _read(self, data: bytes) -> list[tuple[tarfile.TarInfo, bytes]] | None:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
                out = []
                for m in tf.getmembers():
                    body = b""
                    if m.isreg() or m.type not in tarfile.SUPPORTED_TYPES:
                        fh = tf.extractfile(m)
                        body = fh.read() if fh is not None else b""
                    out.append((m, body))
                return out
        except Exception:
            return None

    def mutate(self, data: bytes) -> tuple[bytes, list[str]]:
        rng = self.rng
        members = self._read(data)
        if not members:
            return mutate_bytes(rng, data, self.pools.pickles)
        done: list[str] = []
        fmt = tarfile.PAX_FORMAT
        tail_raw = rng.random() < 0.3
        for _ in range(rng.choice([1, 1, 2, 3])):
            r = rng.randrange(11)
            k = rng.randrange(len(members))
            info, body = members[k]
            if r in (0, 1):
                body, what = self.pm.mutate(body)
                members[k] = (info, body)
                done.append(f"pickle {info.name}: {what}")
            elif r == 2:
                info.type = rng.choice(_TAR_TYPES)
                if info.type in (tarfile.LNKTYPE, tarfile.SYMTYPE):
                    info.linkname = rng.choice([m.name for m, _ in members] + ["/etc/hostname", "../x", "evil"])
                done.append(f"type {info.type!r} {info.name}")
            elif r == 3:  # the member torch reads becomes a link to a member holding a payload
                evil = tarfile.TarInfo(rng.choice(["evil", "./evil", "x/evil"]))
                payload = self._payload() or body
                evil.size = len(payload)
                members.insert(0, (evil, payload))
                info.type = rng.choice([tarfile.LNKTYPE, tarfile.SYMTYPE])
                info.linkname = evil.name
                info.size = 0
                done.append(f"{info.name} -> link to {evil.name}")
            elif r == 4:
                info.name = rng.choice(["./", "/", "x/../", "", "a" * 120 + "/../"]) + info.name.lstrip("./")
                done.append(f"rename {info.name[:40]}")
            elif r == 5:  # a second member of the same name: tarfile serves the last
                dup = tarfile.TarInfo(info.name)
                payload = self._payload() or body
                dup.size = len(payload)
                members.insert(rng.randrange(len(members) + 1), (dup, payload))
                done.append(f"duplicate {info.name}")
            elif r == 6:
                fmt = rng.choice([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
                done.append(f"format {fmt}")
            elif r == 7:
                info.pax_headers = {"path": rng.choice(["storages", "pickle", "tensors", "x"]), "size": str(len(body))}
                fmt = tarfile.PAX_FORMAT
                done.append(f"pax path {info.pax_headers['path']}")
            elif r == 8:
                rng.shuffle(members)
                done.append("shuffle")
            elif r == 9:
                del members[k]
                done.append(f"drop {info.name}")
                if not members:
                    members.append((info, body))
            else:
                tail_raw = True  # a raw header edit (below) of one of the fields, checksum fixed
        buf = io.BytesIO()
        try:
            with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
                for info, body in members:
                    info.size = len(body)
                    tf.addfile(info, io.BytesIO(body) if body else None)
        except Exception as exc:
            return mutate_bytes(rng, data, self.pools.pickles)[0], [f"tar write failed ({exc}); bytes"]
        out = bytearray(buf.getvalue())
        if tail_raw:
            what = self._header_edit(out)
            if what:
                done.append(what)
        if rng.random() < 0.1:
            out = bytearray(out[: rng.choice([len(out) - 1024, len(out) - 512, len(out)])])
            done.append("drop end blocks")
        return bytes(out[:MAX_SIZE]), done

    def _header_edit(self, out: bytearray) -> str | None:
        """Edit a field of a raw header block, then fix its checksum (so that tarfile still reads it)."""
        rng = self.rng
        heads = [i for i in range(0, len(out) - 512, 512) if out[i + 257 : i + 262] == b"ustar"]
        if not heads:
            return None
        h = rng.choice(heads)
        fld = rng.choice([(0, 100), (100, 8), (124, 12), (156, 1), (157, 100), (257, 8), (345, 155)])
        a, n = fld
        val = rng.choice([b"", b"storages", b"pickle", b"\xff", b"0" * n, rng.randbytes(n), b"7", b"ustar  \0"])
        out[h + a : h + a + n] = val[:n].ljust(n, b"\0")
        out[h + 148 : h + 156] = b" " * 8
        out[h + 148 : h + 156] = b"%06o\0 " % sum(out[h : h + 512])
        return f"header field {a}/{n} = {val[:12]!r}"

    def _payload(self) -> bytes | None:
        if not self.pools.payloads:
            return None
        return b"\x80\x02" + self.rng.choice(self.pools.payloads) + b"."


# -- npy -----------------------------------------------------------------------------------------------
_DESCRS = [
    "|O", "O", "<O", "|O8", "object", "T", "<f4", "|u1", "|b1", "<U3", "|S3", "|V8", "<M8[s]", "<m8",
    [("a", "|O")], [("a", "<f4"), ("b", "|O")], [("a", [("b", "|O")])], [("a", "T")], [("", "|O")],
    [("a", "|O", (2,))], [("a", "<f4", (2,)), ("o", "O")], [(("title", "a"), "|O")],
    ("|O", (2,)), ("<f4", (2,)), "StringDType()", "'|O'", "|O\x00", " |O", "|o", "V", "<c16", "|O16",
]  # fmt: skip
_SHAPES = [(), (0,), (1,), (2,), (3,), (1, 1), (2, 3), (2**31,), (-1,), (1, 0)]


def npy_parts(data: bytes) -> tuple[int, int, str, bytes] | None:
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        return None
    major, minor = data[6], data[7]
    if major == 1:
        (hlen,) = struct.unpack("<H", data[8:10])
        start = 10
    else:
        (hlen,) = struct.unpack("<I", data[8:12])
        start = 12
    header = data[start : start + hlen].decode("latin-1")
    return major, minor, header, data[start + hlen :]


def npy_build(major: int, minor: int, header: str, payload: bytes, pad: bool = True, len_delta: int = 0) -> bytes:
    raw = header.encode("utf-8" if major >= 3 else "latin-1", "replace")
    pre = 10 if major == 1 else 12
    if pad:
        raw = raw.rstrip(b"\n")
        raw += b" " * ((64 - (pre + len(raw) + 1) % 64) % 64) + b"\n"
    n = len(raw) + len_delta
    head = struct.pack("<H", n % 65536) if major == 1 else struct.pack("<I", n % 2**32)
    return b"\x93NUMPY" + bytes([major, minor]) + head + raw + payload


class NpyMutator:
    def __init__(self, rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.pools = pools
        self.pm = PickleMutator(rng, pools)

    def mutate(self, data: bytes, name: str = "") -> tuple[bytes, list[str]]:
        if data[:2] == b"PK":
            return self._npz(data)
        return self._npy(data)

    def _npz(self, data: bytes) -> tuple[bytes, list[str]]:
        entries = read_zip(data)
        if not entries:
            return mutate_bytes(self.rng, data, self.pools.pickles)
        e = self.rng.choice(entries)
        e.data, done = self._npy(e.data)
        e.raw = None
        if self.rng.random() < 0.2:
            e.name = self.rng.choice([b"x.npy", e.name + b".npy", e.name.replace(b".npy", b""), b"../x.npy"])
            done.append(f"member name {e.name!r}")
        return write_zip(entries), [f"member {e.name!r}: " + "; ".join(done)]

    def _npy(self, data: bytes) -> tuple[bytes, list[str]]:
        rng = self.rng
        parts = npy_parts(data)
        if parts is None:
            return mutate_bytes(rng, data, self.pools.pickles)
        major, minor, header, payload = parts
        done: list[str] = []
        try:
            d = ast.literal_eval(header.strip())
            if not isinstance(d, dict):
                d = None
        except Exception:
            d = None
        pad, len_delta = True, 0
        for _ in range(rng.choice([1, 1, 2, 3])):
            r = rng.randrange(10)
            if r <= 2 and d is not None:
                d["descr"] = rng.choice(_DESCRS)
                done.append(f"descr {d['descr']!r}")
            elif r == 3 and d is not None:
                d["shape"] = rng.choice(_SHAPES)
                done.append(f"shape {d['shape']}")
            elif r == 4 and d is not None:
                d["fortran_order"] = rng.choice([True, False, 1, None])
                if rng.random() < 0.3:
                    d[rng.choice(["extra", "descr ", "Descr"])] = "|O"
                done.append("fortran/extra key")
            elif r == 5:  # the array's bytes become a payload pickle (what an object dtype unpickles)
                if self.pools.payloads:
                    payload = b"\x80\x02" + rng.choice(self.pools.payloads) + b"."
                    done.append("payload -> pickle")
            elif r == 6 and payload[:1] == b"\x80":
                payload, what = self.pm.mutate(payload)
                done.append(f"pickle: {what}")
            elif r == 7:
                major, minor = rng.choice([(1, 0), (2, 0), (3, 0), (1, 1), (4, 0), (0, 9)])
                done.append(f"version {major}.{minor}")
            elif r == 8:
                pad = rng.random() < 0.5
                len_delta = rng.choice([0, -1, 1, -8, 64])
                done.append(f"padding {pad} len {len_delta:+d}")
            else:
                payload, what = mutate_bytes(rng, payload, self.pools.pickles, 1)
                done.append(f"payload bytes {what}")
        if d is not None:
            header = self._spell(d)
        out = npy_build(major if major in (1, 2, 3) else 1, minor, header, payload, pad, len_delta)
        if major not in (1, 2, 3):
            out = out[:6] + bytes([major, minor]) + out[8:]
        return out[:MAX_SIZE], done

    def _spell(self, d: dict) -> str:
        """The header dict as text, in one of the spellings ``ast.literal_eval`` accepts."""
        r = self.rng.randrange(5)
        items = list(d.items())
        if r == 1:
            self.rng.shuffle(items)
        text = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in items) + ", }"
        if r == 2:
            text = text.replace("'", '"')
        elif r == 3:
            text = text.replace(": ", ":\t").replace("{", "{ ")
        elif r == 4:
            text = "(" + text + ")"
        return text


# -- entry point ---------------------------------------------------------------------------------------
class Mutators:
    def __init__(self, rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.pools = pools
        self.pickle = PickleMutator(rng, pools)
        self.zip = ZipMutator(rng, pools)
        self.tar = TarMutator(rng, pools)
        self.npy = NpyMutator(rng, pools)

    def mutate(self, target: str, seed: Seed, others: list[Seed]) -> tuple[bytes, list[str]]:
        rng = self.rng
        r = rng.random()
        if r < 0.15:  # byte level only
            return mutate_bytes(rng, seed.data, [o.data for o in others])
        if r < 0.2 and others:  # splice two seeds of the target
            o = rng.choice(others).data
            a, b = rng.randrange(len(seed.data) + 1), rng.randrange(len(o) + 1)
            return (seed.data[:a] + o[b:])[:MAX_SIZE], [f"splice {seed.name}[:{a}] + other[{b}:]"]
        if target == "pickle":
            out, done = self.pickle.mutate(seed.data)
        elif target == "zip":
            out, done = self.zip.mutate(seed.data)
        elif target == "tar":
            out, done = self.tar.mutate(seed.data)
        else:
            out, done = self.npy.mutate(seed.data)
        if rng.random() < 0.1:
            out, more = mutate_bytes(rng, out, [o.data for o in others], 1)
            done += more
        return out[:MAX_SIZE], done
