"""Which globals a pickle may name: the allow-list, the deny-list and the rules for dotted names.

:func:`classify` turns one ``(module, name)`` seen in a pickle into ``"safe"``, ``"custom-code"`` or
``"dangerous"`` with a one-line reason. The order matters and is the point of the design:

1. the **deny-list** (code execution, OS, files, network, interpreter, import machinery) and the
   structural rules for names (dunder attributes, attribute paths through lower-case names), so that
   nothing on the allow-list can be reached through a trick;
2. the **allow-list**: what ``torch.save`` writes for tensors/storages/dtypes, plain containers and
   NumPy array reconstruction. Only these make a file ``safe``;
3. everything else is ``custom-code``: loading would import that class and run its code.

The deny-list only decides between ``custom-code`` and ``dangerous``; a name missing from it is still
never ``safe``. It collects the modules and gadgets of the picklescan / modelscan / fickling advisories
(GHSA-vvpj-8cmc-gx39 ``pkgutil.resolve_name``, CVE-2025-1716 ``pip``, CVE-2025-10157 submodules of
denied modules, ``_io.FileIO``, ``logging.FileHandler``, ``uuid._get_command_stdout``,
``imaplib.IMAP4_stream``, ``code.InteractiveInterpreter.runcode``, ``cProfile.run``, ``timeit``,
``numpy.testing._private.utils.runstring``, ``torch._inductor.codecache.compile_file``, ...), by whole
module where a module has no business in a weights file. This module imports nothing heavy.
"""

from __future__ import annotations

__all__ = ["DANGEROUS_MODULES", "DANGEROUS_NAMES", "SAFE_NAMES", "classify", "normalize_module"]

# Python 2 names that pickle's fix_imports maps for protocols < 3.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg", "cPickle": "pickle", "commands": "subprocess"}

#: Modules denied as a whole (and every submodule): module -> why.
DANGEROUS_MODULES: dict[str, str] = {
    # process execution and the OS
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
    # interpreter, code objects and import machinery
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
    # (de)serialisers that load more pickles or code
    "pickle": "unpickles more data (pickle.loads inside a pickle)",
    "_pickle": "unpickles more data",
    "pickletools": "pickle internals",
    "shelve": "opens files and unpickles them",
    "dill": "serialises code",
    "cloudpickle": "rebuilds functions from code objects",
    "joblib": "loads pickles from files",
    "yaml": "yaml.load/unsafe_load build arbitrary objects",
    "jsonpickle": "builds arbitrary objects",
    # debuggers, profilers and tooling that run code strings
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
    # packaging
    "distutils": "builds and installs code",
    "setuptools": "builds and installs code",
    "_distutils_hack": "setuptools import hook",
    "pip": "installs packages (CVE-2025-1716)",
    "ensurepip": "installs packages",
    "venv": "creates environments and runs pip",
    # files
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
    # network
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
    "httplib": "network access (Python 2)",
    "urllib2": "network access (Python 2)",
    "paramiko": "SSH client",
    "fsspec": "opens local and remote files",
    "boto3": "cloud API client",
    "huggingface_hub": "downloads files",
    "IPython": "interactive shell (runs code)",
    "ipykernel": "interactive kernel (runs code)",
    "pandas.io": "pandas readers (read_pickle loads pickles)",
    # NumPy gadgets
    "numpy.testing": "runstring() executes code strings",
    "numpy.f2py": "evaluates strings and builds extension modules",
    "numpy.distutils": "builds and runs compilers",
    "numpy.ctypeslib": "loads native libraries",
    "numpy.lib.npyio": "loads files (including pickles)",
    "numpy.lib._npyio_impl": "loads files (including pickles)",
    # torch gadgets (loaders, compilers, code execution)
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

#: Single names denied inside modules that are otherwise only "custom-code".
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

# Safe globals: what torch.save writes for tensors and storages, plus plain containers and NumPy.
_TORCH_DTYPES = ["float16", "float32", "float64", "bfloat16", "half", "float", "double", "complex32", "complex64", "complex128", "cfloat", "cdouble", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "short", "int", "long", "bool", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8", "bits16", "bcomplex32", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "int1", "int2", "int3", "int4", "int5", "int6", "int7"]
_STORAGE_TYPES = ["Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexDouble", "ComplexFloat", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4"]
_TENSOR_TYPES = ["Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"]
_REBUILD = ["_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter", "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor", "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_cpu_tensor", "_rebuild_device_tensor_from_numpy", "_rebuild_xla_tensor", "_rebuild_mtia_tensor"]

#: Fully qualified names that rebuild data without running user code.
SAFE_NAMES: frozenset[str] = frozenset(
    [
        "collections.OrderedDict",
        "collections.Counter",
        "collections.defaultdict",
        "collections.deque",
        "_codecs.encode",
        "copyreg._reconstructor",
        "copyreg.__newobj__",
        "copyreg.__newobj_ex__",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.nn.parameter.Buffer",
        "torch.serialization._get_layout",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.storage._load_from_bytes",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.per_channel_affine",
        "torch.per_channel_symmetric",
        "torch.per_channel_affine_float_qparams",
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "torch.contiguous_format",
        "torch.channels_last",
        "torch.preserve_format",
        "torch.jit._pickle.build_intlist",
        "torch.jit._pickle.build_tensorlist",
        "torch.jit._pickle.build_doublelist",
        "torch.jit._pickle.build_boollist",
        "torch.jit._pickle.build_tensor_from_id",
        "torch.jit._pickle.restore_type_tag",
        "numpy.dtype",
        "numpy.ndarray",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random.mtrand._legacy_seeding",
        "numpy.random._pcg64.PCG64",
        "numpy.random._mt19937.MT19937",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "numpy.core.numeric._frombuffer",  # protocol-5 pickles of arrays
        "numpy._core.numeric._frombuffer",
        # plain stdlib values found in checkpoints' metadata
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        "torch.torch_version.TorchVersion",
    ]
    + [f"builtins.{n}" for n in ["set", "frozenset", "slice", "complex", "bytearray", "bytes", "range", "object", "int", "float", "str", "bool", "tuple", "list", "dict"]]
    + [f"torch.{d}" for d in _TORCH_DTYPES]
    + [f"torch.{t}Storage" for t in _STORAGE_TYPES]
    + [f"torch.cuda.{t}Storage" for t in _STORAGE_TYPES]
    + [f"torch.{t}Tensor" for t in _TENSOR_TYPES]
    + [f"torch.cuda.{t}Tensor" for t in _TENSOR_TYPES]
    + [f"torch._utils.{f}" for f in _REBUILD]
)

# Harmless classes inside denied modules: only "custom-code" (checked before the deny-list).
_NOT_DENIED = frozenset(
    [
        # partial(nn.LayerNorm, eps=1e-6) is stored by torchvision's ViT: building a partial calls nothing;
        # the wrapped function is classified on its own and calling a partial is an indirect call.
        "functools.partial",
        "types.SimpleNamespace",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
    ]
)

# Low-level torch bindings: functions are harmless except the JIT importers and file/registration hooks.
_TORCH_C_DANGER = ("jit", "import", "load", "save", "compile", "exec", "file", "register", "_set_", "dlopen")

# NumPy >= 1.25 pickles dtypes of scalars as numpy.dtypes.<Name>DType (public names ending in DType only).
_SAFE_PREFIX_CLASSES = ("numpy.dtypes.",)

# Functions that load, open, run or fetch, whatever module they live in (PIL.Image.open, yaml.load,
# keras load_model, UntypedStorage.from_file, a library's own `load` helper...).
_DANGEROUS_LAST = {
    "load", "loads", "load_file", "load_model", "from_file", "read_pickle", "load_library", "dlopen",
    "open", "urlopen", "urlretrieve", "system", "popen", "spawn", "exec", "execfile", "eval", "run_path",
    "run_module", "import_module", "__import__",
}  # fmt: skip

# Components that reach a denied module through another module's attribute (torch.serialization.os).
_DANGEROUS_COMPONENTS = {
    "os", "sys", "subprocess", "builtins", "__builtin__", "__builtins__", "posix", "nt", "importlib",
    "pickle", "marshal", "ctypes", "socket", "shutil", "pty", "runpy", "_os", "_sys", "_subprocess",
}  # fmt: skip


def normalize_module(module: str) -> str:
    """Map Python 2 module names to the ones pickle resolves them to (``__builtin__`` -> ``builtins``)."""
    head, _, rest = module.partition(".")
    if head in _PY2_MODULES:
        return _PY2_MODULES[head] + ("." + rest if rest else "")
    return module


def _denied_module(qualified: str) -> tuple[str, str] | None:
    """The denied module that ``qualified`` (module or module.attr) falls under, and why."""
    parts = qualified.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in DANGEROUS_MODULES:
            return prefix, DANGEROUS_MODULES[prefix]
    return None


def classify(module: str, name: str, *, torchscript: bool = False) -> tuple[str, str]:
    """Classify one global named in a pickle.

    Args:
        module: the module part (``GLOBAL``/``STACK_GLOBAL``/``INST`` argument).
        name: the attribute part; may be dotted (``Outer.Inner``), which protocol 4 resolves attribute by attribute.
        torchscript: the pickle belongs to a TorchScript archive, where ``__torch__.*`` names are compiled
            TorchScript classes, not Python imports.

    Returns:
        ``(severity, why)`` with severity ``"safe"``, ``"custom-code"`` or ``"dangerous"``.
    """
    module = normalize_module(module)
    qualified = f"{module}.{name}"
    parts = name.split(".")

    # 1. exact allow-list names, then the deny-list and structural rules: nothing allowed by a pattern
    #    below can be reached through a trick.
    if not module or not name or any(not p for p in parts) or any(not p for p in module.split(".")):
        return "dangerous", "empty component in the global's name"
    if qualified in SAFE_NAMES:  # exact names only, so no trick reaches anything else through them
        return "safe", "rebuilds tensors, storages or plain data"
    if any(p.startswith("__") and p.endswith("__") for p in parts):
        return "dangerous", f"reaches interpreter internals through a dunder attribute ({name})"
    denied = None if qualified in _NOT_DENIED else _denied_module(qualified)
    if module.split(".")[:2] == ["torch", "_C"] and any(w in qualified.lower()[8:] for w in _TORCH_C_DANGER):
        return "dangerous", "low-level torch binding that imports, loads or compiles code"
    if denied is not None:
        which, why = denied
        return "dangerous", f"{which}: {why}"
    for dotted in (qualified, module):
        if dotted in DANGEROUS_NAMES:
            return "dangerous", DANGEROUS_NAMES[dotted]
    if parts[-1] in _DANGEROUS_LAST:
        return "dangerous", f"{parts[-1]}: loads, opens, fetches or runs something named at load time"
    components = module.split(".")[1:] + parts
    hit = next((c for c in components if c in _DANGEROUS_COMPONENTS), None)
    if hit is not None:
        return "dangerous", f"reaches the {hit.lstrip('_')} module through an attribute path ({qualified})"
    if len(parts) > 1 and not all(p[:1].isupper() for p in parts[:-1]):
        # Protocol 4 resolves "a.b.c" with getattr; a lower-case step is a module or function, not a nested class.
        return "dangerous", f"dotted name walks attributes of a module or function ({name})"

    # 2. allow-list.
    if qualified.startswith(_SAFE_PREFIX_CLASSES) and len(parts) == 1 and name.endswith("DType") and name[:1] != "_":
        return "safe", "rebuilds tensors, storages or plain data"
    if torchscript and (module == "__torch__" or module.startswith("__torch__.")):
        return "safe", "TorchScript class (compiled TorchScript, not a Python import)"

    # 3. everything else imports and runs code from an installed module.
    return "custom-code", "imports a class or function whose code runs when the file is loaded"
