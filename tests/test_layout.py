"""The package layout of lib/radlake: imports between its packages, and between its modules, point one way.

Read from the source with :mod:`ast` (nothing is imported): every ``import radlake.x`` and
``from radlake.x import ...``, at module level or inside a function, counts; imports under
``if TYPE_CHECKING:`` do not (they never run). A package is a folder of lib/radlake or a
top-level module (``spark.py``, ``config.py`` ...).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "radlake"

#: The layers, bottom first: a package may import its own layer's packages only where
#: :data:`ALLOWED_SIDEWAYS` says so, and any package of a lower layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "vocabulary", "summary", "console", "worker_daemon"),
    ("spark",),
    ("dicom",),
    ("synth",),
    ("config",),
    ("tables",),
    ("tracking",),
    ("stops",),
    ("ingest",),
    ("models",),
    ("data",),
    ("train",),
    ("registry",),
    ("score",),
    ("workflow",),
    ("cli",),
    ("__main__",),
)
ALLOWED_SIDEWAYS: set[tuple[str, str]] = set()


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "radlake":
        return None
    return parts[1] if len(parts) > 1 else "radlake"


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[str, int]]:
    """``(module, line)`` of every radlake import in ``path`` that runs (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    here = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
            continue
        if node.level:
            base = here[: len(here) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        found.append((module, node.lineno))
        found.extend((f"{module}.{alias.name}", node.lineno) for alias in node.names)
    return [(m, line) for m, line in found if m.startswith("radlake")]


def package_imports(root: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """package → imported package → the places (``file:line``) that import it."""
    packages = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    packages |= {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        source = _package_of(_module_name(path, root))
        for module, line in imported_modules(path, root):
            target = _package_of(module)
            place = f"{path.relative_to(root.parent)}:{line}"
            if target in packages and target != source and place not in edges[source][target]:
                edges[source][target].append(place)
    return edges


def module_imports(root: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """module → imported module → the places (``file:line``) that import it; every module of ``root``."""
    modules = {_module_name(path, root) for path in root.rglob("*.py")}
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        source = _module_name(path, root)
        for module, line in imported_modules(path, root):
            place = f"{path.relative_to(root.parent)}:{line}"
            if module in modules and module != source and place not in edges[source][module]:
                edges[source][module].append(place)
    return edges


def cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one package or module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in list(edges):
        if node not in index:
            visit(node)
    return groups


def layer_violations(edges: dict[str, dict[str, list[str]]]) -> list[str]:
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    problems = []
    for source, targets in edges.items():
        for target, places in targets.items():
            if source not in rank or target not in rank:
                problems.append(f"{source} -> {target}: a package missing from LAYERS ({places[0]})")
            elif rank[target] > rank[source] or (
                rank[target] == rank[source] and (source, target) not in ALLOWED_SIDEWAYS
            ):
                problems.append(f"{source} imports {target}, which sits above it ({', '.join(places[:3])})")
    return problems


def test_no_import_cycle_between_packages():
    edges = package_imports()
    found = cycles(edges)
    detail = [f"{a} -> {b}: {edges[a][b][:3]}" for group in found for a in group for b in edges[a] if b in group]
    assert found == [], detail


def test_no_import_cycle_between_modules():
    """Inside a package too: what two modules both need lives below them, not in one of them."""
    edges = module_imports()
    found = cycles(edges)
    detail = [f"{a} -> {b}: {edges[a][b][:3]}" for group in found for a in group for b in edges[a] if b in group]
    assert found == [], detail


def test_imports_point_down_the_layers():
    assert layer_violations(package_imports()) == []


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    """A function-level import closes a cycle; a TYPE_CHECKING one does not count."""
    root = tmp_path / "radlake"
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    for pkg in ("low", "high"):
        (root / pkg / "__init__.py").write_text("")
    (root / "high" / "a.py").write_text("from radlake.low.b import f\n")
    (root / "low" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from radlake.high.a import x\n"
    )
    assert cycles(package_imports(root)) == []
    (root / "low" / "b.py").write_text("def f():\n    from radlake.high import a\n    return a\n")
    edges = package_imports(root)
    assert cycles(edges) == [["high", "low"]]
    assert edges["low"]["high"] == ["radlake/low/b.py:2"]


def test_the_module_check_sees_a_cycle_inside_a_package(tmp_path):
    """Two modules of one package that import each other (one of them inside a function) are a cycle."""
    root = tmp_path / "radlake"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "a.py").write_text("from radlake.pkg.b import g\n")
    (root / "pkg" / "b.py").write_text("def g():\n    return 1\n")
    assert cycles(module_imports(root)) == []
    (root / "pkg" / "b.py").write_text("def g():\n    from radlake.pkg.a import f\n    return f\n")
    edges = module_imports(root)
    assert cycles(edges) == [["radlake.pkg.a", "radlake.pkg.b"]]
    assert edges["radlake.pkg.b"]["radlake.pkg.a"] == ["radlake/pkg/b.py:2"]


@pytest.mark.parametrize("package", [name for layer in LAYERS for name in layer if name != "__main__"])
def test_every_layer_exists(package):
    assert (PACKAGE / package).is_dir() or (PACKAGE / f"{package}.py").is_file()


#: The longest a function may be, in lines (docstring included): past it, it wants to be split.
MAX_FUNCTION_LINES = 100
#: The project's Python, every function of which is held to :data:`MAX_FUNCTION_LINES`.
SOURCE_FOLDERS = ("lib/radlake", "bench", "jobs", "tests")


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:name (lines)`` of every function (nested ones too) longer than ``limit`` lines under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(f"{path}:{node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("folder", SOURCE_FOLDERS)
def test_no_function_is_over_100_lines(folder):
    assert long_functions(PACKAGE.parents[1] / folder) == []


def test_a_long_function_is_found(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == [f"{tmp_path / 'm.py'}:long ({MAX_FUNCTION_LINES + 1} lines)"]
