"""The project's modules import each other without cycles, and the data layer knows nothing of the concurrent one.

An import cycle works only while one of its imports stays inside a function (or under
``if TYPE_CHECKING:``), where it runs after both modules have loaded. Such lazy imports hide the
cycle: it breaks with an ImportError on a partly initialised module the day someone moves the
import to the top of the file. So these tests read the source with ``ast`` instead of importing
it, and count imports at any depth of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nmbrl", "callbacks")

#: Each module's imports of other project modules, with the line of the first one.
ImportGraph = dict[str, dict[str, int]]


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """The dotted name of every module under ``packages`` (a package is its ``__init__.py``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int]]:
    """The absolute dotted names a module's imports name, at any depth of its file, with their lines.

    ``from x import z`` names ``x.z``: z may be a submodule of x, or a name defined in x.
    """
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: drop a level per dot, counting from the module's package
                package = module.split(".")[: None if is_package else -1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return names


def longest_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` names (``a.b.C`` -> ``a.b``), None outside the project."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> ImportGraph:
    """Which project modules each module under ``packages`` imports, read from the source without importing it."""
    modules = project_modules(root, packages)
    graph: ImportGraph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = graph.setdefault(module, {})
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            target = longest_module(name, modules)
            if target is not None and target != module:
                edges[target] = min(line, edges.get(target, line))
    return graph


def import_cycles(graph: ImportGraph) -> list[list[str]]:
    """One chain per cycle that a depth-first search closes, e.g. ``[a, b, a]``, in a stable order."""
    cycles, done, path = [], set(), []

    def visit(module: str) -> None:
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if target in path:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return cycles


def test_project_modules_import_each_other_without_cycles():
    cycles = import_cycles(import_graph(ROOT))

    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_data_layer_imports_nothing_of_the_concurrent_one():
    offending = [
        f"{module} line {line} imports {target}"
        for module, edges in import_graph(ROOT).items()
        if module == "nmbrl.data" or module.startswith("nmbrl.data.")
        for target, line in edges.items()
        if target == "nmbrl.concurrent" or target.startswith("nmbrl.concurrent.")
    ]

    assert not offending, "nmbrl.data must not depend on nmbrl.concurrent:\n" + "\n".join(offending)


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, source in {"__init__.py": "", **files}.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_a_cycle_closed_by_a_function_level_import_is_found(tmp_path):
    write_package(
        tmp_path,
        {
            "a.py": "from pkg.b import helper\n",
            "b.py": "def helper():\n    from . import a\n    return a\n",
        },
    )

    assert import_cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_imports_in_one_direction_make_no_cycle(tmp_path):
    write_package(
        tmp_path,
        {
            "a.py": "import pkg.b\nfrom .sub import c\n",
            "b.py": "from pkg.sub.c import value\n",
            "sub/__init__.py": "",
            "sub/c.py": "import os\nvalue = 1\n",
        },
    )

    graph = import_graph(tmp_path, ("pkg",))

    assert graph["pkg.a"] == {"pkg.b": 1, "pkg.sub.c": 2}
    assert import_cycles(graph) == []
