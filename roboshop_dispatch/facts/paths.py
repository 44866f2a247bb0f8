"""What the file system says about dispatch's paths and its user: ``lstat`` (a symlink is reported
as one, never followed), the service user's account, the flavour of a binary read by its first
bytes, the build stamp beside it and its SELinux label."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class FileInfo:
    """What ``lstat`` says about one path (a symlink is reported as one, never followed)."""

    path: str
    kind: str = "missing"  # file | dir | symlink | other | missing | error
    mode: int = 0  # permission bits
    uid: int = -1
    gid: int = -1
    error: str = ""

    @property
    def exists(self) -> bool:
        return self.kind not in ("missing", "error")

    @property
    def root_only(self) -> bool:
        """A regular file owned by root that nobody else may read or write."""
        return self.kind == "file" and self.uid == 0 and not self.mode & 0o077


def lstat(path: Path) -> FileInfo:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return FileInfo(str(path))
    except OSError as exc:
        return FileInfo(str(path), kind="error", error=exc.strerror or str(exc))
    if stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    elif stat.S_ISREG(info.st_mode):
        kind = "file"
    elif stat.S_ISDIR(info.st_mode):
        kind = "dir"
    else:
        kind = "other"
    return FileInfo(str(path), kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


@dataclass(frozen=True)
class UserInfo:
    name: str
    exists: bool = False
    uid: int = -1
    gid: int = -1
    shell: str = ""
    groups: Tuple[int, ...] = ()
    group_names: Tuple[str, ...] = ()  # the names of ``groups`` the system knows, in their order


def user_info(name: str) -> UserInfo:
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except (KeyError, UnicodeEncodeError):
        return UserInfo(name)
    try:
        groups = tuple(sorted(set(os.getgrouplist(name, pw.pw_gid))))
    except OSError:
        groups = (pw.pw_gid,)
    names = group_names(groups)
    return UserInfo(name, True, pw.pw_uid, pw.pw_gid, pw.pw_shell, groups,
                    tuple(names[gid] for gid in groups if gid in names))


def group_names(gids: Sequence[int]) -> Dict[int, str]:
    """The name of each gid the system knows."""
    import grp

    names = {}
    for gid in gids:
        try:
            names[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            continue
    return names


def primary_group(name: str) -> Optional[str]:
    """The name of user ``name``'s primary group as the system has it (None: no such user yet,
    or its gid has no name): the unit's ``Group=``."""
    import pwd

    try:
        gid = pwd.getpwnam(name).pw_gid
    except (KeyError, UnicodeEncodeError):
        return None
    return group_names([gid]).get(gid)


def flavour_of(path: Path) -> Optional[str]:
    """``go`` (an ELF executable), ``bundled`` (a zipapp: ``#!`` or zip magic) or None. A symlink
    is not opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        head = os.read(fd, 4)
    except OSError:
        return None
    finally:
        os.close(fd)
    if head == b"\x7fELF":
        return "go"
    if head.startswith(b"#!") or head.startswith(b"PK"):
        return "bundled"
    return "unknown"


def read_stamp(path: Path) -> Dict[str, Any]:
    """The build stamp beside the binary (its scalar members), {} when absent or not root's alone:
    what it says is remembered for the next root run (the artifact, --insecure), so a stamp another
    user wrote or may write is never believed."""
    info = lstat(path)
    if info.kind != "file":
        return {}
    if info.uid != 0 or info.mode & 0o022:
        return {"error": f"not root's alone (uid {info.uid}, mode {info.mode:04o}): ignored"}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"error": "unreadable"}
    return {k: v for k, v in doc.items() if isinstance(v, (str, int, float, bool))} if isinstance(doc, dict) else {}


def selinux_label(path: Path) -> str:
    try:
        return str(os.getxattr(str(path), "security.selinux", follow_symlinks=False), "utf-8",
                   "replace").rstrip("\x00")
    except OSError:
        return ""


def chain(path: Path) -> Tuple[FileInfo, ...]:
    """``lstat`` of ``path`` and of every directory above it, ``/`` first (a missing one
    included as missing)."""
    parts = Path(path).parts
    return tuple(lstat(Path(*parts[:i])) for i in range(1, len(parts) + 1))


def chains(paths: Sequence[Path]) -> Tuple[FileInfo, ...]:
    """The chain of each path and of where it resolves to: what :mod:`roboshop_dispatch.trust` judges."""
    infos: List[FileInfo] = []
    for path in paths:
        infos += chain(path)
        real = Path(os.path.realpath(path))
        if real != Path(path):
            infos += chain(real)
    return tuple(infos)
