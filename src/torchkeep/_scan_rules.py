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
  torch/numpy-internal callable that is not on the lists above. The deny-list (:data:`DANGEROUS_MODULES`,
  :data:`DANGEROUS_NAMES`) only *explains* why (``os: operating system access``); it decides nothing.

Python 2 names are mapped exactly as pickle's ``fix_imports`` maps them (all of ``_compat_pickle``).
This module imports nothing heavy.
"""

from __future__ import annotations

import _compat_pickle
import enum
import sys

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
    "torch._utils._rebuild_sparse_tensor": (("layout", "tensors"), "tensor"),
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

# -- the deny-list: explanations only --------------------------------------------------------------------
#: Modules (and their submodules) with no business in a weights file: module -> why.
DANGEROUS_MODULES: dict[str, str] = {
    "os": "operating system access (os.system, file and process functions)",
    "posix": "the os module under another name (posix.system)",
    "nt": "the os module under another name on Windows",
    "posixpath": "file system access (os.path)",
    "ntpath": "file system access (os.path on Windows)",
    "subprocess": "runs programs",
    "_posixsubprocess": "runs programs (fork_exec)",
    "pty": "spawns processes (pty.spawn)",
    "platform": "runs programs (platform._syscmd_*)",
    "uuid": "runs programs (uuid._get_command_stdout)",
    "_osx_support": "runs programs via os.system",
    "_aix_support": "runs programs via os.system",
    "_pyrepl": "runs programs via its pagers",
    "signal": "changes process signal handling",
    "resource": "changes process limits",
    "fcntl": "low-level file descriptor control",
    "termios": "terminal control",
    "tty": "terminal control",
    "pwd": "reads the user database",
    "grp": "reads the group database",
    "_thread": "starts threads running arbitrary callables",
    "threading": "starts threads running arbitrary callables",
    "multiprocessing": "starts processes running arbitrary callables",
    "_multiprocessing": "process primitives",
    "concurrent": "runs callables in executors",
    "asyncio": "event loop with subprocess and network functions",
    "atexit": "registers callables to run at exit",
    "sched": "runs callables later",
    "winreg": "Windows registry access",
    "_winapi": "Windows API (CreateProcess)",
    "msvcrt": "Windows C runtime",
    "sys": "interpreter internals (sys.modules, sys.exit, audit hooks)",
    "builtins": "interpreter builtins",
    "importlib": "imports any module (import machinery)",
    "pkgutil": "resolves any module:attribute (pkgutil.resolve_name, GHSA-vvpj-8cmc-gx39)",
    "zipimport": "imports code from archives",
    "runpy": "runs modules and code",
    "code": "runs source code (InteractiveInterpreter.runcode)",
    "codeop": "compiles source code",
    "marshal": "deserialises code objects",
    "types": "builds functions and code objects (FunctionType, CodeType)",
    "ctypes": "foreign function interface: raw memory and native calls",
    "_ctypes": "foreign function interface",
    "gc": "reaches every live object (gc.get_objects)",
    "inspect": "reaches frames and source of live objects",
    "site": "executes .pth import lines (site.addpackage)",
    "sysconfig": "interpreter configuration",
    "functools": "builds deferred calls (functools.partial / reduce)",
    "operator": "attribute and item lookup gadgets (attrgetter, methodcaller, itemgetter)",
    "_operator": "attribute and item lookup gadgets (attrgetter, methodcaller, itemgetter)",
    "copy": "calls __deepcopy__/__reduce_ex__ of arbitrary objects",
    "pickle": "unpickles more data (pickle.loads inside a pickle)",
    "_pickle": "unpickles more data",
    "pickletools": "pickle internals",
    "shelve": "opens files and unpickles them",
    "dill": "serialises code",
    "cloudpickle": "rebuilds functions from code objects",
    "joblib": "loads pickles from files",
    "yaml": "yaml.load/unsafe_load build arbitrary objects",
    "jsonpickle": "builds arbitrary objects",
    "pdb": "debugger (runs code strings)",
    "bdb": "debugger (runs code strings)",
    "profile": "profile.run executes code strings",
    "cProfile": "cProfile.run executes code strings",
    "timeit": "timeit executes code strings",
    "trace": "trace runs code",
    "doctest": "runs code from docstrings",
    "idlelib": "IDLE's interpreter runs code",
    "lib2to3": "parses grammars with eval",
    "pydoc": "pydoc.locate imports anything; pagers run programs",
    "unittest": "unittest.mock patches any attribute",
    "test": "test.support spawns interpreters",
    "tkinter": "GUI toolkit with Tcl eval",
    "turtle": "GUI toolkit with Tcl eval",
    "logging.config": "evaluates configuration (logging.config.listen / fileConfig)",
    "logging.handlers": "handlers create files and open sockets",
    "distutils": "builds and installs code",
    "setuptools": "builds and installs code",
    "_distutils_hack": "setuptools import hook",
    "pip": "installs packages (CVE-2025-1716)",
    "ensurepip": "installs packages",
    "venv": "creates environments and runs pip",
    "io": "opens files (io.open, io.FileIO)",
    "_io": "opens files (_io.FileIO)",
    "codecs": "opens files (codecs.open)",
    "pathlib": "file system access",
    "shutil": "copies, moves and deletes files",
    "tempfile": "creates files",
    "glob": "file system access",
    "fileinput": "opens files",
    "mmap": "maps files into memory",
    "tarfile": "extracts archives (path traversal)",
    "zipfile": "extracts archives",
    "gzip": "opens files",
    "bz2": "opens files",
    "lzma": "opens files",
    "sqlite3": "opens database files (and runs SQL)",
    "_sqlite3": "opens database files",
    "dbm": "opens database files",
    "xml": "parsers that fetch files and URLs",
    "mailcap": "runs mailcap commands",
    "socket": "network access",
    "_socket": "network access",
    "socketserver": "network servers",
    "ssl": "network access (ssl.get_server_certificate exfiltration)",
    "select": "network and file descriptor polling",
    "selectors": "network and file descriptor polling",
    "http": "network access",
    "urllib": "network access (urllib.request.urlopen)",
    "urllib3": "network access",
    "requests": "network access",
    "httpx": "network access",
    "aiohttp": "network access",
    "ftplib": "network access",
    "smtplib": "network access / mail",
    "poplib": "network access / mail",
    "imaplib": "network access; IMAP4_stream runs a shell command",
    "nntplib": "network access",
    "telnetlib": "network access",
    "xmlrpc": "remote procedure calls",
    "webbrowser": "opens URLs / runs a browser",
    "antigravity": "opens a web browser when imported",
    "httplib": "network access (Python 2)",
    "urllib2": "network access (Python 2)",
    "paramiko": "SSH client",
    "fsspec": "opens local and remote files",
    "boto3": "cloud API client",
    "huggingface_hub": "downloads files",
    "IPython": "interactive shell (runs code)",
    "sympy": "parses and evaluates expressions given as strings (sympify, Poly, parse_expr)",
    "numexpr": "evaluates expression strings",
    "jinja2": "template engine (runs template code)",
    "mako": "template engine (runs Python in templates)",
    "pandas.core.computation": "pandas.eval/query evaluate expression strings",
    "matplotlib": "writes files and runs external programs (savefig, animation writers)",
    "PIL": "opens and writes image files",
    "tensorboard": "writes event files",
    "tensorflow": "loads and runs saved programs",
    "keras": "loads and runs saved models (Lambda layers)",
    "ipykernel": "interactive kernel (runs code)",
    "pandas.io": "pandas readers (read_pickle loads pickles)",
    "numpy.testing": "runstring() executes code strings",
    "numpy.f2py": "evaluates strings and builds extension modules",
    "numpy.distutils": "builds and runs compilers",
    "numpy.ctypeslib": "loads native libraries",
    "numpy.lib.npyio": "loads files (including pickles)",
    "numpy.lib._npyio_impl": "loads files (including pickles)",
    "torch.serialization": "torch.load: loads another file (and its pickle)",
    "torch.hub": "downloads and runs repositories",
    "torch.jit": "loads and compiles TorchScript code",
    "torch.package": "imports code from packages",
    "torch._inductor": "compiles and runs code (codecache.compile_file)",
    "torch._dynamo": "evaluates guard expressions",
    "torch.fx": "builds and runs generated code (symbolic_shapes guards)",
    "torch.utils.data": "datapipes decoders unpickle data",
    "torch.utils._config_module": "load_config unpickles data",
    "torch.utils.bottleneck": "runs scripts under the profiler",
    "torch.utils.collect_env": "runs programs",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "torch.utils.benchmark": "Timer executes code strings",
    "torch.utils.tensorboard": "writes files",
    "torch.testing": "test helpers that run code",
    "torch.distributed": "network access / remote procedure calls",
    "torch.multiprocessing": "starts processes",
    "torch.ops": "calls any registered operator",
    "torch._ops": "calls any registered operator",
    "torch.library": "registers operators",
    "torch._export": "deserialises programs",
    "torch.export": "loads programs from files",
    "torch.onnx": "exports/loads models from files",
    "torch.compiler": "compiles code",
    "torch.utils.model_zoo": "downloads and loads files",
    "torch.profiler": "writes trace files",
    "torch.cuda.memory": "writes memory snapshot files",
}

#: Single names with a known effect (explanations; any non-allow-listed call is dangerous anyway).
DANGEROUS_NAMES: dict[str, str] = {
    "torch.load": "loads another file and unpickles it",
    "torch.compile": "compiles and runs code",
    "torch.save": "writes files",
    "torch.from_file": "maps any file into a tensor",
    "numpy.load": "loads a file (pickles allowed)",
    "numpy.loadtxt": "reads files",
    "numpy.genfromtxt": "reads files",
    "numpy.fromfile": "reads files",
    "numpy.memmap": "maps files",
    "numpy.save": "writes files",
    "numpy.savez": "writes files",
    "numpy.savetxt": "writes files",
    "numpy.tofile": "writes files",
    "numpy.DataSource": "opens files and URLs",
    "pandas.read_pickle": "unpickles a file",
    "copyreg.add_extension": "rewires the EXT opcode registry",
    "copyreg.remove_extension": "rewires the EXT opcode registry",
    "copyreg.dispatch_table": "rewires pickling",
    "copyreg.pickle": "rewires pickling",
    "logging.FileHandler": "creates files",
    "logging.basicConfig": "creates files (filename=)",
    "numpy.dtypes._add_dtype_helper": "plants any object in numpy.dtypes under a name (then trusted as a dtype class)",
}

# Function names that load, open, run, write or fetch, whatever module they live in.
_DANGEROUS_WORDS = (
    "load", "open", "system", "popen", "spawn", "exec", "eval", "run_path", "run_module", "import",
    "download", "urlretrieve", "save", "write", "dump", "remove", "unlink", "rmtree", "mkdir", "makedirs",
    "rename", "chmod", "chown", "symlink", "shell", "subprocess", "compile", "from_file", "fromfile",
    "dlopen", "getattr", "setattr", "delattr", "globals", "locals", "__import__", "read_pickle", "unpickle",
)
# Components that reach a denied module through another module's attribute (torch.serialization.os).
_DANGEROUS_COMPONENTS = {
    "os", "sys", "subprocess", "builtins", "__builtin__", "__builtins__", "posix", "nt", "importlib",
    "pickle", "marshal", "ctypes", "socket", "shutil", "pty", "runpy", "_os", "_sys", "_subprocess",
}  # fmt: skip


def _denied_module(qualified: str) -> tuple[str, str] | None:
    parts = qualified.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in DANGEROUS_MODULES:
            return prefix, DANGEROUS_MODULES[prefix]
    return None


def explain(module: str, name: str) -> str | None:
    """Why the global is known to be dangerous (deny-list and structural rules), or None."""
    qualified = f"{module}.{name}"
    parts = name.split(".")
    if not module or not name or any(not p for p in parts) or any(not p for p in module.split(".")):
        return "empty component in the global's name"
    if any(p.startswith("__") and p.endswith("__") for p in parts):
        return f"reaches interpreter internals through a dunder attribute ({name})"
    for dotted in (qualified, module):
        if dotted in DANGEROUS_NAMES:
            return DANGEROUS_NAMES[dotted]
    denied = _denied_module(qualified)
    if denied is not None:
        return f"{denied[0]}: {denied[1]}"
    last = parts[-1].lower()
    word = next((w for w in _DANGEROUS_WORDS if w in last), None)
    if word is not None and not parts[-1][:1].isupper():
        return f"{parts[-1]}: a function that loads, opens, writes, fetches or runs something ({word})"
    components = module.split(".")[1:] + parts
    hit = next((c for c in components if c in _DANGEROUS_COMPONENTS), None)
    if hit is not None:
        return f"reaches the {hit.lstrip('_')} module through an attribute path ({qualified})"
    if len(parts) > 1 and not all(p[:1].isupper() for p in parts[:-1]):
        return f"dotted name walks attributes of a module or function ({name})"
    return None


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
