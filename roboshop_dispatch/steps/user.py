"""Step 2: the service user, a system account with no login shell. An existing one is left alone."""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import List

from .base import Change, Context, Step

NOLOGIN_CANDIDATES = ("/usr/sbin/nologin", "/sbin/nologin", "/usr/bin/nologin")


def nologin_shell(root: Path = Path("/")) -> str:
    for candidate in NOLOGIN_CANDIDATES:
        if (root / candidate.lstrip("/")).exists():
            return candidate
    return "/bin/false"


def useradd_command(name: str, home: Path, shell: str) -> List[str]:
    # --system: a uid below UID_MIN, no aging, no mail spool; -U: a group of the same name
    return ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
            "--shell", shell, "--comment", "RoboShop dispatch service", name]


class UserStep(Step):
    name = "user"
    title = "Service user"

    def check(self, ctx: Context) -> Change:
        name = ctx.settings.service_user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            shell = nologin_shell(ctx.root)
            return Change(True, f"create system user {name} (shell {shell})",
                          data={"argv": useradd_command(name, ctx.settings.app_dir, shell)},
                          report={"user": name})
        note = "" if entry.pw_uid < 1000 else " (a regular account: left alone)"
        return Change(False, f"user {name} exists (uid {entry.pw_uid}){note}",
                      report={"user": name, "uid": entry.pw_uid})

    def apply(self, ctx: Context, change: Change) -> str:
        ctx.runner.run(change.data["argv"], timeout=60)  # type: ignore[arg-type]
        entry = pwd.getpwnam(ctx.settings.service_user)
        return f"created system user {entry.pw_name} (uid {entry.pw_uid}, shell {entry.pw_shell})"
