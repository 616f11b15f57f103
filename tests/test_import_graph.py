"""Imports point one way: no import cycle crosses an app boundary (issue 13).

The graph is built from the source with ``ast``, not by importing anything: every module of the
packages ``common``, ``shopper``, ``inventory``, ``sessions`` and ``costs`` (tests excluded) and every
``import`` / ``from ... import`` in it, at module level or inside a function (a lazy import is
still a dependency: it only moves the cycle to run time). ``from pkg import name`` points at the
module ``pkg.name`` when there is one, else at ``pkg``; importing ``a.b.c`` also runs ``a`` and
``a.b``, so those count too.

The rule
--------
1. **No cycle between apps.** Two modules of different apps must never be able to reach each
   other through imports (a strongly connected component of the module graph stays inside one
   app). An app may use another app's modules, e.g. ``costs.services`` reads ``sessions.models``
   and ``sessions.services`` asks ``costs.services`` for the budget, but the module it imports
   must not import it back, directly or through others. Within one app a cycle is the app's own
   business (it is reported by Python itself when it breaks).
2. **common is the bottom.** ``common`` imports no app; every app may import it.
3. **The wiring is the top.** The project package's wiring modules (``WIRING`` below: settings,
   URLs, the ASGI/WSGI entry points, the CLI, the project's own pages, metrics and commands) may
   import every app; no module of an app (``inventory``, ``sessions``, ``costs``, ``common``)
   imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("common", "shopper", "inventory", "sessions", "costs")
# The project package's modules that wire the apps together: they may import every app.
WIRING = (
    "shopper.settings",
    "shopper.urls",
    "shopper.asgi",
    "shopper.cli",
    "shopper.killswitch",
    "shopper.views",
    "shopper.context_processors",
    "shopper.metrics",
    "shopper.schedules",
    "shopper.management",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name ``module`` may import (candidates; resolved against the project later)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for name in imported_names(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            # The module itself and the packages above it (running a.b.c runs a and a.b).
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate != module:
                    targets.add(candidate)
        graph[module] = targets
    return graph


def app_of(module: str) -> str:
    return module.split(".")[0]


def is_wiring(module: str) -> bool:
    return any(module == w or module.startswith(w + ".") for w in WIRING)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for child in graph[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that all reach each other (a module on no loop is a group alone).
    Plain reachability: a few hundred modules, so clarity beats Tarjan."""
    reach = {m: reachable(graph, m) for m in graph}
    groups: list[list[str]] = []
    placed: set[str] = set()
    for m in sorted(graph):
        if m not in placed:
            group = sorted({m} | {n for n in reach[m] if m in reach[n]})
            placed.update(group)
            groups.append(group)
    return groups


def cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop through ``component`` that crosses apps, for the failure message."""
    members = set(component)
    start = next(m for m in component if any(app_of(t) != app_of(m) for t in graph[m] & members))
    # Breadth-first from start's cross-app neighbours back to start.
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start and len(paths[node]) > 1:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    return component


def test_no_import_cycle_crosses_apps():
    graph = import_graph()
    crossing = [c for c in strongly_connected(graph) if len({app_of(m) for m in c}) > 1]
    loops = [" -> ".join(cycle_path(graph, c)) for c in crossing]
    assert not loops, "import cycles between apps:\n" + "\n".join(loops)


def test_common_imports_no_app():
    graph = import_graph()
    bad = sorted(
        f"{m} imports {t}" for m, targets in graph.items() if app_of(m) == "common"
        for t in targets if app_of(t) != "common"
    )  # fmt: skip
    assert not bad, bad


def test_apps_do_not_import_the_wiring():
    graph = import_graph()
    bad = sorted(
        f"{m} imports {t}" for m, targets in graph.items() if not is_wiring(m)
        for t in targets if is_wiring(t) and app_of(m) != "shopper"
    )  # fmt: skip
    assert not bad, bad


def test_the_wiring_list_names_real_modules():
    modules = project_modules()
    assert all(w in modules for w in WIRING), [w for w in WIRING if w not in modules]


def test_the_check_sees_lazy_imports_and_cycles():
    """The check itself: a lazy import inside a function is an edge, and a loop through two apps
    is found (so a green run means something)."""
    tree = ast.parse("def f():\n    from costs.services import budget_reserve\n")
    assert "costs.services" in imported_names(tree, "sessions.services", is_package=False)
    graph = {
        "sessions.services": {"costs.services"},
        "costs.services": {"sessions.models"},
        "sessions.models": set(),
    }
    assert all(len(c) == 1 for c in strongly_connected(graph))
    graph["sessions.models"] = {"costs.services"}
    assert ["costs.services", "sessions.models"] in strongly_connected(graph)
