"""Step 2: the service user, a system account with no login shell.

An existing account is left alone (it is shared with the other RoboShop services) unless it is
root under another name: uid 0, or gid 0 as its primary group (files of group root, such as
/etc/shadow on some hosts, would be readable to the service), which is refused; and unless it is
in a privileged group (validate.PRIVILEGED_GROUPS: docker, lxd, disk, sudo, wheel, adm,
systemd-journal, kvm, shadow), which systemd hands to the service: refused, naming the group,
unless ``--allow-group GROUP`` accepts it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from ..facts.paths import group_names
from ..layout import NO_SHELL, NOLOGIN_BY_FAMILY, NOLOGIN_CANDIDATES
from ..validate import PRIVILEGED_GROUPS
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


def privileged_groups(groups: Sequence[int], names: Mapping[int, str]) -> List[str]:
    """The privileged groups among ``groups`` (gids; ``names``: their names as the system has them)."""
    return [names[gid] for gid in groups if names.get(gid) in PRIVILEGED_GROUPS]


def refuse_privileged(entry: pwd.struct_passwd, groups: Sequence[int] = (), names: Mapping[int, str] = {},
                      allowed: Sequence[str] = ()) -> None:
    """An account that is root in disguise, or in a privileged group not ``allowed``, is never the
    service user (``groups``: every group it is in, as ``os.getgrouplist`` gives them)."""
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
    refused = [name for name in privileged_groups(groups, names) if name not in allowed]
    if refused:
        listed = ", ".join(refused)
        raise StepFailed(f"user {entry.pw_name} is in the privileged group{'s' if len(refused) > 1 else ''} "
                         f"{listed}: systemd gives the service its user's groups, and with them a way to root, the "
                         "system's logs or its secrets",
                         f"remove it (gpasswd -d {entry.pw_name} {refused[0]}), use a dedicated user (--user "
                         f"dispatch), or accept it knowingly: --allow-group {','.join(refused)}")


def decide(name: str, entry: Optional[pwd.struct_passwd], app_dir: Path, shell: str,
           groups: Sequence[int] = (), names: Mapping[int, str] = {}, allowed: Sequence[str] = ()) -> Change[UserPlan]:
    """Pure: the account as looked up (``None``: absent), its groups and their names, and the
    privileged groups allowed (--allow-group) -> what to do."""
    if entry is None:
        argv = useradd_command(name, app_dir, shell)
        return Change([Action("create", f"system user {name}", f" (shell {shell})")],
                      UserPlan(argv), report={"user": name, "argv": argv})
    refuse_privileged(entry, groups, names, allowed)
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
        return decide(name, entry, ctx.settings.app_dir, nologin_shell(ctx.root, ctx.facts.family), groups,
                      group_names(groups), ctx.settings.allow_groups)

    def apply(self, ctx: Context, change: Change[UserPlan]) -> str:
        ctx.runner.run(change.the_plan().argv, timeout=60)
        entry = pwd.getpwnam(ctx.settings.service_user)
        record.remember(ctx, "users", entry.pw_name)
        return f"created system user {entry.pw_name} (uid {entry.pw_uid}, shell {entry.pw_shell})"
