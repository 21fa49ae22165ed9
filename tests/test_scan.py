"""torchkeep scan: the generated corpus, findings, containers, CLI exit codes, JSON and SARIF."""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from torchkeep import scan
from torchkeep._scan import exit_code, scan_paths, to_sarif
from torchkeep._scan_rules import classify

CORPUS_SCRIPT = Path(__file__).parent / "corpus" / "make_corpus.py"


def _load_make_corpus():
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module  # torch.save(full model) must find the module of its class
    spec.loader.exec_module(module)
    return module


make_corpus = _load_make_corpus()
MALICIOUS = sorted(make_corpus._MARKER_IDS)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("corpus")
    entries = make_corpus.build(root)
    return root, entries


def _no_markers(root: Path) -> None:
    assert not list(root.rglob(f"*{make_corpus.MARKER}*")), "a payload ran"


# -- the corpus -----------------------------------------------------------------------------------------
def test_corpus_size_and_manifest(corpus):
    root, entries = corpus
    malicious = [e for e in entries if e["kind"] == "malicious"]
    benign = [e for e in entries if e["kind"] == "benign"]
    assert len(malicious) >= 25 and len(benign) >= 12
    assert json.loads((root / "manifest.json").read_text()) == entries
    assert {e["container"] for e in benign} >= {
        "torch-zip", "torch-legacy", "torchscript", "torch-export", "safetensors", "onnx", "numpy", "numpy-npz", "pickle",
    }  # fmt: skip
    assert {e["container"] for e in malicious} >= {"pickle", "torch-zip", "torch-legacy", "numpy", "numpy-npz", "zip"}
    assert sorted(Path(e["file"]).name for e in malicious) == MALICIOUS


@pytest.mark.parametrize("name", MALICIOUS)
def test_every_malicious_file_is_dangerous(corpus, name):
    root, _ = corpus
    report = scan(root / "malicious" / name)
    assert report.verdict == "dangerous", report.findings
    assert report.dangerous and all(f.why for f in report.dangerous)
    assert report.exit_code == 2
    _no_markers(root)


def test_benign_files_are_never_worse_than_expected(corpus):
    root, entries = corpus
    for e in (e for e in entries if e["kind"] == "benign"):
        report = scan(root / e["file"])
        assert report.verdict == e["expected"], (e["file"], report.findings, report.error)
        assert not report.dangerous, e["file"]
    _no_markers(root)


def test_custom_code_files_list_their_classes(corpus):
    root, _ = corpus
    ns = scan(root / "benign" / "checkpoint_namespace.ckpt")
    assert ns.custom_classes == ["argparse.Namespace"]
    full = scan(root / "benign" / "full_model.pt")
    assert "make_corpus.TinyNet" in full.custom_classes
    assert "torch.nn.modules.conv.Conv2d" in full.custom_classes
    assert all(f.severity == "custom-code" for f in full.findings)


def test_benign_streams_are_all_found(corpus):
    root, _ = corpus
    legacy = scan(root / "benign" / "legacy.pt")
    assert len(legacy.streams) == 5 and not legacy.notes  # 5 pickles, storage table walked to the end
    ts = scan(root / "benign" / "torchscript.pt")
    assert any(s.endswith("constants.pkl") for s in ts.streams)
    assert any(s.endswith(".debug_pkl") for s in ts.streams)  # found by content, not name
    pt2 = scan(root / "benign" / "exported.pt2")
    assert any("!/" in s for s in pt2.streams)  # the nested torch zip of the sample inputs
    plain = scan(root / "benign" / "plain_pickled_tensors.pkl")
    assert plain.verdict == "safe" and any("embedded torch file" in s for s in plain.streams)
    obj = scan(root / "benign" / "object_array.npy")
    assert obj.streams == ["array (object array pickle)"]
    assert scan(root / "benign" / "array.npy").streams == []
    assert scan(root / "benign" / "weights.safetensors").streams == []
    ck = scan(root / "benign" / "checkpoint_numpy.pt")
    assert "numpy._core.multiarray.scalar" in ck.imports or "numpy.core.multiarray.scalar" in ck.imports


def test_scan_never_imports_torch(corpus):
    root, _ = corpus
    code = (
        "import sys, torchkeep\n"
        f"reports = torchkeep._scan.scan_paths([{str(root)!r}], recursive=True)\n"
        "assert len(reports) > 60\n"
        "import contextlib, io\n"
        "from torchkeep._cli.main import run\n"
        f"with contextlib.redirect_stdout(io.StringIO()): code = run(['scan', {str(root)!r}, '-r', '--json'])\n"
        "assert code == 2, code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )  # numpy may be imported: .npy headers are parsed by numpy's own code, as np.load parses them
    proc = subprocess.run([sys.executable, "-c", "import torchkeep._scan\n" + code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _no_markers(root)


def test_no_torchkeep_verb_runs_a_payload(corpus, tmp_path):
    """inspect, load_state_dict and convert on every malicious file: refusals are fine, markers are not."""
    import torchkeep

    root, entries = corpus
    out = tmp_path
    for e in (e for e in entries if e["kind"] == "malicious"):
        path = root / e["file"]
        for verb in (
            lambda p=path: torchkeep.inspect(p),
            lambda p=path: torchkeep.load_state_dict(p),
            lambda p=path: torchkeep.convert(p, out / (p.name + ".safetensors")),
        ):
            try:
                verb()
            except Exception:  # refusing or failing is fine; running the payload is not
                pass
            _no_markers(root)


# -- findings on hand-made pickles ---------------------------------------------------------------------
def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_finding_fields_and_offsets(tmp_path):
    p = _write(tmp_path, "x.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00truet\x85R.")
    report = scan(p)
    (f,) = [f for f in report.findings if f.rule == "dangerous-import"]
    assert (f.severity, f.module, f.name, f.stream, f.offset) == ("dangerous", "os", "system", "pickle", 2)
    assert "os" in f.why and report.imports == ["os.system"] and report.format == "pickle"


def test_tar_member_offsets_are_file_offsets(tmp_path):
    payload = make_corpus.pk(make_corpus.call(make_corpus.G("os", "system"), make_corpus.U("true")))
    data = make_corpus.tar_bytes((("sys_info", pickle.dumps({}, protocol=2)), ("storages", payload)))
    report = scan(_write(tmp_path, "old.pt", data))
    (f,) = [f for f in report.findings if f.rule == "dangerous-import"]
    assert f.stream.startswith("storages") and data[f.offset : f.offset + 4] == b"cos\n"


def test_tar_storage_records_are_walked(tmp_path):
    # torch's tar 'storages' member: count, then (args pickle, raw storage bytes) per storage, then a views
    # pickle; 'tensors': count, then (args pickle, raw geometry) per tensor. Every pickle is scanned.
    storages = (
        pickle.dumps(1, protocol=2)
        + make_corpus.pk(make_corpus.MARK + make_corpus.U("0") + make_corpus.U("cpu") + make_corpus.G("torch", "FloatStorage") + make_corpus.TUPLE)
        + (3).to_bytes(8, "little") + b"\x00" * 12
        + pickle.dumps([], protocol=2)
    )  # fmt: skip
    tensors = (
        pickle.dumps(1, protocol=2)
        + pickle.dumps(("t", "0", None), protocol=2)
        + (1).to_bytes(8, "little") + (3).to_bytes(8, "little") + (1).to_bytes(8, "little") + bytes(8)
        + pickle.dumps({"epoch": 1}, protocol=2)  # never read by torch: bytes after the records
    )  # fmt: skip
    members = (("storages", storages), ("tensors", tensors), ("pickle", pickle.dumps({"w": 1}, protocol=2)))
    benign = scan(_write(tmp_path, "ok.pt", make_corpus.tar_bytes(members)))
    assert benign.verdict == "safe", benign.findings
    assert {s.split(":")[0] for s in benign.streams} == {"storages", "tensors", "pickle"}
    assert len([s for s in benign.streams if s.startswith("storages")]) == 3
    evil = make_corpus.pk(make_corpus.call(make_corpus.G("os", "system"), make_corpus.U("true")))
    for member in ("storages", "tensors"):
        changed = tuple((n, d[: -len(pickle.dumps([], protocol=2))] + evil if n == member == "storages" else d) for n, d in members)
        if member == "tensors":
            changed = tuple((n, d.replace(pickle.dumps(("t", "0", None), protocol=2), evil) if n == "tensors" else d) for n, d in members)
        report = scan(_write(tmp_path, f"evil_{member}.pt", make_corpus.tar_bytes(changed)))
        assert report.verdict == "dangerous" and "os.system" in report.imports, (member, report.findings)


def test_memo_resolution_and_structural_rules(tmp_path):
    mc = make_corpus
    # STACK_GLOBAL strings fetched from the memo resolve to what the unpickler would import.
    via_memo = mc.pk(mc.U("os") + mc.PUT(0) + mc.POP + mc.GET(0) + mc.U("system") + mc.STACK_GLOBAL, mc.PROTO4)
    r = scan(_write(tmp_path, "memo.pkl", via_memo))
    assert [f.target for f in r.dangerous] == ["os.system"]
    # A memo slot read before written: every unpickler fails at that byte, before anything is called.
    r = scan(_write(tmp_path, "missing.pkl", mc.pk(mc.GET(7))))
    assert r.verdict == "error" and not r.dangerous and "Memo" in (r.error or "")
    # ...and after a call, where a stand-in may be what failed: fail closed.
    r = scan(_write(tmp_path, "missing2.pkl", mc.pk(mc.call(mc.G("collections", "OrderedDict")) + mc.POP + mc.GET(7))))
    assert {f.rule for f in r.dangerous} == {"memo-missing"}
    # A module name computed by a call: only allow-listed imports, still dangerous.
    computed = mc.pk(
        mc.call(mc.G("copyreg", "_reconstructor"), mc.G("builtins", "str"), mc.G("builtins", "str"), mc.U("os"))
        + mc.U("system")
        + mc.STACK_GLOBAL,
        mc.PROTO4,
    )
    assert {f.rule for f in scan(_write(tmp_path, "c.pkl", computed)).dangerous} == {"non-constant-global"}
    # BUILD on an imported class.
    patch = mc.pk(mc.G("argparse", "Namespace") + mc.NONE + mc.EMPTY_DICT + mc.TUPLE2 + mc.BUILD)
    assert "build-on-global" in {f.rule for f in scan(_write(tmp_path, "b.pkl", patch)).dangerous}
    # A persistent id that is not a torch storage reference.
    pid = mc.pk(mc.U("anything") + b"Q")
    assert {f.rule for f in scan(_write(tmp_path, "p.pkl", pid)).dangerous} == {"persistent-id"}


def test_partial_is_judged_by_what_it_wraps_and_whether_it_is_called(tmp_path):
    mc = make_corpus
    stored = mc.pk(mc.call(mc.G("functools", "partial"), mc.G("torch.nn.modules.normalization", "LayerNorm")))
    report = scan(_write(tmp_path, "vit_like.pkl", stored))
    assert report.verdict == "custom-code" and "functools.partial" in report.custom_classes
    via_rebuild = mc.pk(
        mc.call(
            mc.G("torch._tensor", "_rebuild_from_type_v2"),
            mc.call(mc.G("functools", "partial"), mc.G("torch.nn.modules.normalization", "LayerNorm")),
            mc.G("torch", "Tensor"),
            mc.EMPTY_TUPLE,
            mc.EMPTY_DICT,
        )
    )
    assert {f.rule for f in scan(_write(tmp_path, "r.pkl", via_rebuild)).dangerous} == {"unexpected-argument"}
    rng = mc.pk(
        mc.call(
            mc.G("numpy.random._pickle", "__randomstate_ctor"),
            mc.U("MT19937"),
            mc.call(mc.G("functools", "partial"), mc.G("argparse", "Namespace")),
        )
    )
    assert {f.rule for f in scan(_write(tmp_path, "rng.pkl", rng)).dangerous} == {"unexpected-argument"}


def test_trailing_garbage_and_stacked_pickles(tmp_path):
    benign = pickle.dumps({"a": 1}, protocol=2)
    two = scan(_write(tmp_path, "two.pkl", benign + pickle.dumps([1, 2], protocol=4)))
    assert two.verdict == "safe" and len(two.streams) == 2
    padded = scan(_write(tmp_path, "pad.pkl", benign + b"\n\n\x00"))
    assert padded.verdict == "safe" and len(padded.streams) == 1
    garbage = scan(_write(tmp_path, "g.pkl", benign + b"\xff\xfe not a pickle"))
    assert garbage.verdict == "dangerous" and [f.rule for f in garbage.dangerous] == ["trailing-data"]


def test_stacked_pickle_limit(tmp_path):
    report = scan(_write(tmp_path, "many.pkl", b"N." * 2000))
    assert [f.rule for f in report.dangerous] == ["too-many-streams"] and len(report.streams) == 1024


def test_truncated_benign_pickle_is_an_error_not_dangerous(tmp_path):
    data = pickle.dumps(list(range(100)), protocol=2)[:-20]
    report = scan(_write(tmp_path, "t.pkl", data))
    assert report.verdict == "error" and "malformed" in (report.error or "")
    assert report.exit_code == 3


def test_unreadable_files_give_error_reports(tmp_path):
    assert scan(tmp_path / "missing.pt").verdict == "error"
    assert "empty" in (scan(_write(tmp_path, "e.pt", b"")).error or "")
    text = scan(_write(tmp_path, "r.md", b"# readme\n"))
    assert text.verdict == "error" and text.unknown_format
    broken = scan(_write(tmp_path, "z.pt", b"PK\x03\x04" + b"\x00" * 40))
    assert broken.verdict == "error"


def test_truncated_npy_headers_are_error_reports(tmp_path):
    for i, head in enumerate([b"\x93NUMPY\x02\x00\x10\x00", b"\x93NUMPY\x03\x00\x10\x00\x00"]):
        report = scan(_write(tmp_path, f"t{i}.npy", head))
        assert report.verdict == "error" and any(f.rule == "npy-header" for f in report.findings), report
        npz = scan(_write(tmp_path, f"t{i}.npz", make_corpus._zip_of((("a.npy", head),))))
        assert npz.verdict == "error" and any(f.rule == "npy-header" for f in npz.findings), npz


def test_broken_zip_directories_inside_files_are_findings(tmp_path):
    mc = make_corpus
    inner = mc.torch_zip_bytes(pickle.dumps({"w": 1}, protocol=2))
    at = inner.rindex(b"PK\x05\x06") + 16  # central directory offset: past the real one -> negative member offsets
    shifted = inner[:at] + (int.from_bytes(inner[at : at + 4], "little") + 100).to_bytes(4, "little") + inner[at + 4 :]
    at = inner.index(b"PK\x01\x02") + 6  # version needed to extract: 20.2, which zipfile refuses
    versioned = inner[:at] + (202).to_bytes(2, "little") + inner[at + 2 :]
    for i, bad in enumerate([shifted, versioned]):
        embedded = scan(_write(tmp_path, f"e{i}.pkl", mc.pk(mc.call(mc.G("torch.storage", "_load_from_bytes"), mc.B(bad)))))
        nested = scan(_write(tmp_path, f"n{i}.zip", mc._zip_of((("m.pt", bad),))))
        for report in (embedded, nested):
            assert report.verdict in ("error", "dangerous") and report.findings, report


def test_tensor_bytes_that_look_like_a_pickle_are_data(tmp_path):
    # A storage member starting with b"N." (NONE, STOP) followed by float bytes is not a pickle.
    data = make_corpus.torch_zip_bytes(pickle.dumps({"w": 1}, protocol=2), extra=(("archive/data/0", b"N." + b"\x01" * 64),))
    report = scan(_write(tmp_path, "t.pt", data))
    assert report.verdict == "safe" and report.streams == ["archive/data.pkl"]


def test_random_tensor_bytes_are_never_findings(tmp_path):
    # Tiny tensors are a few bytes that may well parse as a pickle (b"\x82\x05." is EXT1 5, STOP).
    import random

    rng = random.Random(0)
    members = [("archive/data/ext", b"\x82\x05."), ("archive/data/ext2", b"\x82\x05." + bytes(40))]
    members += [(f"archive/data/{i}", rng.randbytes(rng.randint(1, 64))) for i in range(3000)]
    data = make_corpus.torch_zip_bytes(pickle.dumps({"w": 1}, protocol=2), extra=tuple(members))
    report = scan(_write(tmp_path, "random.pt", data))
    assert report.verdict == "safe" and not report.findings, report.findings[:3]


def test_tensor_bytes_asking_for_gigabytes_are_probed_not_read(tmp_path):
    # BINUNICODE with a 2 GiB length at the start of a storage member: parsed within a bounded window.
    blob = b"X\xff\xff\xff\x7f" + b"\x00" * (3 << 20)
    data = make_corpus.torch_zip_bytes(pickle.dumps({"w": 1}, protocol=2), extra=(("archive/data/0", blob),))
    assert scan(_write(tmp_path, "t.pt", data)).verdict == "safe"
    # ...while a large real pickle in an oddly named member is still read to its end.
    mc = make_corpus
    big = pickle.dumps(list(range(300_000)), protocol=2)[:-1] + mc.POP + mc.call(mc.G("os", "system"), mc.U("x")) + b"."
    assert len(big) > (1 << 20)
    data = mc.torch_zip_bytes(pickle.dumps({"w": 1}, protocol=2), extra=(("archive/blob", big),))
    report = scan(_write(tmp_path, "big.pt", data))
    assert [(f.target, f.stream) for f in report.dangerous] == [("os.system", "archive/blob")]


def test_zip_depth_limit(tmp_path):
    data = make_corpus.torch_zip_bytes(pickle.dumps({"w": 1}, protocol=2))
    for level in range(4):
        data = make_corpus._zip_of(((f"level{level}.zip", data),))
    report = scan(_write(tmp_path, "deep.zip", data))
    assert report.verdict == "dangerous" and {f.rule for f in report.dangerous} == {"zip-depth"}


def test_deflated_and_renamed_pickle_members_are_found(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("weights/blob.bin", b"\x80\x02cposix\nsystem\nX\x01\x00\x00\x00x\x85R.")
        zf.writestr("README", b"hello")
    report = scan(_write(tmp_path, "bundle.zip", buf.getvalue()))
    assert report.format == "zip" and [f.target for f in report.dangerous] == ["posix.system"]


def test_torchscript_classes_are_safe_only_in_torchscript(tmp_path):
    assert classify("__torch__.model", "Net", torchscript=True)[0] == "safe"
    assert classify("__torch__.model", "Net")[0] == "custom-code"


@pytest.mark.parametrize(
    ("module", "name", "expected"),
    [
        ("torch._utils", "_rebuild_tensor_v2", "safe"),
        ("torch", "BFloat16Storage", "safe"),
        ("collections", "OrderedDict", "safe"),
        ("numpy.dtypes", "Float32DType", "safe"),
        ("numpy.dtypes", "_add_dtype_helper", "dangerous"),
        ("numpy.dtypes", "_private", "dangerous"),  # numpy internals: allow-list only
        ("builtins", "set", "safe"),
        ("__builtin__", "set", "safe"),
        ("argparse", "Namespace", "custom-code"),
        ("torch.nn.modules.conv", "Conv2d", "custom-code"),
        ("torchvision.models.resnet", "ResNet", "custom-code"),
        ("__main__", "Outer.Inner", "custom-code"),
        ("pathlib", "PosixPath", "safe"),  # a path is data (DCP metadata holds one)
        ("torch._C._nn", "gelu", "dangerous"),  # torch internals: allow-list only
        ("torch.nn.functional", "gelu", "custom-code"),
        ("__builtin__", "xrange", "safe"),  # fix_imports: builtins.range
        ("commands", "getoutput", "dangerous"),  # fix_imports: subprocess.getoutput
        ("copy_reg", "_reconstructor", "safe"),
        ("torch.distributed.checkpoint.metadata", "Metadata", "safe"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence", "safe"),
        ("shutil", "rmtree", "dangerous"),
        ("_io", "FileIO", "dangerous"),
        ("mylib.tools", "write_report", "dangerous"),
        ("__builtin__", "eval", "dangerous"),
        ("builtins", "getattr", "dangerous"),
        ("builtins", "print", "dangerous"),
        ("asyncio.unix_events", "_UnixSubprocessTransport", "dangerous"),  # submodule of a denied module
        ("torch.serialization", "load", "dangerous"),
        ("torch", "load", "dangerous"),
        ("torch.hub", "load", "dangerous"),
        ("torch._inductor.codecache", "compile_file", "dangerous"),
        ("numpy", "load", "dangerous"),
        ("copyreg", "add_extension", "dangerous"),
        ("argparse", "_os.system", "dangerous"),
        ("torch.nn.modules.module", "os.system", "dangerous"),
        ("collections", "OrderedDict.__init__.__globals__", "dangerous"),
        ("mypkg", "helpers.run", "dangerous"),  # dotted name through a lower-case module/function
        ("types", "SimpleNamespace", "custom-code"),
        ("types", "CodeType", "dangerous"),
        ("logging", "FileHandler", "dangerous"),
        ("logging", "getLogger", "custom-code"),
        ("pkgutil", "resolve_name", "dangerous"),
        ("functools", "partial", "custom-code"),  # inert until called; wrapped function and calls checked
        ("functools", "reduce", "dangerous"),
        ("torch.storage", "UntypedStorage.from_file", "dangerous"),
        ("PIL.Image", "open", "dangerous"),
        ("mylib.io", "load", "dangerous"),
        ("torch.utils.model_zoo", "load_url", "dangerous"),
        ("torch", "save", "dangerous"),
        ("mylib.io", "Loader", "custom-code"),
    ],
)
def test_rules(module, name, expected):
    assert classify(module, name)[0] == expected


# -- CLI, exit codes, JSON, SARIF -------------------------------------------------------------------------
def test_cli_exit_codes(corpus, cli, tmp_path):
    root, _ = corpus
    safe = root / "benign" / "state_dict.pt"
    custom = root / "benign" / "full_model.pt"
    bad = root / "malicious" / "os_system.pkl"
    code, out, _ = cli("scan", safe)
    assert code == 0 and "safe" in out
    code, out, _ = cli("scan", safe, custom)
    assert code == 1 and "make_corpus.TinyNet" in out
    code, out, _ = cli("scan", safe, custom, bad)
    assert code == 2 and "os.system" in out and "summary" in out
    code, out, _ = cli("scan", safe, tmp_path / "missing.pt")
    assert code == 3 and "no such file" in out
    code, _, _ = cli("scan", custom, tmp_path / "missing.pt", bad)
    assert code == 2  # dangerous wins over unreadable
    code, _, _ = cli("scan", custom, tmp_path / "missing.pt")
    assert code == 3  # unreadable wins over custom code
    code, _, _ = cli("scan")
    assert code == 64
    _no_markers(root)


def test_cli_directories(corpus, cli, tmp_path):
    root, entries = corpus
    expected = {v: sum(e["expected"] == v for e in entries) for v in ("safe", "custom-code", "dangerous")}
    code, out, _ = cli("scan", root)  # only the manifest lives at the top: not a model file, skipped
    assert code == 0 and "skipped 1" in out
    code, out, _ = cli("scan", root / "benign", "--json")
    data = json.loads(out)
    assert code == 1 and data["summary"]["custom-code"] == 2 and data["summary"]["dangerous"] == 0
    code, out, _ = cli("scan", root, "--recursive", "--json")
    data = json.loads(out)
    assert code == 2 and data["exit_code"] == 2
    assert data["summary"] == {**expected, "error": 0} and expected["dangerous"] == len(MALICIOUS)
    assert data["skipped"] == [str(root / "manifest.json")]
    (tmp_path / "empty").mkdir()
    code, _, err = cli("scan", tmp_path / "empty")
    assert code == 3 and "no files" in err
    _no_markers(root)


def test_cli_json_schema(corpus, cli):
    root, _ = corpus
    code, out, _ = cli("scan", "--json", root / "malicious" / "getattr_import_chain.pkl")
    data = json.loads(out)
    assert code == 2 and set(data) == {"files", "summary", "exit_code", "sarif", "skipped"}
    (rep,) = data["files"]
    assert set(rep) == {
        "path", "format", "verdict", "findings", "custom_classes", "imports", "streams", "error", "notes", "unknown_format",
        "code", "calls",
    }  # fmt: skip
    assert {c["target"] for c in rep["calls"]} >= {"builtins.getattr"}
    assert set(rep["calls"][0]) == {"stream", "target", "how", "args", "offset"}
    assert rep["verdict"] == "dangerous" and rep["format"] == "pickle"
    f = rep["findings"][0]
    assert set(f) == {"severity", "rule", "module", "name", "stream", "offset", "why"}
    assert {x["rule"] for x in rep["findings"]} == {"dangerous-import", "indirect-call"}
    assert isinstance(f["offset"], int)


def test_sarif(corpus, cli, tmp_path):
    root, _ = corpus
    out_file = tmp_path / "scan.sarif"
    files = [root / "malicious" / "os_system.pkl", root / "malicious" / "torchzip_bad_crc.pt", root / "benign" / "full_model.pt"]
    code, out, _ = cli("scan", *files, "--sarif", out_file)
    assert code == 2 and "SARIF log written" in out
    log = json.loads(out_file.read_text())
    assert log["version"] == "2.1.0" and "sarif-2.1.0" in log["$schema"]
    (run,) = log["runs"]
    rule_ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert run["tool"]["driver"]["name"] == "torchkeep"
    assert {r["ruleId"] for r in run["results"]} == rule_ids >= {"dangerous-import", "zip-bad-crc", "custom-class"}
    assert {r["level"] for r in run["results"]} <= {"error", "warning", "note"}
    bare = next(r for r in run["results"] if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("os_system.pkl"))
    assert bare["level"] == "error"
    assert bare["locations"][0]["physicalLocation"]["region"] == {"startLine": 1, "byteOffset": 2}
    assert len(bare["partialFingerprints"]["torchkeepFinding/v1"]) == 64
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    assert rules["dangerous-import"]["properties"]["security-severity"] == "9.0"
    assert rules["custom-class"]["defaultConfiguration"]["level"] == "warning"
    member = next(r for r in run["results"] if r["ruleId"] == "zip-bad-crc")
    assert member["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "archive/data.pkl"
    assert member["locations"][0]["physicalLocation"]["region"] == {"startLine": 1}
    assert to_sarif(scan_paths(files))["runs"][0]["results"] == run["results"]
    _no_markers(root)


def test_exit_code_helper(corpus):
    root, _ = corpus
    reports = scan_paths([root / "benign"])
    assert exit_code(reports) == 1
    assert exit_code([r for r in reports if r.verdict == "safe"]) == 0
