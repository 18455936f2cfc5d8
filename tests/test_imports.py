"""Imports run one way: base → core → contract → checkpoints → runtimes → exporters → bench → app → cli.

An AST pass over retnet_edge/ builds the graph of module-level imports (function-level imports are the
documented lazy ones) and fails on any cycle; a fresh interpreter then imports every module.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import retnet_edge

PKG = Path(retnet_edge.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of this package imported at module level (not inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("retnet_edge"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x` imports module x
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("retnet_edge"))
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {d for d in _top_level_imports(p) if d in modules and d != m} for m, p in modules.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: packages are not edges of a cycle here
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_cycle_check_sees_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# The stages, lowest first: a module may import (at module level) its own subpackage and those before it.
LAYERS = ["errors", "base", "core", "contract", "checkpoints", "runtimes", "exporters", "bench", "app", "cli"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_layers_run_one_way():
    """No module imports a stage after its own (ARCHITECTURE.md's picture, enforced)."""
    wrong = []
    for m, deps in _graph().items():
        if (own := _layer(m)) is None:
            continue
        wrong += [f"{m} -> {d}" for d in deps if (_layer(d) or 0) > own]
    assert not wrong, wrong


def test_every_module_sits_in_a_stage():
    """The top level holds only the package's entry points and the error types."""
    top = {p.stem for p in PKG.glob("*.py")}
    assert top == {"__init__", "__main__", "errors", "cli"}, top
    assert {p.parent.name for p in PKG.glob("*/__init__.py")} == set(LAYERS) - {"errors", "cli"}


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("retnet_edge")):
                found += [f"{path.relative_to(PKG)}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_environment_is_read_only_by_the_cli():
    """Behaviour is set by parameters; only the CLI layer reads the environment (RETNET_EDGE_DEBUG)."""
    readers = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
               if "os.environ" in p.read_text() or "getenv(" in p.read_text()]
    assert set(readers) <= {"cli.py", "app/cli_utils.py"}, readers


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(_module_name(p) for p in PKG.rglob("*.py") if p.name != "__main__.py")
    code = "import importlib\nfor n in %r:\n    importlib.import_module(n)\nprint('ok')" % names
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
