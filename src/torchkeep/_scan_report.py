"""What a scan reports: findings, the report of one file, and the forms the CLI prints (exit codes, SARIF).

The rule ids (:data:`RULES`) and verdicts (:data:`VERDICTS`, from :class:`torchkeep._scan_rules.Severity`) are
the stable vocabulary of ``torchkeep scan`` and its JSON and SARIF output (docs/scan.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkeep._detect import ZIP_FORMATS
from torchkeep._pickle_vm import CallRecord, StreamResult
from torchkeep._scan_rules import Severity
from torchkeep._streams import Sink
from torchkeep._version import __version__

__all__ = ["RULES", "VERDICTS", "CodeAnalysis", "CodeFinding", "Finding", "ScanReport", "exit_code", "to_sarif"]

#: Verdicts from best to worst, with the CLI exit code each one gives (from :class:`Severity`).
VERDICTS: dict[str, int] = {s.verdict: s.exit_code for s in Severity if s != Severity.WARNING}

# suffix -> formats it is expected to hold (a mismatch is a warning: detection is by content anyway)
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
    "torchscript-flatbuffer": "A TorchScript flatbuffer module ('PTMF' at bytes 4..8): torch.jit.load runs its methods, torchkeep cannot read it",
    "nested-torchscript": "A TorchScript archive inside the file, which torch.load passes to torch.jit.load",
    "pt2-graph": "A torch.export graph string that torch.export.load would run as Python (a shape expression sympy evaluates, a name FX writes into code)",
    "native-code": "Compiled native code a loader runs (an AOTInductor library in a .pt2)",
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


@dataclass(frozen=True)
class CodeFinding:
    """A reason the file's code is not allowed (turned into a :class:`Finding`)."""

    rule: str
    name: str  # the operator, class or member concerned
    stream: str  # the archive member or ONNX part
    why: str
    severity: str = "dangerous"


@dataclass
class CodeAnalysis:
    """What :func:`torchkeep._scan_code.analyse_code` found.

    Attributes:
        findings: the reasons the code is not allowed.
        code: where code runs -> the operators it calls, sorted (``"__torch__.Net.forward": ["aten::conv2d",
            ...]``; TorchScript methods run at ``torch.jit.load`` are marked ``(runs at load)``).
        notes: facts worth knowing (methods that run at load, external data read).
    """

    findings: list[CodeFinding] = field(default_factory=list)
    code: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
            if f.offset is not None and rep.format not in ZIP_FORMATS:
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
