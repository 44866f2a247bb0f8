"""Step 3: the app directory (``/app``).

One that dispatchctl creates is root-owned, mode 0755, so the service user can read and run its
binary but never replace it. ``/app`` is shared with the other RoboShop services: one that existed
before is never chmod-ed or chown-ed (it is not dispatchctl's); it is only checked to be a real
directory (not a link), owned by root, that no other user can write into, which dispatch needs
(the preflight, :mod:`roboshop_dispatch.trust`, checks it and every directory above it first).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..files import describe_mode, drift, fix_owner_mode
from . import record
from .base import Action, Change, Context, Step, StepFailed, unchanged

MODE = 0o755


@dataclass(frozen=True)
class AppDirPlan:
    create: bool


def decide(path: Path, st: Optional[os.stat_result], ours: bool) -> Change[AppDirPlan]:
    """The change from the directory's lstat and whether dispatchctl created it."""
    report = {"path": str(path), "created_by_dispatchctl": ours or st is None}
    if st is None:
        return Change([Action("create", str(path), " (root, 0755)")], AppDirPlan(create=True), report=report)
    if not stat.S_ISDIR(st.st_mode):
        raise StepFailed(f"{path} exists and is {describe_mode(st.st_mode)}, not a directory",
                         "move it away or choose another --app-dir, then re-run")
    if not ours:
        if st.st_mode & (stat.S_IWOTH | stat.S_IWGRP):
            raise StepFailed(f"{path} (not created by dispatchctl, so left as it is) is writable by other "
                             f"users (mode {stat.S_IMODE(st.st_mode):04o}): anyone could replace the binary",
                             f"make it writable by root only (chmod go-w {path}) or choose another --app-dir")
        if st.st_uid != 0:
            raise StepFailed(f"{path} (not created by dispatchctl, so left as it is) is owned by uid {st.st_uid}, "
                             "not root: its owner could replace the binary",
                             f"chown root:root {path}, or choose another --app-dir")
        return unchanged(f"{path} exists (shared: not created by dispatchctl, left as it is)", report)
    fixes = drift(st, MODE)
    if not fixes:
        return unchanged(f"{path} exists (root, 0755)", report)
    return Change([Action("fix", str(path), ": " + ", ".join(fixes))], AppDirPlan(create=False), report=report)


class AppDirStep(Step[AppDirPlan]):
    name = "appdir"
    title = "App directory"

    def check(self, ctx: Context) -> Change[AppDirPlan]:
        path = ctx.settings.app_dir
        try:
            st: Optional[os.stat_result] = os.lstat(ctx.host_path(path))
        except FileNotFoundError:
            st = None
        return decide(path, st, record.was_created(ctx, "dirs", path))

    def apply(self, ctx: Context, change: Change[AppDirPlan]) -> None:
        real = ctx.host_path(ctx.settings.app_dir)
        if change.the_plan().create:
            real.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(real, MODE)
            record.remember(ctx, "dirs", ctx.settings.app_dir)
        fix_owner_mode(real, MODE, directory=True)
