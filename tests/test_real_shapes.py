"""Files shaped like the ones real projects publish (issue 10): checkpoints that nest their weights beside
optimizer state, ONNX models that keep weights in subgraphs and Constant nodes, scripted modules with tensor
attributes that are not weights. Each is built in tmp_path with torch / onnx; ``inspect``, ``convert``,
``load_state_dict``, ``diff`` and ``adapt`` must agree, and values are compared bit for bit with what torch
and onnx themselves return."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file
from torch import nn

import torchkeep
from _files import TinyNet, tiny_model
from torchkeep._adapt import load_into
from torchkeep._onnx import external_data_problem
from torchkeep.errors import InputError, UnsafeFileError, UsageError
from torchkeep.models import build

torch.set_num_threads(1)


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Same names in the same order, same dtypes and shapes, same bytes."""
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert _bits(got[k]) == _bits(want[k]), k


# ------------------------------------------------------------------------------ nested checkpoints


def _trained() -> tuple[TinyNet, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """A model after one Adam step: the optimizer holds exp_avg / exp_avg_sq tensors shaped like the weights."""
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def _layouts() -> dict[str, tuple[dict, str, str, list[str]]]:
    """name -> (checkpoint, expected location, path to the weights inside it, expected other weight sets)."""
    model, opt, sched = _trained()
    sd = model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    args = {"width": 4, "classes": 3, "arch": "Net"}
    return {
        # nanoGPT-like: the weights one level down, beside the arguments that rebuild the model
        "model.state_dict": ({"model": {"state_dict": sd, "model_args": args}, "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "epoch": 3}, "model.state_dict", "model.state_dict", []),
        "state.model": ({"state": {"model": sd, "optim": opt.state_dict(), "step": 10}, "seed": 0},
                        "state.model", "state.model", []),
        # keys the rule does not know; the optimizer is known by its structure (param_groups + state)
        "unknown keys": ({"run": {"weights_sd": sd}, "adam": opt.state_dict(), "sched": sched.state_dict()},
                         "run.weights_sd", "run.weights_sd", []),
        "flat with extras": ({**sd, "epoch": 3, "optimizer": opt.state_dict()}, "(all tensors)", "", []),
        "main and ema": ({"model": sd, "model_ema": ema, "optimizer": opt.state_dict()}, "model", "model",
                         ["model_ema"]),
        "lightning": ({"state_dict": sd, "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
                       "epoch": 1, "hyper_parameters": args}, "state_dict", "state_dict", []),
    }


def _at(ckpt: dict, path: str) -> dict[str, torch.Tensor]:
    node = ckpt
    for part in path.split(".") if path else []:
        node = node[part]
    return {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("layout", list(_layouts()))
def test_nested_checkpoint_weights_agree_across_verbs(tmp_path, layout):
    ckpt, location, inner, others = _layouts()[layout]
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    want = _at(torch.load(path, weights_only=True), inner)
    assert len(want) == len(TinyNet().state_dict())

    r = torchkeep.inspect(path)
    assert r.kind == "checkpoint" and r.weights_location == location and r.other_weights == others
    assert [t.name for t in r.tensors] == list(want)  # no optimizer moment, no scheduler value
    roles = {e["key"]: e["role"] for e in r.checkpoint}
    assert {roles[k] for k in roles if "optim" in k or k == "adam"} <= {"optimizer state"}
    if location != "(all tensors)":
        assert roles[location.split(".")[0]] == "model weights"

    _same(torchkeep.load_state_dict(path), want)
    out = tmp_path / "w.safetensors"
    res = torchkeep.convert(path, out)
    assert res.tensors == len(want) and res.source_kind == "checkpoint"
    _same(load_file(out), want)
    assert torchkeep.diff(path, out).identical and torchkeep.diff(path, want).identical

    # load_into (the engine of adapt) agrees, from the file and from the same dict in memory
    for source in (path, ckpt):
        target = TinyNet()
        report = load_into(target, source)
        assert report.complete and report.unwrapped == (inner or None)
        _same(target.state_dict(), want)


def test_nested_checkpoint_adapt_names_the_location(tmp_path):
    torch.manual_seed(0)
    model = build("fashion_mlp")
    opt = torch.optim.Adam(model.parameters())
    sd = model.state_dict()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"state_dict": sd, "model_args": {"arch": "fashion_mlp"}}, "optimizer": opt.state_dict(),
                "epoch": 7}, path)
    result = torchkeep.adapt(path, arch="fashion_mlp", out=tmp_path / "m.safetensors")
    assert result.report.unwrapped == "model.state_dict" and result.report.complete
    assert torchkeep.diff(path, tmp_path / "m.safetensors").identical


def test_missing_key_names_it_and_lists_the_candidates(tmp_path, cli):
    ckpt, *_ = _layouts()["model.state_dict"]
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    with pytest.raises(UsageError, match=r"no entry 'weights' \(it has: model, optimizer, scheduler, epoch\).*"
                                         r"--key\): model\.state_dict"):
        torchkeep.load_state_dict(path, key="weights")
    with pytest.raises(UsageError, match=r"no entry 'model\.sd' \('model' has: state_dict, model_args\)"):
        torchkeep.convert(path, tmp_path / "o.safetensors", key="model.sd")
    with pytest.raises(UsageError, match=r"entry 'epoch' holds no model weights.*model\.state_dict"):
        load_into(TinyNet(), path, key="epoch")
    code, _, err = cli("convert", path, tmp_path / "o.safetensors", "--key", "nope")
    assert code == 64 and "no entry 'nope'" in err and "model.state_dict" in err and len(err.strip().splitlines()) == 1
    # an existing entry, dotted or not, is taken as given
    _same(torchkeep.load_state_dict(path, key="model"), _at(ckpt, "model.state_dict"))
    _same(torchkeep.load_state_dict(path, key="model.state_dict"), _at(ckpt, "model.state_dict"))


def test_ema_picked_by_key_in_every_verb(tmp_path):
    ckpt, *_ = _layouts()["main and ema"]
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    _same(torchkeep.load_state_dict(path, key="model_ema"), _at(ckpt, "model_ema"))
    report = load_into(TinyNet(), ckpt)
    assert report.unwrapped == "model" and any("key='model_ema'" in n for n in report.notes)
    assert load_into(TinyNet(), ckpt, key="model_ema").unwrapped == "model_ema"


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = self.a  # one module under two names: state_dict() lists it twice


def test_full_model_with_a_shared_submodule_lists_both_names(tmp_path):
    model = Shared()
    torch.save({"model": model, "epoch": 1}, tmp_path / "full.pt")
    got = torchkeep.load_state_dict(tmp_path / "full.pt")
    _same(got, model.state_dict())
    assert torchkeep.inspect(tmp_path / "full.pt").weights_location == "model"


# ------------------------------------------------------------------------------------------ ONNX


def _init(rng: np.random.Generator, name: str, shape: list[int], dtype=np.float32) -> TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def _f(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _branchy_model() -> onnx.ModelProto:
    """Weights in every place ONNX keeps them: main-graph initializers, Constant nodes of each value kind,
    If branches, a Loop body and an If nested inside that body."""
    rng = np.random.default_rng(0)
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "w_then"], ["y_then"])], "then", [], [_f("y_then", [2])],
                               [_init(rng, "w_then", [2])])
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["c_else"], value=numpy_helper.from_array(np.array([1.5, -2.0], np.float32))),
         helper.make_node("Add", ["x", "c_else"], ["y_else"])], "else", [], [_f("y_else", [2])])
    inner_then = helper.make_graph([helper.make_node("Add", ["v_in", "bias"], ["t1"])], "t", [], [_f("t1", [2])],
                                   [_init(rng, "bias", [2])])
    inner_else = helper.make_graph([helper.make_node("Identity", ["v_in"], ["t2"])], "e", [], [_f("t2", [2])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("If", ["cond_in"], ["inner"], name="inner_if", then_branch=inner_then,
                          else_branch=inner_else),
         helper.make_node("Add", ["inner", "step"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _f("v_in", [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _f("v_out", [2])],
        [_init(rng, "step", [2])])
    nodes = [
        helper.make_node("Constant", [], ["k_tensor"], value=_init(rng, "", [2, 2])),
        helper.make_node("Constant", [], ["k_f"], value_float=0.1),
        helper.make_node("Constant", [], ["k_fs"], value_floats=[1.0, -0.0, 3.25]),
        helper.make_node("Constant", [], ["k_i"], value_int=-7),
        helper.make_node("Constant", [], ["k_is"], value_ints=[1, -(2**40), 3]),
        helper.make_node("MatMul", ["x2", "k_tensor"], ["y2"]),
        helper.make_node("If", ["cond"], ["y1"], name="branch", then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trip", "cond", "y1"], ["y"], name="loop", body=body),
    ]
    graph = helper.make_graph(
        nodes, "main",
        [_f("x", [2]), _f("x2", [1, 2]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [_f("y", [2]), _f("y2", [1, 2])],
        [_init(rng, "top", [3, 2]), numpy_helper.from_array(np.array(3, np.int64), "trip"),
         numpy_helper.from_array(rng.standard_normal(4).astype(np.float16), "half"),
         helper.make_tensor("bf16", TensorProto.BFLOAT16, [3], [1.5, -2.0, 0.1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _onnx_expected(model: onnx.ModelProto, base_dir: str = "") -> dict[str, np.ndarray]:
    """What onnx itself returns for each stored tensor, under torchkeep's names (docs/inspect.md)."""
    out: dict[str, np.ndarray] = {}

    def walk(g: onnx.GraphProto, path: str) -> None:
        pre = f"{path}/" if path else ""
        for t in g.initializer:
            out[pre + t.name] = numpy_helper.to_array(t, base_dir)
        for i, node in enumerate(g.node):
            label = node.name or f"{node.op_type}#{i}"
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g, f"{pre}{label}/{a.name}")
                elif node.op_type == "Constant":
                    value = helper.get_attribute_value(a)
                    name = pre + node.output[0]
                    if a.name == "value":
                        out[name] = numpy_helper.to_array(value, base_dir)
                    else:
                        out[name] = np.array(value, dtype=np.float32 if "float" in a.name else np.int64)

    walk(model.graph, "")
    return out


def _same_as_onnx(got: dict[str, torch.Tensor], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for k, arr in want.items():
        assert list(got[k].shape) == list(arr.shape), k
        assert _bits(got[k]) == np.ascontiguousarray(arr).tobytes(), k


def test_onnx_weights_in_subgraphs_and_constants(tmp_path):
    model = _branchy_model()
    path = tmp_path / "branchy.onnx"
    onnx.save(model, path)
    want = _onnx_expected(model)
    assert {"loop/body/inner_if/then_branch/bias", "loop/body/step", "branch/then_branch/w_then",
            "branch/else_branch/c_else", "k_tensor", "k_f", "k_fs", "k_i", "k_is", "top", "trip"} <= set(want)

    r = torchkeep.inspect(path)
    names = [t.name for t in r.tensors]
    assert set(names) == set(want) and names[:4] == ["top", "trip", "half", "bf16"]  # the graph's own first
    onnx_d = r.details["onnx"]
    assert onnx_d["initializers"] == len(r.tensors) == len(want)
    assert onnx_d["stored_as"] == {"graph initializers": 4, "subgraph initializers": 3, "constants": 6}
    assert onnx_d["op_counts"]["Add"] == 3 and onnx_d["op_counts"]["If"] == 2  # subgraph nodes counted
    assert [v["name"] for v in onnx_d["inputs"]] == ["x", "x2", "cond"]
    assert {t.name: t.dtype for t in r.tensors}["bf16"] == "bfloat16"

    got = torchkeep.load_state_dict(path)
    assert list(got) == names
    _same_as_onnx(got, want)
    out = tmp_path / "w.safetensors"
    assert torchkeep.convert(path, out).tensors == len(want)
    _same(load_file(out), got)
    assert torchkeep.diff(path, out).identical and torchkeep.diff(path, got).identical


def test_onnx_with_all_weights_in_constant_nodes(tmp_path):
    # some exporters keep every weight in a Constant node: no initializer at all
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["fc.weight"], value=numpy_helper.from_array(w)),
             helper.make_node("Constant", [], ["fc.bias"], value=numpy_helper.from_array(b)),
             helper.make_node("MatMul", ["x", "fc.weight"], ["h"]), helper.make_node("Add", ["h", "fc.bias"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [_f("x", [1, 4])], [_f("y", [1, 3])]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "constants.onnx"
    onnx.save(model, path)
    r = torchkeep.inspect(path)
    assert [t.name for t in r.tensors] == ["fc.weight", "fc.bias"] and r.totals.tensors == 2
    got = torchkeep.load_state_dict(path)
    _same(got, {"fc.weight": torch.from_numpy(w), "fc.bias": torch.from_numpy(b)})
    torchkeep.convert(path, tmp_path / "w.safetensors")  # no key needed
    _same(load_file(tmp_path / "w.safetensors"), got)


def test_onnx_external_data_read_from_the_model_folder(tmp_path):
    model = _branchy_model()
    want = _onnx_expected(model)
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    stored = onnx.load(folder / "model.onnx", load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    got = torchkeep.load_state_dict(folder / "model.onnx")
    _same_as_onnx(got, want)
    assert [t.name for t in torchkeep.inspect(folder / "model.onnx").tensors] == list(got)


def _with_location(tmp_path: Path, location: str) -> Path:
    rng = np.random.default_rng(2)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [_f("x", [4])], [_f("y", [4])],
                              [_init(rng, "w", [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    for entry in model.graph.initializer[0].external_data:  # onnx.save wrote the entries on the model too
        if entry.key == "location":
            entry.value = location
    with open(folder / "m.onnx", "wb") as fh:
        fh.write(model.SerializeToString())
    return folder / "m.onnx"


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, kind):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 16)
    if kind == "absolute":
        location = os.fspath(secret)
    elif kind == "dotdot":
        location = "../secret.bin"
    else:
        (tmp_path / "model").mkdir()
        os.symlink(secret, tmp_path / "model" / "link.bin")
        location = "link.bin"
    path = _with_location(tmp_path, location)
    # the scan refuses such a file first; the loader refuses it on its own as well
    with pytest.raises((UnsafeFileError, InputError)) as exc:
        torchkeep.load_state_dict(path)
    assert location in str(exc.value) and "\n" not in str(exc.value)
    why = external_data_problem(path.parent, location)
    assert why and ("absolute" in why if kind == "absolute" else ".." in why if kind == "dotdot" else "symlink" in why)

    from torchkeep._onnx import read_onnx, read_onnx_tensors

    with pytest.raises(InputError, match=r"tensor 'w': external data location .* outside|steps out") as exc2:
        read_onnx_tensors(path, read_onnx(path), ["w"])
    assert "\n" not in str(exc2.value)


def test_onnx_external_data_truncated(tmp_path):
    path = _with_location(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(b"\x00" * 4)  # 4 of the 16 bytes
    with pytest.raises(InputError, match=r"runs past the end of w\.bin"):
        torchkeep.load_state_dict(path)


# ----------------------------------------------------------------------------------- TorchScript


@torch.jit.script
class Box:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def get(self) -> torch.Tensor:
        return self.t


class Scripted(nn.Module):
    """Parameters, a persistent and a non-persistent buffer, a repeated submodule class (TorchScript mangles
    its copies), and tensors that are not weights: an empty state tensor, a hidden state, a list, a dict and
    a TorchScript class object holding one."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(2))
        self.register_buffer("running", torch.randn(2))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.layers = nn.ModuleList([nn.Linear(3, 2), nn.Linear(2, 2), nn.Linear(2, 2, bias=False)])
        self.bn = nn.BatchNorm1d(2)
        self.state = torch.zeros(0)  # plain attributes: not parameters, not buffers
        self.hidden = torch.randn(1, 2)
        self.history: list[torch.Tensor] = [torch.ones(1)]
        self.table: dict[str, torch.Tensor] = {"a": torch.ones(3)}
        self.box = Box(torch.arange(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        extra = self.state.sum() + self.history[0] + self.table["a"].sum() + self.box.get().sum()
        return self.bn(x) * self.scale + self.running + self.scratch + self.hidden + extra

    @torch.jit.export
    def reset(self) -> None:
        self.hidden = torch.zeros(1, 2)


def test_torchscript_weights_are_its_state_dict(tmp_path, cli):
    torch.manual_seed(0)
    path = tmp_path / "scripted.pt"
    torch.jit.script(Scripted().eval()).save(str(path))
    loaded = torch.jit.load(str(path))
    want = dict(loaded.state_dict())
    # TorchScript keeps no persistence flag: torch lists the non-persistent buffer too
    assert "scratch" in want and "state" not in want and "hidden" not in want

    r = torchkeep.inspect(path)
    assert r.kind == "torchscript" and r.totals.roles == "known"
    assert [t.name for t in r.tensors] == list(want)
    assert {t.name for t in r.tensors if t.role == "parameter"} == {n for n, _ in loaded.named_parameters()}
    assert {t.name for t in r.tensors if t.role == "buffer"} == {n for n, _ in loaded.named_buffers()}
    attrs = {t.name: t.shape for t in r.attributes}
    assert attrs == {"state": [0], "hidden": [1, 2], "history.0": [1], "table.a": [3], "box.t": [4]}
    assert all(t.role == "attribute" for t in r.attributes)
    assert any("neither parameters nor buffers" in n and "hidden" in n for n in r.notes)
    methods = r.details["torchscript"]["methods"]
    assert methods["Scripted"] == ["forward", "reset"] and methods["Linear"] == ["forward"]
    assert methods["Box"] == ["__init__", "get"]
    assert all(len(ms) == len(set(ms)) for ms in methods.values())

    got = torchkeep.load_state_dict(path)
    _same(got, want)
    out = tmp_path / "w.safetensors"
    assert torchkeep.convert(path, out).tensors == len(want)
    _same(load_file(out), want)
    assert torchkeep.diff(path, want).identical and torchkeep.diff(path, out).identical
    code, stdout, _ = cli("inspect", path, "--json")
    assert code == 0 and [a["name"] for a in json.loads(stdout)["attributes"]] == list(attrs)


def test_traced_module_weights_are_its_state_dict(tmp_path):
    torch.manual_seed(0)
    model = tiny_model().eval()
    path = tmp_path / "traced.pt"
    torch.jit.trace(model, torch.randn(1, 3, 6, 6)).save(str(path))
    want = dict(torch.jit.load(str(path)).state_dict())
    _same(torchkeep.load_state_dict(path), want)
    r = torchkeep.inspect(path)
    assert [t.name for t in r.tensors] == list(want) and not r.attributes
