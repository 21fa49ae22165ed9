"""Pickles stacked in a region of a file, and the walker every container walker builds on.

One strict mode: a region a loader unpickles (``data.pkl``, a bare pickle, an object array) is scanned
with every finding kept; any other region is first asked whether it is a pickle at all. Tensor bytes
(no ``STOP`` reached, or a short accidental pickle followed by more data, and no global named) are not;
anything that names a global, or parses as pickles to its end, keeps *all* its findings.

Each stream is followed by :func:`torchkeep._pickle_vm.analyze`: from memory when it is short, in place
(through :class:`torchkeep._region.Region`) when it is long; a stream whose opcodes cross a ``FRAME``'s end
is read both ways the unpicklers read it.
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from torchkeep._pickle_vm import RawFinding, StreamResult, analyze
from torchkeep._region import Region
from torchkeep._scan_names import module_shaped

__all__ = ["MAX_DEPTH", "MAX_STACKED", "PROBE", "Sink", "StackedWalker", "analyze_start"]

MAX_DEPTH = 3  # zip inside zip inside zip: deeper nesting is refused, not silently skipped
PROBE = 1 << 20  # regions not known to be pickles are first parsed within this many bytes
MAX_STACKED = 1024  # stacked pickles scanned in one region; more is refused (no writer produces that)
_PICKLE_FIRST = {op.code.encode("latin-1") for op in pickletools.opcodes}


@dataclass
class Sink:
    """Collects what the walker finds.

    ``on_stream(name, result, base)`` is called for each pickle stream scanned (``base`` is added to the
    stream's offsets to report them relative to the file or member named); ``on_finding`` for container
    findings.
    """

    on_stream: Callable[[str, StreamResult, int], None]
    on_finding: Callable[[str, str, str, int | None, str], None]  # severity, rule, stream/place, offset, why
    notes: list[str] = field(default_factory=list)


_IN_MEMORY = (1 << 20, 64 << 20)  # pickles are parsed from memory (fast C reads) if they end within these


def _analyze_region(
    fh: IO[bytes], start: int, end: int, torchscript: bool = False, looks: tuple[int, ...] = _IN_MEMORY
) -> StreamResult:
    """Analyse the pickle at ``start`` (offsets relative to it): from memory when it ends within the first
    1 MiB, then 64 MiB (``looks``); beyond that in place over the whole region. A look that fails before its
    last byte is final (more bytes cannot change it); one still valid where it ends (a long constant, many
    opcodes) goes on to the next."""
    for size in looks:
        chunk_end = min(end, start + size)
        fh.seek(start)
        data = fh.read(chunk_end - start)
        probe = io.BytesIO(data)
        res = analyze(probe, torchscript=torchscript)
        if res.end is not None or chunk_end >= end or probe.tell() < len(data):
            return _frame_readings(res, data, torchscript)
    # (a stream this long is not re-read for frames here: the pure-Python pass of analyze() refuses a frame
    # crossing, which makes it a parser-differential finding already)
    return analyze(Region(fh, start, end), torchscript=torchscript)  # type: ignore[arg-type]


def _frame_crossing(data: bytes) -> tuple[int | None, bytes]:
    """Offset of the first opcode whose bytes run past the end of the FRAME it starts in (``None`` if none),
    and the stream as a reader that ignores frames reads it (FRAME opcodes removed).

    pickle's writer never crosses a frame's end, and the C unpickler then reads differently depending on
    the stream it is given: ``pickle.loads(bytes)`` and files with ``peek()`` (``pickle.load(open(...))``,
    ``np.load``, torch's legacy loader) read on across the frame's end, a ``BytesIO`` (torch.load's zip
    records) or an unbuffered file drops the rest of the frame and reads on after it. (The pure-Python
    unpickler refuses such a stream.)"""
    reader = io.BytesIO(data)
    frame_end = None
    crossing = None
    frames: list[int] = []
    try:
        for op, arg, pos in pickletools.genops(reader):
            end = reader.tell()
            if frame_end is not None and pos is not None and pos < frame_end < end and crossing is None:
                crossing = pos
            if op.name == "FRAME" and pos is not None:
                frame_end = end + int(arg or 0)
                frames.append(pos)
            elif frame_end is not None and pos is not None and pos >= frame_end:
                frame_end = None
    except Exception:  # the stream is malformed further on: what came before was checked
        pass
    kept, at = [], 0
    for pos in frames:
        kept.append(data[at:pos])
        at = pos + 9  # FRAME and its 8-byte length
    kept.append(data[at:])
    return crossing, b"".join(kept)


def _frame_readings(res: StreamResult, data: bytes, torchscript: bool) -> StreamResult:
    """``res`` (the stream as the unpicklers read it from a ``BytesIO``) when no opcode crosses a FRAME's end;
    otherwise a dangerous ``frame-differential`` finding is added and the reading that ignores frames is
    scanned too (its findings, imports and embedded files are merged in). Streams are checked when they
    declare protocol 4 or 5 (the ones with frames), when they do not parse to their end, or when analyze()
    saw its unpicklers disagree (the pure-Python one refuses a frame crossing that the C one reads)."""
    suspect = (
        data[:2] in (b"\x80\x04", b"\x80\x05")
        or res.end is None
        or any(f.rule == "parser-differential" for f in res.findings)
    )
    if not suspect or b"\x95" not in data:
        return res
    at, unframed = _frame_crossing(data)
    if at is None:
        return res
    other = analyze(io.BytesIO(unframed), torchscript=torchscript)
    seen = {(f.rule, f.module, f.name, f.why) for f in res.findings}
    res.findings.extend(f for f in other.findings if (f.rule, f.module, f.name, f.why) not in seen)
    res.imports.extend(i for i in other.imports if i not in res.imports)
    res.nested.extend(other.nested)
    res.calls.extend(other.calls)
    res.findings.append(
        RawFinding(
            "dangerous", "frame-differential", "", "", at,
            "an opcode runs past the end of its FRAME (pickle's writer never does that): the C unpickler reads on "
            "across it from bytes or a file with peek() (pickle.load(open(...)), np.load, torch's legacy loader) "
            "and skips the rest of the frame from a BytesIO (torch.load's zip records); both readings are scanned "
            "(offsets of the first one)",
        )
    )  # fmt: skip
    return res


def analyze_start(fh: IO[bytes], size: int) -> StreamResult:
    """The pickle at the start of a file of ``size`` bytes, for files that may be anything: one bounded look
    (no 64 MiB read for a length field that happens to ask for gigabytes), then in place if still valid."""
    return _analyze_region(fh, 0, size, looks=(PROBE,))


def _looks_like_pickle_start(head: bytes) -> bool:
    if not head:
        return False
    if head[:1] == b"\x80":
        return len(head) > 1 and head[1] <= 5
    return head[:1] in _PICKLE_FIRST


def _only_padding(fh: IO[bytes], start: int, end: int, pad: bytes = b" \t\r\n\x00") -> bool:
    """True if ``[start, end)`` is empty or only ``pad`` bytes (whitespace/NUL: harmless padding)."""
    fh.seek(start)
    left = end - start
    while left > 0:
        chunk = fh.read(min(left, 1 << 16))
        if not chunk:
            break
        if chunk.strip(pad):
            return False
        left -= len(chunk)
    return True


def _names_a_module(res: StreamResult) -> bool:
    """Does the stream name a global of a module an import can find (:func:`torchkeep._scan_names.module_shaped`)?"""
    return any(module_shaped(m) for m, _ in res.imports) or any(f.module and module_shaped(f.module) for f in res.findings)


def _can_run_code(res: StreamResult) -> bool:
    """Could a loader of this stream call anything? Only through a global it can import: a stream that
    names none cannot (text such as TorchScript source "names" modules like ``lass Net(Module):`` that no
    import finds; EXT opcodes import only what the copyreg registry holds). A stream that stops short
    must also have a dangerous finding: a loader runs its opcodes only up to where it fails."""
    return _names_a_module(res) and (res.end is not None or any(f.severity == "dangerous" for f in res.findings))


class StackedWalker:
    """Walks one file: reports streams and findings to the sink, scans stacked pickles. The container walkers
    (:mod:`torchkeep._walk_zip`, ``_walk_npy``, ``_walk_legacy``, ``_walk_tar``) build on it, and
    :class:`torchkeep._streams.Walker` puts them together (it knows which one an embedded file needs)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.blob_depth = 0

    def _emit(self, label: str, res: StreamResult, base: int) -> None:
        """Report a stream, then scan the files it embeds (``torch.storage._load_from_bytes``)."""
        self.sink.on_stream(label, res, base)
        for offset, data in res.nested:
            place = f"{label} @ {base + offset}: embedded torch file"
            if self.blob_depth >= MAX_DEPTH:
                self.sink.on_finding("dangerous", "zip-depth", place, None, f"embedded files nested deeper than {MAX_DEPTH}")
                continue
            self.blob_depth += 1
            try:
                self.blob(data, place)
            finally:
                self.blob_depth -= 1

    def blob(self, data: bytes, place: str) -> None:
        """Scan an in-memory file (a torch zip, a legacy torch file or a bare pickle)."""
        raise NotImplementedError

    # -- pickles ---------------------------------------------------------------------------------
    def stacked(
        self,
        fh: IO[bytes],
        start: int,
        end: int,
        name: str,
        *,
        required: bool,
        torchscript: bool = False,
        base: int = 0,
        what: str = "pickle",
    ) -> list[StreamResult] | None:
        """Scan the pickles stacked in ``[start, end)`` of ``fh``; every stream reported keeps all its findings.

        ``required``: a loader unpickles the region, so it is reported whatever it holds (a malformed
        stream, or bytes after ``STOP`` that are not a pickle, are findings). Otherwise the region may be
        anything (tensor bytes, text) and is reported, in full, when it is a pickle that can run code
        (:func:`_can_run_code`), or a clean pickle (parsed to its end, no finding). Anything else cannot
        call anything: ``None`` is returned.
        """
        found: list[tuple[str, StreamResult, int]] = []
        tail: list[tuple[str, str, str, int, str]] = []  # container findings: severity, rule, place, offset, why
        must_report = required
        clean = True  # every stream parsed, without findings, and only padding follows the last one
        pos = start
        index = 0
        while pos < end:
            if index >= MAX_STACKED:
                tail.append(("dangerous", "too-many-streams", name, base + pos,
                             f"more than {MAX_STACKED} stacked pickles; the rest ({end - pos} bytes) was not scanned"))  # fmt: skip
                must_report = True  # fail closed: what follows was not looked at
                break
            # A region not known to be a pickle gets one bounded look first (tensor bytes can start with a
            # length field that asks for gigabytes), then is followed in place if still valid there.
            res = _analyze_region(fh, pos, end, torchscript, _IN_MEMORY if required else (PROBE,))
            label = name if index == 0 else f"{name} (stacked {what} {index + 1} at byte {base + pos})"
            must_report = must_report or _can_run_code(res)
            clean = clean and res.end is not None and not res.findings
            if res.end is None:
                if index == 0:
                    found.append((label, res, base + pos))
                    tail.append(("error", "malformed-pickle", label, base + pos,
                                 f"malformed pickle: {res.error} (a loader runs every opcode before this point)"))  # fmt: skip
                else:
                    if res.findings:  # a load-all loop runs what these bytes hold before they fail
                        found.append((label, res, base + pos))
                    tail.append(("dangerous", "trailing-data", name, base + pos,
                                 f"{end - pos} bytes after the pickle's STOP are not a pickle: loaders ignore them, "
                                 "scanners that stop at the first error miss what follows; writers never add them"))  # fmt: skip
                break
            found.append((label, res, base + pos))
            pos += res.end
            index += 1
            if _only_padding(fh, pos, end):
                break
        if not (must_report or clean):
            return None  # not a pickle that can run anything (tensor bytes, text, a short accidental pickle)
        for label, res, at in found:
            self._emit(label, res, at)
        for severity, rule, place, offset, why in tail:
            self.sink.on_finding(severity, rule, place, offset, why)
        return [res for _, res, _ in found]
