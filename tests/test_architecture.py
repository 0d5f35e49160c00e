"""The package's shape, from its own imports (those inside functions included): no cycles, each folder
imports only from the layers below it, the code that runs inside the job imports nothing of the client,
few top-level modules, small modules (docs/design/architecture.md)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpcai"

# Higher imports lower, never the other way; equal ranks may not import each other across folders.
RANK = {
    "errors": 0, "paths": 0, "shellquote": 0, "presets": 0, "hpcai": 0,
    "rundir": 1, "monitor": 1,
    "spec": 2, "runtime": 2,
    "store": 3, "train": 3,
    "backends": 4, "integrations": 4,
    "render": 5,
    "flows": 6,
    "cli": 7,
    "__main__": 8,
}  # fmt: skip
JOB_SIDE = {"runtime", "monitor", "train", "integrations"}
CLIENT_SIDE = {"cli", "flows", "backends", "render", "store", "spec"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (TYPE_CHECKING blocks left out: they never run)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]

        def visit(node: ast.AST, module: str = module, package: str = package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                names: list[str] = []
                if isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                        base = ".".join([*anchor, base] if base else anchor)
                    subs = [f"{base}.{alias.name}" for alias in child.names]
                    names = subs if all(s in modules for s in subs) else [*subs, base]
                for name in names:
                    target = resolve(name) if name.startswith("hpcai") else None
                    if target is not None and target != module:
                        graph[module].add(target)
                visit(child)

        visit(ast.parse(path.read_text()))
    return graph


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hpcai"


def test_there_are_no_import_cycles() -> None:
    graph = _imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan: strongly connected components of more than one module
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in _modules():
        if module not in index:
            connect(module)
    assert cycles == []


def test_each_folder_imports_only_from_the_layers_below() -> None:
    wrong = []
    for module, targets in _imports().items():
        source = _folder(module)
        for target in targets:
            folder = _folder(target)
            if folder != source and RANK[folder] >= RANK[source]:
                wrong.append(f"{module} -> {target}")
            if source in JOB_SIDE and folder in CLIENT_SIDE:
                wrong.append(f"{module} -> {target} (the job's code imports the client's)")
    assert wrong == []
    assert set(RANK) >= {_folder(m) for m in _modules()}, "a new folder needs its rank here"


def test_few_top_level_modules_and_no_module_over_500_lines() -> None:
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 8, top
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    over = {name: n for name, n in lengths.items() if n > 500}
    assert over == {}, f"split these modules (500 lines at most): {over}"


def test_the_flows_neither_print_nor_parse() -> None:
    """flows/ report progress through flows/progress.py; typer and rich belong to cli/."""
    for path in (PACKAGE / "flows").rglob("*.py"):
        text = path.read_text()
        assert "import typer" not in text and "from rich" not in text and "import rich" not in text, path
