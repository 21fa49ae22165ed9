"""The layers a set of weights determines, and an ``nn.Module`` skeleton that loads them.

For weights of no known architecture (:func:`torchkeep.identify`): ``layers_of`` reads the modules off the
tensor names and shapes (``Linear 784→512``, ``Conv2d 3×3 32→64, groups 32``, ``BatchNorm 64``), and
``skeleton_of`` writes the Python source of a plain feed-forward stack that loads them with ``strict=True``.
Nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Layer", "Shape", "layers_of", "skeleton_of"]

#: a tensor's shape as the file gives it
Shape = tuple[int, ...]


@dataclass
class Layer:
    """One module the weights determine: ``Linear 784→512``, ``Conv2d 3×3 32→64, groups 32``, ``BatchNorm 64``."""

    name: str
    kind: str
    description: str
    shapes: dict[str, list[int]]


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layers_of(files: Mapping[str, Shape], ordered: bool = True) -> list[Layer]:
    """The modules the weights determine, in file order (natural name order when the file keeps none)."""
    modules: dict[str, dict[str, Shape]] = {}
    for name, shape in files.items():
        path, _, leaf = name.rpartition(".")
        modules.setdefault(path, {})[leaf] = shape
    order = list(modules) if ordered else sorted(modules, key=_natural)
    out: list[Layer] = []
    prev_out: int | None = None
    for path in order:
        leaves = modules[path]
        w, b = leaves.get("weight"), leaves.get("bias")
        shapes = {k: list(v) for k, v in leaves.items()}
        bias = "" if b is not None else ", no bias"
        if "running_mean" in leaves or "running_var" in leaves:
            n = (leaves.get("running_mean") or leaves.get("running_var") or (0,))[0]
            out.append(Layer(path, "BatchNorm", f"BatchNorm {n}" + ("" if w is not None else ", not affine"), shapes))
        elif w is not None and len(w) == 2 and b is None and re.search(r"emb", path.rpartition(".")[2], re.I):
            out.append(Layer(path, "Embedding", f"Embedding {w[0]}×{w[1]}", shapes))
        elif w is not None and len(w) == 2:
            out.append(Layer(path, "Linear", f"Linear {w[1]}→{w[0]}{bias}", shapes))
            prev_out = w[0]
        elif w is not None and len(w) in (3, 4, 5):
            per_group = w[1]
            groups = (prev_out // per_group if prev_out and per_group and prev_out != per_group
                      and prev_out % per_group == 0 else 1)
            kernel = "×".join(str(k) for k in w[2:])
            extra = f", groups {groups}" if groups > 1 else ""
            out.append(Layer(path, f"Conv{len(w) - 2}d", f"Conv{len(w) - 2}d {kernel} {per_group * groups}→{w[0]}"
                             f"{extra}{bias}", shapes))
            prev_out = w[0]
        elif w is not None and len(w) == 1 and set(leaves) <= {"weight", "bias"}:
            out.append(Layer(path, "LayerNorm", f"LayerNorm {w[0]} (or GroupNorm: the weights look the same)", shapes))
        else:
            desc = ", ".join(f"{k} {list(v)}" for k, v in leaves.items())
            out.append(Layer(path, "tensors", desc, shapes))
    return out


_STANDARD_LEAVES = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _ctor(layer: Layer, prev_kind: str | None) -> str | None:
    s = layer.shapes
    w, has_bias = s.get("weight"), "bias" in s
    nobias = "" if has_bias else ", bias=False"
    if layer.kind == "Linear" and w:
        return f"nn.Linear({w[1]}, {w[0]}{nobias})"
    if layer.kind.startswith("Conv") and w:
        m = re.search(r"(\d+)→", layer.description)
        cin = int(m.group(1)) if m else w[1]
        groups = cin // w[1] if w[1] else 1
        k = w[2] if len(set(w[2:])) == 1 else tuple(w[2:])
        g = f", groups={groups}" if groups > 1 else ""
        return f"nn.{layer.kind}({cin}, {w[0]}, kernel_size={k}{g}{nobias})  # stride, padding: not in the weights"
    if layer.kind == "BatchNorm":
        n = (s.get("running_mean") or s.get("running_var") or [0])[0]
        dim = "1d" if prev_kind in (None, "Linear") else ("3d" if prev_kind == "Conv3d" else
                                                           "1d" if prev_kind == "Conv1d" else "2d")
        affine = "" if w else ", affine=False"
        return f"nn.BatchNorm{dim}({n}{affine})"
    if layer.kind == "LayerNorm" and w:
        return f"nn.LayerNorm({w[0]}{'' if has_bias else ', bias=False'})"
    return None


Unit = tuple[str, dict[int, Layer] | Layer]


def _units(layers: list[Layer]) -> list[Unit] | None:
    """Top-level layers (``fc1``) and ``nn.Sequential`` blocks (``features.0``), or one Sequential at the root
    (``0``), in order; None when the weights are not such a stack."""
    units: list[Unit] = []
    seqs: dict[str, dict[int, Layer]] = {}
    for ly in layers:
        parts = ly.name.split(".")
        if len(parts) == 1 and parts[0].isidentifier():
            units.append((parts[0], ly))
        elif (len(parts) == 2 and parts[0].isidentifier() and parts[1].isdigit()) or (len(parts) == 1 and parts[0].isdigit()):
            owner = parts[0] if len(parts) == 2 else ""
            if owner not in seqs:
                seqs[owner] = {}
                units.append((owner, seqs[owner]))
            seqs[owner][int(parts[-1])] = ly
        else:
            return None
    if "" in seqs and len(units) > 1:
        return None
    return units


class _Writer:
    """Constructor lines in module order; remembers the kind of the last layer that is not a norm (a
    BatchNorm's dimension, and where a flatten goes, follow it)."""

    def __init__(self) -> None:
        self.prev_kind: str | None = None

    def build(self, ly: Layer) -> str | None:
        c = _ctor(ly, self.prev_kind)
        if c is not None and ly.kind != "BatchNorm" and ly.kind != "LayerNorm":
            self.prev_kind = ly.kind
        return c

    def sequential(self, block: dict[int, Layer], indent: str) -> list[str] | None:
        """The lines inside ``nn.Sequential(...)``: a placeholder for each index that holds no weights."""
        lines: list[str] = []
        idx = sorted(block)
        for i in range(idx[-1] + 1):
            if i in block:
                c = self.build(block[i])
                if c is None:
                    return None
                code, _, comment = c.partition("  # ")
                lines.append(f"{indent}{code},{'  # ' + comment if comment else ''}")
                continue
            j = next((j for j in idx if j > i), None)
            # the last empty slot between a convolution and a Linear flattens (or the Linear would fail)
            flatten = (j is not None and j == i + 1 and block[j].kind == "Linear"
                       and (self.prev_kind or "").startswith("Conv"))
            what = "nn.Flatten()" if flatten else "nn.Identity()"
            why = ("flattens for the Linear after it (pooling before it? not known from the weights)" if flatten
                   else "an activation, pooling, dropout or flatten? not known from the weights")
            lines.append(f"{indent}{what},  # {i}: holds no weights: {why}")
        return lines

    def module(self, units: list[Unit]) -> tuple[list[str], list[str]] | None:
        """``__init__`` and ``forward`` of an ``nn.Module`` calling the units one after the other."""
        init = ["    def __init__(self):", "        super().__init__()"]
        forward = ["    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
        last_kind: str | None = None
        for i, (name, unit) in enumerate(units):
            if isinstance(unit, Layer):
                first_kind = unit.kind
                c = self.build(unit)
                if c is None:
                    return None
                init.append(f"        self.{name} = {c}")
            else:
                first_kind = unit[min(unit)].kind
                body = self.sequential(unit, "            ")
                if body is None:
                    return None
                init += [f"        self.{name} = nn.Sequential(", *body, "        )"]
            if first_kind == "Linear" and (last_kind or "").startswith("Conv"):
                forward.append("        x = torch.flatten(x, 1)  # pooling before it? not known from the weights")
            elif i and last_kind is not None:
                forward.append("        # an activation here? not known from the weights")
            forward.append(f"        x = self.{name}(x)")
            last_kind = self.prev_kind
        forward.append("        return x")
        return init, forward


_IMPORTS = ["import torch", "from torch import nn", "", ""]


def skeleton_of(layers: list[Layer], label: str = "the file") -> str | None:
    """Python source of an ``nn.Module`` whose ``state_dict`` has exactly the names and shapes of ``layers``
    (:func:`layers_of`), when the weights are a plain feed-forward stack (top-level layers and
    ``nn.Sequential`` blocks of them); None otherwise."""
    if not layers or any(set(ly.shapes) - _STANDARD_LEAVES for ly in layers):
        return None
    units = _units(layers)
    if units is None:
        return None
    doc = (f'    """Rebuilt by `torchkeep identify` from the names and shapes of {label}: it loads them with\n'
           '    strict=True. Activations, pooling, dropout, strides and padding are not stored in weights:\n'
           '    check every line marked with a question mark against the code that trained the model."""')
    writer = _Writer()
    if units[0][0] == "":  # one Sequential at the root
        root = units[0][1]
        assert not isinstance(root, Layer)
        body = writer.sequential(root, "            ")
        if body is None:
            return None
        return "\n".join([*_IMPORTS, "class Net(nn.Sequential):", doc, "", "    def __init__(self):",
                          "        super().__init__(", *body, "        )", ""])
    parts = writer.module(units)
    if parts is None:
        return None
    init, forward = parts
    return "\n".join([*_IMPORTS, "class Net(nn.Module):", doc, "", *init, "", *forward, ""])
