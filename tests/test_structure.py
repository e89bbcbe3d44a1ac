"""The package's shape: no import circle among specc's modules (an import inside a function counts
as much as one at the top), no module using another's private names, no function over 60 lines
and no class over 300."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "specc"
MAX_FUNCTION, MAX_CLASS = 60, 300


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its file (at the top, in a function,
    under `if TYPE_CHECKING`): `from a import b` counts as importing a.b when that is a module, else a."""
    modules = module_names(root)

    def known(name: str) -> str | None:  # the longest prefix that is one of the package's modules
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 packages
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets.update(known(f"{base}.{a.name}") for a in node.names)
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: each strongly connected set of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def is_private(name: str) -> bool:
    """A leading underscore means "this file only"; a dunder (`__version__`) is public."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(root: Path) -> list[str]:
    """Each use of another module's private name, as `path:line module._name`: imported from it
    (`from pkg.a import _f`, relative imports too) or read off it (`import pkg.a as a` ... `a._f`)."""
    modules = module_names(root)
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases: dict[str, str] = {}  # a name in this module -> the package's module it is
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname or a.name.partition(".")[0]: a.name if a.asname else a.name.partition(".")[0]
                                for a in node.names if a.name in modules})
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    if f"{base}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{base}.{a.name}"
                    elif base in modules and base != name and is_private(a.name):
                        found.append(f"{path.relative_to(root.parent)}:{node.lineno} {base}.{a.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    aliases.get(node.value.id, name) != name and is_private(node.attr):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    return sorted(found)


KINDS = {"function": ((ast.FunctionDef, ast.AsyncFunctionDef), MAX_FUNCTION), "class": ((ast.ClassDef,), MAX_CLASS)}


def oversized(root: Path, kind: str) -> list[str]:
    """Each function (or class) longer than its limit, from `def` (or `class`) to its last line
    with the docstring, methods and nested functions included, as `path:line name (n lines)`."""
    types, limit = KINDS[kind]
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, types) and node.end_lineno - node.lineno + 1 > limit:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} "
                             f"({node.end_lineno - node.lineno + 1} lines)")
    return found


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_find_a_circle_through_a_function_level_import(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import f\n",
        "b.py": "def f():\n    from pkg import a\n",  # a name in pkg that is the module pkg.a
        "c.py": "from . import a\nfrom .sub.d import g\n",
        "sub/__init__.py": "",
        "sub/d.py": "import pkg.c as c\n",
        "e.py": "import os\nfrom pkg import b\n",
    })
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.a", "pkg.sub.d"} and graph["pkg.sub.d"] == {"pkg.c"}
    assert graph["pkg.e"] == {"pkg.b"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]


def test_the_size_check_counts_from_def_to_the_last_line(tmp_path):
    body = "".join(f"    x{k} = {k}\n" for k in range(MAX_FUNCTION - 1))
    root = _package(tmp_path, {"m.py": f"def fits():\n{body}\n\ndef over():\n{body}    return 0\n",
                               "n.py": "class C:\n" + "    def f(self):\n        pass\n" * 150})
    assert oversized(root, "function") == [f"pkg/m.py:{MAX_FUNCTION + 3} over ({MAX_FUNCTION + 1} lines)"]
    assert oversized(root, "class") == ["pkg/n.py:1 C (301 lines)"]


def test_the_check_finds_private_names_imported_or_read_off_a_module(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "_hidden = 1\n__version__ = '1'\npublic = 2\n\ndef _f():\n    return _hidden\n",
        "b.py": "from pkg.a import _f, public, __version__\n",
        "c.py": "from . import a\nimport pkg.a\nimport pkg.a as alias\n\n"
                "def g():\n    return a._hidden + pkg.a.public + alias._f() + a.__version__\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..a import _hidden\nfrom .e import _own\n",
        "sub/e.py": "_own = 1\nx = _own\n",
    })
    assert private_uses(root) == ["pkg/b.py:1 pkg.a._f", "pkg/c.py:6 pkg.a._f", "pkg/c.py:6 pkg.a._hidden",
                                  "pkg/sub/d.py:1 pkg.a._hidden", "pkg/sub/d.py:2 pkg.sub.e._own"]


def test_no_module_of_specc_uses_another_modules_private_names():
    assert private_uses(PACKAGE) == []


def test_no_import_circle_in_specc():
    graph = import_graph(PACKAGE)
    training = {"specc.training.loop", "specc.training.fastpath", "specc.training.lrfind", "specc.training.steps"}
    assert training <= graph.keys()
    assert "specc.training.steps" in graph["specc.training.loop"]  # the graph sees the package's imports
    assert cycles(graph) == []


@pytest.mark.parametrize("kind", ["function", "class"])
def test_no_function_over_60_lines_and_no_class_over_300(kind):
    assert oversized(PACKAGE, kind) == []
