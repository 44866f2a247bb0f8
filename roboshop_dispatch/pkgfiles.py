"""Read the files that ship inside dispatchctl's own packages, whether they lie in a directory (a
virtualenv, a checkout, the single-file dispatchctl once unpacked) or inside a zip archive (the
single-file dispatchctl run straight from its zip: ``/usr/local/bin/dispatchctl/pika/spec.py``).

A path inside an archive is the archive's path followed by the member's name, as ``__file__`` and
``__path__`` are for modules that zipimport loaded. Standard library only; Python >= 3.9.
"""

from __future__ import annotations

import os
import stat
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple


@lru_cache(maxsize=8)
def _archive(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def split(path: Path) -> Optional[Tuple[str, str]]:
    """(archive, member name) when ``path`` lies inside a zip archive; None when it is a plain path
    (existing or not) of the filesystem."""
    parts = Path(os.path.abspath(path)).parts
    for i in range(len(parts) - 1, 0, -1):
        head = os.path.join(*parts[:i])
        try:
            mode = os.stat(head).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            return None
        if stat.S_ISREG(mode) and zipfile.is_zipfile(head):
            return head, "/".join(parts[i:])
        return None
    return None


def archive_of(path: Path) -> Optional[str]:
    """The zip archive ``path`` lies inside, or None."""
    found = split(path)
    return found[0] if found else None


def read_bytes(path: Path) -> bytes:
    """The bytes of a file, from the filesystem or from inside a zip archive."""
    found = split(path)
    if found is None:
        return Path(path).read_bytes()
    archive, member = found
    try:
        return _archive(archive).read(member)
    except KeyError:
        raise FileNotFoundError(f"{member} is not in {archive}") from None


def is_file(path: Path) -> bool:
    found = split(path)
    if found is None:
        return Path(path).is_file()
    archive, member = found
    try:
        return not _archive(archive).getinfo(member).is_dir()
    except KeyError:
        return False


def files_under(folder: Path, suffix: str = "") -> List[Tuple[str, Path]]:
    """Every file under ``folder`` (recursively, ``__pycache__`` left out) whose name ends with
    ``suffix``, sorted: (its name relative to ``folder`` with ``/``, its path)."""
    found = split(folder)
    if found is None:
        return [(p.relative_to(folder).as_posix(), p) for p in sorted(Path(folder).rglob(f"*{suffix}"))
                if p.is_file() and "__pycache__" not in p.relative_to(folder).parts]
    archive, member = found
    prefix = member.rstrip("/") + "/"
    names = sorted(n for n in _archive(archive).namelist()
                   if n.startswith(prefix) and not n.endswith("/") and n.endswith(suffix)
                   and "__pycache__" not in n.split("/"))
    return [(n[len(prefix):], Path(archive, n)) for n in names]
