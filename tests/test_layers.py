"""The import layers hold: no upward arrow, no metrics -> trainers arrow, no cycle.

Layers, bottom to top (docs/architecture.md, "Layers"):

0. foundation: data, models, sampling, store, weights, scorers, ... of ``harness``
1. ``metrics`` and ``trainers`` (``metrics`` never imports ``trainers``)
2. orchestration: runner, evaluate, probing, build, ... of ``harness``
3. ``reports``
4. the command line, ``harness.cli`` (its ``report`` command renders reports)

Every ``.py`` file of the four packages is parsed with ``ast``; module-level and
function-local imports both count, imports under ``if TYPE_CHECKING:`` do not
(they never run). ``from pkg import name`` is an arrow to ``pkg.name`` when that
is a module, else to ``pkg``.

The one exception to "no cycle" is ``PLUGIN_DISCOVERY``: a registry that, on a name it does
not know, imports the package of heavy plugins (torch models) which register themselves into
it. Those imports must stay function-local (checked), and they still obey the layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "trainers", "metrics", "reports")

FOUNDATION, MIDDLE, ORCHESTRATION, REPORTS, ENTRY = 0, 1, 2, 3, 4
LAYER_NAMES = {FOUNDATION: "foundation", MIDDLE: "metrics/trainers", ORCHESTRATION: "orchestration",
               REPORTS: "reports", ENTRY: "cli"}

# Packages whose own __init__ has a layer while their submodules need their own entries.
PACKAGE_ROOTS: dict[str, int] = {"harness": FOUNDATION}
# Module prefix -> layer. The longest matching prefix wins; a module that no
# prefix matches fails the test (add it here, in the layer it belongs to).
LAYERS: dict[str, int] = {
    "harness.config": FOUNDATION,
    "harness.data": FOUNDATION,
    "harness.distributed": FOUNDATION,
    "harness.extras": FOUNDATION,
    "harness.lru": FOUNDATION,
    "harness.models": FOUNDATION,
    "harness.names": FOUNDATION,
    "harness.presets": FOUNDATION,  # the preset YAML files (a data package)
    "harness.provenance": FOUNDATION,
    "harness.rundir": FOUNDATION,
    "harness.sampling": FOUNDATION,
    "harness.scorers": FOUNDATION,
    "harness.store": FOUNDATION,
    "harness.weights": FOUNDATION,
    "metrics": MIDDLE,
    "trainers": MIDDLE,
    "harness.build": ORCHESTRATION,
    "harness.evaluate": ORCHESTRATION,
    "harness.probing": ORCHESTRATION,
    "harness.regress": ORCHESTRATION,
    "harness.reproduce": ORCHESTRATION,
    "harness.runner": ORCHESTRATION,
    "harness.sample_eval": ORCHESTRATION,
    "harness.smoke": ORCHESTRATION,
    "harness.tracking": ORCHESTRATION,
    "harness.tuning": ORCHESTRATION,
    "harness.vbench_export": ORCHESTRATION,
    "harness.workers": ORCHESTRATION,
    "reports": REPORTS,
    "harness.cli": ENTRY,
}

# (registry module, plugin package it imports on a miss): why the plugins cannot be imported up front.
PLUGIN_DISCOVERY: dict[tuple[str, str], str] = {
    ("harness.scorers.backends.flow", "harness.scorers.backends.real"):
        "get_flow_backend: RAFT / SEA-RAFT register on import; torch is loaded only when one is named",
    ("harness.scorers.backends.tracking", "harness.scorers.backends.real"):
        "get_tracker: CoTracker registers on import; torch is loaded only when it is named",
    ("harness.scorers.backends.interpolation", "harness.scorers.backends.real"):
        "interpolation look-ups: AMT-S registers on import; torch is loaded only when needed",
    ("harness.weights", "harness.scorers.backends.real"):
        "init_random: each upstream architecture registers its random-weight writer on import",
}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the four packages, by dotted name (a package by its own name)."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool, mods: dict[str, Path],
                    module_level_only: bool = False) -> list[str]:
    """Dotted names imported anywhere in ``tree`` (skipping ``if TYPE_CHECKING:`` bodies), or
    only outside function bodies with ``module_level_only``.

    ``from pkg import name`` gives ``pkg.name`` when that is a module, else ``pkg``.
    """
    names: list[str] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                names.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base)
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph(root: Path = ROOT, module_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of the four packages it imports (anywhere, or at module level only)."""
    mods = module_files(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for name in _imported_names(tree, module, path.name == "__init__.py", mods, module_level_only):
            if name.split(".")[0] not in PACKAGES:
                continue
            target = name
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != module:
                graph[module].add(target)
    return graph


def layer_of(module: str, table: dict[str, int] = LAYERS) -> int | None:
    """The layer of the longest table prefix matching ``module`` (a package root: only itself), or None."""
    if module in PACKAGE_ROOTS:
        return PACKAGE_ROOTS[module]
    best = None
    for prefix, layer in table.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def violations(graph: dict[str, set[str]], table: dict[str, int] = LAYERS,
               exempt: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Readable lines for every unassigned module, upward arrow, metrics -> trainers arrow, and cycle
    (the ``exempt`` arrows left out of the cycle search only)."""
    problems: list[str] = []
    unassigned = sorted(m for m in graph if layer_of(m, table) is None)
    problems += [f"no layer for {m}: add it to LAYERS in tests/test_layers.py" for m in unassigned]
    for source in sorted(graph):
        for target in sorted(graph[source]):
            low, high = layer_of(source, table), layer_of(target, table)
            if low is None or high is None:
                continue
            if high > low:
                problems.append(
                    f"upward arrow: {source} ({LAYER_NAMES[low]}) -> {target} ({LAYER_NAMES[high]})"
                )
            elif source.split(".")[0] == "metrics" and target.split(".")[0] == "trainers":
                problems.append(f"metrics -> trainers arrow: {source} -> {target}")
    exempt = set(exempt)
    acyclic = {m: {t for t in targets if (m, t) not in exempt} for m, targets in graph.items()}
    problems += [f"import cycle: {' <-> '.join(component)}" for component in strongly_connected(acyclic)]
    return problems


def test_layers_hold():
    problems = violations(import_graph(), exempt=PLUGIN_DISCOVERY)
    assert not problems, "layer violations:\n  " + "\n  ".join(problems)


def test_plugin_discovery_imports_exist_and_stay_function_local():
    everywhere, module_level = import_graph(), import_graph(module_level_only=True)
    stale = [f"{a} -> {b}" for a, b in PLUGIN_DISCOVERY if b not in everywhere[a]]
    eager = [f"{a} -> {b}" for a, b in PLUGIN_DISCOVERY if b in module_level[a]]
    assert not stale, f"PLUGIN_DISCOVERY lists imports that no longer exist: {stale}"
    assert not eager, f"plugin discovery must import inside the look-up, not at module level: {eager}"


def test_checker_reports_upward_arrow_metrics_to_trainers_and_cycle():
    graph = {
        "harness.data": {"harness.runner"},  # upward
        "harness.runner": {"harness.evaluate"},
        "harness.evaluate": {"harness.runner"},  # cycle
        "metrics.x": {"trainers.y"},  # metrics -> trainers
        "trainers.y": set(),
        "harness.mystery": set(),  # not in the table
    }
    problems = violations(graph)
    assert "upward arrow: harness.data (foundation) -> harness.runner (orchestration)" in problems
    assert "metrics -> trainers arrow: metrics.x -> trainers.y" in problems
    assert "import cycle: harness.evaluate <-> harness.runner" in problems
    assert any(p.startswith("no layer for harness.mystery") for p in problems)
    assert len(problems) == 4
    exempted = violations(graph, exempt=[("harness.evaluate", "harness.runner")])
    assert not any(p.startswith("import cycle") for p in exempted)
    assert "upward arrow: harness.data (foundation) -> harness.runner (orchestration)" in exempted


def test_import_graph_sees_function_local_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "runner.py").write_text("")
    (pkg / "store.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from harness.evaluate import Evaluator\n"
        "def f():\n    from harness import runner\n"
    )
    (pkg / "evaluate.py").write_text("")
    for other in PACKAGES[1:]:
        (tmp_path / other).mkdir()
    assert import_graph(tmp_path)["harness.store"] == {"harness.runner"}
