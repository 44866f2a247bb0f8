"""Files dispatchctl writes or fixes: atomic writes with owner and mode, never following a link.

Every path here is handled with ``lstat`` / ``O_NOFOLLOW``: a symlink (or a directory, a FIFO...)
planted where dispatchctl keeps a file is refused with :class:`NotRegularFile`, so a link can never
make dispatchctl chmod, chown, read or overwrite its target. Owner and mode are set on the open
file descriptor (``fchown``/``fchmod``), never by path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import List, Optional

from .errors import DispatchctlError, ErrorKind

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class NotRegularFile(DispatchctlError, OSError):
    """A path dispatchctl owns is not a regular file (a planted symlink, a directory...); an
    OSError too, so that whatever reads a file it may find there also handles this refusal."""

    kind = ErrorKind.STEP

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path} is {what}, not a regular file dispatchctl wrote: refusing to touch it "
                         f"(or what it points to); inspect it and remove it by hand, then re-run",
                         f"remove {path} by hand after checking what planted it, then run the command again")
        self.path = path
        self.what = what


def describe_mode(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def lstat_regular(path: Path) -> Optional[os.stat_result]:
    """The file's lstat, None when absent; NotRegularFile when something else is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(path, describe_mode(st.st_mode))
    return st


def drift(st: os.stat_result, mode: int, uid: int = 0, gid: int = 0) -> List[str]:
    """What differs from the wanted owner and mode, as ``mode 0644 -> 0600`` / ``owner 5:5 -> root:root``."""
    fixes = []
    if stat.S_IMODE(st.st_mode) != mode:
        fixes.append(f"mode {stat.S_IMODE(st.st_mode):04o} -> {mode:04o}")
    if st.st_uid != uid or st.st_gid != gid:
        owner = "root:root" if (uid, gid) == (0, 0) else f"{uid}:{gid}"
        fixes.append(f"owner {st.st_uid}:{st.st_gid} -> {owner}")
    return fixes


def _open_nofollow(path: Path, directory: bool = False) -> int:
    flags = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK | (os.O_DIRECTORY if directory else 0)
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink; not a directory
            st = os.lstat(path)
            raise NotRegularFile(path, describe_mode(st.st_mode)) from None
        raise


def fix_owner_mode(path: Path, mode: int, uid: int = 0, gid: int = 0, *, directory: bool = False) -> None:
    """Set owner and mode through a descriptor opened without following links."""
    fd = _open_nofollow(path, directory)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
            raise NotRegularFile(path, describe_mode(st.st_mode))
        if not directory and st.st_nlink > 1:  # a hard link to another file: fixing it changes that one
            raise NotRegularFile(path, f"a hard link ({st.st_nlink} names for one file)")
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def read_regular(path: Path) -> Optional[bytes]:
    """The bytes of a regular file, None when absent; never through a link."""
    try:
        fd = _open_nofollow(path)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, describe_mode(st.st_mode))
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o644, uid: int = -1, gid: int = -1,
) -> None:
    """Write ``data`` to a temp file beside ``path`` (created with ``mode``, so a secret is never
    readable by others, not even for a moment), fsync, chown, then rename over ``path``. What is
    at ``path`` must be a regular file or nothing: a link or a directory there is refused (the
    rename would replace the link itself, but it was planted by someone, and is reported)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lstat_regular(path)
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


def unified_diff(old: Optional[str], new: Optional[str], path: str, secrets: Iterable[str] = ()) -> str:
    """A unified diff of two texts (None = absent) with every secret replaced by ********."""
    import difflib

    from .redact import Redactor

    redactor = Redactor(secrets)

    def lines(text: Optional[str]) -> list:
        return [] if text is None else redactor.text(text).splitlines(keepends=True)

    diff = difflib.unified_diff(
        lines(old), lines(new),
        fromfile="/dev/null" if old is None else f"a{path}",
        tofile="/dev/null" if new is None else f"b{path}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in diff)


def diff_stat(diff: str) -> dict:
    added = sum(1 for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    return {"added": added, "removed": removed}
