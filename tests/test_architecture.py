"""The layout shows the architecture: no import circle among the project's modules, the core imports
no plugin, and no core module grows past 400 lines.

Every ``import`` counts, wherever it stands: at module level, inside a function, or under
``TYPE_CHECKING`` (a circle hidden in a function is still a circle a reader must untangle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"mint_core": ROOT / "mint_core", **{p.name: p for p in (ROOT / "plugins").iterdir() if p.is_dir()
                                               and (p / "__init__.py").exists()}}
MAX_CORE_LINES = 400


def module_name(path: Path) -> str:
    package = next(name for name, folder in SOURCES.items() if folder in path.parents)
    parts = path.relative_to(SOURCES[package]).with_suffix("").parts
    return ".".join((package, *[p for p in parts if p != "__init__"]))


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for folder in SOURCES.values() for path in folder.rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from pkg import mod`` resolves to ``pkg.mod`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a submodule's attribute -> the module that holds it
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "mint_core.pipeline" in graph["mint_core.cli"]  # imported inside a command function
    assert "mint_engine.orpo" in graph["mint_orpo"]  # imported inside the factory


def test_the_core_imports_no_plugin():
    offenders = {name: sorted(t for t in targets if not t.startswith("mint_core"))
                 for name, targets in import_graph().items() if name.startswith("mint_core")}
    assert {k: v for k, v in offenders.items() if v} == {}


#: Plugins that build on another built-in plugin, and why. Any other plugin-to-plugin import is a
#: new coupling: share the piece through the core or the engine instead, or add it here with its reason.
PLUGIN_DEPENDENCIES = {
    "mint_gestalt": {"mint_hpo"},         # its notes branch reads the hpo teacher's phenotype; hpo is its baseline
    "mint_hpo": {"mint_rare_disease"},    # hpo3's ontology and annotations, loaded once by the task's module
    "mint_rag": {"mint_rare_disease"},    # the same: a disease's document is its HPO profile
    "mint_llama_vision": {"mint_llama"},  # the offline Mllama is built from the text student's SmolLM2
}


def test_plugins_reach_each_other_only_where_declared():
    """A plugin uses the core and the training engine (a library); other plugins only as declared above."""
    allowed = ("mint_core", "mint_engine")
    found: dict[str, set[str]] = {}
    for name, targets in import_graph().items():
        own = name.split(".")[0]
        if own == "mint_core":
            continue
        others = {t.split(".")[0] for t in targets} - {own, *allowed}
        if others:
            found.setdefault(own, set()).update(others)
    assert found == PLUGIN_DEPENDENCIES


def test_core_modules_stay_short():
    long = {path.name: n for path in (ROOT / "mint_core").glob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_CORE_LINES}
    assert long == {}
