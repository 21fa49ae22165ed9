"""The deny-list: why a global is known to be dangerous. It *explains* findings, it decides nothing.

The verdict comes from the allow-list first (:mod:`torchkeep._scan_rules`): any call that is not on it is
dangerous anyway. :func:`explain` names the reason a reader should see (``os: operating system access``):
a denied module (:data:`DANGEROUS_MODULES`, with its submodules), a name with a known effect
(:data:`DANGEROUS_NAMES`), a function named for loading, opening, writing or running, or an attribute path
that reaches a denied module.
"""

from __future__ import annotations

__all__ = ["DANGEROUS_MODULES", "DANGEROUS_NAMES", "explain"]

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
