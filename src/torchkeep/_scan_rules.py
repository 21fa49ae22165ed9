"""What each global a pickle names *is*, and which calls on it a weights file may make.

The scanner (:mod:`torchkeep._pickle_vm`) follows a pickle with CPython's own unpickler and records every
global it asks for and every call, BUILD and item assignment it makes. This module judges them,
**allow-list first**:

- :data:`CALLS`: the callables ``torch.save``, ``numpy`` and plain Python write for data, each with the
  shape of the arguments it may receive (:func:`check_args`). Only these calls, with such arguments, keep
  a file ``safe``.
- :data:`VALUES`: globals that are only ever data (dtypes, storage types, layouts, builtin types).
- **model code** (:func:`category` ``"model"``): classes of user modules and model libraries
  (``__main__.Net``, ``torch.nn.modules.conv.Conv2d``, ``timm...``): constructing them the way
  ``torch.save(model)`` does (NEWOBJ / copyreg reconstructors + BUILD, or the class called with constant
  arguments) makes a file ``custom-code``: loading imports and runs that code.
- **everything else** is ``dangerous``: any other function or method call, any standard-library or
  torch/numpy-internal callable that is not on the lists above. The deny-list (:mod:`torchkeep._scan_denylist`:
  :data:`DANGEROUS_MODULES`, :data:`DANGEROUS_NAMES`) only *explains* why (``os: operating system access``); it
  decides nothing.

Python 2 names are mapped exactly as pickle's ``fix_imports`` maps them (all of ``_compat_pickle``).
This module imports nothing heavy.
"""

from __future__ import annotations

import _compat_pickle
import enum
import sys

from torchkeep._scan_denylist import DANGEROUS_MODULES, DANGEROUS_NAMES, explain
from torchkeep._scan_names import definitions

__all__ = [
    "CALLS",
    "DANGEROUS_MODULES",
    "DANGEROUS_NAMES",
    "DATA_CLASSES",
    "RECONSTRUCTORS",
    "VALUES",
    "Severity",
    "category",
    "classify",
    "explain",
    "resolve_names",
]


class Severity(enum.IntEnum):
    """How bad a finding is, and the verdict a file gets from its worst finding: the one ordering of the
    whole scanner (higher is worse). Reports carry the labels (``"custom-code"``); ``Severity.of`` reads them.

    A ``warning`` finding does not change the verdict (a file with only warnings is ``safe``), and a file
    that cannot be read whole is ``error`` unless something dangerous was already found in it.
    """

    SAFE = 0
    WARNING = 1
    CUSTOM_CODE = 2
    ERROR = 3
    DANGEROUS = 4

    @property
    def label(self) -> str:
        """``"safe"``, ``"warning"``, ``"custom-code"``, ``"error"`` or ``"dangerous"``."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def of(cls, label: str) -> Severity:
        """The member of a label (``"custom-code"`` -> ``CUSTOM_CODE``)."""
        return cls[label.upper().replace("-", "_")]

    @property
    def verdict(self) -> str:
        """The verdict of a file whose worst finding has this severity."""
        return "safe" if self <= Severity.WARNING else self.label

    @property
    def exit_code(self) -> int:
        """The ``torchkeep scan`` exit code of this verdict (0 safe, 1 custom-code, 2 dangerous, 3 error)."""
        return {Severity.CUSTOM_CODE: 1, Severity.DANGEROUS: 2, Severity.ERROR: 3}.get(self, 0)

    @property
    def sarif_level(self) -> str:
        """SARIF ``level`` of a finding with this severity."""
        return {Severity.DANGEROUS: "error", Severity.ERROR: "error", Severity.CUSTOM_CODE: "warning"}.get(self, "note")

    @property
    def security_severity(self) -> str:
        """GitHub's ``security-severity`` score (critical >= 9.0, medium 4.0-6.9, low < 4.0)."""
        return {Severity.DANGEROUS: "9.0", Severity.CUSTOM_CODE: "5.0", Severity.ERROR: "3.0"}.get(self, "2.0")


#: the severity a global's category() gives when a pickle imports it
CATEGORY_SEVERITY: dict[str, Severity] = {
    "value": Severity.SAFE, "call": Severity.SAFE, "data-class": Severity.SAFE,
    "stdlib-object": Severity.CUSTOM_CODE, "model": Severity.CUSTOM_CODE, "model-function": Severity.CUSTOM_CODE,
    "dangerous": Severity.DANGEROUS,
}  # fmt: skip


# -- fix_imports, exactly as pickle applies it ----------------------------------------------------------
def resolve_names(module: str, name: str) -> list[tuple[str, str]]:
    """The (module, name) pairs an unpickler may import for a global spelled ``module name``.

    Protocols < 3 map Python 2 names with ``_compat_pickle`` (``__builtin__ xrange`` -> ``builtins
    range``); protocol 3+ imports the name as written. The C unpickler does not tell which protocol is
    in force at each GLOBAL, so both spellings are returned when both can exist in Python 3. A Python 2
    spelling that cannot exist in Python 3 (its module or name was renamed, which is why it is mapped)
    is left out: importing it fails, nothing runs.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return [_compat_pickle.NAME_MAPPING[(module, name)]]  # the raw name was removed in Python 3
    if module in _compat_pickle.IMPORT_MAPPING:
        mapped = (_compat_pickle.IMPORT_MAPPING[module], name)
        top = module.split(".")[0]
        return [mapped, (module, name)] if top in sys.stdlib_module_names else [mapped]
    return [(module, name)]


# -- the allow-list --------------------------------------------------------------------------------------
_TORCH_DTYPES = ["float16", "float32", "float64", "bfloat16", "half", "float", "double", "complex32", "complex64", "complex128", "cfloat", "cdouble", "chalf", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "short", "int", "long", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "int1", "int2", "int3", "int4", "int5", "int6", "int7"]  # fmt: skip
_STORAGE_TYPES = ["Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexDouble", "ComplexFloat", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4"]  # fmt: skip
_TENSOR_TYPES = ["Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"]

#: Globals that are only data: referencing them runs nothing (value kind in the second field).
VALUES: dict[str, str] = {
    **{f"torch.{d}": "dtype" for d in _TORCH_DTYPES},
    **{f"torch.{t}Storage": "storage-type" for t in _STORAGE_TYPES},
    **{f"torch.cuda.{t}Storage": "storage-type" for t in _STORAGE_TYPES},
    "torch.storage.UntypedStorage": "storage-type",
    "torch.storage.TypedStorage": "storage-type",
    "torch.UntypedStorage": "storage-type",
    "torch.TypedStorage": "storage-type",
    **{f"torch.{t}Tensor": "tensor-type" for t in _TENSOR_TYPES},
    **{f"torch.cuda.{t}Tensor": "tensor-type" for t in _TENSOR_TYPES},
    "torch.Tensor": "tensor-type",
    "torch._tensor.Tensor": "tensor-type",
    "torch.nn.parameter.Parameter": "tensor-type",
    "torch.nn.parameter.Buffer": "tensor-type",
    **{f"torch.{x}": "layout" for x in ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged")},
    **{f"torch.{x}": "memory-format" for x in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format")},
    **{f"torch.{x}": "qscheme" for x in ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric", "per_channel_affine_float_qparams")},
    "numpy.ndarray": "ndarray-type",
    "numpy.dtype": "np-dtype-type",
    "numpy.random._pcg64.PCG64": "bitgen-type",
    "numpy.random._pcg64.PCG64DXSM": "bitgen-type",
    "numpy.random._mt19937.MT19937": "bitgen-type",
    "numpy.random._philox.Philox": "bitgen-type",
    "numpy.random._sfc64.SFC64": "bitgen-type",
    "numpy.random.bit_generator.SeedSequence": "seedseq-type",
    "typing.Any": "type",
    **{f"builtins.{n}": "type" for n in ("int", "float", "str", "bool", "bytes", "bytearray", "complex", "list", "tuple", "dict", "set", "frozenset", "object", "range", "slice")},
    "collections.OrderedDict": "type",
}

# Argument shapes (see check_args): a short code per positional argument; "*" = any number more of the last.
#   int bool float num str bytes  - that Python type (bool for int is accepted, as pickle writes it)
#   ints      - a tuple/list of ints, or a torch.Size
#   plain     - constants and containers of constants, and results of safe calls (data only)
#   tensor    - the result of a tensor rebuild;  storage - a torch storage persistent id
#   sparse-parts - a sparse tensor's parts: 2 or 3 tensors, its size, and for COO the optional is_coalesced
#   hooks     - None or an empty OrderedDict/dict (backward hooks run code on backward)
#   dtype / layout / qscheme / tensor-type / ndarray-type / np-dtype / bitgen / device: those values
#   rebuild   - a tensor-rebuild function global (its arguments are checked against its own shape)
#   opt:X     - X or None;  any-plain-or-tensor: plain data or tensors
_REBUILD_TENSOR = ("storage", "int", "ints", "ints", "bool", "hooks", "opt:plain")
#: Calls a weights file may make: qualified name -> (argument shapes, what the result is).
CALLS: dict[str, tuple[tuple[str, ...], str]] = {
    "torch._utils._rebuild_tensor": (("storage", "int", "ints", "ints"), "tensor"),
    "torch._utils._rebuild_tensor_v2": (_REBUILD_TENSOR, "tensor"),
    "torch._utils._rebuild_tensor_v3": (("storage", "int", "ints", "ints", "bool", "hooks", "dtype", "opt:plain"), "tensor"),
    "torch._utils._rebuild_parameter": (("tensor", "bool", "hooks"), "tensor"),
    "torch._utils._rebuild_parameter_with_state": (("tensor", "bool", "hooks", "plain"), "tensor"),
    "torch._utils._rebuild_qtensor": (("storage", "int", "ints", "ints", "qparams", "bool", "hooks"), "tensor"),
    "torch._utils._rebuild_sparse_tensor": (("layout", "sparse-parts"), "tensor"),
    "torch._utils._rebuild_nested_tensor": (("tensor", "tensor", "tensor", "tensor"), "tensor"),
    "torch._utils._rebuild_meta_tensor_no_storage": (("dtype", "ints", "ints", "bool"), "tensor"),
    "torch._utils._rebuild_device_tensor_from_numpy": (("ndarray", "dtype", "str", "bool"), "tensor"),
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": (("tensor", "dtype", "str", "bool"), "tensor"),
    "torch._tensor._rebuild_from_type_v2": (("rebuild", "tensor-type", "rebuild-args", "opt:plain"), "tensor"),
    "torch._tensor._rebuild_from_type": (("rebuild", "tensor-type", "rebuild-args", "opt:plain"), "tensor"),
    "torch.storage._load_from_bytes": (("bytes",), "nested"),
    "torch.serialization._get_layout": (("str",), "layout"),
    "torch.Size": (("ints",), "data"),
    "torch.device": (("str", "opt:int"), "data"),
    "torch.torch_version.TorchVersion": (("str",), "data"),
    "torch.jit._pickle.build_intlist": (("const",), "data"),
    "torch.jit._pickle.build_doublelist": (("const",), "data"),
    "torch.jit._pickle.build_boollist": (("const",), "data"),
    "torch.jit._pickle.build_tensorlist": (("tensors",), "data"),
    "torch.jit._pickle.build_tensor_from_id": (("int",), "tensor"),
    "torch.jit._pickle.restore_type_tag": (("const", "str"), "data"),
    "collections.OrderedDict": (("opt:plain",), "data"),
    "collections.Counter": (("opt:plain",), "data"),
    "collections.deque": (("opt:plain", "opt:int"), "data"),
    "collections.defaultdict": (("opt:type",), "data"),
    "_codecs.encode": (("str", "str", "opt:str"), "data"),
    "numpy.core.multiarray._reconstruct": (("ndarray-type", "ints", "bytes"), "ndarray"),
    "numpy._core.multiarray._reconstruct": (("ndarray-type", "ints", "bytes"), "ndarray"),
    "numpy.core.multiarray.scalar": (("np-dtype", "opt:const"), "data"),
    "numpy._core.multiarray.scalar": (("np-dtype", "opt:const"), "data"),
    "numpy.core.numeric._frombuffer": (("bytes", "np-dtype", "ints", "str"), "ndarray"),
    "numpy._core.numeric._frombuffer": (("bytes", "np-dtype", "ints", "str"), "ndarray"),
    "numpy.dtype": (("str", "opt:bool", "opt:bool"), "np-dtype"),
    "numpy.random._pickle.__randomstate_ctor": (("opt:bitgen-any", "opt:bitgen-ctor"), "data"),
    "numpy.random._pickle.__generator_ctor": (("opt:bitgen-any", "opt:bitgen-ctor"), "data"),
    "numpy.random._pickle.__bit_generator_ctor": (("opt:bitgen-name",), "bitgen"),
    "numpy.random.mtrand._legacy_seeding": (("plain",), "data"),
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": (("seedseq-type", "int", "plain"), "data"),
    "datetime.datetime": (("plain", "*"), "data"),
    "datetime.date": (("plain", "*"), "data"),
    "datetime.time": (("plain", "*"), "data"),
    "datetime.timedelta": (("plain", "*"), "data"),
    "datetime.timezone": (("plain", "*"), "data"),
    "decimal.Decimal": (("plain",), "data"),
    "fractions.Fraction": (("plain", "*"), "data"),
    "uuid.UUID": (("opt:plain", "*"), "data"),
    "pathlib.Path": (("str", "*"), "data"),
    "pathlib.PosixPath": (("str", "*"), "data"),
    "pathlib.WindowsPath": (("str", "*"), "data"),
    "pathlib.PurePath": (("str", "*"), "data"),
    "pathlib.PurePosixPath": (("str", "*"), "data"),
    "pathlib.PureWindowsPath": (("str", "*"), "data"),
    # torch.distributed.checkpoint's .metadata: dataclasses and one enum
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING": (("int",), "data"),
    **{f"builtins.{n}": (("opt:plain", "*"), "data") for n in ("set", "frozenset", "slice", "complex", "bytearray", "bytes", "range", "int", "float", "str", "bool", "tuple", "list", "dict", "object")},
}

#: copyreg's reconstructors: construct their first argument (judged as that class's construction).
RECONSTRUCTORS = frozenset(["copyreg.__newobj__", "copyreg.__newobj_ex__", "copyreg._reconstructor"])

#: Classes whose instances are plain data: NEWOBJ (``cls.__new__``) + BUILD on them is safe.
DATA_CLASSES = frozenset(
    [
        "collections.OrderedDict", "collections.Counter", "collections.deque", "collections.defaultdict",
        "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
        "decimal.Decimal", "fractions.Fraction", "uuid.UUID", "torch.Size", "torch.torch_version.TorchVersion",
        "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePath", "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath", "numpy.random.bit_generator.SeedSequence",
        *(f"torch.distributed.checkpoint.metadata.{c}" for c in ("Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata", "TensorProperties", "MetadataIndex", "StorageMeta")),
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed.checkpoint.planner.WriteItem", "torch.distributed.checkpoint.planner.ReadItem",
        *(f"builtins.{n}" for n in ("set", "frozenset", "bytearray", "list", "dict", "object", "int", "float", "str", "bytes", "tuple", "complex")),
    ]
)

#: Standard-library classes that are not plain data but only hold state: at most ``custom-code``.
STDLIB_OBJECTS = frozenset(
    ["argparse.Namespace", "types.SimpleNamespace", "functools.partial", "enum.Enum", "enum.IntEnum",
     "enum.Flag", "enum.IntFlag", "logging.Logger", "logging.getLogger", "re.Pattern"]
)

# torch packages whose classes are model code (torch.save(model) names them): at most custom-code
_TORCH_MODEL_PACKAGES = (
    "torch.nn.", "torch.ao.nn.", "torch.ao.quantization.", "torch.quantization.", "torch.optim.",
    "torch.distributions.", "torch.nn.utils.", "torch.utils.hooks.", "torch.nn.functional.",
    "torch.nn.init.", "torch.ao.ns.", "torch.nn.intrinsic.", "torch.nn.qat.", "torch.nn.quantized.",
)
# infrastructure whose internals are never model code (anything not on the lists is dangerous)
_INTERNAL_TOPS = {"torch", "numpy", "_compat_pickle", "copyreg", "__builtin__"}


def _is_model_module(module: str) -> bool:
    """User modules and model libraries: not the standard library, not torch/numpy internals."""
    top = module.split(".")[0]
    if top in _INTERNAL_TOPS or top in sys.stdlib_module_names:
        return (module + ".").startswith(_TORCH_MODEL_PACKAGES)
    return True


def category(module: str, name: str, *, torchscript: bool = False) -> tuple[str, str]:
    """What a global is: ``("call"|"value"|"data-class"|"stdlib-object"|"model"|"dangerous", why)``.

    ``call``: on :data:`CALLS` (its arguments are checked per call); ``value``: on :data:`VALUES`;
    ``data-class``: constructing it (NEWOBJ + BUILD) builds plain data; ``stdlib-object``: a standard-
    library class that only holds state; ``model``: code of a user module or model library
    (custom-code); ``dangerous``: everything else.
    """
    qualified = f"{module}.{name}"
    if qualified in CALLS or qualified in RECONSTRUCTORS:
        return "call", "rebuilds tensors, storages or plain data"
    if qualified in VALUES:
        return "value", "a data value (dtype, storage type, layout...)"
    if qualified in DATA_CLASSES:
        return "data-class", "plain data"
    if torchscript and (module == "__torch__" or module.startswith("__torch__.")):
        return "value", "TorchScript class (compiled TorchScript, not a Python import)"
    if (
        module == "numpy.dtypes" and "." not in name and name.endswith("DType") and name[:1] != "_"
    ):  # numpy >= 1.25 pickles scalar dtypes by class
        return "value", "a numpy dtype class"
    if qualified in STDLIB_OBJECTS:
        return "stdlib-object", "a standard-library class that holds state"
    why = explain(module, name)
    if why is not None:
        return "dangerous", why
    if _is_model_module(module):
        reexported = _reexport(module, name, torchscript)
        if reexported is not None:
            return reexported
        top = module.split(".")[0]
        if (top in _INTERNAL_TOPS or top in sys.stdlib_module_names) and not name.split(".")[-1][:1].isupper():
            # torch.nn.functional.relu stored in a pickled model is model code; calling it is not rebuilding
            return "model-function", "a torch function referenced by model code (calling it is dangerous)"
        return "model", "imports a class or function whose code runs when the file is loaded"
    top = module.split(".")[0]
    where = "torch/numpy internals" if top in _INTERNAL_TOPS else "the standard library"
    return "dangerous", f"a callable of {where} that is not on the allow-list of data types"


def _reexport(module: str, name: str, torchscript: bool) -> tuple[str, str] | None:
    """The category of a model-module name that is really another module's object, or None if it is not.

    Pickles spell a class or function by the module that defines it, so a re-exported spelling
    (``torch.ao.quantization.fx.graph_module.GraphModule`` for ``torch.fx``'s) is never written by
    ``torch.save``: the object the loader would get is judged (see :mod:`torchkeep._scan_names`).
    """
    defs = definitions(module, name)
    if defs is None:
        return None  # not installed, or no Python source: judged as spelled
    worst: tuple[str, str] | None = None
    for d in defs:
        if (d.module, d.name) == (module, name):
            continue
        if d.kind == "module":
            return "dangerous", f"{module}.{name} is the module {d.module} ({d.how}): no weights file names a module"
        kind, why = category(d.module, d.name, torchscript=torchscript) if d.name else ("dangerous", "")
        if kind == "dangerous":
            return "dangerous", f"{module}.{name} is {d.module}.{d.name} re-exported ({d.how}): {why}"
        worst = worst or ("model", f"re-exports {d.module}.{d.name} ({d.how}): custom code, and no pickler "
                                   "writes this spelling")
    return worst


def classify(module: str, name: str, *, torchscript: bool = False) -> tuple[str, str]:
    """Severity of importing one global on its own: ``"safe"``, ``"custom-code"`` or ``"dangerous"``.

    What a file does with the global (calls, arguments) is judged by the scanner on top of this.
    """
    worst, worst_why = Severity.SAFE, ""
    for mod, nm in resolve_names(module, name):
        kind, why = category(mod, nm, torchscript=torchscript)
        if CATEGORY_SEVERITY[kind] > worst or not worst_why:
            worst, worst_why = CATEGORY_SEVERITY[kind], why
    return worst.label, worst_why
