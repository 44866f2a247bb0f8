"""What Go sources import: whether a ``go get`` could have anything to fetch.

The go flavour builds as the manual does (``go mod init``, ``go get``, ``go build``). When there
was no go.mod and every package the sources import is the standard library's or the module's own,
``go get`` has nothing to add and only costs its run (a tenth of a second, a third of a first
build of the course's program): then it is left out. Pure logic; anything this reader does not
understand counts as something to fetch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, List, Optional

# the package clause, then import declarations, each after any whitespace and comments
_SKIP = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.S)
_PACKAGE = re.compile(r"package\s+\w+\s*;?")
_IMPORT = re.compile(r"import\b")
_SPEC = re.compile(r'(?:[\w.]+\s+)?"([^"\\\n]*)"\s*;?')
_GROUP_END = re.compile(r"\)\s*;?")


def imports(text: str) -> Optional[List[str]]:
    """The import paths of one Go source file, or None when it does not read as Go."""
    pos = _SKIP.match(text, 0).end()  # type: ignore[union-attr]  # an empty match at worst
    m = _PACKAGE.match(text, pos)
    if m is None:
        return None
    found: List[str] = []
    pos = m.end()
    while True:
        pos = _SKIP.match(text, pos).end()  # type: ignore[union-attr]
        m = _IMPORT.match(text, pos)
        if m is None:
            return found
        pos = _SKIP.match(text, m.end()).end()  # type: ignore[union-attr]
        grouped = text.startswith("(", pos)
        if grouped:
            pos += 1
        while True:
            pos = _SKIP.match(text, pos).end()  # type: ignore[union-attr]
            if grouped and (end := _GROUP_END.match(text, pos)) is not None:
                pos = end.end()
                break
            spec = _SPEC.match(text, pos)
            if spec is None:
                return None
            found.append(spec.group(1))
            pos = spec.end()
            if not grouped:
                break


def is_local(path: str, module: str) -> bool:
    """The standard library's (no dot in its first element) or the module's own package."""
    first = path.split("/", 1)[0]
    return "." not in first or path == module or path.startswith(module + "/")


def needs_get(src: Path, module: str = "dispatch") -> bool:
    """Whether ``go get`` may have something to fetch for the sources under ``src`` (whose module
    is ``module``): True when any of them imports a package from elsewhere, has a vendor
    directory or cannot be read as Go."""
    return any(not _local_file(path, module) for path in _go_files(src))


def _go_files(src: Path) -> Iterable[Path]:
    for path in sorted(src.rglob("*")):
        if path.name == "vendor" or (path.suffix == ".go" and path.is_file()):
            yield path


def _local_file(path: Path, module: str) -> bool:
    if path.name == "vendor":
        return False
    try:
        found = imports(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False
    return found is not None and all(is_local(p, module) for p in found)
