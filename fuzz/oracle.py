"""The oracle: run the real loaders on one file in a sandboxed child and record what they do.

Run as a long-lived worker (``python fuzz/oracle.py``): it imports torch and numpy once, warms every
loader up on benign files (so that lazy imports inside torch/numpy happen here, not in the children),
then serves requests, one JSON line each on stdin::

    {"id": 1, "path": "/tmp/.../case.pt", "loaders": ["pickle", "pypickle", "torch"], "timeout": 5}

For each request it forks a child that runs the loaders one after the other and answers one JSON line
on stdout: ``{"id": 1, "runs": {loader: {"status", "error", "events": [[kind, event, detail], ...]}}}``.

The child is the only place where untrusted bytes are loaded. It

- works in a fresh temp dir (``cwd`` and ``TMPDIR`` inside it), with stdin/stdout/stderr on /dev/null,
  ``sys.path`` stripped of the current directory, limits on address space, CPU time, file size and open
  files, and its own process group (killed as a whole on timeout);
- installs ``sys.addaudithook`` *before* touching the file. The hook records every event, and
  **raises** for every event not on a short allow-list, so that nothing an attacker asks for actually
  happens: ``os.system``, ``subprocess.Popen``, ``exec``, ``open`` for writing outside the
  sandbox's temp dir, imports of modules not already loaded, ``socket.*``, ``ctypes.*``, ... are recorded
  and then refused. What the loader does legitimately passes: ``pickle.find_class`` (recorded: every
  global the unpickler resolves, from the C and pure-Python unpicklers alike), ``open`` for reading,
  ``compile`` (a code object runs nothing until ``exec``, which is refused), and
  the temp-dir housekeeping of torch's legacy tar loader (extract ``storages``/``tensors`` into a
  ``mkdtemp`` directory and remove it) — only inside the sandbox's temp dir.

Event kinds in the answer: ``global`` (a ``find_class``), ``global-import`` (the import a ``find_class``
needs: refused, judged through the global), ``blocked`` (refused), ``allowed`` (an
allow-listed event worth knowing, e.g. a read of another file or a sandbox write), ``internal-import`` (a
lazy import inside torch/numpy that the warm-up missed; refused, neutral for the verdict), ``note``.

TorchScript archives: ``torch.load`` hands them to ``torch.jit.load``, whose code runs in C++ where no
audit hook sees it. The worker replaces ``torch.jit.load`` by a stub that records a ``note`` and raises:
TorchScript code is outside what this oracle can judge.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import tempfile
import time

# modules that seed pickles (and their likely mutations) name: imported here, in the worker, so that
# find_class resolves them without an import in the child and the audit hook then sees the call itself
_PRELOAD = [
    "os", "posix", "subprocess", "builtins", "functools", "operator", "_operator", "importlib",
    "importlib.util", "pkgutil", "pydoc", "pickle", "_pickle", "marshal", "types", "timeit", "cProfile",
    "profile", "code", "codeop", "uuid", "logging", "logging.handlers", "logging.config", "io", "_io",
    "copyreg", "copy", "argparse", "collections", "codecs", "_codecs", "runpy", "shutil", "tempfile",
    "webbrowser", "socket", "ctypes", "urllib.request", "platform", "glob", "shlex", "zipfile", "tarfile",
    "pathlib", "sysconfig", "pty", "bdb", "pdb", "trace", "threading", "multiprocessing", "asyncio",
    "ast", "inspect", "linecache", "dataclasses", "enum", "datetime", "decimal", "fractions", "array",
    "numbers", "typing", "string", "re", "json", "base64", "binascii", "zlib", "bz2", "lzma", "gzip",
    "sqlite3", "xml.dom.minidom", "ensurepip", "venv", "site", "distutils", "setuptools",
    "numpy", "numpy.random", "numpy.lib.format", "numpy.testing", "numpy.testing._private.utils",
    "numpy.dtypes", "numpy.ma", "numpy.f2py", "numpy.lib.npyio",
    "torch", "torch.serialization", "torch.storage", "torch._utils", "torch.utils.collect_env",
    "torch.utils.serialization", "torch._weights_only_unpickler", "torch.jit", "torch.package",
    "torch.nn", "torch.optim", "torch.hub", "torch.distributed", "torch.distributed.checkpoint",
    "torch.export", "torch.fx", "torch._dynamo", "torch.jit._pickle", "torch.nested._internal.nested_tensor",
]  # fmt: skip

# events allowed without a record (frequent, harmless, used by torch/numpy internals)
_SILENT = {
    "builtins.id",  # inspect.unwrap (torch's legacy loader reads a module class's source to compare it)
    "sys._getframe",
    "sys._getframemodulename",
    "object.__getattr__",
    "sys.excepthook",
    "sys.unraisablehook",
    "cpython.PyInterpreterState_Clear",
    "cpython._PySys_ClearAuditHooks",
}
# housekeeping events allowed when every path they touch is inside the sandbox's temp dir (torch's legacy
# tar loader extracts members into a mkdtemp directory and removes it): event -> (indices of the path
# arguments, indices of their dir_fd arguments)
_SANDBOX_FS: dict[str, tuple[tuple[int, ...], tuple[int | None, ...]]] = {
    "os.mkdir": ((0,), (2,)),
    "os.rmdir": ((0,), (1,)),
    "os.remove": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.utime": ((0,), (3,)),
    "os.symlink": ((1,), (2,)),  # where the link is made; a link may point anywhere, what is done through it is checked
    "os.link": ((0, 1), (2, 3)),  # a hard link to a file outside would make writes through it look inside
    "os.listdir": ((0,), (None,)),
    "os.scandir": ((0,), (None,)),
    "os.truncate": ((0,), (None,)),
    "shutil.rmtree": ((0,), (1,)),
    "tempfile.mkdtemp": ((0,), (None,)),
    "tempfile.mkstemp": ((0,), (None,)),
}
# lazy imports inside these packages are the loaders' own (refused all the same, but neutral)
_INTERNAL = ("torch", "numpy", "functorch", "encodings")
_NOBODY = 65534
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


_DEBUG = bool(os.environ.get("FUZZ_ORACLE_DEBUG"))
_LIBC = None  # libc, loaded by the worker before it forks (for prctl)


class Blocked(RuntimeError):
    """Raised by the audit hook for a refused event."""


# -- the child's side -----------------------------------------------------------------------------------
class _Recorder:
    def __init__(self, fd: int, sandbox_tmp: str, preloaded: frozenset[str]) -> None:
        self.fd = fd
        self.tmp = os.path.realpath(sandbox_tmp)
        self.preloaded = preloaded
        self.loader = "-"
        self.last_global_module = ""
        self.count = 0
        self.busy = False

    def emit(self, kind: str, event: str, detail: str) -> None:
        self.count += 1
        if self.count > 400:
            return
        line = json.dumps(["ev", self.loader, kind, event, detail[: 2000 if _DEBUG else 300]]) + "\n"
        try:
            os.write(self.fd, line.encode("utf-8", "backslashreplace"))
        except OSError:
            pass

    def _inside(self, path: object, dir_fd: object = None) -> bool:
        try:
            if isinstance(path, int):
                p = os.readlink(f"/proc/self/fd/{path}")
            else:
                p = os.fsdecode(path)  # type: ignore[arg-type]
                if isinstance(dir_fd, int) and not os.path.isabs(p):
                    p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
        except (TypeError, OSError):
            return False
        real = os.path.realpath(p)
        return real == self.tmp or real.startswith(self.tmp + os.sep)

    def _fs_inside(self, event: str, args: tuple) -> bool:
        where, fds = _SANDBOX_FS[event]
        for i, j in zip(where, fds):
            if i >= len(args):
                return False
            dir_fd = args[j] if j is not None and j < len(args) else None
            if not self._inside(args[i], dir_fd):
                return False
        return True

    def hook(self, event: str, args: tuple) -> None:
        if event in _SILENT or self.busy:
            return
        self.busy = True
        try:
            self._hook(event, args)
        finally:
            self.busy = False

    def _hook(self, event: str, args: tuple) -> None:
        if event == "pickle.find_class":
            module, name = args
            self.last_global_module = module if isinstance(module, str) else repr(module)
            self.emit("global", event, f"{module!s}\x00{name!s}")
            return
        if event == "import":
            module = args[0]
            last = self.last_global_module
            from_pickle = bool(last) and (
                module == last or last.startswith(module + ".") or module.startswith(last + ".")
            )
            if from_pickle:  # the global's own import: the global is judged, not its import
                self.emit("global-import", event, module)
            elif module.split(".")[0] in _INTERNAL:
                self.emit("internal-import", event, module)
            else:
                self.emit("blocked", event, module)
            raise Blocked(f"import {module} refused by the fuzz oracle")
        if event == "open":
            path, mode, flags = ([*list(args), None, None, None])[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
            )
            if not writing:
                self.emit("allowed", "open-read", f"{path!r}")
                return
            if self._inside(path):
                self.emit("allowed", "open-write-sandbox", f"{path!r} {mode!r}")
                return
            self.emit("blocked", "open-write", f"{path!r} {mode!r} {flags!r}")
            raise Blocked("open for writing refused by the fuzz oracle")
        if event in _SANDBOX_FS and self._fs_inside(event, args):
            self.emit("allowed", event, _short(args))
            return
        if event == "compile":
            # a code object alone runs nothing (running it is ``exec``, refused); compiles come from
            # ast.literal_eval (numpy reads .npy headers so) and from the interpreter's own traceback display
            self.emit("allowed", "compile", _short(args))
            return
        if event.startswith("torchkeep.fuzz."):
            self.emit("note", event, _short(args))
            return
        detail = _short(args)
        if _DEBUG:  # where the refused event came from (FUZZ_ORACLE_DEBUG=1, for triage)
            import traceback

            detail += " @ " + " <- ".join(
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in traceback.extract_stack(limit=12)[::-1][1:]
            )
        self.emit("blocked", event, detail)
        raise Blocked(f"{event} refused by the fuzz oracle")


def _short(args: tuple) -> str:
    try:
        text = repr(args)
    except Exception:  # a repr that fails must not hide the event
        text = "<unrepresentable>"
    return text[:300]


def _load_pickle(path: str, unpickler: type) -> str:
    """``pickle.load`` until the end of the file (stacked pickles run too). The load counts as accepted when
    the first pickle loads; the events of later pickles follow a ``torchkeep.fuzz.next_pickle`` note."""
    n = 0
    with open(path, "rb") as fh:
        while True:
            try:
                if n:
                    sys.audit("torchkeep.fuzz.next_pickle", n)
                unpickler(fh).load()
            except EOFError:
                if n == 0:
                    raise
                return f"{n} pickle(s)"
            except Exception as exc:  # pickle.load accepts the file if its first pickle loads
                if n == 0 or isinstance(exc, Blocked):
                    raise
                return f"{n} pickle(s), then {type(exc).__name__}"
            n += 1
            if n >= 16:
                return f"{n} pickle(s), stopped"


def _run_loader(loader: str, path: str) -> str:
    import pickle

    if loader == "pickle":  # C unpickler, default arguments (pickle.load; reads stacked pickles to EOF)
        return _load_pickle(path, pickle.Unpickler)
    if loader == "pypickle":  # pure-Python unpickler (what joblib/dill subclass)
        return _load_pickle(path, pickle._Unpickler)  # type: ignore[attr-defined]
    if loader == "torch":
        import torch

        obj = torch.load(path, weights_only=False, map_location="cpu")
        return type(obj).__name__
    if loader == "numpy":
        import numpy as np

        obj = np.load(path, allow_pickle=True)
        if hasattr(obj, "files"):
            try:
                return ",".join(type(obj[k]).__name__ for k in obj.files)
            finally:
                obj.close()
        return type(obj).__name__
    if loader == "zip-members":  # any tool that unpickles a member of a zip by itself
        import io
        import zipfile

        done, failed = [], []
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist()[:64]:
                data = zf.read(info)
                if not data:
                    continue
                pickle_like = info.filename.lower().endswith("pkl") or data[:1] == b"\x80"
                try:
                    pickle.Unpickler(io.BytesIO(data), encoding="utf-8").load()
                    done.append(info.filename)
                except Exception as exc:  # refused events are recorded already: go on with the next member
                    if pickle_like:
                        failed.append(f"{info.filename}: {type(exc).__name__}: {exc}")
        if failed:  # the file is accepted only if every pickle-like member loads
            raise RuntimeError(f"{len(failed)} pickle member(s) failed: {failed[0][:150]}")
        return f"{len(done)} member(s) unpickled"
    raise ValueError(f"unknown loader {loader}")


def _child(path: str, loaders: list[str], wfd: int, sandbox: str, preloaded: frozenset[str], mem: int) -> None:
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    cwd, tmp = os.path.join(sandbox, "cwd"), os.path.join(sandbox, "tmp")
    os.chdir(cwd)
    if os.geteuid() == 0:  # never load untrusted bytes as root
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)
    if _LIBC is not None:  # die with the worker (after setuid, which clears the setting)
        _LIBC.prctl(1, signal.SIGKILL)
    for name in ("mknod", "mkfifo"):  # tarfile extraction makes device nodes and fifos only if these exist
        if hasattr(os, name):
            delattr(os, name)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    sys.path[:] = [p for p in sys.path if p and os.path.isabs(p) and not p.startswith(sandbox)]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for lim, val in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CPU, 20),
        (resource.RLIMIT_FSIZE, 64 << 20),
        (resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(lim, (val, val))
        except (ValueError, OSError):
            pass
    import gc

    gc.disable()
    rec = _Recorder(wfd, tmp, preloaded)
    sys.addaudithook(rec.hook)
    for loader in loaders:
        rec.loader = loader
        rec.last_global_module = ""
        rec.count = 0
        os.write(wfd, (json.dumps(["start", loader]) + "\n").encode())
        try:
            result = _run_loader(loader, path)
            status, error = "ok", result
        except Blocked as exc:
            status, error = "blocked", str(exc)
        except MemoryError:
            status, error = "exception", "MemoryError"
        except BaseException as exc:  # the loader's own error: part of the answer
            status, error = "exception", f"{type(exc).__name__}: {str(exc)[:200]}"
        os.write(wfd, (json.dumps(["end", loader, status, error]) + "\n").encode("utf-8", "backslashreplace"))
    os._exit(0)


# -- the worker's side ----------------------------------------------------------------------------------
class Worker:
    def __init__(self) -> None:
        self.preloaded: frozenset[str] = frozenset()
        self.mem = 0
        self.root = tempfile.mkdtemp(prefix="torchkeep-fuzz-oracle-")
        os.chmod(self.root, 0o711)

    def warm(self) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import warnings

        warnings.simplefilter("ignore")
        import encodings
        import importlib
        import pkgutil

        names = _PRELOAD + [f"encodings.{m.name}" for m in pkgutil.iter_modules(encodings.__path__)]
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # not every module exists everywhere; the child then sees an import
                pass
        import torch

        torch.set_num_threads(1)
        global _LIBC
        try:
            import ctypes

            _LIBC = ctypes.CDLL(None)
        except Exception:
            _LIBC = None

        def _no_jit_load(*args: object, **kwargs: object) -> None:
            sys.audit("torchkeep.fuzz.jit_load")
            raise Blocked("torch.jit.load (TorchScript) is not run by the fuzz oracle")

        torch.jit.load = _no_jit_load  # type: ignore[assignment]
        self._warm_loads()
        self.preloaded = frozenset(sys.modules)
        import gc

        gc.collect()
        gc.freeze()  # the children then touch (and copy) fewer pages
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
        self.mem = vm * 1024 + (1536 << 20)

    def _warm_loads(self) -> None:
        """Run every loader on benign files of every container once, with no hook, to import lazily."""
        import io
        import pickle
        import tarfile
        import zipfile

        import numpy as np
        import torch

        d = tempfile.mkdtemp(dir=self.root)
        sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.nn.Parameter(torch.ones(2))}
        files = []
        for i, kw in enumerate(({}, {"pickle_protocol": 4}, {"_use_new_zipfile_serialization": False})):
            p = os.path.join(d, f"w{i}.pt")
            torch.save(sd, p, **kw)
            files.append(p)
        np.save(os.path.join(d, "a.npy"), np.arange(3))
        np.save(os.path.join(d, "o.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
        np.savez(os.path.join(d, "z.npz"), a=np.arange(3), b=np.array([None], dtype=object))
        files += [os.path.join(d, n) for n in ("a.npy", "o.npy", "z.npz")]
        # a legacy tar file (the pre-2017 format), written the way torch wrote it
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, data in (
                ("storages", pickle.dumps(0, 2)),
                ("tensors", pickle.dumps(0, 2)),
                ("pickle", pickle.dumps({"a": 1}, 2)),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        p = os.path.join(d, "tar.pt")
        with open(p, "wb") as fh:
            fh.write(buf.getvalue())
        files.append(p)
        p = os.path.join(d, "plain.pkl")
        with open(p, "wb") as fh:
            pickle.dump({"t": torch.ones(2), "a": np.ones(2), "s": {1}, "b": b"x"}, fh, protocol=2)
        files.append(p)
        for junk in (b"", b"\x80\x02garbage", b"PK\x03\x04" + b"\0" * 40, b"\x93NUMPY\x01\x00\x10\x00{}"):
            p = os.path.join(d, f"junk{len(files)}.bin")
            with open(p, "wb") as fh:
                fh.write(junk)
            files.append(p)
        bad = zipfile.ZipFile(os.path.join(d, "bad.pt"), "w")
        bad.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        bad.close()
        files.append(os.path.join(d, "bad.pt"))
        for path in files:
            for loader in ("pickle", "pypickle", "torch", "numpy", "zip-members"):
                try:
                    _run_loader(loader, path)
                except Exception:
                    pass
        # error paths that format messages (and import lazily while doing so)
        for text in (b"cnonexistent_mod_xyz\nname\n.", b"ctorch\nnonexistent_name\n.", b"\x80\x05\x95"):
            for unp in (pickle.loads, lambda b: pickle._Unpickler(io.BytesIO(b)).load()):  # type: ignore[attr-defined]
                try:
                    unp(text)
                except Exception:
                    pass

    def run(self, path: str, loaders: list[str], timeout: float) -> dict:
        runs: dict[str, dict] = {}
        pending = list(loaders)
        while pending:
            self._run_child(path, pending, timeout, runs)
            pending = [ld for ld in pending if ld not in runs]
        return runs

    def _run_child(self, path: str, loaders: list[str], timeout: float, runs: dict[str, dict]) -> None:
        sandbox = tempfile.mkdtemp(dir=self.root)
        case = os.path.join(sandbox, "input" + os.path.splitext(path)[1][:8])
        with open(path, "rb") as src, open(case, "wb") as dst:
            dst.write(src.read())
        for sub in ("cwd", "tmp"):
            os.mkdir(os.path.join(sandbox, sub))
        if os.geteuid() == 0:
            os.chmod(sandbox, 0o755)
            for sub in ("cwd", "tmp"):
                os.chown(os.path.join(sandbox, sub), _NOBODY, _NOBODY)
            os.chmod(case, 0o444)
        path = case
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            try:
                _child(path, loaders, wfd, sandbox, self.preloaded, self.mem)
            finally:
                os._exit(70)
        os.close(wfd)
        buf = b""
        deadline = time.monotonic() + timeout
        timed_out = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            buf += chunk
        if timed_out:
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except OSError:
                    pass
        else:  # the child may have left a process group behind (it cannot fork: os.fork is refused)
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        _, status = os.waitpid(pid, 0)
        os.close(rfd)
        self._parse(buf, runs, loaders, timed_out, status)
        for run in runs.values():  # can the refused imports be found at all? (no import: a path search)
            for ev in run["events"]:
                if ev[1] == "import" and not _module_exists(ev[2]):
                    ev[2] += "\x00missing"
        _rmtree(sandbox)

    @staticmethod
    def _parse(buf: bytes, runs: dict[str, dict], loaders: list[str], timed_out: bool, status: int) -> None:
        current: dict | None = None
        for raw in buf.split(b"\n"):
            if not raw:
                continue
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if msg[0] == "start":
                current = {"status": "running", "error": "", "events": []}
                runs[msg[1]] = current
            elif msg[0] == "ev" and current is not None:
                current["events"].append(msg[2:])
            elif msg[0] == "end" and current is not None:
                current["status"], current["error"] = msg[2], msg[3]
                current = None
        if current is not None:  # the child died inside this loader
            if timed_out:
                current["status"], current["error"] = "timeout", "the loader ran past the time limit"
            else:
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                current["status"] = "crash"
                current["error"] = f"the child died (signal {sig})" if sig else "the child exited early"
        if not any(ld in runs for ld in loaders):  # the child died before starting any loader
            why = "timeout" if timed_out else f"the child died before loading (status {status})"
            for ld in loaders:
                runs[ld] = {"status": "crash", "error": why, "events": []}


_EXISTS: dict[str, bool] = {}


def _module_exists(name: str) -> bool:
    """Whether ``import name`` could find the module here, found by searching the import path (as the
    finders do) without executing any package: a global from a module that cannot be found runs nothing."""
    if name not in _EXISTS:
        _EXISTS[name] = _find(name)
    return _EXISTS[name]


def _find(name: str) -> bool:
    from importlib.machinery import PathFinder

    parts = name.split(".")
    if parts[0] in sys.builtin_module_names:
        return len(parts) == 1
    path = None
    for i in range(len(parts)):
        qual = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        mod = sys.modules.get(qual)
        if mod is not None:
            path = getattr(mod, "__path__", None)
        else:
            try:
                spec = PathFinder.find_spec(qual, path)
            except (ValueError, ImportError):
                return False
            except Exception:  # unsure: count it as there
                return True
            if spec is None:
                return False
            path = spec.submodule_search_locations
        if path is None and not last:
            return False
    return True


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def watch_parent() -> None:
    """Exit as soon as the fuzzer that started this worker is gone (however it died)."""
    import threading

    parent = os.getppid()

    def loop() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=loop, daemon=True).start()


def main() -> int:
    watch_parent()
    worker = Worker()
    t0 = time.monotonic()
    worker.warm()
    out = sys.stdout
    out.write(json.dumps({"ready": True, "warm_s": round(time.monotonic() - t0, 2), "pid": os.getpid()}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            runs = worker.run(req["path"], req["loaders"], float(req.get("timeout", 5)))
            out.write(json.dumps({"id": req.get("id"), "runs": runs}) + "\n")
            out.flush()
    finally:
        _rmtree(worker.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
