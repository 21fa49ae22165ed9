"""Shared test fixtures.

- ``cli``: run the torchkeep CLI in-process, returning (exit_code, stdout, stderr).
- torch is limited to one thread per test process (the suite runs under pytest-xdist on 2 cores).
- ``no_markers``: every test checks at the end that no malicious payload ran (marker files).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    from torchkeep._cli.main import run

    def _run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run([os.fspath(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


MARKER_NAME = "PWNED_MARKER"


@pytest.fixture(autouse=True)
def _no_payload_ran(tmp_path: Path):
    """Malicious test files write ``tmp_path/PWNED_MARKER`` (or a file containing that name) if they run."""
    yield
    hits = [p for p in tmp_path.rglob(f"*{MARKER_NAME}*")]
    assert not hits, f"a malicious payload ran: {hits}"
