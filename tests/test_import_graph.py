"""The import graph of ``mdsens``: no import loops in ``mdsens.md`` and ``mdsens.studies``,
and the layering of the subpackages.

Every module under ``mdsens/`` is parsed with :mod:`ast` (nothing is imported). The rules:

* Nodes are modules; a package is its ``__init__`` (``mdsens/md/__init__.py`` is
  ``mdsens.md``).
* Loops are looked for among *module-level* imports only: those run when the module is
  first imported (including inside top-level ``if``/``try``/``with`` blocks and class
  bodies), but not those inside functions (a lazy import is the sanctioned way to keep
  start-up light and to reach back up the layers) nor those under ``if TYPE_CHECKING:``.
* ``import a.b.c`` is an edge to ``a.b.c``. ``from P import x`` is an edge to the module
  ``P.x`` when ``P.x`` is a module (so ``from . import x`` inside package P is an edge to
  ``P.x``), else to ``P`` itself, i.e. its ``__init__`` (``x`` is a name defined there).
  Relative imports are resolved against the importing module's package.
* Python initialises the parent packages of an imported module first. From a module
  *outside* a package that is a real dependency, so importing ``P.x`` from outside P is
  also an edge to ``P`` (importing ``mdsens.md.potentials.base`` from ``mdsens.md.model``
  runs ``mdsens.md.potentials/__init__``, which imports every potential). From a module
  inside P (P is its own ancestor, already being initialised) it is *not* an edge. So a
  package ``__init__`` that imports its submodules (``__init__ -> submodule``) is an
  ordinary edge, and it closes a loop only when a submodule explicitly imports a name
  from the package (``from . import name`` with ``name`` not a submodule,
  ``from mdsens.md.potentials import Potential``) or a module outside the package
  reached from it imports back into the package: a real loop (some module would see a
  half-initialised one), which the test reports.
* Layering (the lower package must not depend on the upper one at all) uses every
  import, function-level ones included: ``mdsens.implicit`` imports nothing from
  ``mdsens.md``, ``studies``, ``cli``, ``io``, ``bilevel``; ``mdsens.md`` nothing from
  ``studies``, ``cli``, ``bilevel``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mdsens"

# loops that exist and cannot be removed yet, as frozensets of the modules of the strongly
# connected component; keep empty when possible
KNOWN_LOOPS: set[frozenset[str]] = set()

CHECKED = ("mdsens.md", "mdsens.studies")

LAYERS = {
    "mdsens.implicit": ("mdsens.md", "mdsens.studies", "mdsens.cli", "mdsens.io",
                        "mdsens.bilevel"),
    "mdsens.md": ("mdsens.studies", "mdsens.cli", "mdsens.bilevel"),
}


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module_level: bool):
    """The Import/ImportFrom nodes (only those run at import time if ``module_level``)."""
    if not module_level:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_pkg: bool,
             modules: dict) -> set[str]:
    def known(target: str) -> str | None:
        # the deepest module of the dotted name that exists in the package
        parts = target.split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    top = name.split(".")[0]
    found: set[str | None] = set()
    if isinstance(node, ast.Import):
        found = {known(a.name) for a in node.names if a.name.split(".")[0] == top}
    else:
        if node.level:
            package = name.split(".") if is_pkg else name.split(".")[:-1]
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base.split(".")[0] != top:
            return set()
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if sub in modules else known(base))
    out = set()
    for t in found:
        if t is None:
            continue
        out.add(t)
        parts = t.split(".")
        # the parent packages the import initialises, except the importer's own ancestors
        for k in range(2, len(parts)):
            pkg = ".".join(parts[:k])
            if not (name == pkg or name.startswith(pkg + ".")):
                out.add(pkg)
    return out - {name}


def import_graph(module_level: bool = True, root: Path = ROOT) -> dict[str, set[str]]:
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in _imports(tree, module_level):
            edges |= _targets(node, name, is_pkg, modules)
        graph[name] = edges
    return graph


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a self-loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One cycle through the component's first module (breadth-first, shortest)."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if v != start else [start, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def _in(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_rules_on_a_small_example():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    comps = _components(graph)
    assert comps == [["a", "b", "c"], ["e"]]
    assert _cycle(graph, comps[0]) == ["a", "b", "c", "a"]
    assert _cycle(graph, comps[1]) == ["e", "e"]


def test_rules_on_a_small_package(tmp_path):
    root = tmp_path / "pkg"
    files = {
        "__init__.py": "from . import a\nfrom .sub import x\nNAME = 1\n",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from . import NAME\n",  # lazy: no loop
        "c.py": "from . import NAME\n",  # __init__ -> sub.x -> c -> __init__: a loop
        "sub/__init__.py": "",
        "sub/x.py": "from .. import c\nimport pkg.a\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    graph = import_graph(root=root)
    assert graph["pkg"] == {"pkg.a", "pkg.sub", "pkg.sub.x"}
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == set()
    assert graph["pkg.c"] == {"pkg"}
    assert graph["pkg.sub.x"] == {"pkg.c", "pkg.a"}  # pkg is its own ancestor: no edge
    assert graph["pkg.d"] == set()
    assert _components(graph) == [["pkg", "pkg.c", "pkg.sub.x"]]
    assert _cycle(graph, ["pkg", "pkg.c", "pkg.sub.x"]) == ["pkg", "pkg.sub.x", "pkg.c", "pkg"]
    assert import_graph(module_level=False, root=root)["pkg.b"] == {"pkg"}


def test_graph_resolves_relative_imports():
    graph = import_graph()
    # a submodule importing a sibling submodule through its package (`from . import x`)
    assert "mdsens.md.potentials._lammps_files" in graph["mdsens.md.potentials.eam"]
    assert "mdsens.md.potentials" not in graph["mdsens.md.potentials.eam"]
    # importing a submodule from outside its package initialises the package
    assert {"mdsens.md.potentials", "mdsens.md.potentials.base"} <= graph["mdsens.md.model"]
    # `from ..geometry import ...` two levels up from a module of a subpackage
    assert "mdsens.md.geometry" in graph["mdsens.md.potentials.base"]
    # a package __init__ importing its submodules
    assert "mdsens.md.potentials.pair" in graph["mdsens.md.potentials"]
    # function-level imports are not module-level edges
    assert "mdsens.md.model" not in graph["mdsens.md.potentials.base"]
    assert "mdsens.md.model" in import_graph(module_level=False)["mdsens.md.potentials.base"]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_geometry_and_potentials_sit_below_the_model():
    graph = import_graph()
    # the geometry (shared by the cell search and the potentials) needs neither
    below = _reachable(import_graph(module_level=False), "mdsens.md.geometry")
    assert not {t for t in below if _in(t, ("mdsens.md.potentials", "mdsens.md.model"))}
    # the potentials reach the model only lazily (``Potential.build``)
    for name in graph:
        if _in(name, ("mdsens.md.potentials",)):
            assert "mdsens.md.model" not in _reachable(graph, name), name
            assert "mdsens.md._cell_search" not in _reachable(graph, name), name


def test_no_import_loops_in_md_and_studies():
    graph = import_graph()
    loops = [c for c in _components(graph) if any(_in(m, CHECKED) for m in c)]
    new = [c for c in loops if frozenset(c) not in KNOWN_LOOPS]
    report = "\n".join(
        f"  {' -> '.join(_cycle(graph, c))}   (component: {', '.join(c)})" for c in new)
    assert not new, f"module-level import loops:\n{report}"


def test_layering():
    graph = import_graph(module_level=False)
    bad = sorted(
        f"{src} -> {dst}"
        for lower, uppers in LAYERS.items()
        for src, dsts in graph.items() if _in(src, (lower,))
        for dst in dsts if _in(dst, uppers)
    )
    assert not bad, "imports against the layering:\n  " + "\n  ".join(bad)
