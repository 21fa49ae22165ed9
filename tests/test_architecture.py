"""The layout the code promises: no import circle among torchkeep's modules.

The graph counts every import of a torchkeep module, at module level and inside functions: a function-local
import of our own module that dodges a circle is still a circle. The lazy re-exports in a package's
``__getattr__`` (and ``TYPE_CHECKING`` blocks) are not edges: they are the public surface, resolved by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torchkeep

SRC = Path(torchkeep.__file__).parent
PACKAGE = "torchkeep"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(name: str) -> bool:
    return (SRC.parent / name.replace(".", "/") / "__init__.py").exists()


def _lazy_map(tree: ast.Module) -> dict[str, str]:
    """A package's ``_LAZY = {"name": "module", ...}``: the module a lazily re-exported name comes from."""
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "_LAZY" and node.value is not None:
            return ast.literal_eval(node.value)
    return {}


def _resolve(name: str, modules: set[str], lazy: dict[str, dict[str, str]]) -> str | None:
    """The torchkeep module ``name`` refers to: ``a.b.c`` may be attribute ``c`` of module ``a.b``, and a name a
    package re-exports lazily is an edge to the module that defines it (importing it runs that module)."""
    while name:
        if name in modules:
            return name
        parent, _, attr = name.rpartition(".")
        if attr in lazy.get(parent, {}):
            return lazy[parent][attr]
        name = parent
    return None


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, modules: set[str], lazy: dict[str, dict[str, str]]):
        self.module = module
        self.modules = modules
        self.lazy = lazy
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name == "__getattr__" and _is_package(self.module):
            return  # the lazy public surface, looked up by name only when used
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module if _is_package(self.module) else self.module.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        for alias in node.names:
            self._add(f"{target}.{alias.name}")

    def _add(self, name: str) -> None:
        if name.split(".")[0] != PACKAGE:
            return
        resolved = _resolve(name, self.modules, self.lazy)
        if resolved is not None and resolved != self.module:
            self.found.add(resolved)


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in files.items()}
    lazy = {name: _lazy_map(tree) for name, tree in trees.items() if _is_package(name)}
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        visitor = _Imports(name, modules, lazy)
        visitor.visit(tree)
        graph[name] = visitor.found
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    assert "torchkeep._detect" in graph["torchkeep._scan"]
    assert graph["torchkeep._cli.main"], "the CLI imports its commands lazily, and those are edges too"
    # a name re-exported lazily by a package is an edge to the module that defines it
    assert "torchkeep.models._build" in graph["torchkeep.training._loop"]


def test_no_import_circle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_cli() -> None:
    """Library first, CLI second: the CLI formats what library functions return, never the other way round
    (a library module that imports the CLI's drawing code drags click and rich into every user's import)."""
    graph = import_graph()
    offenders = {
        module: sorted(t for t in targets if t.startswith("torchkeep._cli"))
        for module, targets in graph.items()
        if not module.startswith(("torchkeep._cli", "torchkeep.__main__"))
    }
    assert not {m: t for m, t in offenders.items() if t}, offenders


def test_the_architecture_doc_names_every_module() -> None:
    """docs/architecture.md draws the flow as the code has it: a module it does not name is one a reader cannot place."""
    doc = (SRC.parent.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        p.relative_to(SRC).as_posix() for p in sorted(SRC.rglob("*.py"))
        if p.stem not in ("__init__", "__main__") and p.stem not in doc
    ]
    assert not missing, f"modules docs/architecture.md does not name: {missing}"
