"""The one check before a user's file is opened: scan it, and refuse what the scan did not pass.

Every place that opens a user's model file calls :func:`check_file` first, with one of two policies:

- ``runs_code=True``: the loader runs code from the file — ``torch.jit.load`` (TorchScript methods,
  ``__setstate__`` at load), ``torch.export.load``, ``torch.load(weights_only=False)``,
  ``numpy.load(allow_pickle=True)``, ``onnxruntime.InferenceSession``. Only a ``safe`` verdict passes,
  unless the caller passed ``trust=True`` (CLI ``--trust``): the user vouches for the file.
- ``runs_code=False``: torchkeep's own restricted reader (no code runs: unknown classes stay inert
  placeholders) or ``torch.load(weights_only=True)``. A ``dangerous`` file is refused whatever ``trust``
  says — a file built to run code is no place to take weights from; ``custom-code`` passes (its classes
  are never imported) and unreadable files fail in the reader with its own message.

Refusals are one-line errors naming the file, what the scan found and the fix: :class:`UnsafeFileError`
(exit 2) for ``dangerous``, :class:`UntrustedCodeError` (exit 1) for ``custom-code``, :class:`InputError`
(exit 3) for a file the scan could not read.
"""

from __future__ import annotations

import os

from torchkeep._scan import scan
from torchkeep._scan_report import Finding, ScanReport
from torchkeep.errors import InputError, UnsafeFileError, UntrustedCodeError

__all__ = ["check_file"]


def _reasons(findings: list[Finding], limit: int = 3) -> str:
    text = "; ".join(f"{f.target} ({f.why})" if f.module else f.why for f in findings[:limit])
    if len(findings) > limit:
        text += f"; and {len(findings) - limit} more"
    return text


def check_file(path: str | os.PathLike[str], *, trust: bool = False, runs_code: bool = True) -> ScanReport:
    """Scan ``path`` and refuse it unless the policy lets it through (see the module docstring).

    Args:
        path: the file about to be opened.
        trust: the user trusts the file (``--trust``): with ``runs_code``, any verdict passes.
        runs_code: whether the loader that follows runs code from the file.

    Returns:
        The scan report of a file that may be opened.

    Raises:
        UnsafeFileError: the scan found code execution (``dangerous``).
        UntrustedCodeError: ``runs_code`` and the file imports classes (``custom-code``), without ``trust``.
        InputError: ``runs_code`` and the scan could not read the file, without ``trust``.
    """
    report = scan(path)
    verdict = report.verdict
    if verdict == "safe" or (trust and runs_code):
        return report
    scan_cmd = f"`torchkeep scan {os.fspath(path)}` lists every finding"
    trust_fix = f"if you trust the file's source, pass --trust (trust=True); {scan_cmd}"
    if verdict == "dangerous":
        raise UnsafeFileError(
            f"refused: the file can execute code when loaded: {_reasons(report.dangerous) or 'dangerous pickle'}",
            path=path,
            fix=trust_fix if runs_code else f"do not load it; {scan_cmd}",
            findings=list(report.findings),
        )
    if not runs_code:
        return report
    if verdict == "custom-code":
        classes = report.custom_classes
        raise UntrustedCodeError(
            f"refused: loading it would import and run {', '.join(classes[:5])}"
            + (f" and {len(classes) - 5} more" if len(classes) > 5 else ""),
            path=path,
            fix=trust_fix,
            classes=classes,
        )
    raise InputError(
        f"refused: the scan could not read the whole file, so what loading it runs is unknown ({report.error})",
        path=path,
        fix=f"re-save or re-download it; {trust_fix}",
    )
