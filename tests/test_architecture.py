"""The import structure of the library, read from the source with ``ast`` (nothing is imported).

(a) No import cycle among ``arturo_diag`` modules, imports inside functions counted too (a lazy
import hides a cycle from Python, not from a reader).
(b) The dependency rule of DESIGN.md ("Which part may import which"): ``optim`` imports nothing of
the project; ``curvature`` nothing but itself and ``arturo_diag.errors``; no library module imports
``cli``; ``report`` reads records and analysis results, it never trains (no ``training``, no
``study``); ``diagnostics`` does not import ``training``, ``study``, ``report`` or ``quantities``;
``quantities`` imports of ``report`` only its engine (document, format, figures).

An edge A -> B means that executing A's import statements executes B: ``from P import N`` runs
``P`` (and ``P.N`` when N is a submodule), and importing ``a.b.c`` also runs the packages ``a.b``
that are not already ancestors of A (a module's own parent package runs before it anyway).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "arturo_diag"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = _modules()


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _statements(name: str):
    """(module, names) of every import statement of module ``name``, at any depth."""
    path, is_package = MODULES[name]
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names]


def _edges(name: str) -> set[str]:
    own = set(_ancestors(name))
    out = set()
    for module, names in _statements(name):
        submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        targets = [*_ancestors(module), module, *submodules]
        for target in targets:
            if target in MODULES and target not in (PACKAGE, name) and target not in own:
                out.add(target)
        if module in own and len(submodules) < len(names):  # an attribute of a package being run
            out.add(module)
    return out


GRAPH = {name: _edges(name) for name in MODULES}


def _imports_cli(name: str) -> bool:
    return any(module == "cli" or module.startswith("cli.") for module, _ in _statements(name))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _part(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def _describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(cycle)))}" for m in cycle)


def test_the_graph_sees_imports_inside_functions():
    # study/execution.py imports the training loop inside a function only
    assert "arturo_diag.training.loop" in GRAPH["arturo_diag.study.execution"]


def test_no_import_cycle():
    assert [_describe(c, GRAPH) for c in _cycles(GRAPH)] == []


def _violations(part: str, allowed) -> list[str]:
    return sorted(
        f"{m} imports {t}" for m, targets in GRAPH.items() if _part(m) == part for t in targets if not allowed(t)
    )


def test_optim_imports_nothing_of_the_project():
    assert _violations("optim", lambda t: _part(t) == "optim") == []


def test_curvature_imports_only_itself_and_the_error_base():
    assert _violations("curvature", lambda t: _part(t) == "curvature" or t == "arturo_diag.errors") == []


def test_report_never_trains():
    assert _violations("report", lambda t: _part(t) not in ("training", "study", "optim")) == []


def test_diagnostics_does_not_import_the_layers_above_it():
    assert _violations("diagnostics", lambda t: _part(t) not in ("training", "study", "report", "quantities")) == []


def test_quantities_read_records_and_write_blocks_only():
    # a quantity reads the record (diagnostics), computes, and describes itself in the report engine's
    # blocks and figures; it never trains, runs a study or renders a whole report
    allowed_report = ("arturo_diag.report.document", "arturo_diag.report.format", "arturo_diag.report.figures")
    assert (
        _violations(
            "quantities",
            lambda t: (
                _part(t) not in ("training", "study", "optim", "report")
                or t == "arturo_diag.report"  # the package runs first; it imports nothing (test below)
                or any(t == m or t.startswith(m + ".") for m in allowed_report)
            ),
        )
        == []
    )


def test_the_report_package_imports_nothing_when_imported():
    # the quantities import the report's engine, and report.render imports the quantities
    assert GRAPH["arturo_diag.report"] == set()


def test_no_library_module_imports_the_cli():
    offenders = sorted(m for m in MODULES if _imports_cli(m))
    assert offenders == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
