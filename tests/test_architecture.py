"""The package's shape: data flows one way, no import cycles, small modules, alerts' core does no I/O."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "opsagent"
MAX_LINES = 500
# The layers that may see everything; nothing below them imports them.
TOP = ("opsagent.cli", "opsagent.__main__", "opsagent.runtime.agent", "opsagent.web")
# Pure decision logic: no sockets, files, threads or clocks of its own.
PURE = ("opsagent.alerts.catalog", "opsagent.alerts.engine", "opsagent.alerts.render", "opsagent.alerts.verdict")
IO_MODULES = {"socket", "urllib", "http", "subprocess", "threading", "requests", "psycopg", "redis", "boto3",
              "botocore", "structlog", "shutil", "tempfile"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str) -> Iterator[str]:
    """Every module ``path`` imports, at any depth: lazy, conditional and TYPE_CHECKING imports count."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imports(path, name):
            # "from opsagent.alerts import catalog" names the module opsagent.alerts.catalog.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported.startswith("opsagent"):
                deps.add(imported)
        graph[name] = deps
    return graph


def _is_package_init(graph: dict[str, set[str]], importer: str, imported: str) -> bool:
    """A package's ``__init__`` re-exporting its own submodules is not a dependency of theirs on it."""
    return importer.startswith(imported + ".")


def test_no_import_cycles_inside_the_package() -> None:
    """No module imports one that (through any chain, lazy or typed imports included) imports it."""
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if _is_package_init(graph, node, dep):
                continue
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_below_the_top_layers_imports_them() -> None:
    """Only the CLI, the composition root and the web layer may import the CLI, the composition root or the web layer."""
    graph = _graph()
    wrong = [(name, dep) for name, deps in graph.items() for dep in deps
             if any(dep == t or dep.startswith(t + ".") for t in TOP)
             and not any(name == t or name.startswith(t + ".") for t in TOP)]
    assert not wrong, wrong


def test_the_web_layer_sees_a_narrow_view_not_the_agent() -> None:
    """web/ never imports the composition root (opsagent.runtime.agent), not even for types."""
    graph = _graph()
    wrong = [(name, dep) for name, deps in graph.items() if name.startswith("opsagent.web")
             for dep in deps if dep == "opsagent.runtime.agent" or dep == "opsagent.cli"]
    assert not wrong, wrong


@pytest.mark.parametrize("module", PURE)
def test_alert_decisions_do_no_io(module: str) -> None:
    """The alert core (catalog, engine, render, verdict) imports no network, file-system, thread or logging module."""
    path = _modules()[module]
    used = {imported.split(".")[0] for imported in _imports(path, module)}
    assert not used & IO_MODULES, sorted(used & IO_MODULES)


def test_no_module_is_over_500_lines() -> None:
    """Every module stays small enough to read in one sitting."""
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_benchmarks_import_no_test_module() -> None:
    """benchmarks/ uses the shared server fixtures in opsagent_testing/, never a module of tests/."""
    root = PACKAGE.parent / "benchmarks"
    wrong = [(str(p.relative_to(root)), imported) for p in root.rglob("*.py")
             for imported in _imports(p, "benchmarks." + p.stem) if imported.split(".")[0] == "tests"]
    assert not wrong, wrong


def test_no_private_attribute_of_prometheus_client_is_read() -> None:
    """The telemetry code uses prometheus_client's public API only."""
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if any(attr in p.read_text(encoding="utf-8") for attr in ("_labelnames", "_get_use_created",
                                                                         "_metric_init", "_samples()"))]
    assert not offenders, offenders
