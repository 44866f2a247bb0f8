"""Step 2: the service user, a system account with no login shell.

An existing account is left alone (it is shared with the other RoboShop services) unless it is
root under another name: uid 0, or gid 0 as its primary group (files of group root, such as
/etc/shadow on some hosts, would be readable to the service), which is refused.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..layout import NO_SHELL, NOLOGIN_BY_FAMILY, NOLOGIN_CANDIDATES
from . import record
from .base import Action, Change, Context, Step, StepFailed, unchanged


def nologin_shell(root: Path = Path("/"), family: Optional[str] = None) -> str:
    for candidate in (*NOLOGIN_BY_FAMILY.get(family or "", ()), *NOLOGIN_CANDIDATES):
        if (root / candidate.lstrip("/")).exists():
            return candidate
    return NO_SHELL


def useradd_command(name: str, home: Path, shell: str) -> List[str]:
    # --system: a uid below UID_MIN, no aging, no mail spool; -U: a group of the same name
    return ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
            "--shell", shell, "--comment", "RoboShop dispatch service", name]


@dataclass(frozen=True)
class UserPlan:
    argv: List[str]


def refuse_privileged(entry: pwd.struct_passwd, groups: Sequence[int] = ()) -> None:
    """An account that is root in disguise is never the service user (``groups``: every group it
    is in, as ``os.getgrouplist`` gives them)."""
    if entry.pw_uid == 0:
        raise StepFailed(f"user {entry.pw_name} has uid 0: it is root under another name, and the service "
                         "must never run as root", f"choose another --user, or give {entry.pw_name} its own uid")
    if entry.pw_gid == 0:
        raise StepFailed(f"user {entry.pw_name} has gid 0 (group root) as its primary group: the service "
                         "would get root's group access", f"choose another --user, or give {entry.pw_name} "
                         "its own group (usermod -g)")
    if 0 in groups:
        raise StepFailed(f"user {entry.pw_name} is a member of the group root (gid 0): the service would get "
                         "root's group access", f"remove {entry.pw_name} from the group root (gpasswd -d "
                         f"{entry.pw_name} root) or choose another --user")


def decide(name: str, entry: Optional[pwd.struct_passwd], app_dir: Path, shell: str,
           groups: Sequence[int] = ()) -> Change[UserPlan]:
    """Pure: the account as looked up (``None``: absent) and its groups -> what to do."""
    if entry is None:
        argv = useradd_command(name, app_dir, shell)
        return Change([Action("create", f"system user {name}", f" (shell {shell})")],
                      UserPlan(argv), report={"user": name, "argv": argv})
    refuse_privileged(entry, groups)
    note = "" if entry.pw_uid < 1000 else " (a regular account: left alone)"
    return unchanged(f"user {name} exists (uid {entry.pw_uid}){note}", {"user": name, "uid": entry.pw_uid})


def lookup(name: str) -> Optional[pwd.struct_passwd]:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


class UserStep(Step[UserPlan]):
    name = "user"
    title = "Service user"

    def check(self, ctx: Context) -> Change[UserPlan]:
        name = ctx.settings.service_user
        entry = lookup(name)
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid) if entry is not None else []
        return decide(name, entry, ctx.settings.app_dir, nologin_shell(ctx.root, ctx.facts.family), groups)

    def apply(self, ctx: Context, change: Change[UserPlan]) -> str:
        ctx.runner.run(change.the_plan().argv, timeout=60)
        entry = pwd.getpwnam(ctx.settings.service_user)
        record.remember(ctx, "users", entry.pw_name)
        return f"created system user {entry.pw_name} (uid {entry.pw_uid}, shell {entry.pw_shell})"
