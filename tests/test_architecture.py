"""Architecture rules: no import cycles (lazy imports inside functions included), imports only point downwards
(commands → services → formats/data → core), every module imports on its own, modules stay small.

Examples:
    pytest tests/test_architecture.py -q
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layers, lowest first. A module may import its own layer or lower ones, never a higher one.
CORE = (
    "llmctl",
    "llmctl.errors",
    "llmctl.paths",
    "llmctl.runtime",
    "llmctl.config",
)
# Command schemas may use the data tables (record layouts for choices); profiles loads them by name only.
FORMATS_DATA = (
    "llmctl.schemas",
    "llmctl.models.formats",
    "llmctl.models.registry",
    "llmctl.models.registry_index",
    "llmctl.models.locks",
    "llmctl.models.default",
    "llmctl.models.rope",
    "llmctl.data",
    "llmctl.evaluate.task_files",
    "llmctl.evaluate.perplexity",
    "llmctl.export.targets",
)
LAYER_NAMES = ("core", "formats/data", "services", "commands")

MAX_MODULE_LINES = 520
# every function in llmctl/ and commands/ (issue 28): longer ones are split into named steps
# (setup → run → save, as torchtune's recipes); a command's Typer parameters and docstring are its --help page,
# not steps, so a function in commands/ is measured from its first statement after the docstring
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Every llmctl module by dotted name (commands/ is installed as llmctl.cli)."""
    found = {}
    for base, package in ((ROOT / "llmctl", "llmctl"), (ROOT / "commands", "llmctl.cli")):
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or (p != "llmctl" and name.startswith(p + ".")) for p in prefixes)


def _is_namespace(name: str) -> bool:
    """A package whose __init__ imports nothing only names its modules (llmctl.models, llmctl.prune…): layer 0."""
    path = MODULES[name]
    return path.name == "__init__.py" and not any(
        isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    )


def layer(name: str) -> int:
    if name.startswith("llmctl.cli") or name == "llmctl.__main__":  # `python -m llmctl` is the CLI's entry point
        return 3
    if _is_namespace(name):
        return 0
    if _within(name, CORE):
        return 0
    if _within(name, FORMATS_DATA):
        return 1
    return 2


def _target(module: str) -> str | None:
    """The llmctl module an import names (a submodule when it is one, else its package)."""
    while module:
        if module in MODULES:
            return module
        module = module.rpartition(".")[0]
    return None


def imports_of(name: str) -> set[str]:
    """Every llmctl module `name` imports, at module level or inside functions."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            t = _target(n)
            if t and t != name and not name.startswith(t + "."):  # a package's own parents are not edges
                out.add(t)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles() == []


def test_imports_point_downwards():
    wrong = [
        f"{a} ({LAYER_NAMES[layer(a)]}) imports {b} ({LAYER_NAMES[layer(b)]})"
        for a, targets in GRAPH.items()
        for b in sorted(targets)
        if layer(b) > layer(a)
    ]
    assert wrong == []


def test_cycle_detector_sees_lazy_imports(monkeypatch):
    """The checker itself: a cycle hidden in a function-level import is found."""
    monkeypatch.setitem(GRAPH, "llmctl.errors", GRAPH["llmctl.errors"] | {"llmctl.models.registry"})
    assert any("llmctl.errors" in c and "llmctl.models.registry" in c for c in _cycles())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports_on_its_own(name):
    res = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def test_modules_are_small():
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert {n: c for n, c in big.items() if c > MAX_MODULE_LINES} == {}


def _function_lines(name: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function (a command's: of its code, after the signature and docstring)."""
    if not name.startswith("llmctl.cli"):
        return node.end_lineno - node.lineno + 1
    body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
    return node.end_lineno - body[0].lineno + 1


def test_functions_are_short():
    functions = [
        (name, node)
        for name, path in MODULES.items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    lines = {f"{n}.{f.name}": _function_lines(n, f) for n, f in functions}
    assert {f: n for f, n in lines.items() if n > MAX_FUNCTION_LINES} == {}


def test_top_level_holds_packages():
    """llmctl/ is packages and at most four modules (issue 28): a command's service is found from its name."""
    modules = sorted(p.name for p in (ROOT / "llmctl").glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 4, modules
    commands = {p.stem for p in (ROOT / "commands").glob("*.py") if not p.name.startswith("_")} - {"main", "__init__"}
    # a command's service package is llmctl/<command>/, but for: eval -> evaluate (`eval` shadows a builtin),
    # generate -> inference (shared with serve), profiles -> config (profile loading is the config layer's)
    service = {"eval": "evaluate", "generate": "inference", "profiles": "config"}
    missing = [c for c in sorted(commands) if not (ROOT / "llmctl" / service.get(c, c) / "__init__.py").exists()]
    assert missing == []
    schemas = {p.stem for p in (ROOT / "llmctl" / "schemas").glob("*.py") if not p.name.startswith("_")}
    assert schemas - {"__init__"} <= commands


def test_objective_choices_are_the_objectives_table():
    """--objective's choices (schema) and the objectives implemented (llmctl.finetune.objectives) agree."""
    from llmctl.finetune.objectives import OBJECTIVES
    from llmctl.schemas.finetune import SCHEMA

    assert SCHEMA.field("objective").choices == list(OBJECTIVES)
