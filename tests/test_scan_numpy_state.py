"""numpy dtype/array state: accepted only in the exact shape numpy writes (red team round 5, class E).

numpy rebuilds a dtype from its pickled state without recomputing the flags: an object field with
``flags=0`` makes an array rebuilt from raw bytes take them as object pointers, and ``str(arr)`` dereferences
them (a segfault here; an arbitrary pointer dereference in general). The scan must call every such file
dangerous, and torchkeep's own reader (inspect, convert, diff, load) must refuse it with a one-line error,
never crash. Real numpy pickles (every dtype kind, records, RNG state, object arrays, .npy) stay safe and
readable, equal to what ``pickle.load`` gives.

Every check that could crash on a regression runs in a subprocess, so a segfault fails the test instead of
killing pytest.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchkeep import scan
from torchkeep._pickle import NumpyDtypeRef, PickleReadError, read_pickle

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy._core.multiarray._reconstruct (numpy 2) / numpy.core
_SCALAR = np.float32(1).__reduce__()[0]
_FROMBUFFER = np.zeros(2).__reduce_ex__(5)[0]


class Forged:
    """Pickles as ``func(*args)`` then BUILD ``state``: numpy's own reduce shape with a state of our choosing."""

    def __init__(self, func: Any, args: tuple, state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def dtype(name: str, state: Any = None, args: tuple | None = None) -> Forged:
    return Forged(np.dtype, args if args is not None else (name, False, True), state)


def array(dt: Any, shape: tuple, data: Any, rec: tuple = (np.ndarray, (0,), b"b")) -> Forged:
    return Forged(_RECONSTRUCT, rec, (1, shape, dt, False, data))


def touch(obj: Any) -> Forged:
    return Forged(str, (obj,))  # builtins.str: allow-listed; numpy's repr reads every item


O_FLAGS0 = dtype("O8", (3, "|", None, None, None, -1, -1, 0))  # an object dtype that says it holds no objects
RED_TEAM = dtype("V8", (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))  # the red team's record


#: name -> object whose pickle a loader crashes on or that numpy never writes
ATTACKS: dict[str, Any] = {
    "record_object_field_flags0": touch(array(RED_TEAM, (1,), b"A" * 8)),
    "object_dtype_flags0": touch(array(O_FLAGS0, (1,), b"A" * 8)),
    "scalar_object_flags0": touch(Forged(_SCALAR, (O_FLAGS0, b"A" * 8))),
    "frombuffer_object_flags0": touch(Forged(_FROMBUFFER, (b"A" * 8, O_FLAGS0, (1,), "C"))),
    "subarray_object_flags0": touch(array(dtype("V16", (3, "|", (np.dtype("O"), (2,)), None, None, 16, 8, 0)), (1,), b"A" * 16)),
    "nested_record_flags0": touch(array(dtype("V8", (3, "|", None, ("n",), {"n": (RED_TEAM, 0)}, 8, 1, 16)), (1,), b"A" * 8)),
    "object_field_overlaps_int": array(dtype("V8", (3, "|", None, ("i", "o"), {"i": (np.dtype("u8"), 0), "o": (np.dtype("O"), 0)}, 8, 1, 27)), (1,), [(0x41414141, None)]),
    "field_past_the_record": array(dtype("V8", (3, "|", None, ("f",), {"f": (np.dtype("f8"), 64)}, 8, 1, 16)), (1,), b"A" * 8),
    "record_size_not_its_name": array(dtype("V8", (3, "|", None, ("f",), {"f": (np.dtype("f8"), 0)}, 4096, 1, 16)), (1,), b"A" * 8),
    "bytes_negative_size": array(dtype("S4", (3, "|", None, None, None, -1, 1, 0)), (1,), b"A" * 4),
    "object_dtype_byte_swapped": array(dtype("O8", (3, ">", None, None, None, -1, -1, 63)), (1,), [1]),
    "float_flags_pointer": array(dtype("f8", (3, "<", None, None, None, -1, -1, 0x04)), (1,), b"A" * 8),
    "data_shorter_than_array": array(np.dtype("f8"), (1000,), b"A" * 8),
    "reconstruct_huge_shape": Forged(_RECONSTRUCT, (np.ndarray, (10**12,), b"b")),
    "dtype_name_object_record": dtype("", args=("i4,O", False, True)),
    "dtype_copy_false": dtype("", args=("O8", False, False)),
    "dtype_state_twice": Forged(dict, (), None),  # filled below: one dtype given two states
    "numpy1_reconstruct": None,  # filled below: the red team's file, numpy.core.multiarray spelling
    "dtype_state_after_use": None,  # filled below: a plain V8 array, then its dtype given an object field
}


def _state_twice() -> bytes:
    d = pickle.dumps(dtype("V8", (3, "|", None, None, None, 8, 1, 0)), protocol=2)
    # BUILD the dtype again with the red team's state: b'.' -> <state> b'b.'
    again = pickle.dumps((3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0), protocol=2)[2:-1]
    return d[:-1] + again + b"b."


def _state_after_use() -> bytes:
    """str(arr) where arr = V8 array of b'AAAAAAAA', whose dtype gets a valid object-field state afterwards:
    numpy changes the dtype in place, under the array (each state alone is exactly numpy's)."""

    def chunk(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=2)[2:-1]

    out = b"\x80\x02cbuiltins\nstr\n(" + chunk(Forged(_RECONSTRUCT, (np.ndarray, (0,), b"b")))
    out += b"(" + chunk(1) + chunk((1,)) + chunk(dtype("V8")) + b"q\x64" + chunk(False) + chunk(b"A" * 8) + b"tb"
    out += b"h\x64" + chunk((3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 27)) + b"b0"  # BUILD, POP
    return out + b"tR."


def attack_bytes(name: str) -> bytes:
    if name == "dtype_state_after_use":
        return _state_after_use()
    if name == "dtype_state_twice":
        return _state_twice()
    if name == "numpy1_reconstruct":
        data = pickle.dumps(ATTACKS["record_object_field_flags0"], protocol=2)
        old = f"c{_RECONSTRUCT.__module__}\n_reconstruct\n".encode()
        assert old in data
        return data.replace(old, b"cnumpy.core.multiarray\n_reconstruct\n")
    return pickle.dumps(ATTACKS[name], protocol=2)


@pytest.fixture(scope="module")
def attacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("np_attacks")
    out = {}
    for name in ATTACKS:
        p = d / f"{name}.pkl"
        p.write_bytes(attack_bytes(name))
        out[name] = p
    zipped = d / "record_object_field_flags0.pt"  # the same objects inside a torch zip archive
    torch.save({"w": torch.zeros(2), "x": ATTACKS["record_object_field_flags0"]}, zipped)
    out["torch_zip"] = zipped
    return out


def _run(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    def no_core() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=no_core)


def test_the_attack_crashes_plain_loaders(attacks: dict[str, Path]) -> None:
    """The files are real: pickle.load dereferences 0x4141414141414141 (the test would prove nothing otherwise)."""
    for name in ("record_object_field_flags0", "object_dtype_flags0", "scalar_object_flags0", "dtype_state_after_use"):
        r = _run("import pickle, sys; pickle.load(open(sys.argv[1], 'rb')); print('loaded')", str(attacks[name]))
        assert r.returncode in (-11, 139, -7), (name, r.returncode, r.stdout, r.stderr[-500:])


@pytest.mark.parametrize("name", [*ATTACKS, "torch_zip"])
def test_scan_calls_it_dangerous(attacks: dict[str, Path], name: str) -> None:
    report = scan(attacks[name])
    assert report.verdict == "dangerous", (name, report.findings)
    assert any("numpy" in f.why for f in report.findings), [f.why for f in report.findings]


def test_reader_and_commands_refuse_with_one_line(attacks: dict[str, Path]) -> None:
    """torchkeep's own reader never hands numpy a forged state: inspect/read/load give one-line errors."""
    code = """
        import json, sys
        from torchkeep._pickle import PickleReadError, read_pickle
        from torchkeep.errors import TorchkeepError
        import torchkeep
        out = {}
        for path in sys.argv[1:]:
            res = {}
            try:
                read_pickle(open(path, 'rb').read()) if path.endswith('.pkl') else None
                res['read'] = 'read'
            except PickleReadError as exc:
                res['read'] = 'refused: ' + str(exc)
            for verb, fn in (('inspect', lambda: torchkeep.inspect(path)),
                             ('load', lambda: torchkeep.load_state_dict(path, trust=True))):
                try:
                    fn()
                    res[verb] = 'ok'
                except TorchkeepError as exc:
                    res[verb] = 'error: ' + str(exc)
            out[path] = res
        print(json.dumps(out))
    """
    paths = [str(p) for p in attacks.values()]
    r = _run(code, *paths, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for path, res in results.items():
        if path.endswith(".pkl"):
            assert res["read"].startswith("refused: ") and "numpy" in res["read"], (path, res)
        assert res["load"].startswith("error: ") and "\n" not in res["load"], (path, res)
        assert res["inspect"].startswith("error: ") and "\n" not in res["inspect"], (path, res)
    # the CLI: a one-line error for each verb, no crash
    for argv in (["inspect"], ["convert", "--trust"], ["diff"]):
        extra = [str(attacks["torch_zip"].with_suffix(".safetensors"))] if argv[0] == "convert" else []
        extra = [str(attacks["record_object_field_flags0"])] if argv[0] == "diff" else extra
        cli = _run("import sys; from torchkeep._cli.main import run; sys.exit(run(sys.argv[1:]))",
                   *argv, str(attacks["record_object_field_flags0"]), *extra)
        assert cli.returncode in (1, 2, 3, 4), (argv, cli.returncode, cli.stderr[-1000:])
        lines = cli.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("torchkeep: error:") and "numpy" in lines[0], (argv, lines)


# -- real numpy pickles stay safe and read like pickle.load --------------------------------------------------
_DTYPES = ["?", "b", "B", "h", "H", "i", "I", "q", "Q", "e", "f", "d", "g", "F", "D", "G", "M8[ns]", "m8[s]",
           "M8[D]", "U5", "S3", "V4", ">f4", ">i8", "<u2", [("a", "<f4"), ("b", "i8")], [("a", "<f4"), ("b", "U3")],
           [("a", "f4", (3,)), ("b", "M8[s]")], [("n", [("x", "u1"), ("y", "f8")])], ("f4", (2, 3)),
           {"names": ["x"], "formats": ["f4"], "offsets": [4], "itemsize": 12}, [("s", "S4"), ("v", "V3"), ("c", "c16")]]


def _benign_objects() -> list[Any]:
    objs: list[Any] = []
    for spec in _DTYPES:
        for align in (False, True):
            dt = np.dtype(spec, align=align)  # type: ignore[call-overload]
            objs += [dt, np.zeros(3, dtype=dt), np.zeros((2, 2), dtype=dt, order="F"), np.zeros(2, dtype=dt)[0]]
    objs += [
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2], np.zeros(0), np.zeros((0, 3)), np.float16(2),
        np.datetime64("2020-01-01"), np.timedelta64(5, "s"), np.str_(""), np.bytes_(b""), np.dtype("f4", metadata={"k": 1}),
        np.random.default_rng(0).bit_generator.state, np.random.get_state(), np.random.default_rng(0),
        np.random.RandomState(1), np.random.SeedSequence(3), np.random.Generator(np.random.MT19937(1)),
        np.array([1, "x", None], dtype=object), np.array([(1.0, "a")], dtype=[("f", "f8"), ("o", "O")]), np.dtype("O"),
    ]
    return objs


def test_real_numpy_pickles_stay_safe_and_readable(tmp_path: Path) -> None:
    seen = 0
    for i, obj in enumerate(_benign_objects()):
        for proto in (2, 4, 5):
            data = pickle.dumps(obj, protocol=proto)
            p = tmp_path / f"b{i}_{proto}.pkl"
            p.write_bytes(data)
            report = scan(p)
            assert report.verdict == "safe", (repr(obj)[:80], proto, [f.why for f in report.findings])
            want, got = pickle.loads(data), read_pickle(data).obj
            _assert_same(want, got)
            seen += 1
    assert seen > 400
    # torch.save (protocol 2, a torch zip) of the lot: safe, and the numeric arrays are weights load reads
    p = tmp_path / "ckpt.pt"
    torch.save({"objs": _benign_objects(), "w": np.arange(6, dtype=np.float64)}, p)
    assert scan(p).verdict == "safe"


def _assert_same(want: Any, got: Any) -> None:
    if isinstance(want, np.dtype):
        assert isinstance(got, NumpyDtypeRef) and got.dtype == want and got.dtype.metadata == want.metadata
        assert got.dtype.flags == want.flags
    elif isinstance(want, np.ndarray):
        assert type(got).__name__ == "ndarray" and got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.names or want.dtype.hasobject:
            assert want.dtype.hasobject or np.array_equal(np.asarray(got), want)
        else:
            assert np.asarray(got).tobytes() == want.tobytes()
    elif isinstance(want, np.generic):
        assert type(got) is type(want)
        if want.dtype.kind in "fcV":  # long double, records: padding bytes hold whatever memory held
            assert np.array_equal(np.asarray(got), np.asarray(want))
        else:
            assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_npy_and_pickled_arrays_load_as_weights(tmp_path: Path) -> None:
    import torchkeep

    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    npy = tmp_path / "w.npy"
    np.save(npy, arr, allow_pickle=False)
    assert scan(npy).verdict == "safe"
    assert torch.equal(torchkeep.load_state_dict(npy)["array"], torch.from_numpy(arr))
    pkl = tmp_path / "w.pkl"
    pkl.write_bytes(pickle.dumps({"a": arr, "b": arr.astype(">f8")}, protocol=2))
    assert scan(pkl).verdict == "safe"
    got = torchkeep.load_state_dict(pkl)
    assert torch.equal(got["a"], torch.from_numpy(arr)) and torch.equal(got["b"], torch.from_numpy(arr.astype("f8")))


@pytest.mark.parametrize("flags", [0, 1, 2, 0x10, 0x1B, 0x3F, 0x1F, 0x90])
def test_only_the_flags_numpy_computes_pass(tmp_path: Path, flags: int) -> None:
    """A packed record's flags: exactly what numpy computes from its fields (16 here), nothing else."""
    assert np.dtype([("a", "f4"), ("b", "i8")]).__reduce__()[2][7] == 0x10
    obj = array(dtype("V12", (3, "|", None, ("a", "b"), {"a": (np.dtype("f4"), 0), "b": (np.dtype("i8"), 4)}, 12, 1, flags)),
                (1,), b"\0" * 12)
    p = tmp_path / "rec.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    assert scan(p).verdict == ("safe" if flags == 0x10 else "dangerous")
    if flags & 1:  # the reader would hand numpy an object flag on bytes: refused before numpy sees it
        with pytest.raises(PickleReadError, match="numpy"):
            read_pickle(p.read_bytes())
    elif flags == 0x10:
        assert read_pickle(p.read_bytes()).obj.dtype == np.dtype([("a", "f4"), ("b", "i8")])


@pytest.mark.parametrize(("flags", "verdict"), [(-112, "safe"), (144, "safe"), (16, "dangerous"), (-128, "dangerous")])
def test_numpy1_wrote_flags_as_a_signed_char(tmp_path: Path, flags: int, verdict: str) -> None:
    """numpy 1.x pickled an aligned record's flags (144) as -112; numpy 2 reads that (as 16): still safe."""
    fields = {"a": (np.dtype("f4"), 0), "b": (np.dtype("i8"), 8)}
    obj = array(dtype("V16", (3, "|", None, ("a", "b"), fields, 16, 8, flags)), (1,), b"\0" * 16)
    p = tmp_path / "rec.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    assert scan(p).verdict == verdict
    if verdict == "safe":
        want = pickle.loads(p.read_bytes())
        got = read_pickle(p.read_bytes()).obj
        assert got.dtype == want.dtype and got.dtype.flags == want.dtype.flags
    else:
        with pytest.raises(PickleReadError, match="numpy"):
            read_pickle(p.read_bytes())
