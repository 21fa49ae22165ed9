"""Renames: the user's ``REGEX=>REPL`` rules, applied to a source's key names before matching.

``renames`` is ``{"REGEX": "REPL"}``, a list of ``"REGEX=>REPL"`` strings or ``(regex, repl)`` pairs, or a
function ``str -> str``. Captured groups work (``\\1``, ``\\g<1>``, ``$1``); two keys landing on one name is an
error; a rule that matches nothing is noted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from torchkeep.errors import CompatibilityError, UsageError

__all__ = ["RenameSpec", "apply_renames", "parse_rename", "rename_rules"]

RenameSpec = Mapping[str, str] | Sequence[str | tuple[str, str]] | Callable[[str], str] | str | None


def parse_rename(spec: str) -> tuple[str, str]:
    """Parse ``'REGEX=>REPL'`` (the CLI's ``--rename``) into ``(regex, replacement)``.

    ``$1`` in the replacement is accepted as well as Python's ``\\1`` / ``\\g<1>``.

    Args:
        spec: the rule text.

    Returns:
        ``(pattern, replacement)`` with the replacement in Python ``re.sub`` syntax.
    """
    if "=>" not in spec:
        raise UsageError(
            f"rename rule {spec!r} has no '=>'",
            fix="write it as 'REGEX=>REPL', e.g. --rename '^head\\.=>fc.' or --rename 'layer(\\d)\\.=>block\\1.'",
        )
    pattern, repl = spec.split("=>", 1)
    if not pattern:
        raise UsageError(f"rename rule {spec!r} has an empty pattern", fix="write it as 'REGEX=>REPL'")
    return pattern, re.sub(r"\$(\d+)", r"\\g<\1>", repl)


def rename_rules(renames: RenameSpec) -> list[tuple[str, Callable[[str], str]]]:
    """``renames`` as ``[(label, function)]``, every pattern and replacement checked before any is applied."""
    if renames is None:
        return []
    if callable(renames):
        return [("<function>", renames)]
    items: list[tuple[str, str]]
    if isinstance(renames, str):
        items = [parse_rename(renames)]
    elif isinstance(renames, Mapping):
        items = list(renames.items())
    else:
        items = [parse_rename(r) if isinstance(r, str) else (r[0], r[1]) for r in renames]
    rules: list[tuple[str, Callable[[str], str]]] = []
    for pattern, repl in items:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"rename pattern {pattern!r} is not a valid regular expression ({exc})") from None
        repl = re.sub(r"\$(\d+)", r"\\g<\1>", repl)
        try:
            rx.sub(repl, "")  # compiles the replacement: a bad group reference or escape fails here, not mid-plan
        except (re.error, IndexError) as exc:
            raise UsageError(
                f"rename replacement {repl!r} is invalid for the pattern {pattern!r} ({exc})",
                fix=f"{pattern!r} has {rx.groups} group(s): refer to them as \\1 or $1",
            ) from None

        def fn(key: str, rx: re.Pattern[str] = rx, repl: str = repl) -> str:
            return rx.sub(repl, key)

        rules.append((f"{pattern}=>{repl}", fn))
    return rules


def apply_renames(keys: list[str], renames: RenameSpec, notes: list[str]) -> dict[str, str]:
    """Apply the rules in the order given: ``{new name: source key}`` in the source's order.

    Raises:
        CompatibilityError: two keys land on one name.
    """
    names: dict[str, str] = {k: k for k in keys}  # current name -> source key
    for label, fn in rename_rules(renames):
        new_names: dict[str, str] = {}
        hits = 0
        for cur, orig in names.items():
            new = fn(cur)
            hits += new != cur
            if new in new_names:
                raise CompatibilityError(
                    f"rename {label!r} maps both {new_names[new]!r} and {orig!r} to {new!r}",
                    fix="make the pattern more specific (anchor it with ^ and escape dots: '^head\\.')",
                )
            new_names[new] = orig
        if not hits:
            notes.append(f"rename {label!r} matched no key")
        names = new_names
    return names
