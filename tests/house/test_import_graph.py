"""The package's import graph: no circles (module-level or inside functions), layers point one
way (weighting <- models/data <- uda <- engine <- cli), and ``gbw --help`` never loads torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# package -> the gbw packages it must never import (ARCHITECTURE.md, DEVELOPERS.md)
FORBIDDEN = {
    "gbw.weighting": ("gbw.models", "gbw.data", "gbw.uda", "gbw.engine", "gbw.analysis", "gbw.cli"),
    "gbw.models": ("gbw.uda", "gbw.engine", "gbw.analysis", "gbw.cli", "gbw.data"),
    "gbw.data": ("gbw.uda", "gbw.engine", "gbw.analysis", "gbw.cli", "gbw.models"),
    "gbw.uda": ("gbw.engine", "gbw.analysis", "gbw.cli"),
    "gbw.engine": ("gbw.cli", "gbw.analysis"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return [n for n in ast.walk(tree) if id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    """gbw module -> gbw modules it imports anywhere in its file (lazy imports included)."""
    modules = {_module_name(p): p for p in SRC.joinpath("gbw").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                targets = [str(node.args[0].value)]
            for t in targets:
                if t in modules and t != name:
                    deps.add(t)
        graph[name] = deps
    # registries map names to "module:attr" strings; count those as imports too
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                mod = node.value.split(":")[0]
                if ":" in node.value and mod in modules and mod != name:
                    graph[name].add(mod)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _ignoring_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exports its modules; importing a sibling through the package
    name is not a circle of logic. Drop edges *into* package inits from their own members."""
    out = {}
    for n, deps in graph.items():
        out[n] = {d for d in deps if not (n.startswith(d + ".") and d != "gbw")}
    return out


def test_import_graph_has_no_circles() -> None:
    graph = _ignoring_package_inits(import_graph())
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_imports() -> None:
    # the checker must find function-level imports and registry strings, or it proves nothing
    graph = import_graph()
    assert "gbw.models.tiny" in graph["gbw.models.registry"]  # "gbw.models.tiny:TinySeg"
    assert "gbw.engine.trainer" in graph["gbw.cli"]  # imported inside _cmd_train
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_point_one_way(package: str) -> None:
    graph = import_graph()
    bad = sorted(
        f"{n} imports {d}"
        for n, deps in graph.items()
        if n == package or n.startswith(package + ".")
        for d in deps
        if any(d == f or d.startswith(f + ".") for f in FORBIDDEN[package])
    )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        *([c, "--help"] for c in ("demo", "train", "eval", "predict", "report", "bench")),
        ["data", "check", "--help"],
        ["bench", "step", "--help"],
    ],
)
def test_help_does_not_import_torch(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from gbw.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "mods = ('torch', 'numpy', 'lightning_fabric', 'matplotlib')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "usage: gbw" in res.stdout
    assert res.stdout.splitlines()[-1] == "HEAVY=", f"gbw {' '.join(argv)}: {res.stdout[-200:]}"
