"""The house rules of the package, read from the source with `ast` (nothing is imported):

- the import graph of framework/ has no cycle, counting every import (top-level and inside functions), so no
  module needs another that needs it back;
- no module imports another module's private (`_name`) names;
- every module says in its docstring what it holds.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "framework"


def _module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(module: str, path: pathlib.Path):
    """(imported module, imported names) for every import statement of one file, resolved to framework modules."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("framework"):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("framework"):
                continue
            names = []
            for a in node.names:
                if f"{source}.{a.name}" in MODULES:
                    yield f"{source}.{a.name}", []  # `from framework.io import checkpoint`: a module
                else:
                    names.append(a.name)
            if names:
                yield source, names


def _target(name: str) -> str | None:
    """The framework module an import names (a package counts as its __init__)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for source, _ in _imports(module, path):
            target = _target(source)
            # `framework/__init__` is the public face: it may import anything, and nothing inside imports it for
            # its own work (a package's __init__ is imported on the way to its modules, which is not a dependency)
            if target and target != module and target != "framework" and module != "framework":
                graph[module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    """The checker itself, on a graph with one cycle of three and a module outside it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_private_names_of_another():
    found = [f"{module}: {source}.{name}" for module, path in MODULES.items()
             for source, names in _imports(module, path) for name in names
             if name.startswith("_") and not name.startswith("__") and _target(source) != module]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_holds(module):
    assert ast.get_docstring(ast.parse(MODULES[module].read_text())), f"{module} has no docstring"
