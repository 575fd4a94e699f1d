"""The Numba cache rule (see framework/kernels/dense.py): a cached kernel calls only kernels of its own file.

Numba's disk cache keys a kernel on its own file's timestamp: when a kernel of another file that it calls changes,
the caller's cache entry is not invalidated and keeps the old callee compiled in (numba#1833). Generated modules
(framework/engine/fused.py) avoid it by hashing every kernel source into their name, so they are exempt.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("framework/**/*.py"), *ROOT.glob("plugins/**/*.py")])
EXEMPT = {"framework/engine/fused.py"}  # generated callers, keyed by the hash of every kernel source


def _module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


CACHED = {"jit", "jit_inline", "jit_sum"}  # framework.kernels' cached decorators


def _is_jitted(func: ast.FunctionDef) -> bool:
    """Decorated with a cached jit: one of kernels' decorators, or any call spelling cache=True."""
    return any(ast.unparse(d) in CACHED or "cache=True" in ast.unparse(d) for d in func.decorator_list)


def _jitted_names(tree) -> set[str]:
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and _is_jitted(n)}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[:-node.level]
    return ".".join(base + ([node.module] if node.module else []))


def cross_file_calls() -> list[str]:
    trees = {_module_name(p): (p, ast.parse(p.read_text())) for p in SOURCES}
    jitted = {m: _jitted_names(t) for m, (_, t) in trees.items()}
    found = []
    for module, (path, tree) in trees.items():
        if str(path.relative_to(ROOT)) in EXEMPT:
            continue
        names, aliases = {}, {}  # local name -> (module, name); alias -> module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                for a in node.names:
                    if f"{source}.{a.name}" in trees:
                        aliases[a.asname or a.name] = f"{source}.{a.name}"
                    elif source in trees:
                        names[a.asname or a.name] = (source, a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in trees:
                        aliases[a.asname or a.name] = a.name
        for func in tree.body:
            if not (isinstance(func, ast.FunctionDef) and _is_jitted(func)):
                continue
            for call in ast.walk(func):
                if not isinstance(call, ast.Call):
                    continue
                target = None
                if isinstance(call.func, ast.Name) and call.func.id in names:
                    target = names[call.func.id]
                elif isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) \
                        and call.func.value.id in aliases:
                    target = (aliases[call.func.value.id], call.func.attr)
                if target and target[0] != module and target[1] in jitted.get(target[0], ()):
                    found.append(f"{path.relative_to(ROOT)}:{call.lineno}: {func.name} calls "
                                 f"{target[0]}.{target[1]}")
    return found


def test_cached_kernels_call_only_kernels_of_their_own_file():
    assert not cross_file_calls(), "\n".join(cross_file_calls())


def test_the_rule_finds_a_cross_file_call(tmp_path, monkeypatch):
    """The checker itself: a kernel in another file calling kernels.gemm is reported."""
    fake = ROOT / "framework" / "kernels" / "_cache_rule_probe.py"
    source = "from .dense import jit, gemm\n\n@jit\ndef probe(a, b, c):\n    gemm(a, b, c, c, 0, False)\n"
    monkeypatch.setattr(__import__(__name__), "SOURCES", SOURCES + [fake])
    fake.write_text(source)
    try:
        assert any("probe calls framework.kernels.dense.gemm" in line for line in cross_file_calls())
    finally:
        fake.unlink()
