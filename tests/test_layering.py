"""The import direction stays one-way (README, Development): the consumer imports nothing of the
CLI, steps or diagnostics (it is bundled alone with pika); steps and diagnostics import no CLI."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "roboshop_dispatch"
TOP = PACKAGE.name


def absolute_imports(path: Path) -> Iterator[Tuple[int, str]]:
    """Every module ``path`` imports, relative imports resolved to ``roboshop_dispatch.x.y``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__.py too)
    for node in ast.walk(ast.parse(path.read_text())):
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
