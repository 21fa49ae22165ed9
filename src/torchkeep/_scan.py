"""``torchkeep.scan``: find the code a model file would run when loaded, without running anything.

Every pickle stream of the file is found by content (:mod:`torchkeep._streams`) and followed opcode by
opcode on an abstract stack (:mod:`torchkeep._pickle_vm`); each global it names is classified by
:mod:`torchkeep._scan_rules` (allow-list first). The code the file carries — TorchScript methods and the
operators they call, ONNX custom ops and external-data locations — is checked by :mod:`torchkeep._scan_code`
(allow-list first too). The verdict of a file is the worst of its findings:

- ``safe``: only tensor/storage rebuilding and plain containers/scalars;
- ``custom-code``: imports classes not known to be safe (a full pickled model, ``argparse.Namespace``):
  loading would import and run their code; they are listed;
- ``dangerous``: can execute code or reach the OS, files, network, interpreter or import machinery, or
  is structurally suspicious (computed global names, EXT/INST/OBJ opcodes, memo tricks, zip tricks);
- ``error``: the file could not be read (missing, empty, corrupt, unknown format) and nothing dangerous
  was seen in what could be read.

Neither ``pickle.load`` nor ``torch`` is ever used here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep._dcp import METADATA as DCP_METADATA
from torchkeep._dcp import DcpTransformError, is_metadata_name, read_chunk, read_dcp
from torchkeep._detect import is_dcp_dir
from torchkeep._pickle_vm import CallRecord, StreamResult
from torchkeep._scan_code import analyse_code
from torchkeep._scan_names import importable
from torchkeep._scan_rules import Severity
from torchkeep._streams import Sink, Walker, analyze_start, walk_file
from torchkeep.errors import InputError, UnknownFormatError

__all__ = [
    "VERDICTS",
    "Finding",
    "ScanReport",
    "exit_code",
    "iter_files",
    "scan",
    "scan_paths",
    "to_sarif",
]

#: Verdicts from best to worst, with the CLI exit code each one gives (from :class:`Severity`).
VERDICTS: dict[str, int] = {s.verdict: s.exit_code for s in Severity if s != Severity.WARNING}

_ZIP_FORMATS = {"torch-zip", "torchscript", "torch-export", "numpy-npz", "zip"}
# suffix -> formats it is expected to hold (a mismatch is a warning: detection is by content anyway)
_SUFFIX_FORMATS = {
    ".safetensors": {"safetensors"},
    ".onnx": {"onnx"},
    ".npy": {"numpy"},
    ".npz": {"numpy-npz"},
    ".pt2": {"torch-export"},
    ".json": set(),
    ".txt": set(),
    ".zip": {"zip", "numpy-npz", "torch-zip", "torchscript", "torch-export"},
}

RULES: dict[str, str] = {
    "dangerous-import": "Imports a module or function that can execute code or reach the OS, files, network or interpreter",
    "custom-class": "Imports a class or function that is not known to be safe; loading runs its code",
    "non-constant-global": "STACK_GLOBAL with a module or name computed at load time",
    "indirect-call": "Calls the result of another call (getattr / attrgetter chains)",
    "inst-obj": "INST/OBJ opcodes (import-and-call in one step, never written by Python 3)",
    "ext-opcode": "EXT1/EXT2/EXT4 opcodes (imports through the copyreg extension registry)",
    "build-on-global": "BUILD on an imported module or class (monkey-patching)",
    "memo-overwrite": "A memo slot written twice",
    "memo-missing": "A memo slot read before it is written",
    "persistent-id": "A persistent id that is not a torch storage reference",
    "nested-load": "torch.storage._load_from_bytes (torch.load) on bytes computed at load time",
    "unknown-opcode": "An opcode this scanner does not know",
    "too-many-streams": "More stacked pickles than the scan limit",
    "trailing-data": "Bytes after the pickle's STOP that are not a pickle",
    "malformed-pickle": "A pickle stream that cannot be parsed to its end",
    "polyglot": "A file that is both a pickle and a zip archive",
    "zip-duplicate": "Two zip members with the same name",
    "zip-prepended": "Data before the first zip member",
    "zip-name-mismatch": "Local header and central directory disagree on a member's name",
    "zip-bad-crc": "A zip member whose CRC-32 does not match its bytes",
    "zip-bad-header": "A central directory entry that points at no local header",
    "zip-method": "A zip member compressed with a method no model writer uses",
    "zip-depth": "Archives nested deeper than the scan limit",
    "zip-unreadable": "A zip archive whose directory cannot be read",
    "zip-corrupt": "A zip member zlib cannot inflate (torch's inflater may read past the error)",
    "npy-header": "A .npy header that cannot be read",
    "legacy-magic": "A legacy torch file whose first pickle is not torch's magic number",
    "legacy-keys": "A legacy torch file whose storage keys are not a list of strings",
    "legacy-truncated": "A legacy torch file whose storage table runs past its end",
    "tar-unreadable": "A tar archive whose headers cannot be read",
    "zip-reader-mismatch": "torch's zip reader (miniz) and Python's zipfile see different members, names, offsets or sizes",
    "zip-inflate-budget": "A compressed member that does not inflate to its end within the scan's byte/time budget",
    "zip-directory-data": "A member flagged as a directory, whose bytes torch serves from uninitialised memory",
    "zip-size-mismatch": "Recorded sizes that disagree: torch and zipfile serve different bytes",
    "tar-link": "A tar link whose target lies outside the archive",
    "tar-not-plain": "A tar holding torch's members that is not plain regular members: extraction and the scan may see different bytes",
    "frame-differential": "An opcode that runs past its FRAME's end: loaders read the stream two ways",
    "parser-differential": "The C and pure-Python unpicklers (or two reading modes) read the stream to different ends",
    "unexpected-call": "A call that is neither an allow-listed rebuild nor model code constructing a class",
    "unexpected-argument": "An allow-listed call whose arguments are not what torch/numpy write",
    "unexpected-build": "BUILD/SETITEMS/APPENDS that no object torch.save writes receives",
    "too-complex": "More judging work than a weights file needs (fail closed)",
    "extension-mismatch": "The file's extension does not match its content",
    "unreadable": "The file could not be read",
    "scan-incomplete": "A part of the file the scanner could not follow to its end (fail closed)",
    "torchscript-op": "TorchScript code calls an operator or C++ class that is not tensor computation (files, processes, network, custom-registered ops)",
    "torchscript-unparsed": "TorchScript code that cannot be parsed, or written in a form torch.jit.save never writes",
    "onnx-custom-op": "An ONNX node of a custom-op domain, or one that calls into PyTorch or Python",
    "onnx-external-data": "An ONNX external-data location outside the model's folder (absolute, '..', symlink, memory tag)",
    "onnx-unparsed": "An ONNX protobuf that cannot be followed to its end",
    "dcp-storage": "DCP metadata whose storage items are not what torch writes (two for one key, one no entry reads, other classes): DCP may load other bytes than those scanned",
    "dcp-transform": "A DCP entry saved through a stream transform that cannot be undone here (the entry cannot be judged)",
}


@dataclass(frozen=True)
class Finding:
    """One reason a file is not ``safe``.

    Attributes:
        severity: ``"dangerous"``, ``"custom-code"``, ``"error"`` or ``"warning"`` (no effect on the verdict).
        module: the module of the global concerned, or ``""`` for a structural finding.
        name: the name of the global concerned, or ``""``.
        stream: where: a zip member (``archive/data.pkl``), ``pickle``, ``legacy file: object pickle``, ...
        offset: byte offset of the opcode in that stream (in the file for bare pickles, legacy files and
            ``.npy``; in the member's uncompressed bytes for zip members), or ``None``.
        why: one line saying why.
        rule: a stable rule id (see ``torchkeep._scan.RULES`` and docs/scan.md).
    """

    severity: str
    module: str
    name: str
    stream: str
    offset: int | None
    why: str
    rule: str = "dangerous-import"

    @property
    def target(self) -> str:
        """``module.name`` for an import, else the rule id (for one-line messages)."""
        return f"{self.module}.{self.name}" if self.module else self.rule


@dataclass
class ScanReport:
    """The result of :func:`scan` for one file.

    Attributes:
        path: the file scanned.
        format: the detected container format (:data:`torchkeep._detect.FORMATS`, or ``"zip"``), ``None`` if unknown.
        verdict: ``"safe"``, ``"custom-code"``, ``"dangerous"`` or ``"error"``.
        findings: every finding, dangerous ones first.
        imports: every global the file's pickles name (``module.name``), sorted, safe ones included.
        streams: the pickle streams scanned.
        error: why the file (or part of it) could not be read, if so.
        notes: facts worth knowing that are not findings (nested archives scanned, storage table walked).
        calls: ``(stream, call)`` for the calls a loader would make unpickling the file — the callable, how
            (REDUCE, NEWOBJ), its arguments (shortened) and offset; the first few of each callable per stream.
        code: the code the file carries -> the operators it calls: TorchScript methods (those that run at
            ``torch.jit.load`` marked ``(runs at load)``) and ONNX graphs/functions; see :mod:`torchkeep._scan_code`.
            The JSON form carries its summary in ``notes`` (the ops called, the methods run at load).
        unknown_format: the bytes match no model format and do not parse as a pickle (a README, a
            config file): the verdict is ``"error"``; the CLI skips such files found inside directories.
    """

    path: str
    format: str | None
    verdict: str
    findings: list[Finding] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    unknown_format: bool = False
    code: dict[str, list[str]] = field(default_factory=dict)
    calls: list[tuple[str, CallRecord]] = field(default_factory=list)

    @property
    def custom_classes(self) -> list[str]:
        """The classes/functions loading would import (``custom-code`` findings), sorted."""
        return sorted({f.target for f in self.findings if f.severity == "custom-code"})

    @property
    def dangerous(self) -> list[Finding]:
        """The ``dangerous`` findings."""
        return [f for f in self.findings if f.severity == "dangerous"]

    @property
    def exit_code(self) -> int:
        """The CLI exit code for this file alone (0 safe, 1 custom-code, 2 dangerous, 3 error)."""
        return VERDICTS[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (schema in docs/scan.md)."""
        return {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict,
            "findings": [
                {
                    "severity": f.severity,
                    "rule": f.rule,
                    "module": f.module,
                    "name": f.name,
                    "stream": f.stream,
                    "offset": f.offset,
                    "why": f.why,
                }
                for f in self.findings
            ],
            "custom_classes": self.custom_classes,
            "imports": self.imports,
            "streams": self.streams,
            "error": self.error,
            "notes": self.notes,
            "unknown_format": self.unknown_format,
            "code": self.code,
            "calls": [
                {"stream": stream, "target": c.target, "how": c.how, "args": c.args, "offset": c.offset}
                for stream, c in self.calls
            ],
        }


class _Collector:
    def __init__(self) -> None:
        self.findings: dict[tuple[str, str, str, str, str], Finding] = {}
        self.imports: set[str] = set()
        self.streams: list[str] = []
        self.notes: list[str] = []
        self.calls: list[tuple[str, CallRecord]] = []
        self.explained: set[str] = set()  # streams whose stop a dangerous finding already explains
        self.sink = Sink(self.on_stream, self.on_finding, self.notes)

    def add(self, f: Finding) -> None:
        key = (f.severity, f.rule, f.module, f.name, f.stream)
        self.findings.setdefault(key, f)

    def on_stream(self, name: str, res: StreamResult, base: int) -> None:
        self.streams.append(name)
        for module, gname in res.imports:
            self.imports.add(f"{module}.{gname}")
        for r in res.findings:
            offset = None if r.offset is None or r.offset < 0 else base + r.offset
            self.add(Finding(r.severity, r.module, r.name, name, offset, r.why, r.rule))
        self.calls.extend((name, c) for c in res.calls)
        if res.end is None and any(r.severity == "dangerous" for r in res.findings):
            self.explained.add(name)

    def on_finding(self, severity: str, rule: str, place: str, offset: int | None, why: str) -> None:
        self.add(Finding(severity, "", "", place, offset, why, rule))

    def report(self, path: str, fmt: str | None, error: str | None = None) -> ScanReport:
        # A stream that stops where a dangerous finding says why needs no second, generic "malformed" error.
        kept = [f for f in self.findings.values()
                if not (f.rule == "malformed-pickle" and f.severity == "error" and f.stream in self.explained)]
        findings = sorted(kept, key=lambda f: (-Severity.of(f.severity), f.stream, f.offset or 0))
        errors = [f"{f.stream}: {f.why}" for f in findings if f.severity == "error"]
        worst = max((Severity.of(f.severity) for f in findings), default=Severity.SAFE)
        if error:
            worst = max(worst, Severity.ERROR)
        verdict = worst.verdict
        return ScanReport(
            path=path,
            format=fmt,
            verdict=verdict,
            findings=findings,
            imports=sorted(self.imports),
            streams=self.streams,
            error=error or (errors[0] if errors else None),
            notes=self.notes,
            calls=self.calls,
        )


def _parses_as_pickle(path: Path, *, to_stop: bool = False) -> bool:
    """For files no signature matched: does the start parse as a pickle (as pickle.load would read it)?
    ``to_stop``: only if some unpickler reads it to a STOP."""
    with open(path, "rb") as fh:
        res = analyze_start(fh, os.fstat(fh.fileno()).st_size)
    if to_stop:
        return res.end is not None or res.ends_somewhere
    # a start that names a global is a pickle to every loader that reads it (it imports the name), whether or not
    # the rest parses: pickle.load runs what comes before the point where it fails
    # (importable here, or — as a module beside the file or in the loader's environment may be — a module name a
    # call is made on: "import torch" read as INST of module "mport torch" is neither)
    named = [module for module, _ in res.imports]
    return res.end is not None or res.ends_somewhere or res.opcodes >= 256 or any(map(importable, named)) or (
        bool(res.calls) and any(all(part.isidentifier() for part in m.split(".")) for m in named))


def scan(path: str | os.PathLike[str]) -> ScanReport:
    """Statically analyse every pickle stream in a model file.

    Never imports ``torch``, never unpickles, never raises for a bad file: unreadable files get the
    verdict ``"error"`` with ``error`` set.

    Args:
        path: any file (torch zip/legacy, TorchScript, ``.pt2``, safetensors, ONNX, ``.npy``/``.npz``,
            a bare pickle, any zip).

    Returns:
        A :class:`ScanReport` with the verdict and every finding.
    """
    try:
        return _scan_file(path)
    except Exception as exc:  # never raises for a bad file; an unforeseen failure is not "safe"
        col = _Collector()
        col.add(_not_followed("the file", exc))
        return col.report(str(path), None)


def _merge(col: _Collector, sub: ScanReport, where: str) -> str | None:
    """Add a part's report (a DCP ``.metadata`` or blob) to ``col``; returns the part's error, if any."""
    for f in sub.findings:
        col.add(dataclasses.replace(f, stream=f"{where}: {f.stream}" if f.stream else where))
    col.imports.update(sub.imports)
    col.streams.extend(f"{where}: {s}" for s in sub.streams)
    col.calls.extend((f"{where}: {s}", c) for s, c in sub.calls)
    return f"{where}: {sub.error}" if sub.error else None


def _scan_dcp(p: Path) -> ScanReport:
    """A torch.distributed.checkpoint directory, judged by every file in it (red-team round 6): each metadata
    file DCP may unpickle (``.metadata``, and ``__<rank>.metadata``, which DCP reads when ``.metadata`` does not
    unpickle) with every non-tensor entry it points to (a ``torch.save`` blob that ``dcp.load`` opens with
    ``weights_only=False``, inflated first where it was saved through a stream transform), and every other
    file by content (data files the metadata points into excepted: their entries are judged)."""
    import tempfile

    col = _Collector()
    errors: list[str | None] = []
    files = sorted(f for f in p.rglob("*") if f.is_file())
    metas = [f for f in files if f.parent == p and is_metadata_name(f.name)]
    data_files: set[Path] = set()
    unread = False  # a metadata file that cannot be read here: which bytes of the data files are entries is unknown
    with tempfile.TemporaryDirectory(prefix="torchkeep-dcp-") as tmp:
        for meta in metas:
            errors.append(_merge(col, _scan_file(meta), meta.name))
            try:
                ckpt = read_dcp(p, meta.name)
            except InputError as exc:
                errors.append(f"{meta.name}: {exc}")  # the verdict is error at least
                unread = True
                continue
            for severity, why in ckpt.problems:
                col.add(Finding(severity, "", "", meta.name, None, why, "dcp-storage"))
            data_files.update(p / f for f in ckpt.files)
            blobs = [(e.name, c) for e in ckpt.entries.values() if e.kind == "bytes" for c in e.chunks]
            for name, chunk in blobs:
                where = f"{chunk.file}: {name}" if meta.name == DCP_METADATA else f"{meta.name}: {chunk.file}: {name}"
                blob = Path(tmp) / "entry.pt"
                try:
                    blob.write_bytes(read_chunk(ckpt, chunk))
                except DcpTransformError as exc:
                    col.add(Finding("error", "", "", where, None, str(exc), "dcp-transform"))
                    continue
                except (InputError, OSError) as exc:
                    errors.append(f"{where}: {exc}")
                    continue
                errors.append(_merge(col, _scan_file(blob), where))
            col.notes.append(f"DCP checkpoint ({meta.name}): {len(ckpt.entries)} entries in {len(ckpt.files)} files; "
                             f"{len(blobs)} pickled entries scanned")
    for f in files:  # anything else in the directory: judged by what it is
        if f in metas or f in data_files:
            continue
        rel = f.relative_to(p).as_posix()
        if unread and f.suffix == ".distcp":  # entries packed back to back: read by content, they would look forged
            col.notes.append(f"{rel}: a data file not judged (its metadata could not be read)")
            continue
        sub = _scan_file(f)
        if sub.unknown_format:
            col.notes.append(f"{rel}: not a model file or pickle (DCP does not read it)")
            continue
        errors.append(_merge(col, sub, rel))
    if not metas:
        errors.append(f"{p}: no DCP metadata file")
    first = next((e for e in errors if e), None)
    return col.report(str(p), "dcp", error=first)


def _scan_file(path: str | os.PathLike[str]) -> ScanReport:
    from torchkeep._detect import detect

    p = Path(path)
    if is_dcp_dir(p):
        return _scan_dcp(p)
    col = _Collector()
    fmt: str | None
    codec = _compression(p) if p.is_file() else None
    if codec is not None and not _parses_as_pickle(p, to_stop=True):
        # joblib.load (and others) decompress zlib/gzip/bz2/xz/lzma/lz4 files before unpickling them
        inflated, problem = _scan_compressed(p, codec, col)
        codec_done, codec = codec, None
        if (inflated or codec_done not in _WEAK_MAGIC) and not (problem and _detects(p)):
            if problem is None and not inflated:
                problem = Finding("error", "", "", f"{codec_done}-decompressed", None,
                                  f"the {codec_done} stream inflates to nothing", "unreadable")
            if problem:
                col.add(problem)
            try:  # torch.load reads the same file as a tar first: one that also opens as a tar is a polyglot
                walk_file(p, f"{codec_done}-compressed", col.sink)
            except Exception as exc:  # fail closed
                col.add(_not_followed("the container", exc))
            return col.report(str(path), f"{codec_done}-compressed")
        # Nothing inflates behind a one- or two-byte magic (joblib.load fails at once too: a text file starting
        # with "x"), or a file of another format only starts like a compressed stream (a safetensors header
        # length of 120 is an "x"): read as what it is; whatever the inflated bytes named stays in the report.
    not_a_model: str | None = None  # what inspect says of a file that is no model format
    try:
        fmt = detect(p).format
    except UnknownFormatError as exc:
        not_a_model = str(exc)
        if zipfile.is_zipfile(p):
            fmt = "zip"
        elif tarfile.is_tarfile(p):
            fmt = "tar"  # torch.load still reads the pre-0.1.10 tar format
        elif _parses_as_pickle(p):
            fmt = "pickle"
        else:
            rep = col.report(str(path), None, error=str(exc))
            rep.unknown_format = True
            return rep
    except InputError as exc:
        return col.report(str(path), None, error=str(exc))
    except OSError as exc:
        return col.report(str(path), None, error=f"{path}: cannot read the file ({exc})")

    expected = _SUFFIX_FORMATS.get(p.suffix.lower())
    if expected is not None and fmt not in expected:
        col.add(
            Finding(
                "warning",
                "",
                "",
                "file",
                None,
                f"the extension {p.suffix} does not match the content ({fmt}); loaders that go by content "
                "(torch.load) and tools that go by name see different files",
                "extension-mismatch",
            )
        )
    try:
        walk_file(p, fmt, col.sink)
    except OSError as exc:
        return col.report(str(path), fmt, error=f"{path}: cannot read the file ({exc})")
    except Exception as exc:  # fail closed: what the walker could not follow is not safe
        col.add(_not_followed("the container", exc))
    if codec is not None:  # a pickle that also starts like a compressed stream: joblib.load inflates it
        _, problem = _scan_compressed(p, codec, col)
        if problem is not None and problem.severity == "dangerous":
            col.add(problem)
    # -- the code the file carries: TorchScript methods and their ops, ONNX custom ops and external data
    try:
        code = analyse_code(p, fmt, col.imports)
    except Exception as exc:  # fail closed, as above
        col.add(_not_followed("the code it carries", exc))
        return col.report(str(path), fmt)
    for c in code.findings:
        col.add(Finding(c.severity, "", c.name, c.stream, None, c.why, c.rule))
    col.notes.extend(code.notes)
    empty = not col.streams and not col.findings and not_a_model is not None
    if empty:
        # a zip or tar holding no pickle: nothing would run, but no loader reads it as a model either
        col.add(Finding("error", "", "", "file", None, str(not_a_model), "unreadable"))
    report = col.report(str(path), fmt)
    report.code = code.code
    report.unknown_format = empty  # like a README: skipped when found inside a scanned directory
    return report


#: first bytes -> codec of the compressed files joblib.load reads transparently: joblib's own prefixes
#: (joblib.compressor: a file that starts with b"x" is inflated as zlib, b"]\x00" as lzma...) and "ZF",
#: joblib < 0.9.3's zlib files, which joblib.load still inflates and unpickles
_COMPRESSED = ((b"ZF", "joblib-zf"), (b"\x1f\x8b", "gzip"), (b"BZ", "bz2"), (b"\xfd7zXZ", "xz"),
               (b"\x5d\x00", "lzma"), (b"\x04\x22\x4d\x18", "lz4"), (b"x", "zlib"))
#: magics short enough to start files that are not compressed at all
_WEAK_MAGIC = {"zlib", "lzma", "bz2"}
#: a joblib "ZF" file: b"ZF", the inflated length in hex padded to 19 characters, (joblib <= 0.8.4) one space,
#: then a zlib stream (joblib.numpy_pickle_compat.read_zfile)
_ZF_HEADER = 2 + 19
#: a compressed file is inflated for scanning up to this many bytes; beyond, it is not called safe
MAX_DECOMPRESSED = 1 << 30


def _compression(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(_ZF_HEADER + 1)
    codec = next((codec for magic, codec in _COMPRESSED if head.startswith(magic)), None)
    if codec == "joblib-zf" and _zf_data_start(head) is None:
        return None  # joblib.load fails on the length before it inflates or unpickles anything
    return codec


def _zf_data_start(head: bytes) -> int | None:
    """Where the zlib stream of a joblib "ZF" file starts (``head``: its first bytes), as read_zfile finds it;
    ``None`` where read_zfile fails on the length field (``int(field, 16)``) before reading on."""
    try:
        int(head[2:_ZF_HEADER], 16)
    except ValueError:
        return None
    return _ZF_HEADER + (head[_ZF_HEADER : _ZF_HEADER + 1] == b" ")


def _detects(path: Path) -> bool:
    """Whether ``path`` is a model format :func:`detect` names (not just bytes that start like a compressed stream)."""
    from torchkeep._detect import detect

    try:
        detect(path)
    except Exception:
        return False
    return True


def _inflate(path: Path, codec: str) -> tuple[bytes, Exception | None]:
    """As many bytes as a streaming decompressor yields (up to MAX_DECOMPRESSED + 1), and the error that stopped
    it early, if any: a loader that unpickles while it inflates has already read everything before the error."""
    import bz2
    import gzip
    import lzma
    import zlib

    opener: Any = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open, "lzma": lzma.open}.get(codec)
    if codec == "lz4":
        import lz4.frame  # type: ignore[import-not-found]  # ImportError: handled by the caller

        opener = lz4.frame.open
    out = bytearray()
    chunk = 4 << 10  # small reads: a stream that fails at its end (CRC) still gives what came before
    try:
        if opener is not None:
            with opener(path, "rb") as fh:
                while len(out) <= MAX_DECOMPRESSED and (part := fh.read(chunk)):
                    out += part
        else:
            with open(path, "rb") as raw:
                head = raw.read(_ZF_HEADER + 1)
                raw.seek((_zf_data_start(head) or 0) if codec == "joblib-zf" else 0)
                d = zlib.decompressobj()
                while len(out) <= MAX_DECOMPRESSED and (part := raw.read(chunk)):
                    out += d.decompress(part, MAX_DECOMPRESSED + 1 - len(out))
                    while d.unconsumed_tail and len(out) <= MAX_DECOMPRESSED:
                        out += d.decompress(d.unconsumed_tail, MAX_DECOMPRESSED + 1 - len(out))
    except Exception as exc:  # corrupt or truncated streams: what came out before still counts
        return bytes(out), exc
    return bytes(out), None


def _scan_compressed(path: Path, codec: str, col: _Collector) -> tuple[int, Finding | None]:
    """Inflate (bounded) and scan what a loader that decompresses first would unpickle.

    Returns the number of bytes inflated and, when the stream could not be inflated to its end, a finding
    saying so (the caller decides whether it applies: a file of another format may just start like a stream).
    """
    place = f"{codec}-decompressed"
    try:
        data, exc = _inflate(path, codec)
    except ImportError:
        return 1, Finding("error", "", "", place, None,
                          f"{codec}-compressed (joblib.dump(compress='{codec}')), and the {codec} package is not "
                          f"installed here: what joblib.load would unpickle cannot be scanned (pip install {codec})",
                          "unreadable")
    problem = None
    if exc is not None:
        problem = Finding("error", "", "", place, None, f"the {codec} stream cannot be decompressed to its end "
                          f"({type(exc).__name__}: {str(exc)[:120]}); what came out before was scanned", "unreadable")
    if len(data) > MAX_DECOMPRESSED:
        problem = Finding("dangerous", "", "", place, None, f"it decompresses to more than {MAX_DECOMPRESSED >> 20} "
                          "MiB; the rest was not scanned (fail closed)", "scan-incomplete")
        data = data[:MAX_DECOMPRESSED]
    if data:
        col.notes.append(f"{codec}-compressed: {len(data)} bytes decompressed and scanned (joblib.load reads it so)")
        Walker(col.sink).blob(data, place)
    return len(data), problem


def _not_followed(what: str, exc: Exception) -> Finding:
    """A part of a model file the scanner could not follow to its end (an exception it did not foresee): the
    file is not called safe on what was seen before it (fail closed)."""
    detail = (str(exc).splitlines() or [""])[0][:160]
    return Finding(
        "dangerous",
        "",
        "",
        "file",
        None,
        f"the scanner could not follow {what} to its end ({type(exc).__name__}: {detail}); a loader may read "
        "what it could not (fail closed)",
        "scan-incomplete",
    )


def iter_files(paths: Iterable[str | os.PathLike[str]], recursive: bool = False) -> Iterator[Path]:
    """Expand ``paths``: files as given, directories into their files (all levels with ``recursive``); a DCP
    checkpoint directory is one item (its scan judges every file in it)."""
    for path in paths:
        p = Path(path)
        if p.is_dir() and not is_dcp_dir(p):
            children = p.rglob("*") if recursive else p.iterdir()
            dcp_dirs: list[Path] = []  # a DCP checkpoint is one item, its files are not scanned apart
            for c in sorted(children):
                if any(d in c.parents for d in dcp_dirs):
                    continue
                if is_dcp_dir(c):
                    dcp_dirs.append(c)
                    yield c
                elif c.is_file():
                    yield c
        else:
            yield p


def scan_paths(paths: Iterable[str | os.PathLike[str]], recursive: bool = False) -> list[ScanReport]:
    """Scan files and directories.

    Args:
        paths: files and/or directories.
        recursive: descend into subdirectories of directories.

    Returns:
        One :class:`ScanReport` per file, in order (missing paths give an ``"error"`` report).
    """
    return [scan(p) for p in iter_files(paths, recursive)]


def exit_code(reports: Iterable[ScanReport]) -> int:
    """CLI exit code for several files: 2 if any is dangerous, else 3 if any is unreadable, else 1 if any
    has custom code, else 0."""
    return max((Severity.of(r.verdict) for r in reports), default=Severity.SAFE).exit_code


_RULE_SEVERITY = {
    "custom-class": "custom-code",
    "extension-mismatch": "warning",
    **{r: "error" for r in ("malformed-pickle", "zip-unreadable", "npy-header", "tar-unreadable", "legacy-truncated",
                            "unreadable")},
}  # fmt: skip


def to_sarif(reports: Iterable[ScanReport]) -> dict[str, Any]:
    """A SARIF 2.1.0 log of the findings (for code scanning in CI); mapping documented in docs/scan.md."""
    from torchkeep import __version__

    results: list[dict[str, Any]] = []
    used: set[str] = set()
    for rep in reports:
        uri = Path(rep.path).as_posix()
        items = list(rep.findings)
        if rep.verdict == "error" and not any(f.severity == "error" for f in items):
            items.append(Finding("error", "", "", "file", None, rep.error or "cannot read the file", "unreadable"))
        for f in items:
            used.add(f.rule)
            # GitHub code scanning needs region.startLine to place an alert; model files have no lines,
            # so every result sits on line 1 and the real position is the byte offset / logical location.
            region: dict[str, Any] = {"startLine": 1}
            if f.offset is not None and rep.format not in _ZIP_FORMATS:
                region["byteOffset"] = f.offset
            location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": uri}, "region": region}}
            location["logicalLocations"] = [{"fullyQualifiedName": f.stream, "kind": "module"}]
            text = f"{f.target}: {f.why}" if f.module else f.why
            results.append(
                {
                    "ruleId": f.rule,
                    "level": Severity.of(f.severity).sarif_level,
                    "message": {"text": f"{rep.verdict}: {text} [{f.stream}" + (f" @ {f.offset}]" if f.offset is not None else "]")},
                    "locations": [location],
                    "partialFingerprints": {
                        "torchkeepFinding/v1": hashlib.sha256(
                            "|".join((uri, f.rule, f.module, f.name, f.stream)).encode()
                        ).hexdigest()
                    },
                    "properties": {
                        "severity": f.severity,
                        "verdict": rep.verdict,
                        "module": f.module,
                        "name": f.name,
                        "stream": f.stream,
                        "offset": f.offset,
                        "format": rep.format,
                    },
                }
            )
    rules = [
        {
            "id": rule,
            "name": "".join(w.capitalize() for w in rule.split("-")),
            "shortDescription": {"text": RULES.get(rule, rule)},
            "helpUri": "https://github.com/torchkeep/torchkeep/blob/main/docs/scan.md#rules",
            "defaultConfiguration": {"level": Severity.of(_RULE_SEVERITY.get(rule, "dangerous")).sarif_level},
            "properties": {
                "tags": ["security"],
                # GitHub ranks security alerts by this score (critical >= 9.0, medium 4.0-6.9, low < 4.0)
                "security-severity": Severity.of(_RULE_SEVERITY.get(rule, "dangerous")).security_severity,
            },
        }
        for rule in sorted(used)
    ]
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "torchkeep",
                        "version": __version__,
                        "informationUri": "https://github.com/torchkeep/torchkeep",
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }
