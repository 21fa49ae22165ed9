"""Keyword arguments that were renamed so that every verb spells a parameter the same way.

The verbs agree on ``out`` (the file written), ``fmt`` (its format) and ``renames`` (key renames). An old
spelling keeps working for a while: it warns (``DeprecationWarning``, naming the new one) and is used as if
the new one had been given. Giving both is a usage error, never a silent choice. Imports nothing of torchkeep
but ``errors``, so any verb can use it.
"""

from __future__ import annotations

import warnings
from typing import Any

from torchkeep.errors import UsageError

__all__ = ["renamed_kwarg"]


def renamed_kwarg(
    old: str, new: str, value_old: Any, value_new: Any, func_name: str, *, default: Any = None
) -> Any:
    """The value of keyword ``new`` when the caller may still spell it ``old``.

    Call it first thing in a function that accepts both (the old one defaulting to ``None``)::

        def load_into(model, source, *, renames=None, rename=None):
            renames = renamed_kwarg("rename", "renames", rename, renames, "load_into")

    Args:
        old: the deprecated keyword's name.
        new: the keyword's name now.
        value_old: what the caller passed as ``old`` (``None``: not passed).
        value_new: what the caller passed as ``new``.
        func_name: the public function, for the messages (``"load_into"``, ``"convert"``).
        default: ``new``'s default: ``value_new`` equal to it counts as not passed.

    Returns:
        ``value_old`` when only the old keyword was given (with a ``DeprecationWarning`` pointing at the
        caller's line), else ``value_new``.

    Raises:
        UsageError: both keywords were given.
    """
    if value_old is None:
        return value_new
    if not _is_default(value_new, default):
        raise UsageError(
            f"{func_name}() got both {new}= and its old name {old}=",
            fix=f"pass only {new}=... ({old}= is deprecated)",
        )
    # stacklevel 3: this function, the verb that called it, then the user's line
    warnings.warn(
        f"{func_name}({old}=...) is deprecated and will be removed: use {func_name}({new}=...)",
        DeprecationWarning,
        stacklevel=3,
    )
    return value_old


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    try:
        return bool(value == default)
    except Exception:  # a value whose == is not a plain bool (an array): it was passed
        return False
