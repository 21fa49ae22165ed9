"""A renamed keyword: the old spelling warns and still works; both spellings at once is a usage error."""

from __future__ import annotations

import warnings

import pytest

from torchkeep._compat import renamed_kwarg
from torchkeep.errors import UsageError


def _verb(*, renames: object = None, rename: object = None) -> object:
    return renamed_kwarg("rename", "renames", rename, renames, "verb")


def test_new_name_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _verb(renames=["a=>b"]) == ["a=>b"]
        assert _verb() is None


def test_old_name_warns_at_the_callers_line_and_is_used() -> None:
    with pytest.warns(DeprecationWarning, match=r"verb\(rename=\.\.\.\) is deprecated.*verb\(renames=") as rec:
        assert _verb(rename=["a=>b"]) == ["a=>b"]
    assert rec[0].filename == __file__


def test_both_names_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"both renames= and its old name rename="):
        _verb(renames=["x=>y"], rename=["a=>b"])


def test_a_non_none_default_counts_as_not_given() -> None:
    with pytest.warns(DeprecationWarning):
        assert renamed_kwarg("format", "fmt", "onnx", "auto", "convert", default="auto") == "onnx"
    with pytest.raises(UsageError):
        renamed_kwarg("format", "fmt", "onnx", "torchscript", "convert", default="auto")
