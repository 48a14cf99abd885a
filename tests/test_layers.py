"""icdlib's folders are its layers, and the module graph says so: no import circles, no upward imports.

Why a test: an upward import or a circle is easy to add without noticing (a helper reached for from a
lower module, an import inside a function to dodge a circle) and each one makes a stranger read two
layers to change one. The checker parses every module with `ast` (imports at the top level and inside
functions alike), so it needs no third-party tool and imports nothing it checks.

Layers, lowest first (a module may import its own layer or lower ones): run < measure < data < twin <
model < evaluation < report < top, where top is `icdlib/*.py` and `icdlib/bench/`.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "icdlib"
LAYERS = ("run", "measure", "data", "twin", "model", "evaluation", "report", "top")


@dataclass(frozen=True)
class Edge:
    """One import statement's dependency: `source` (a module) imports `target` (a module), at file:line."""
    source: str
    target: str
    path: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} → {self.target}   ({self.text})"


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name (a package's `__init__.py` is the package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _absolute(module: str | None, level: int, package: str) -> str:
    """The absolute module name of `from <level dots><module> import …` written inside `package`."""
    if not level:
        return module or ""
    base = package.split(".")
    base = base[: len(base) - level + 1]
    return ".".join(base + ([module] if module else []))


def _resolve(name: str, known: set[str]) -> str | None:
    """`name` if it is a module of the package, else its longest prefix that is (the package a name
    comes from), else None (a third-party or standard module)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str, path: Path, known: set[str], shown: Path | None = None) -> list[Edge]:
    """The package modules `name` imports, one Edge per (statement, target): `import p.m`, `from p.m
    import x`, `from p import m` (m a submodule: the edge goes to p.m), relative imports, anywhere.
    `shown`: the path to name in the edges (default `path`)."""
    source = path.read_text(encoding="utf-8")
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            targets = [_resolve(a.name, known) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            targets = [_resolve(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, known)
                       for a in node.names]
        else:
            continue
        text = ast.get_source_segment(source, node) or ""
        for target in dict.fromkeys(t for t in targets if t and t != name):
            edges.append(Edge(name, target, shown or path, node.lineno, " ".join(text.split())))
    return edges


def import_graph(root: Path) -> list[Edge]:
    """Every import edge between the modules of the package at `root`."""
    files = module_names(root)
    known = set(files)
    return [edge for name, path in files.items()
            for edge in imports(name, path, known, path.relative_to(root.parent))]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The import circles: each strongly connected component of more than one module (Tarjan's
    algorithm, iterative so a deep package cannot hit the recursion limit), modules sorted."""
    graph: dict[str, list[str]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e.target)
        graph.setdefault(e.target, [])
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
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


def layer(module: str) -> str:
    """The layer of a module: the folder right under the package when it is one of LAYERS, else top
    (the package's own modules and any other folder, such as `bench`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS[:-1] else "top"


def upward(edges: list[Edge]) -> list[Edge]:
    """The imports of a higher layer than the importer's own."""
    return [e for e in edges if LAYERS.index(layer(e.target)) > LAYERS.index(layer(e.source))]


def describe_cycles(edges: list[Edge]) -> str:
    """Each circle's modules, then the import lines that tie it."""
    lines = []
    for i, component in enumerate(cycles(edges), 1):
        lines.append(f"circle {i}: {', '.join(component)}")
        lines += [f"  {e}" for e in edges if e.source in component and e.target in component]
    return "\n".join(lines)


# --- the package ---------------------------------------------------------------------------------

def test_icdlib_has_no_import_circles():
    edges = import_graph(PACKAGE)
    assert len({e.source for e in edges}) > 30, "the checker found too few importing modules to be reading icdlib"
    if cycles(edges):
        pytest.fail("import circles in icdlib:\n" + describe_cycles(edges), pytrace=False)


def test_no_icdlib_module_imports_a_higher_layer():
    edges = import_graph(PACKAGE)
    bad = upward(edges)
    if bad:
        pytest.fail(f"{len(bad)} upward imports (layers, lowest first: {' < '.join(LAYERS)}):\n"
                    + "\n".join(f"  [{layer(e.source)} → {layer(e.target)}] {e}" for e in bad), pytrace=False)


def test_every_layer_folder_is_known():
    """A new folder under icdlib/ must be placed in the order on purpose, not fall into `top` unseen."""
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders == set(LAYERS[:-1]) | {"bench"}, folders


def test_every_module_imports():
    # papermill first: importing icdlib.papermill_engine before papermill makes papermill, on its own
    # import, load its entry points, among them icdlib.papermill_engine:QuietEngine while that module is
    # still half-imported (pre-existing; papermill's entry-point loading re-enters the module).
    importlib.import_module("papermill")
    names = [n for n in module_names(PACKAGE) if not n.endswith(".__main__")]  # `python -m icdlib`: runs the CLI
    assert len(names) > 60
    for name in names:
        importlib.import_module(name)


# --- the checker itself, on a tiny package written for each test ---------------------------------

def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package `pkg` under `root` with the given files (relative path → source), every folder a package."""
    pkg = root / "pkg"
    for rel, source in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in path.relative_to(pkg).parents:
            (pkg / folder / "__init__.py").touch()
        path.write_text(source)
    return pkg


def test_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = write_package(tmp_path, {
        "data/a.py": "from pkg.data import b\n",
        "data/b.py": "import os\n\ndef f():\n    from pkg.data.c import g\n",
        "data/c.py": "def g():\n    import pkg.data.a as a\n",
        "data/d.py": "from pkg.data import a\n",
    })
    edges = import_graph(pkg)
    assert cycles(edges) == [["pkg.data.a", "pkg.data.b", "pkg.data.c"]]
    report = describe_cycles(edges)
    assert "pkg.data.b → pkg.data.c" in report and "b.py:4" in report and "from pkg.data.c import g" in report
    assert "pkg.data.d" not in report


def test_checker_finds_an_upward_import_with_its_line(tmp_path):
    pkg = write_package(tmp_path, {
        "run/config.py": "\n\ndef f():\n    from pkg.model import backbones\n",
        "model/backbones.py": "from ..run.config import f\nfrom pkg import steps\n",
        "steps.py": "from pkg.model.backbones import x\n",
        "bench/suite.py": "from pkg.report import figures\n",
        "report/figures.py": "",
    })
    edges = import_graph(pkg)
    found = {(e.source, e.target, e.line) for e in upward(edges)}
    assert found == {("pkg.run.config", "pkg.model.backbones", 4), ("pkg.model.backbones", "pkg.steps", 2)}
    assert ("pkg.model.backbones", "pkg.run.config", 1) in {(e.source, e.target, e.line) for e in edges}
    assert layer("pkg.bench.suite") == layer("pkg.steps") == layer("pkg") == "top"


def test_checker_passes_a_clean_package(tmp_path):
    pkg = write_package(tmp_path, {
        "run/config.py": "import json\n",
        "data/reader.py": "from pkg.run import config\nfrom pkg.run.config import json as j\n",
        "model/coder.py": "import pkg.data.reader\n\ndef f():\n    from pkg.data import reader\n",
        "cli.py": "from pkg.model import coder\nfrom pkg.data.reader import config\n",
    })
    edges = import_graph(pkg)
    assert {(e.source, e.target) for e in edges} == {
        ("pkg.data.reader", "pkg.run.config"), ("pkg.model.coder", "pkg.data.reader"),
        ("pkg.cli", "pkg.model.coder"), ("pkg.cli", "pkg.data.reader")}
    assert cycles(edges) == [] and upward(edges) == []
