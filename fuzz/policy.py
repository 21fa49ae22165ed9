"""What counts as code, what counts as dangerous, and when the scanner's verdict is a failure.

Written from the loaders' side, not from torchkeep's rules: the *data* globals are the ones loading a plain
tensor / array / checkpoint file resolves (torch's own ``weights_only`` allow-list, numpy's array and
dtype reconstructors, builtin containers), spelled as pickle's ``fix_imports`` would map them. Any other
global the unpickler resolves is code (a class or function the file makes the loader import and, usually,
call). Events come from the oracle's audit hook; the ones it refused, except imports, directory listings
and a few other harmless ones, are *dangerous*: commands, ``exec``, writes, sockets, ctypes,
nested ``marshal``, ... (see ``NOT_DANGEROUS``).

Failure classes (a case can have several):

``safe-but-ran``         the scanner said ``safe``; a loader made a dangerous call.
``safe-but-code``        the scanner said ``safe``; a loader resolved a non-data global or ran other code.
``custom-code-but-ran``  the scanner said ``custom-code``; a loader made a dangerous call.
``unreported-global``    the scanner said ``custom-code``; a loader resolved a non-data global that is not
                         among the scanner's ``imports`` (the report must list every callable).
``error-but-ran``        the scanner could not read the file (``error``); a loader made a dangerous call
                         (fail-open: the issue wants such files ``dangerous``).
``error-but-code``       the scanner said ``error``; a loader *accepted* the file and resolved a non-data
                         global on the way (a model file the scanner cannot read must not pass as unreadable).
``scanner-raised``       ``scan`` raised instead of returning a report.
``scanner-imported-torch`` ``scan`` imported torch (it promises not to).

Globals from modules that cannot be found here (``os .system``, ``__torch__.X`` outside TorchScript) run
nothing: they are counted apart (``unimportable``), not as code.

Not failures, counted: ``dangerous`` verdicts whose imports miss a global the loader resolved, scanner
timeouts (a slow scan fails closed), ``dangerous``/``custom-code`` verdicts on files whose loads stayed
clean (false alarms; the fuzzer does not judge those).
"""

from __future__ import annotations

import _compat_pickle
import re
from dataclasses import dataclass, field

_TORCH_DATA = {
    "Size", "device", "Tensor", "dtype", "layout", "memory_format", "qscheme",
    # dtypes, layouts, memory formats and qschemes (torch.<name> objects that pickle by name)
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "complex32", "complex64",
    "complex128", "cfloat", "cdouble", "chalf", "uint8", "uint16", "uint32", "uint64", "int8", "int16",
    "int32", "int64", "short", "int", "long", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
    "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16", "bcomplex32",
    "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "int1", "int2", "int3", "int4", "int5",
    "int6", "int7", "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn",
    "contiguous_format", "channels_last", "channels_last_3d", "preserve_format",
    "per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
    "per_channel_affine_float_qparams",
}  # fmt: skip
_DATA = {
    "collections.OrderedDict", "collections.Counter", "_codecs.encode",
    "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.bytes", "builtins.complex",
    "builtins.slice", "builtins.range", "builtins.int", "builtins.float", "builtins.str", "builtins.bool",
    "builtins.list", "builtins.tuple", "builtins.dict", "builtins.type",
    "torch.nn.parameter.Parameter", "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
    "torch.storage._load_from_bytes",  # a nested torch.load: what it loads is observed on its own
    "torch._tensor._rebuild_from_type_v2", "torch.serialization._get_layout",
    "torch.nested._internal.nested_tensor._rebuild_njt",
    # identity functions TorchScript's pickles (constants.pkl, *.debug_pkl) name
    "torch.jit._pickle.build_intlist", "torch.jit._pickle.build_tensorlist", "torch.jit._pickle.build_doublelist",
    "torch.jit._pickle.build_boollist", "torch.jit._pickle.build_tensor_from_id", "torch.jit._pickle.restore_type_tag",
    "numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar", "numpy.core.numeric._frombuffer",
    "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._frombuffer", "numpy.core._internal._convert_to_stringdtype_kwargs",
    "numpy.random._pickle.__generator_ctor", "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator", "numpy.random.bit_generator.SeedSequence",
    "numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64", "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64",
    # plain value types: calling them with any arguments builds a value and nothing else
    "builtins.object", "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta",
    "datetime.timezone", "decimal.Decimal", "fractions.Fraction", "uuid.UUID", "collections.deque",
}  # fmt: skip
_DATA_RE = re.compile(
    r"^(torch(\.cuda)?(\.sparse)?\.\w+(Storage|Tensor)"  # legacy storage / tensor classes
    r"|torch\._utils\._rebuild_\w+"  # the tensor rebuild functions
    r"|numpy\.dtypes\.\w+DType"  # numpy 2 dtype classes
    r"|numpy\.(float|int|uint|complex|bool|str|bytes|void|datetime|timedelta|longdouble|half|single|double)\w*)$"
)

# refused events that run code but harm nothing by themselves
NOT_DANGEROUS = {"import", "os.listdir", "os.scandir", "glob.glob", "glob.glob/2", "time.sleep", "array.__new__"}


def canonical(module: str, name: str) -> set[str]:
    """Every spelling of ``module.name`` a report may use: as written, mapped the way pickle's
    ``fix_imports`` maps Python 2 names (modules and names), and numpy's ``core``/``_core`` twins."""
    out = {f"{module}.{name}"}
    if (module, name) in _compat_pickle.NAME_MAPPING:
        m, n = _compat_pickle.NAME_MAPPING[(module, name)]
        out.add(f"{m}.{n}")
    if module in _compat_pickle.IMPORT_MAPPING:
        out.add(f"{_compat_pickle.IMPORT_MAPPING[module]}.{name}")
    for spelled in list(out):
        if spelled.startswith("numpy._core."):
            out.add("numpy.core." + spelled[len("numpy._core.") :])
        elif spelled.startswith("numpy.core."):
            out.add("numpy._core." + spelled[len("numpy.core.") :])
    return out


def is_data(module: str, name: str) -> bool:
    for spelled in canonical(module, name):
        if spelled in _DATA or _DATA_RE.match(spelled):
            return True
        if spelled.startswith("torch.") and spelled[6:] in _TORCH_DATA:
            return True
    return False


@dataclass
class Observation:
    """What the loaders did with one file, summed over loaders."""

    globals: list[tuple[str, str]] = field(default_factory=list)
    code_globals: list[tuple[str, str]] = field(default_factory=list)
    unimportable: list[tuple[str, str]] = field(default_factory=list)  # module not found here: ran nothing
    dangerous: list[tuple[str, str, str]] = field(default_factory=list)  # (loader, event, detail)
    code_events: list[tuple[str, str, str]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # loaders that returned an object
    accepted_code: list[tuple[str, str]] = field(default_factory=list)  # code globals of what they returned
    statuses: dict[str, str] = field(default_factory=dict)

    @property
    def klass(self) -> str:
        if self.dangerous:
            return "dangerous"
        if self.code_globals or self.code_events:
            return "code"
        return "clean"


def observe(runs: dict[str, dict]) -> Observation:
    obs = Observation()
    seen: set[tuple[str, str]] = set()
    missing = {
        detail.split("\x00")[0]
        for run in runs.values()
        for kind, event, detail in run.get("events", [])
        if event == "import" and detail.endswith("\x00missing")
    }
    for loader, run in runs.items():
        obs.statuses[loader] = run.get("status", "?")
        ok = run.get("status") == "ok"
        if ok:
            obs.accepted.append(loader)
        for kind, event, detail in run.get("events", []):
            if event == "torchkeep.fuzz.next_pickle":
                ok = False  # what a later stacked pickle resolves is not part of what pickle.load returned
            if kind == "global" and ok:
                g = (detail.partition("\x00")[0], detail.partition("\x00")[2])
                if not is_data(*g) and g[0] not in missing and g not in obs.accepted_code:
                    obs.accepted_code.append(g)
            if kind == "global":
                module, _, name = detail.partition("\x00")
                g = (module, name)
                if g not in seen:
                    seen.add(g)
                    obs.globals.append(g)
                    if is_data(module, name):
                        continue
                    if module in missing:
                        obs.unimportable.append(g)
                    else:
                        obs.code_globals.append(g)
            elif kind == "blocked":
                if event == "import" and detail.endswith("\x00missing"):
                    continue  # a module that is not there: the import fails, nothing runs
                if event in NOT_DANGEROUS:
                    obs.code_events.append((loader, event, detail))
                else:
                    obs.dangerous.append((loader, event, detail))
    return obs


def reported(g: tuple[str, str], imports: list[str]) -> bool:
    names = set(imports)
    return bool(canonical(*g) & names)


def judge(obs: Observation, scan: dict) -> list[tuple[str, str]]:
    """The failure classes of one case, each with a one-line reason."""
    fails: list[tuple[str, str]] = []
    if scan.get("exception"):
        fails.append(("scanner-raised", scan["exception"][:200]))
        return fails
    if scan.get("imported_torch"):
        fails.append(("scanner-imported-torch", "torch is in sys.modules after scan()"))
    verdict = scan.get("verdict")
    dangerous = sorted({e for _, e, _ in obs.dangerous})
    code = [f"{m}.{n}" for m, n in obs.code_globals] + sorted({e for _, e, _ in obs.code_events})
    if verdict == "safe":
        if dangerous:
            fails.append(("safe-but-ran", f"loader ran {dangerous} (globals {code[:6]})"))
        elif code:
            fails.append(("safe-but-code", f"loader resolved/ran {code[:8]}"))
    elif verdict == "custom-code":
        if dangerous:
            fails.append(("custom-code-but-ran", f"loader ran {dangerous} (globals {code[:6]})"))
        missing = [f"{m}.{n}" for m, n in obs.code_globals if not reported((m, n), scan.get("imports", []))]
        if missing:
            fails.append(("unreported-global", f"not in the report's imports: {missing[:8]}"))
    elif verdict == "error":
        if dangerous:
            fails.append(("error-but-ran", f"loader ran {dangerous} (globals {code[:6]}); scan error: {scan.get('error')}"))
        elif obs.accepted_code:
            accepted = [f"{m}.{n}" for m, n in obs.accepted_code]
            fails.append(
                ("error-but-code", f"{obs.accepted} accepted the file, resolving {accepted[:6]}; scan error: {scan.get('error')}")
            )
    return fails


def unreported_when_dangerous(obs: Observation, scan: dict) -> list[str]:
    if scan.get("verdict") != "dangerous":
        return []
    return [f"{m}.{n}" for m, n in obs.code_globals if not reported((m, n), scan.get("imports", []))]
