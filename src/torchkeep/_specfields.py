"""Checks of the model spec's JSON fields (:mod:`torchkeep._spec`): each failure is one ``InputError`` naming
the file and the field, with the fix. No torch."""

from __future__ import annotations

import os
from typing import Any, NoReturn

from torchkeep.errors import InputError

__all__ = ["Validator"]


class Validator:
    """Field checks that raise one InputError naming the file and the field."""

    def __init__(self, path: str | os.PathLike[str] | None):
        self.path = path

    def fail(self, what: str) -> NoReturn:
        raise InputError(
            f"invalid model spec: {what}",
            path=self.path,
            fix="re-save the model with torchkeep.save(model, path, spec) (see docs/spec.md)",
        )

    def str_(self, data: dict, key: str, *, required: bool = False) -> str | None:
        val = data.get(key)
        if val is None and not required:
            return None
        if not isinstance(val, str) or (required and not val):
            self.fail(f"{key} must be a string (got {val!r})")
        return val

    def int_(self, data: dict, key: str) -> int | None:
        val = data.get(key)
        if val is None:
            return None
        if not isinstance(val, int) or isinstance(val, bool) or val < 0:
            self.fail(f"{key} must be a non-negative integer (got {val!r})")
        return val

    def dict_(self, data: dict, key: str) -> dict[str, Any]:
        val = data.get(key)
        if val is None:
            return {}
        if not isinstance(val, dict):
            self.fail(f"{key} must be an object (got {type(val).__name__})")
        return dict(val)

    def str_list(self, data: dict, name: str, key: str) -> list[str]:
        val = data.get(key)
        if val is None:
            return []
        if not (isinstance(val, list) and all(isinstance(x, str) for x in val)):
            self.fail(f"{name} must be a list of strings (got {val!r})")
        return list(val)

    def int_list(self, data: dict, name: str, key: str) -> list[int] | None:
        val = data.get(key)
        if val is None:
            return None
        if isinstance(val, int) and not isinstance(val, bool):
            val = [val]
        if not (
            isinstance(val, list)
            and len(val) in (1, 2)
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in val)
        ):
            self.fail(f"{name} must be [N] or [H, W] positive integers (got {val!r})")
        return list(val)

    def float_list(self, data: dict, name: str, key: str) -> list[float] | None:
        val = data.get(key)
        if val is None:
            return None
        if not (
            isinstance(val, list)
            and val
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in val)
        ):
            self.fail(f"{name} must be a list of numbers (got {val!r})")
        return [float(x) for x in val]
