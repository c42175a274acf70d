"""The import graph of app/ and models/, read from the source with ``ast`` (nothing is imported).

Data flows one way, models -> app: a models/ module that imported app would drag Flask into a
notebook and tie capture to the web app. Cycles are the other risk: a cycle of module-level
imports breaks depending on which module loads first, and a cycle closed by a lazy import inside
a function hides the same tangle. And the web app starts without torch, which holds only while
everything it imports at module level stays torch-free.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "models")
HEAVY = ("torch", "transformers")  # what the app must not need at start-up


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # a project module, or the top-level name of an outside one
    module_level: bool  # False: inside a function, run only when it is called
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


MODULES = project_modules()


def _resolve(name: str, level: int, source: str, is_package: bool) -> str:
    """The absolute module of ``from <level dots><name> import ...`` in ``source``."""
    if not level:
        return name
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _target(name: str) -> str:
    """The project module ``name`` refers to (its closest existing parent), else its top-level name."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return parts[0]


class _Imports(ast.NodeVisitor):
    """Every import statement of one module, noting whether it runs at import time."""

    def __init__(self, source: str, is_package: bool):
        self.source, self.is_package = source, is_package
        self.depth = 0  # functions entered
        self.edges: list[Edge] = []

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        """``if TYPE_CHECKING:`` blocks never run; their imports count as lazy ones."""
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            self.depth += 1
            self.generic_visit(node)
            self.depth -= 1
        else:
            self.generic_visit(node)

    def _add(self, name: str, line: int) -> None:
        self.edges.append(Edge(self.source, _target(name), self.depth == 0, line))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(node.module or "", node.level, self.source, self.is_package)
        for alias in node.names:  # ``from app.analysis import rollout`` imports the module app.analysis.rollout
            self._add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno)


def all_edges() -> list[Edge]:
    edges = []
    for name, path in MODULES.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        edges += [edge for edge in visitor.edges if edge.target != name]
    return edges


EDGES = all_edges()


def graph(module_level_only: bool) -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    result: dict[str, set[str]] = {name: set() for name in MODULES}
    for edge in EDGES:
        if edge.target in MODULES and (edge.module_level or not module_level_only):
            result[edge.source].add(edge.target)
    return result


def cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for neighbour in sorted(imports[node]):
            if neighbour not in index:
                connect(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(imports):
        if node not in index:
            connect(node)
    return [_cycle_in(set(component), imports) for component in components]


def _cycle_in(component: set[str], imports: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for neighbour in sorted(imports[node] & component):
                if neighbour == start:
                    return paths[node] + [start]
                if neighbour not in paths:
                    paths[neighbour] = paths[node] + [neighbour]
                    following.append(neighbour)
        frontier = following
    return sorted(component)


def describe(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(cycle) for cycle in found)


def test_every_module_parses_and_the_graph_is_not_empty():
    assert {"app", "app.service", "models.capture", "models.recorder"} <= set(MODULES)
    assert any(edge.target == "models.recorder" for edge in EDGES)


def test_models_never_import_app():
    wrong = [
        f"{edge.source}:{edge.line} imports {edge.target}"
        for edge in EDGES
        if edge.source.split(".")[0] == "models" and edge.target.split(".")[0] == "app"
    ]
    assert not wrong, wrong


def test_module_level_imports_have_no_cycle():
    found = cycles(graph(module_level_only=True))
    assert not found, f"import cycles at module level: {describe(found)}"


def test_imports_have_no_cycle_even_through_lazy_imports():
    found = cycles(graph(module_level_only=False))
    assert not found, f"import cycles through imports inside functions: {describe(found)}"


def test_the_app_starts_without_torch():
    """Everything reached from app/ by module-level imports imports neither torch nor transformers."""
    imports = graph(module_level_only=True)
    reached, frontier = set(), [name for name in MODULES if name.split(".")[0] == "app"]
    while frontier:
        name = frontier.pop()
        if name not in reached:
            reached.add(name)
            frontier += imports[name]
    heavy = [
        f"{edge.source}:{edge.line} imports {edge.target}"
        for edge in EDGES
        if edge.source in reached and edge.module_level and edge.target in HEAVY
    ]
    assert not heavy, heavy
    assert {"models.registry", "models.record", "models.errors"} <= reached


@pytest.mark.parametrize("name", ["models.registry", "models.record", "models.errors"])
def test_torch_free_models_modules_stay_so_even_lazily(name):
    heavy = [
        f"{edge.source}:{edge.line} imports {edge.target}"
        for edge in EDGES
        if edge.source == name and edge.target in HEAVY
    ]
    assert not heavy, heavy
