"""The folders show the architecture, and the imports keep to it: no import cycle among the modules of
``core/``, ``plugins/`` and ``kernels/``, each room's ``__init__`` says what lives there, and ``import
logbus`` stays light.

The imports are read from the source with ``ast`` (nothing is imported), so a cycle is found even in a
module no test happens to import first.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"core": "logbus", "plugins": "logbus.plugins", "kernels": "logbus.kernels"}  # as pyproject's package-dir

# Lazy imports (inside a function) that close a cycle, each with the reason it is there: none today
# (`PendingImage` has a module of its own, so the worker process's entry point no longer reaches back
# into the pipeline that starts it).
ALLOWED_LAZY_EDGES: set[tuple[str, str]] = set()


def source_modules(folders: dict[str, str]) -> dict[str, Path]:
    """Module name -> file, for every ``.py`` under each folder (``__init__.py`` names its package)."""
    modules = {}
    for folder, prefix in folders.items():
        for path in sorted(Path(folder).rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((prefix, *parts))] = path
    return modules


def imported_modules(module: str, path: Path, modules: dict[str, Path], *, lazy: bool) -> set[str]:
    """The modules of ``modules`` that ``path`` names in its imports: at import time only (module and
    class bodies, ``if`` and ``try`` blocks), or, with ``lazy``, also inside functions and under ``if
    TYPE_CHECKING:`` (where a package that loads its names on first use says what they are)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if lazy:
                    visit(node.body)
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not lazy:
                continue  # annotations only: never runs
            if isinstance(node, ast.Import):
                named.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:  # `from package import module`, or a name from package's __init__
                    named.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            for block in (getattr(node, name, None) for name in ("body", "orelse", "finalbody", "handlers")):
                if isinstance(block, list):
                    visit(block)

    visit(ast.parse(path.read_text(), str(path)).body)
    return named


def import_graph(modules: dict[str, Path], *, lazy: bool) -> dict[str, set[str]]:
    """module -> the modules it makes Python import. Importing ``a.b.c`` runs ``a`` and ``a.b`` first,
    except those the importer lives in (they are already importing); a package it names itself counts."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_modules(module, path, modules, lazy=lazy):
            parts = name.split(".")
            parents = {".".join(parts[:end]) for end in range(1, len(parts))}
            edges |= {name} | {parent for parent in parents if not module.startswith(parent + ".")}
        graph[module] = (edges & set(modules)) - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.fixture
def project_modules(monkeypatch) -> dict[str, Path]:
    monkeypatch.chdir(ROOT)
    modules = source_modules(FOLDERS)
    assert {"logbus.bus._bus", "logbus.samples._pipeline", "logbus.composer", "logbus.plugins.local"} <= set(modules)
    return modules


def test_no_import_cycle_at_import_time(project_modules):
    cycle = find_cycle(import_graph(project_modules, lazy=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_even_through_imports_inside_functions(project_modules):
    # A lazy import hides a cycle from Python, not from a reader: the two modules still depend on each other.
    graph = import_graph(project_modules, lazy=True)
    for source, target in ALLOWED_LAZY_EDGES:
        assert target in graph[source], f"{source} no longer imports {target}: drop it from ALLOWED_LAZY_EDGES"
        graph[source].discard(target)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_cycle_through_a_package_init_and_a_lazy_import(tmp_path, monkeypatch):
    # The shape of the cycle this layout removed: logbus.composer re-exported SampleLogger from a module
    # that imported logbus.composer back inside a function.
    package = tmp_path / "core" / "room"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from logbus.room._a import A\n")
    (package / "_a.py").write_text("from logbus.room._b import B\nA = 1\n")
    (package / "_b.py").write_text("B = 2\n\ndef late():\n    from logbus.room import A\n")
    (tmp_path / "core" / "other.py").write_text("import logbus.room._b\n")
    monkeypatch.chdir(tmp_path)
    modules = source_modules({"core": "logbus"})
    assert find_cycle(import_graph(modules, lazy=False)) is None
    assert find_cycle(import_graph(modules, lazy=True)) == [
        "logbus.room", "logbus.room._a", "logbus.room._b", "logbus.room"]


ROOMS = ["logbus.bus", "logbus.samples", "logbus.composer", "logbus.files", "logbus.demo", "logbus.plugins.local"]


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_lives_there_and_exports_its_public_names(room):
    package = importlib.import_module(room)
    first_lines = package.__doc__.strip().splitlines()[:2]
    assert len(first_lines) == 2 and all(first_lines), f"{room}: two lines on what lives there and what it may import"
    assert "import" in " ".join(first_lines), f"{room}: its docstring says what it may import"
    assert package.__all__ and len(set(package.__all__)) == len(package.__all__)
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert not missing, f"{room}.__all__ names what it does not have: {missing}"
    # Everything else in the room is private: the modules behind the public names start with `_`.
    folder = Path(package.__file__).parent
    public_modules = [path.name for path in folder.glob("*.py") if not path.name.startswith("_")]
    assert not public_modules, f"{room}: modules inside a room are private (_name): {public_modules}"


def test_every_package_folder_is_in_pyprojects_package_list():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser is the dev extra's tomli
        import tomli as tomllib

    configured = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in source_modules({ROOT / folder: prefix for folder, prefix in FOLDERS.items()}).items()
               if path.name == "__init__.py"}
    assert on_disk == configured, f"pyproject [tool.setuptools] packages: add {sorted(on_disk - configured)}, " \
                                  f"remove {sorted(configured - on_disk)}"


def test_import_logbus_imports_nothing_heavy():
    code = """\
        import sys
        import logbus
        heavy = {"composer", "torch", "wandb", "pytest", "triton", "numpy", "PIL"}
        print(sorted(heavy & {name.split(".")[0] for name in sys.modules}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
