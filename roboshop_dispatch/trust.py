"""Which directories dispatchctl trusts with what it installs: root-owned, writable by no one else.

A directory that another user owns, or may write into, lets that user swap what is in it: the
binary (their code then runs as the service user, with the credential), the build stamp (the next
root run downloads over plain http and runs ``go build`` as root), the settings. So the app
directory, ``/etc/roboshop`` and every directory above each of them must be owned by root and not
writable by group or others; a symbolic link on the way must be root's too (and what it points to
is judged as well: the app directory is already resolved, see validate.validate_app_dir). A part of
the path that does not exist yet is made by dispatchctl, as root. Pure: facts in
(:func:`roboshop_dispatch.facts.paths.chains`), problems out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, NamedTuple, Optional, Sequence

from .facts.paths import FileInfo
from .layout import CONFIG_DIR


class Untrusted(NamedTuple):
    """One directory (or link) on the way that is not root's alone, and how to make it so."""

    path: str
    why: str
    fix: str


def judge(info: FileInfo) -> Optional[Untrusted]:
    """The problem with one entry of a chain, or None."""
    if info.kind in ("missing",):
        return None
    if info.kind == "error":
        return Untrusted(info.path, f"cannot be examined ({info.error})", f"check {info.path} as root")
    if info.kind not in ("dir", "symlink"):
        return Untrusted(info.path, f"is not a directory ({info.kind})", f"move {info.path} away")
    if info.uid != 0:
        return Untrusted(info.path, f"is owned by uid {info.uid}, not root: that user can replace what is in it",
                         f"chown root:root {info.path}")
    if info.kind == "dir" and info.mode & 0o022:
        who = "group and others" if info.mode & 0o022 == 0o022 else "its group" if info.mode & 0o020 else "others"
        return Untrusted(info.path, f"is writable by {who} (mode {info.mode:04o}): they can replace what is in it",
                         f"chmod go-w {info.path}")
    return None


def problems(infos: Iterable[FileInfo]) -> List[Untrusted]:
    """Every entry of ``infos`` (lstat facts of directories and their ancestors) that is not root's alone."""
    seen = set()
    out = []
    for info in infos:
        if info.path in seen:
            continue
        seen.add(info.path)
        problem = judge(info)
        if problem is not None:
            out.append(problem)
    return out


def provisioned_dirs(app_dir: Path) -> List[Path]:
    """The directories install, build, configure and start put dispatch's files in."""
    return [app_dir, CONFIG_DIR]


def message(found: Sequence[Untrusted]) -> str:
    """One line for the refusal: every path, why, and the fix."""
    shown = "; ".join(f"{p.path} {p.why} (fix: {p.fix})" for p in found)
    return f"refusing to install into directories other users control: {shown}; or choose another --app-dir"
