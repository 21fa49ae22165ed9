"""Errors raised by torchkeep.

Every error torchkeep raises on purpose is a :class:`TorchkeepError`. Its message is one line that
names the file, what is wrong and, where there is one, the fix. The CLI prints that line and exits
with the error's ``exit_code``; tracebacks appear only with ``--debug``.

Hierarchy::

    TorchkeepError                 (exit 4)  base class; an operation could not be completed
    ├── UsageError                 (exit 64) bad arguments or option combinations
    ├── InputError                 (exit 3)  a file is missing, unreadable, malformed or of unknown format
    │   └── UnknownFormatError     (exit 3)  the bytes match no format torchkeep reads
    ├── UnsafeFileError            (exit 2)  refused: the file can execute code (scan verdict ``dangerous``)
    ├── UntrustedCodeError         (exit 1)  refused: loading would import/run classes; pass ``trust=True``
    ├── CompatibilityError         (exit 4)  weights do not fit a model (shapes, keys, architecture); when
    │                                        ``load_into`` / ``adapt`` refused, ``report`` is the LoadReport
    ├── ParityError                (exit 4)  an export's outputs differ from the model's; ``result`` has the report
    └── CheckpointWriteError       (exit 4)  a checkpoint or model file could not be written; the previous is intact

    TrainingInterrupted (a KeyboardInterrupt, exit 130): Ctrl-C during ``train``; a resumable checkpoint was
    written first and ``message`` says how to resume.

    TorchkeepWarning (a UserWarning): works, but probably not as meant (freezing a backbone that has no
    pretrained weights); the CLI prints it as ``torchkeep: warning: ...``.

Exit codes of the CLI: 0 success; 1 a "negative" result that scripts test for (``scan`` found
custom code, ``diff`` found differences, ``predict`` had unreadable inputs); 2 dangerous file;
3 unreadable input; 4 operation failed; 64 usage error; 130 interrupted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the results errors carry; errors.py itself imports nothing of torchkeep
    from torchkeep._export import ExportResult
    from torchkeep._match import LoadReport

__all__ = [
    "CheckpointWriteError",
    "CompatibilityError",
    "InputError",
    "ParityError",
    "TorchkeepError",
    "TorchkeepWarning",
    "TrainingInterrupted",
    "UnknownFormatError",
    "UnsafeFileError",
    "UntrustedCodeError",
    "UsageError",
]


class TorchkeepError(Exception):
    """Base class of every error torchkeep raises on purpose.

    Args:
        what: what is wrong, one sentence without the file name.
        path: the file concerned, if any; the message starts with it.
        fix: how to fix it (a flag, a call, an install command), if there is one.
    """

    exit_code = 4

    def __init__(self, what: str, *, path: str | os.PathLike[str] | None = None, fix: str | None = None):
        self.what = what
        self.path = os.fspath(path) if path is not None else None
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        msg = f"{self.path}: {self.what}" if self.path else self.what
        if self.fix:
            end = "" if msg.endswith(("?", "!", ".")) else "."
            msg = f"{msg}{end} Fix: {self.fix}"
        return msg


class UsageError(TorchkeepError):
    """Arguments that cannot work together, or a value out of range."""

    exit_code = 64


class InputError(TorchkeepError):
    """A file is missing, unreadable, truncated or malformed."""

    exit_code = 3


class UnknownFormatError(InputError):
    """The bytes of a file match no format torchkeep reads."""


class UnsafeFileError(TorchkeepError):
    """Refused to load a file whose pickle can execute code; ``findings`` lists why."""

    exit_code = 2

    def __init__(self, what: str, *, path=None, fix=None, findings: list | None = None):
        self.findings = list(findings or [])
        super().__init__(what, path=path, fix=fix)


class UntrustedCodeError(TorchkeepError):
    """Loading needs to import and run classes named in the file; ``classes`` lists them."""

    exit_code = 1

    def __init__(self, what: str, *, path=None, fix=None, classes: list[str] | None = None):
        self.classes = list(classes or [])
        super().__init__(what, path=path, fix=fix)


class CompatibilityError(TorchkeepError):
    """Weights do not fit the model they are loaded into.

    Attributes:
        report: when ``load_into`` / ``adapt`` refused, the :class:`~torchkeep.LoadReport` of what would have
            loaded (its verdict starts with ``REFUSED``; the model was left unchanged); else None.
    """

    exit_code = 4

    def __init__(self, what: str, *, path=None, fix=None, report: LoadReport | None = None):
        self.report = report
        super().__init__(what, path=path, fix=fix)


class ParityError(TorchkeepError):
    """The exported model's outputs differ from the eager model's beyond the tolerance (exit 4).

    Attributes:
        result: the :class:`~torchkeep.ExportResult` with its ``parity`` report (the file was not written).
    """

    exit_code = 4

    def __init__(self, what: str, *, path=None, fix=None, result: ExportResult | None = None):
        self.result = result
        super().__init__(what, path=path, fix=fix)


class CheckpointWriteError(TorchkeepError):
    """A checkpoint or model file could not be written (disk full, permissions); the previous one is intact."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a resumable checkpoint was saved; ``message`` says how to resume.

    A ``KeyboardInterrupt`` (not a :class:`TorchkeepError`), so that code that stops on Ctrl-C still stops.
    """

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.message = message
        self.run_dir = run_dir


class TorchkeepWarning(UserWarning):
    """Something that works but is probably not what was meant (the CLI prints ``torchkeep: warning: ...``)."""
