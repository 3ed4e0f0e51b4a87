"""The import graph of ``reverie`` has no circles.

A circle between two modules (``a`` imports ``b``, ``b`` imports ``a``) means
neither can be understood, tested or moved without the other, and a circle
hidden in a function body is still one: it only fails later, at the first call.
The test reads every module's source with ``ast`` (nothing is imported, so it
is fast and sees imports inside functions and ``TYPE_CHECKING`` blocks too),
builds the graph of ``reverie`` modules, and fails on any strongly connected
set of more than one module, naming the edges that close the circle; the same
holds one level up, between the packages (``api``, ``core``, ``controller`` ...).

A circle too risky to break at once may be listed in ``ALLOWED`` with the issue
that removes it; an entry that no longer matches a circle fails the test, so
the list only shrinks.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import reverie

PACKAGE_ROOT = Path(reverie.__file__).resolve().parent

# frozenset of the modules in one circle → why it is still there.
ALLOWED: dict[frozenset[str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    # ``from reverie.a.b import c`` names either module ``reverie.a.b.c`` or a
    # member of ``reverie.a.b``; the longest known module prefix is the target.
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                targets.add(target)
    return targets


@functools.cache
def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports_of(module, path, known) for module, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected sets of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def _describe(component: set[str], graph: dict[str, set[str]]) -> str:
    edges = sorted(f"{a} → {b}" for a in component for b in graph[a] if b in component)
    return "\n  ".join(edges)


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = import_graph()
    unexplained = [c for c in circles(graph) if frozenset(c) not in ALLOWED]
    assert not unexplained, "import circles in reverie (break them, e.g. move the shared piece down a layer):\n" + (
        "\n".join(f"- {sorted(c)}:\n  {_describe(c, graph)}" for c in unexplained)
    )


def _package_of(module: str) -> str:
    # reverie.controller.kube → reverie.controller, and workloads' rooms are packages of their own:
    # reverie.workloads.store.objects → reverie.workloads.store.  reverie/__init__ is its own node.
    parts = module.split(".")
    return ".".join(parts[:3] if parts[:2] == ["reverie", "workloads"] and len(parts) > 3 else parts[:2])


# workloads' rooms, lowest first: a room imports only the rooms before it.
WORKLOAD_ROOMS = ("store", "data", "ml", "steps")


def test_no_package_imports_itself_round_a_circle() -> None:
    # The layers (api, core → controller, local, workloads → cli) point one way: a
    # circle between packages is a layer reaching back up, even when no two modules form one.
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        packages.setdefault(_package_of(module), set()).update(_package_of(t) for t in targets)
    for package, targets in packages.items():
        targets.discard(package)
    found = circles(packages)
    assert not found, "import circles between reverie's packages:\n" + (
        "\n".join(f"- {sorted(c)}:\n  {_describe(c, packages)}" for c in found)
    )


def test_every_allowed_circle_still_exists() -> None:
    present = {frozenset(c) for c in circles(import_graph())}
    stale = [sorted(c) for c in ALLOWED if c not in present]
    assert not stale, f"these allowed circles are gone; remove them from ALLOWED: {stale}"


def test_the_check_sees_a_circle_inside_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [{"a", "b", "c"}]


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # reverie.local.bootstrap imports reverie.workloads inside a function.
    assert "reverie.workloads" in graph["reverie.local.bootstrap"]


def test_workload_rooms_import_only_downwards() -> None:
    # store (bytes and generations) ← data (memories, questions) ← ml (models) ← phases (the sleep's steps).
    rank = {f"reverie.workloads.{room}": n for n, room in enumerate(WORKLOAD_ROOMS)}
    graph = import_graph()
    upward = sorted(
        f"{module} → {target}"
        for module, targets in graph.items()
        if _package_of(module) in rank
        for target in targets
        if _package_of(target) in rank and rank[_package_of(target)] > rank[_package_of(module)]
    )
    assert not upward, "a workloads room imports one above it (move the shared piece down):\n  " + "\n  ".join(upward)
    rooms = {p.name for p in (PACKAGE_ROOT / "workloads").iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(WORKLOAD_ROOMS), f"workloads' rooms changed; give each a place in WORKLOAD_ROOMS: {rooms}"
    loose = sorted(p.name for p in (PACKAGE_ROOT / "workloads").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside a workloads room: {loose}"
