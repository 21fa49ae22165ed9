"""State_dict key names: wrapper prefixes, and long lists collapsed for people.

- ``prefix_candidates`` / ``apply_prefix`` / ``map_keys``: the prefixes wrappers add (``module.`` from DDP,
  ``_orig_mod.`` from torch.compile, ``model.`` from Lightning) and how keys move when one is stripped or added;
  the matching engine and the error explanations use the same rule.
- ``collapse_keys``: ``layer{1..4}.{0,1}.conv1.weight`` instead of eight lines (reports and messages).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

__all__ = [
    "ALWAYS_WRAPPERS", "KNOWN_PREFIX_SEGMENTS", "WRAPPER_PREFIXES", "apply_prefix", "collapse_keys", "map_keys",
    "prefix_candidates", "wrapper_prefix",
]

#: the prefixes wrappers add to every key of a state_dict, and who adds them
WRAPPER_PREFIXES: dict[str, str] = {
    "module.": "torch.nn.DataParallel / DistributedDataParallel",
    "_orig_mod.": "torch.compile",
    "model.": "PyTorch Lightning, or a model that keeps its layers in a `model` attribute",
}
#: the wrapper prefixes that are never a real attribute: stripped without asking (``model.`` may be
#: ``self.model = nn.Sequential(...)``, so it is stripped only when that makes keys match)
ALWAYS_WRAPPERS: tuple[str, ...] = ("module.", "_orig_mod.")
#: the same prefixes as key segments
KNOWN_PREFIX_SEGMENTS: tuple[str, ...] = tuple(p.rstrip(".") for p in WRAPPER_PREFIXES)

_DIGITS = re.compile(r"\d+")


def _fmt_numbers(values: Iterable[str]) -> str:
    vals = sorted(set(values), key=lambda v: (int(v), v))
    if len(vals) == 1:
        return vals[0]
    ints = [int(v) for v in vals]
    # a range only when the numbers are written plainly ("01".."03" would not read back the same)
    if len(vals) >= 3 and ints == list(range(ints[0], ints[-1] + 1)) and all(v == str(int(v)) for v in vals):
        return "{" + f"{vals[0]}..{vals[-1]}" + "}"
    return "{" + ",".join(vals) + "}"


def _collapse_numeric(keys: list[str]) -> list[str]:
    # Group keys that differ only in their numbers ("layer1.0.conv1.weight" ~ "layer{}.{}.conv1.weight").
    groups: dict[str, list[tuple[str, ...]]] = {}
    for k in keys:
        template = _DIGITS.sub("\x00", k)
        groups.setdefault(template, []).append(tuple(_DIGITS.findall(k)))
    out: list[str] = []
    for template, nums in groups.items():
        out.extend(_render_group(template, nums))
    return out


def _render_group(template: str, nums: list[tuple[str, ...]]) -> list[str]:
    # template: the key with each number replaced by "\x00"; nums: the numbers of each key of the group
    if not nums[0]:
        return [template]
    sets = [sorted(set(p), key=lambda v: (int(v), v)) for p in zip(*nums)]
    parts = template.split("\x00")
    if math.prod(len(s) for s in sets) == len(set(nums)):
        # The group is a full product of its number sets: one pattern says it truthfully.
        text = parts[0]
        for i, s in enumerate(sets):
            text += _fmt_numbers(s) + parts[i + 1]
        return [text]
    # Not a full product (layer1 has 2 blocks, layer3 has 6): split on the first varying position.
    pos = next(i for i, s in enumerate(sets) if len(s) > 1)
    out: list[str] = []
    for value in sets[pos]:
        sub = [n[:pos] + n[pos + 1 :] for n in nums if n[pos] == value]
        filled = "\x00".join(parts[: pos + 1]) + value + "\x00".join(parts[pos + 1 :])
        out.extend(_render_group(filled, sub))
    return out


def collapse_keys(keys: Iterable[str]) -> list[str]:
    """Collapse repeated blocks of state_dict keys for display, truthfully.

    ``layer1.0.conv1.weight`` ... ``layer4.1.conv1.weight`` becomes ``layer{1..4}.{0,1}.conv1.weight``, and
    ``fc.weight`` + ``fc.bias`` becomes ``fc.{weight,bias}``. A pattern is only printed when every key it
    stands for is present.

    Args:
        keys: state_dict keys, in any order.

    Returns:
        Patterns in order of first appearance.
    """
    numeric = _collapse_numeric(list(dict.fromkeys(keys)))
    # Second pass: siblings that differ only in their last segment (weight/bias/running_mean...).
    by_parent: dict[tuple[str, bool], list[str]] = {}
    for pattern in numeric:
        parent, _, leaf = pattern.rpartition(".")
        if "{" in leaf or not parent:  # a pattern already, or no parent: kept as it is
            by_parent.setdefault((pattern, False), []).append("")
        else:
            by_parent.setdefault((parent, True), []).append(leaf)
    out: list[str] = []
    for (parent, grouped), leaves in by_parent.items():
        if not grouped:
            out.append(parent)
        elif len(leaves) == 1:
            out.append(f"{parent}.{leaves[0]}")
        else:
            out.append(parent + ".{" + ",".join(leaves) + "}")
    return out


def prefix_candidates(keys: Iterable[str], generic: bool = False) -> set[str]:
    # Prefixes made of known wrapper segments ("module.", "module._orig_mod.", "model."), plus (generic) the
    # first segment shared by at least half the keys ("backbone.", "encoder.") so that any wrapper can be
    # stripped when it helps. Only ever *stripped*: adding an arbitrary segment would be a rename in disguise.
    cands: set[str] = {""}
    first: dict[str, int] = {}
    total = 0
    for k in keys:
        total += 1
        parts = k.split(".")
        i = 0
        while i < len(parts) - 1 and parts[i] in KNOWN_PREFIX_SEGMENTS:
            i += 1
            cands.add(".".join(parts[:i]) + ".")
        if len(parts) > 1:
            first[parts[0] + "."] = first.get(parts[0] + ".", 0) + 1
    for p, n in first.items():
        if generic and n * 2 >= total:
            cands.add(p)
    return cands


def wrapper_prefix(names: Iterable[str], known: Iterable[str] = tuple(WRAPPER_PREFIXES)) -> str:
    """The chain of ``known`` wrapper prefixes every name shares (``module.``, ``module._orig_mod.``), or ``""``."""
    known = tuple(known)
    prefix = ""
    rest = list(names)
    while rest:
        p = next((k for k in known if all(n.startswith(k) for n in rest)), None)
        if p is None:
            break
        prefix += p
        rest = [n[len(p):] for n in rest]
    return prefix


def apply_prefix(key: str, strip: str, add: str) -> str:
    if strip:
        if not key.startswith(strip):
            return key
        key = key[len(strip) :]
    return add + key


def map_keys(names: list[str], strip: str, add: str) -> dict[str, str] | None:
    """new name -> current name, or None when two keys would collide."""
    out: dict[str, str] = {}
    for n in names:
        new = apply_prefix(n, strip, add)
        if new in out:
            return None
        out[new] = n
    return out
