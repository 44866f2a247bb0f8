"""Atomic file writes with owner and mode, and masked unified diffs."""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Optional


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o644, uid: int = -1, gid: int = -1,
) -> None:
    """Write ``data`` to a temp file beside ``path`` (created with ``mode``, so a secret is never
    readable by others, not even for a moment), fsync, chown, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def unified_diff(
    old: Optional[str], new: Optional[str], path: str, secrets: Iterable[str] = (),
) -> str:
    """A unified diff of two texts (None = absent) with every secret replaced by ********."""
    def mask(text: Optional[str]) -> list:
        if text is None:
            return []
        for secret in secrets:
            if secret:
                text = text.replace(secret, "********")
        return text.splitlines(keepends=True)

    lines = difflib.unified_diff(
        mask(old), mask(new),
        fromfile="/dev/null" if old is None else f"a{path}",
        tofile="/dev/null" if new is None else f"b{path}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def diff_stat(diff: str) -> dict:
    added = sum(1 for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    return {"added": added, "removed": removed}
