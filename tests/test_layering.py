"""The import direction stays one-way (README, Development): the consumer imports nothing of the
CLI, steps or diagnostics (it is bundled alone with pika); steps and diagnostics import no CLI; and
no two parts of the package (a root module or a subpackage) import each other, even lazily."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "roboshop_dispatch"
TOP = PACKAGE.name


def absolute_imports(path: Path, tree: ast.AST | None = None) -> Iterator[Tuple[int, str]]:
    """Every module ``path`` (or ``tree``, a part of it) imports, relative imports resolved to
    ``roboshop_dispatch.x.y``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__.py too)
    for node in ast.walk(tree if tree is not None else ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            yield node.lineno, base
            for alias in node.names:  # `from .. import consumer` names a module too
                yield node.lineno, f"{base}.{alias.name}"


def modules_under(sub: str):
    return sorted((PACKAGE / sub).rglob("*.py"))


FORBIDDEN = {
    "consumer": (f"{TOP}.cli", f"{TOP}.steps", f"{TOP}.diagnostics", f"{TOP}.settings", f"{TOP}.installed",
                 f"{TOP}.lab", "typer", "rich", "jinja2", "psutil"),
    "steps": (f"{TOP}.cli", f"{TOP}.lab", "typer", "rich"),
    "diagnostics": (f"{TOP}.cli", f"{TOP}.lab", "typer", "rich"),
}


@pytest.mark.parametrize("sub", sorted(FORBIDDEN))
def test_imports_go_one_way(sub):
    bad = []
    for path in modules_under(sub):
        for line, name in absolute_imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[sub]):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_resolver_sees_relative_imports():
    """The check above cannot pass by not understanding `from ..x import y`."""
    found = {name for _, name in absolute_imports(PACKAGE / "steps" / "base.py")}
    assert any(n.startswith(f"{TOP}.") for n in found), found


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    """The nodes under ``if TYPE_CHECKING:`` (annotations only: no import at run time)."""
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def part_of(module: str) -> str:
    """The part a module belongs to: ``roboshop_dispatch.steps.base`` -> ``steps``; a root module
    is a part of its own (``roboshop_dispatch.settings`` -> ``settings``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> Dict[str, Set[str]]:
    """part -> the parts it imports (at module level or inside a function), itself left out."""
    graph: Dict[str, Set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        found = {name for node in ast.walk(tree) if id(node) not in skip
                 for _, name in _imports_of(node, path)}
        for name in found:
            target = part_of(name)
            exists = (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").is_file()
            if name.startswith(f"{TOP}.") and exists and target != source:
                graph.setdefault(source, set()).add(target)
    return graph


def _imports_of(node: ast.AST, path: Path) -> Iterator[Tuple[int, str]]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        holder = ast.Module(body=[node], type_ignores=[])
        yield from absolute_imports(path, holder)


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected set of more than one part (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_parts_of_the_package_import_each_other():
    graph = import_graph()
    assert {"facts", "steps", "settings", "cli", "systemd"} <= set(graph), graph  # the graph is really read
    assert cycles(graph) == [], {part: sorted(targets) for part, targets in graph.items()}


def test_the_cycle_finder_finds_a_cycle():
    """The check above cannot pass by not seeing one: a -> b -> c -> a is found, d -> a is not in it."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]



# -- the lab: a development and demo tool, outside the production import graph ------------------------
PRODUCTION_COMMANDS = ["install", "configure", "build", "start", "stop", "restart", "rollback", "check-rabbitmq",
                       "check", "status", "logs", "uninstall", "completion", "help", "version"]


def test_only_the_lab_command_reaches_the_lab_and_only_when_it_runs():
    """Nothing outside roboshop_dispatch/lab/ imports it, but cli/lab.py inside its commands: the
    CLI's start (listing the commands) and every production path never load it."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "lab":
            continue
        tree = ast.parse(path.read_text())
        module_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            for line, name in _imports_of(node, path):
                lab = name == f"{TOP}.lab" or name.startswith(f"{TOP}.lab.")
                if lab and (rel != Path("cli/lab.py") or id(node) in module_level):
                    bad.append(f"{rel}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_package_without_the_lab_imports_and_lists_every_other_command(tmp_path):
    """The zipapp and the RPM leave roboshop_dispatch/lab/ out: the package without it imports every
    one of its modules, and its CLI lists every command but lab."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(PACKAGE, tmp_path / TOP, ignore=shutil.ignore_patterns("__pycache__", "lab"))
    assert (tmp_path / TOP / "cli" / "lab.py").is_file() and not (tmp_path / TOP / "lab").exists()
    script = ("import importlib, pkgutil, typer.main, roboshop_dispatch\n"
              "from roboshop_dispatch.cli.app import app\n"
              "print(roboshop_dispatch.__file__)\n"
              "print(' '.join(typer.main.get_command(app).commands))\n"
              "names = [m.name for m in pkgutil.walk_packages(roboshop_dispatch.__path__, 'roboshop_dispatch.')]\n"
              "for name in names:\n"
              "    if not name.endswith('__main__'):\n"
              "        importlib.import_module(name)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    where, commands = res.stdout.splitlines()
    assert where.startswith(str(tmp_path)), where  # the copy, not the checkout
    assert commands.split() == PRODUCTION_COMMANDS
