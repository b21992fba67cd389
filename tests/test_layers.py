"""The import graph of ``src/modelloop``: no cycles, and every module imports only from its own
layer or the layers below it (docs/architecture.md, "Layers").

How the graph is built (with :mod:`ast`; nothing is imported):

- every ``import`` and ``from ... import`` anywhere in a file is an edge: at module level, inside
  functions (lazy imports) and under ``if TYPE_CHECKING:``; relative imports are resolved;
- ``from .pkg import name`` is an edge to the module ``pkg.name`` when there is one, else to
  ``pkg``; a package's ``__init__`` is the package's node;
- an import by string (``importlib.import_module``) is not an edge: it is how a registry finds a
  plugin by name, in one direction only (the task registry in ``tasks/base.py``, the PEP 562 hook
  of the top package).

The top package ``modelloop`` (its ``__init__``) is the public surface: it re-exports names of
every layer, so the layer rules do not apply to it. It does take part in the cycle check, with
its eager imports only (``errors``, ``spec``): ``Loop`` and ``Project`` come through its PEP 562
hook on first attribute access, once the package is loaded, and its ``TYPE_CHECKING`` imports
never run. A module of the package may take only ``__version__`` from it, so that nothing
reaches a higher layer through the public surface.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

PACKAGE = "modelloop"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: layer -> the modules in it (a name covers its submodules; the longest matching name wins).
#: A module imports only from its own layer or a lower one.
LAYERS: dict[int, tuple[str, ...]] = {
    1: ("errors", "spec", "settings", "hardware"),                            # base
    2: ("data", "models", "evaluate.metrics",
        # featurizers: preprocessing a model artifact holds (the registry rebuilds them)
        "tasks.features", "tasks.audio_features", "tasks.tabular_features"),
    3: ("train", "evaluate", "registry", "feedback", "compress", "gate"),
    # A task's stages run its search and fits (select, backends) and its gate evidence.
    4: ("tasks", "tune", "select", "backends"),
    5: ("loop",),
    # The interfaces: HTTP, the command line, the Python API (Project.serve starts the server)
    # and the demo (which serves the loop to simulated users).
    6: ("serve", "cli", "project", "demo"),
}

#: modules that never import the loop, the interfaces or the recommendation package
FOUNDATIONS = ("data", "models", "tasks", "train")
NOT_FOR_FOUNDATIONS = ("loop", "serve", "cli", "project", "demo")
#: who may import ``serve``: itself and the other interfaces; nothing imports ``cli``
SERVE_IMPORTERS = ("serve", "cli", "project", "demo")

# -- the graph -----------------------------------------------------------------------------------


def _modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_init = parts[-1] == "__init__"
        found[".".join((package, *(parts[:-1] if is_init else parts)))] = (path, is_init)
    return found


def _eager(tree: ast.Module) -> list[ast.stmt]:
    """The import statements that run when the module is imported: module level, outside
    functions and ``if TYPE_CHECKING:``."""
    return [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _targets(node: ast.AST, here: str, modules: dict, package: str) -> list[tuple[str, list[str]]]:
    """The modules of ``package`` an import statement imports, each with the names taken from
    it. ``here`` is the package the importing module belongs to (relative imports start there)."""
    def nearest(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rpartition(".")[0]
        return name

    out: list[tuple[str, list[str]]] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == package or alias.name.startswith(package + "."):
                out.append((nearest(alias.name), []))
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = here.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base != package and not base.startswith(package + "."):
            return out
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append((sub, []) if sub in modules else (nearest(base), [alias.name]))
    return out


def import_graph(root: Path = SRC, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of its first import}, for every module under ``root``."""
    modules = _modules(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_init) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        here = name if is_init else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in (_eager(tree) if name == package else ast.walk(tree)):
            for target, _ in _targets(node, here, modules, package):
                if target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def top_package_imports(root: Path = SRC, package: str = PACKAGE) -> list[tuple[str, int, list[str]]]:
    """(module, line, names) for every import of the top package itself inside the package."""
    modules = _modules(root, package)
    found = []
    for name, (path, is_init) in modules.items():
        if name == package:
            continue
        here = name if is_init else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for target, names in _targets(node, here, modules, package):
                if target == package:
                    found.append((name, node.lineno, names))
    return found


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The groups of modules that import each other, directly or not (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, successors = work[-1]
            for w in successors:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.add(w)
                        if w == v:
                            break
                    if len(group) > 1 or v in graph[v]:
                        groups.append(group)
    return groups


def cycle_through(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """A shortest import path from ``start`` back to itself, through ``within`` only."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start] if v != start else [start, start]
            if w in within and w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is on no cycle within {sorted(within)}")


def _short(name: str) -> str:
    return name.removeprefix(PACKAGE + ".")


def layer_of(module: str) -> int | None:
    """The layer of a module (its dotted name under the package), or None if it has none."""
    best = None
    for layer, names in LAYERS.items():
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (layer, n)
    return best[0] if best else None


def _under(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def _where(module: str, line: int) -> str:
    path = Path(*module.split(".")[1:])
    is_package = (SRC / path / "__init__.py").is_file()
    return f"src/{PACKAGE}/{path / '__init__.py' if is_package else path.with_suffix('.py')}:{line}"


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


# -- the builder on a package made for it ---------------------------------------------------------


def test_the_graph_sees_relative_lazy_and_submodule_imports(tmp_path: Path) -> None:
    root = tmp_path / "toy"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from typing import TYPE_CHECKING\nfrom .b import thing\n"
                                      "if TYPE_CHECKING:\n    from .a import f\n")
    (root / "a.py").write_text("def f():\n    from .sub import leaf\n    return leaf\n")
    (root / "b.py").write_text("import toy.sub\nthing = 1\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "leaf.py").write_text("import os\nfrom .. import a\nfrom ..b import thing\nfrom .. import f\n")
    g = import_graph(root, "toy")
    assert {k: set(v) for k, v in g.items()} == {
        "toy": {"toy.b"},                      # eager imports only: TYPE_CHECKING never runs
        "toy.a": {"toy.sub.leaf"},             # lazy, and `from .sub import leaf` is the module
        "toy.b": {"toy.sub"},                  # `import toy.sub`: the package's __init__
        "toy.sub": set(),
        "toy.sub.leaf": {"toy.a", "toy.b", "toy"},  # a module, a name from a module, the top package
    }
    assert strongly_connected(g) == [{"toy.a", "toy.sub.leaf"}]
    assert cycle_through(g, "toy.a", {"toy.a", "toy.sub.leaf"}) == ["toy.a", "toy.sub.leaf", "toy.a"]
    assert top_package_imports(root, "toy") == [("toy.sub.leaf", 4, ["f"])]


# -- the rules ------------------------------------------------------------------------------------


def test_no_import_cycles(graph: dict[str, dict[str, int]]) -> None:
    problems = []
    for group in strongly_connected(graph):
        path = cycle_through(graph, min(group), group)  # each module of the group is on a cycle: show one
        steps = " -> ".join(f"{_short(a)} ({_where(a, graph[a][b])})" for a, b in zip(path, path[1:], strict=False))
        problems.append(f"import cycle: {steps} -> {_short(path[-1])}"
                        + (f" (the cycle's modules: {', '.join(sorted(map(_short, group)))})"
                           if len(group) > len(path) - 1 else ""))
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer(graph: dict[str, dict[str, int]]) -> None:
    missing = [_short(m) for m in graph if m != PACKAGE and layer_of(_short(m)) is None]
    assert not missing, (f"modules in no layer: {missing}; expected each under a name in LAYERS "
                         "(tests/test_layers.py) and in docs/architecture.md")


def test_each_module_imports_only_its_layer_or_lower(graph: dict[str, dict[str, int]]) -> None:
    problems = []
    for importer, edges in graph.items():
        if importer == PACKAGE:
            continue  # the public surface
        mine = layer_of(_short(importer))
        for target, line in edges.items():
            if target == PACKAGE:
                continue  # see test_the_top_package_is_imported_only_for_its_version
            theirs = layer_of(_short(target))
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{_where(importer, line)}: {_short(importer)} (layer {mine}) imports "
                                f"{_short(target)} (layer {theirs}); expected layer {mine} or lower")
    assert not problems, "\n".join(problems)


def test_the_base_layer_imports_only_the_base_layer(graph: dict[str, dict[str, int]]) -> None:
    base = LAYERS[1]
    problems = [f"{_where(a, line)}: {_short(a)} imports {_short(b)}; expected only {', '.join(base)}"
                for a, edges in graph.items() if _under(_short(a), base)
                for b, line in edges.items() if not _under(_short(b), base)]
    assert not problems, "\n".join(problems)


def test_foundations_never_import_the_loop_or_the_interfaces(graph: dict[str, dict[str, int]]) -> None:
    problems = [f"{_where(a, line)}: {_short(a)} imports {_short(b)}; expected none of "
                f"{', '.join(NOT_FOR_FOUNDATIONS)} from {', '.join(FOUNDATIONS)}"
                for a, edges in graph.items() if _under(_short(a), FOUNDATIONS)
                for b, line in edges.items() if _under(_short(b), NOT_FOR_FOUNDATIONS)]
    assert not problems, "\n".join(problems)


def test_only_the_interfaces_import_serve_and_nothing_imports_cli(graph: dict[str, dict[str, int]]) -> None:
    problems = []
    for a, edges in graph.items():
        if a == PACKAGE:
            continue
        for b, line in edges.items():
            if _under(_short(b), ("cli",)) and not _under(_short(a), ("cli",)):
                problems.append(f"{_where(a, line)}: {_short(a)} imports {_short(b)}; expected nothing to import cli")
            if _under(_short(b), ("serve",)) and not _under(_short(a), SERVE_IMPORTERS):
                problems.append(f"{_where(a, line)}: {_short(a)} imports {_short(b)}; expected only "
                                f"{', '.join(SERVE_IMPORTERS)} to import serve")
    assert not problems, "\n".join(problems)


def test_the_top_package_is_imported_only_for_its_version() -> None:
    problems = [f"{_where(m, line)}: {_short(m)} takes {names or 'the whole package'} from {PACKAGE}; "
                f"expected only __version__ (import the module that defines a name instead)"
                for m, line, names in top_package_imports() if names != ["__version__"]]
    assert not problems, "\n".join(problems)
