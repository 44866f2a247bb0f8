"""Step 3: the app directory (``/app``): root-owned, mode 0755, so the service user can read and
run its binary but never replace it."""

from __future__ import annotations

import os
import stat

from .base import Change, Context, Step, StepFailed

MODE = 0o755


class AppDirStep(Step):
    name = "appdir"
    title = "App directory"

    def check(self, ctx: Context) -> Change:
        path = ctx.settings.app_dir
        real = ctx.host_path(path)
        report = {"path": str(path)}
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return Change(True, f"create {path} (root, 0755)", data={"create": True}, report=report)
        if not stat.S_ISDIR(st.st_mode):
            raise StepFailed(f"{path} exists and is not a directory",
                             "move it away or choose another --app-dir, then re-run")
        fixes = []
        if stat.S_IMODE(st.st_mode) != MODE:
            fixes.append(f"mode {stat.S_IMODE(st.st_mode):04o} -> 0755")
        if st.st_uid != 0 or st.st_gid != 0:
            fixes.append(f"owner {st.st_uid}:{st.st_gid} -> root:root")
        if not fixes:
            return Change(False, f"{path} exists (root, 0755)", report=report)
        return Change(True, f"fix {path}: {', '.join(fixes)}", data={"create": False}, report=report)

    def apply(self, ctx: Context, change: Change) -> str:
        path = ctx.settings.app_dir
        real = ctx.host_path(path)
        if change.data.get("create"):
            real.mkdir(parents=True, exist_ok=True)
        os.chmod(real, MODE)
        st = os.stat(real)
        if st.st_uid != 0 or st.st_gid != 0:
            os.chown(real, 0, 0)
        if change.data.get("create"):
            return f"created {path} (root, 0755)"
        return "fixed" + change.message[len("fix"):]
