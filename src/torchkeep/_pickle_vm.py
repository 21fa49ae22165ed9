"""Follow a pickle with the loader's own parser, and record what it would import and call.

The scanner must not parse a pickle differently from the loaders it protects (``torch.load`` and
``pickle.load`` use CPython's C unpickler; joblib, dill and torch's ``weights_only`` unpickler the pure-
Python one). So :func:`analyze` runs **CPython's own unpicklers** — ``_pickle.Unpickler`` and
``pickle._Unpickler`` — over the stream, with ``find_class`` and ``persistent_load`` answering inert
recording stand-ins:

- every global becomes a fresh stand-in *class* (so ``NEWOBJ`` accepts it) that imports nothing;
- calling it (REDUCE, INST, OBJ), constructing it (NEWOBJ, NEWOBJ_EX), BUILD, SETITEMS, APPENDS and
  ADDITEMS on what it returned are recorded with their arguments, and nothing else happens;
- a few pure data constructors (``_codecs.encode``, ``collections.OrderedDict``, builtin containers) on
  constant arguments return the real value, so that the stream goes on exactly as it would in a loader.

Strings are decoded the way each loader decodes them (``utf-8`` as torch.load, ``latin1`` as legacy
files); reads never go past the bytes present. Where the parsers disagree, or a stand-in cannot do what
the real object would (the stream stops early), the stream is *not fully understood*: that is a
dangerous finding (fail closed), never ``safe``.

The recorded globals and calls are judged allow-list first by :mod:`torchkeep._scan_rules`.
"""

from __future__ import annotations

import _pickle
import contextlib
import io
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from torchkeep._pickle_run import RawFinding, _Run, _TooComplex
from torchkeep._pickle_standins import _SPENT, _Call, _plain, _short
from torchkeep._region import Region

__all__ = ["CallRecord", "RawFinding", "StreamResult", "analyze", "concrete"]

_MAX_CALLS_KEPT = 200  # calls listed in a report per stream (all are judged)


@dataclass(frozen=True)
class CallRecord:
    """One call a loader would make: ``target(args)`` at ``offset``, and how (REDUCE, NEWOBJ, ...)."""

    target: str
    how: str
    args: str
    offset: int | None


@dataclass
class StreamResult:
    """What :func:`analyze` learned about one pickle stream.

    Attributes:
        findings: everything not safe.
        imports: every global named, as ``(module, name)`` (after ``fix_imports``).
        end: offset just after ``STOP``; ``None`` when the stream does not parse to its end.
        error: why parsing stopped early, if it did.
        value: the object at ``STOP``: plain Python data where the stream is plain data, stand-ins
            (:class:`Global`, :class:`Value`) elsewhere.
        pids: the persistent ids (``BINPERSID`` arguments), for the storage table of legacy files.
        opcodes: bytes consumed (a measure of how much of the stream parsed).
        nested: ``(offset, bytes)`` of files embedded in the pickle that a load unpickles too
            (``torch.storage._load_from_bytes(b)`` calls ``torch.load(b, weights_only=False)``).
        calls: the calls a loader would make (the first :data:`_MAX_CALLS_KEPT`), for the report.
    """

    findings: list[RawFinding] = field(default_factory=list)
    imports: list[tuple[str, str]] = field(default_factory=list)
    end: int | None = None
    error: str | None = None
    value: Any = None
    pids: list[Any] = field(default_factory=list)
    opcodes: int = 0
    nested: list[tuple[int, bytes]] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    ends_somewhere: bool = False  # some unpickler (not necessarily the first) read the stream to a STOP


# -- the unpicklers --------------------------------------------------------------------------------------
def _recording(base: type) -> type:
    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, fh: Any, run: _Run, encoding: str) -> None:
            super().__init__(fh, encoding=encoding, errors="strict", fix_imports=True)
            self._tk_run = run

        def find_class(self, module: str, name: str) -> Any:
            return self._tk_run.global_(module, name)

        def persistent_load(self, pid: Any) -> Any:
            return self._tk_run.persistent(pid)

    return Recording


_C_UNPICKLER = _recording(_pickle.Unpickler)
_PY_UNPICKLER = _recording(pickle._Unpickler)  # type: ignore[attr-defined]


def _load_bytearray8(self: Any) -> None:
    # pickle.py allocates bytearray(length) before reading: a forged length would allocate gigabytes here.
    (length,) = struct.unpack("<Q", self.read(8))
    frame = self._unframer.current_frame  # protocol 4+: the bytes are in the frame already read from the file
    left = frame.getbuffer().nbytes - frame.tell() if frame is not None else self._tk_run.left()
    if length > left:
        raise pickle.UnpicklingError("pickle data was truncated")
    b = bytearray(length)
    self.readinto(b)
    self.append(b)


def _instantiating(load: Any) -> Any:
    """INST / OBJ, marked while they run: CPython's instantiate() *calls* a global that is not a type, where
    the stand-ins (always types) are built; the pure-Python pass knows which opcode it is executing."""

    def run(self: Any) -> None:
        self._tk_run.instantiating = True
        try:
            load(self)
        finally:
            self._tk_run.instantiating = False

    return run


_PY_UNPICKLER.dispatch = {  # type: ignore[attr-defined]
    **pickle._Unpickler.dispatch,  # type: ignore[attr-defined]
    pickle.BYTEARRAY8[0]: _load_bytearray8,
    pickle.INST[0]: _instantiating(pickle._Unpickler.load_inst),  # type: ignore[attr-defined]
    pickle.OBJ[0]: _instantiating(pickle._Unpickler.load_obj),  # type: ignore[attr-defined]
}
#: (unpickler, encoding) passes: torch.load's (C, utf-8), legacy/numpy files' (C, latin1), and the
#: pure-Python unpickler of joblib, dill and torch's weights_only loader.
_PASSES = (
    (_C_UNPICKLER, "utf-8", "C unpickler"),
    (_C_UNPICKLER, "latin1", "C unpickler, latin1"),
    (_PY_UNPICKLER, "utf-8", "Python unpickler"),
    # pickle.load(open(path)), pickle.loads(bytes), np.load and torch's legacy loader read through a buffer
    # with peek(): the C unpickler then reads across a FRAME's end where from a BytesIO it drops the rest
    (_C_UNPICKLER, "utf-8", "C unpickler, buffered file"),
)

_DATA_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                OverflowError, MemoryError, UnicodeError, RecursionError, struct.error, NotImplementedError)


_GUARD_MARGIN = 2 << 30  # address space a pass may add on top of what the process uses


@contextlib.contextmanager
def _memory_guard(stream_size: int) -> Iterator[None]:
    """Cap the address space while an unpickler runs over a stream (Linux).

    The C unpickler sizes some allocations from the stream itself before it reads: a LONG_BINPUT index of a
    billion grows its memo to 16 GB *and zeroes it*, a BINBYTES length allocates its buffer. A loader would
    fall over too; the scanner must not. Under the cap such a stream fails with MemoryError (its reason).
    """
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError, AttributeError):
        yield
        return
    cap = used + max(_GUARD_MARGIN, 4 * stream_size)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield  # already tighter
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _reader(fh: IO[bytes], start: int, limit: int | None) -> Region:
    """``fh`` from ``start``, as the unpicklers read it: reads never go past ``limit`` bytes (default: the end of
    ``fh``), and one that asks past them reads nothing (a forged length allocates nothing)."""
    return Region(fh, start, None if limit is None else start + limit, truncated_reads=True)


def _one_pass(fh: IO[bytes], start: int, limit: int | None, unpickler: type, encoding: str, torchscript: bool,
              data: bytes | None, buffered: bool = False) -> tuple[_Run, Any, int | None, str | None]:
    # In-memory streams are read by the unpicklers from a BytesIO (C reads; reads never allocate past the
    # bytes present); streams on disk through a Region, bounded the same way.
    reader: Any = io.BytesIO(data) if data is not None else _reader(fh, start, limit)
    if buffered:
        reader = io.BufferedReader(reader if data is None else _reader(io.BytesIO(data), 0, len(data)))
    run = _Run(reader, torchscript, data)
    _SPENT[0] = 0
    size = len(data) if data is not None else (limit if limit is not None else 0)
    try:
        with _memory_guard(size):
            value = unpickler(reader, run, encoding).load()
        end: int | None = reader.tell()
        error = None
    except _TooComplex as exc:
        run.find("dangerous", "too-complex", f"{exc}: not judged further (fail closed)")
        value, end, error = None, None, str(exc)
    except _DATA_ERRORS as exc:
        value, end, error = None, None, (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:200]
    run.detach()
    return run, value, end, error


def _call_records(calls: list[_Call], per_target: int = 3) -> list[CallRecord]:
    """The calls for a report: the first few of each target with their arguments (a big checkpoint makes
    thousands of identical tensor-rebuild calls)."""
    seen: dict[str, int] = {}
    out: list[CallRecord] = []
    for c in calls:
        n = seen[c.target] = seen.get(c.target, 0) + 1
        if n <= per_target and len(out) < _MAX_CALLS_KEPT:
            out.append(CallRecord(c.target, c.how, _short(c.args), c.offset))
    return out


def _TRUNCATED(error: str) -> bool:
    """The stream ends early: every loader fails at the same byte, nothing more can run."""
    return any(t in error for t in ("truncated", "Ran out of input", "EOFError", "unexpected end", "no newline"))


_ERROR_RULES = (
    ("Memo value not found", "memo-missing"),
    ("memo", "memo-missing"),
    ("extension code", "ext-opcode"),
    ("STACK_GLOBAL requires str", "non-constant-global"),
    ("isn't a type object", "indirect-call"),
    ("NEWOBJ", "indirect-call"),
    ("not callable", "indirect-call"),
    ("has no attribute", "indirect-call"),
)


def analyze(fh: IO[bytes], *, torchscript: bool = False, limit: int | None = None) -> StreamResult:
    """Follow one pickle stream read from ``fh`` (from its current position) to ``STOP``.

    Args:
        fh: a seekable binary reader positioned at the start of the pickle.
        torchscript: the stream belongs to a TorchScript archive (``__torch__`` classes are data).
        limit: bytes available from the start (default: to the end of ``fh``).

    Returns:
        A :class:`StreamResult`; offsets are relative to the start. ``end`` is ``None`` when the stream
        does not parse to its end; ``findings`` still hold everything seen before (a loader runs those
        opcodes before it fails).
    """
    start = fh.tell()
    data: bytes | None = None
    if isinstance(fh, io.BytesIO):
        if start == 0 and limit is None:
            data = fh.getvalue()  # shares the buffer of a BytesIO made from bytes: no copy
        else:
            buf = fh.getbuffer()
            data = bytes(buf[start : len(buf) if limit is None else start + limit])
            del buf
    res = StreamResult()
    outcomes: list[tuple[str, int | None, str | None]] = []
    for i, (unpickler, encoding, label) in enumerate(_PASSES):
        run, value, end, error = _one_pass(fh, start, limit, unpickler, encoding, torchscript, data, "buffered" in label)
        outcomes.append((label, end, error))
        res.ends_somewhere = res.ends_somewhere or end is not None
        if i == 0:
            res.value, res.end, res.error, res.pids = value, end, error, run.pids
            res.opcodes = run.pos() if end is None else end
            res.calls = _call_records(run.calls)
        elif "buffered" not in label:  # how far the stream parses: the furthest any unpickler got
            # (a buffered reader's position on failure includes its read-ahead, not what was parsed)
            res.opcodes = max(res.opcodes, run.pos() if end is None else end)
        if i > 0:
            known = {c.target for c in res.calls}
            res.calls.extend(c for c in _call_records(run.calls) if c.target not in known)
        if end is None and error is not None and not _TRUNCATED(error) and (run.calls or run.imports or run.pids):
            # Past a global (a call, an import, a persistent id), a failure may be the stand-ins' (a real object
            # would have gone on, e.g. SETITEMS on a module-level dict): fail closed.
            rule = next((r for text, r in _ERROR_RULES if text in error), "malformed-pickle")
            run.find("dangerous", rule, f"the stream stops where the scanner's stand-ins cannot follow it ({error}); "
                     "a loader with the real objects may go on", offset=run.pos())
        for item in run.nested:  # an embedded file only one decoding produces is scanned too
            if all(item[1] != known for _, known in res.nested):
                res.nested.append(item)
        seen = {(f.rule, f.module, f.name, f.why) for f in res.findings}
        res.findings.extend(f for f in run.findings if (f.rule, f.module, f.name, f.why) not in seen)
        for imp in run.imports:
            if imp not in res.imports:
                res.imports.append(imp)
    # A pass that fails to decode a string (utf-8 vs latin1) only says which loaders can read the file;
    # everything each pass saw is judged above. Other disagreements on where the stream ends are findings.
    ends = {end for _, end, err in outcomes if not (err and ("codec can't decode" in err or "Unicode" in err))}
    if len(ends) > 1:
        detail = "; ".join(f"{label}: {'ends at byte ' + str(end) if end is not None else 'fails (' + str(err) + ')'}" for label, end, err in outcomes)  # fmt: skip
        res.findings.append(
            RawFinding("dangerous", "parser-differential", "", "", None,
                       f"the unpicklers read this stream differently ({detail}): a loader may run what the scan cannot see")
        )
    fh.seek(start + (res.end if res.end is not None else res.opcodes))
    return res


def concrete(value: Any) -> Any:
    """``value`` if it is plain Python data (ints, strings, lists, tuples, dicts of them), else ``None``."""
    return value if _plain(value, allow_kinds=set()) else None
