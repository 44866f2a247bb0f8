"""``dispatchctl uninstall``: the install steps backwards, with the same step contract, so
``--dry-run`` reports exactly what a real run removes and a second run changes nothing.

Stop and disable the service, remove the unit (and drop-ins), the environment file and
``/app/dispatch``. The service user and the app directory stay unless ``purge``: then the app
directory is removed with everything in it (go sources, ``go.mod``) and the user is deleted.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple

from ..layout import RESTART_PENDING as PENDING
from .base import Action, Change, Context, PreflightError, Step, StepFailed, unchanged

STOPPABLE = ("active", "activating", "reloading", "deactivating")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass(frozen=True)
class RemovePlan:
    """Paths to remove (empty: only systemd needs to forget the unit)."""

    paths: Tuple[Path, ...]


class StopStep(Step[None]):
    name = "stop"
    title = "Stop the service"

    def check(self, ctx: Context) -> Change[None]:
        if not ctx.facts.systemd_pid1:
            return unchanged("no systemd on this host: nothing runs")
        props = ctx.systemd.show(["LoadState", "ActiveState", "SubState", "MainPID"])
        state = props.get("ActiveState", "")
        if state in STOPPABLE:
            return Change([Action("stop", ctx.systemd.unit, f" ({state}, MainPID {props.get('MainPID', '0')})")],
                          report={"active_state": state})
        return unchanged(f"{ctx.systemd.unit} is not running ({state or 'unknown'})")

    def apply(self, ctx: Context, change: Change[None]) -> str:
        ctx.systemd.stop()
        return f"stopped {ctx.systemd.unit}"


class DisableStep(Step[RemovePlan]):
    name = "disable"
    title = "Disable the service"

    def check(self, ctx: Context) -> Change[RemovePlan]:
        if not ctx.facts.systemd_pid1:
            links = self._links(ctx)
            if links:
                return Change([Action("remove", "the enablement links " + ", ".join(map(str, links)))],
                              RemovePlan(tuple(links)))
            return unchanged("not enabled")
        state = ctx.systemd.show(["UnitFileState"]).get("UnitFileState", "")
        if state in ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias"):
            return Change([Action("disable", ctx.systemd.unit, f" ({state})")], RemovePlan(()))
        return unchanged(f"{ctx.systemd.unit} is not enabled ({state or 'not installed'})")

    def _links(self, ctx: Context) -> List[Path]:
        unit_dir = ctx.host_path(ctx.settings.unit_dir)
        if not unit_dir.is_dir():
            return []
        links = []
        for directory in unit_dir.iterdir():
            if directory.name.endswith((".wants", ".requires")) and (directory / ctx.systemd.unit).is_symlink():
                links.append(directory / ctx.systemd.unit)
        return sorted(links)

    def apply(self, ctx: Context, change: Change[RemovePlan]) -> str:
        links = change.the_plan().paths
        if links:
            for link in links:
                _remove(link)
            return "removed the enablement links"
        ctx.systemd.disable()
        return f"disabled {ctx.systemd.unit}"


class _RemoveFiles(Step[RemovePlan]):
    """Remove paths; what exists is the change."""

    def paths(self, ctx: Context) -> List[Path]:
        raise NotImplementedError

    def check(self, ctx: Context) -> Change[RemovePlan]:
        present = [p for p in self.paths(ctx) if _exists(p)]
        if not present:
            return unchanged("nothing to remove: " + ", ".join(str(p) for p in self.paths(ctx)) + " absent")
        return Change([Action("remove", ", ".join(str(p) for p in present))], RemovePlan(tuple(present)),
                      report={"removed": [str(p) for p in present]})

    def apply(self, ctx: Context, change: Change[RemovePlan]) -> None:
        for path in change.the_plan().paths:
            _remove(path)
        self.after(ctx)

    def after(self, ctx: Context) -> None:
        pass


class UnitStep(_RemoveFiles):
    name = "unit"
    title = "Remove the unit"

    def paths(self, ctx: Context) -> List[Path]:
        unit = ctx.host_path(ctx.settings.unit_path)
        dropins = unit.with_name(unit.name + ".d")
        paths = [unit, dropins]
        pending = ctx.host_path(PENDING)
        if _exists(pending):  # a restart a previous run left pending means nothing now
            paths.append(pending)
        return paths

    def check(self, ctx: Context) -> Change[RemovePlan]:
        change = super().check(ctx)
        if change.needed or not ctx.facts.systemd_pid1:
            return change
        # the file is gone but systemd still knows the unit (removed by hand, no daemon-reload)
        props = ctx.systemd.show(["LoadState", "ActiveState", "Result"])
        if props.get("LoadState", "") not in ("", "not-found") or props.get("ActiveState") == "failed":
            return Change([Action("daemon-reload", f"to forget {ctx.systemd.unit}", f" ({props.get('LoadState')})")],
                          RemovePlan(()))
        return change

    def after(self, ctx: Context) -> None:
        if ctx.facts.systemd_pid1:
            ctx.systemd.daemon_reload()
            ctx.systemd.reset_failed()


class ConfigStep(_RemoveFiles):
    name = "config"
    title = "Remove the environment file"

    def paths(self, ctx: Context) -> List[Path]:
        return [ctx.host_path(ctx.settings.env_file)]

    def after(self, ctx: Context) -> None:
        directory = ctx.host_path(ctx.settings.env_file).parent
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: other RoboShop services may keep files there


class BinaryStep(_RemoveFiles):
    name = "binary"
    title = "Remove /app/dispatch"

    def paths(self, ctx: Context) -> List[Path]:
        return [ctx.host_path(ctx.settings.binary)]


class AppDirStep(_RemoveFiles):
    name = "appdir"
    title = "Remove the app directory (--purge)"

    def paths(self, ctx: Context) -> List[Path]:
        return [ctx.host_path(ctx.settings.app_dir)]


class UserStep(Step[None]):
    name = "user"
    title = "Delete the service user (--purge)"

    def check(self, ctx: Context) -> Change[None]:
        import pwd

        name = ctx.settings.service_user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return unchanged(f"user {name} does not exist")
        if entry.pw_uid == 0:
            raise StepFailed(f"user {name} has uid 0: refusing to delete it", "delete it by hand if you must")
        return Change([Action("delete", f"user {name}", f" (uid {entry.pw_uid})")], report={"user": name})

    def apply(self, ctx: Context, change: Change[None]) -> str:
        name = ctx.settings.service_user
        res = ctx.runner.run(["userdel", name], check=False, timeout=60)
        if not res.ok:
            raise StepFailed(f"userdel {name} failed: {(res.stderr or res.stdout).strip()}",
                             f"stop what still runs as {name} (ps -u {name}), then run uninstall --purge again")
        return f"deleted user {name}"


def plan(purge: bool) -> List[Step[Any]]:
    steps: List[Step[Any]] = [StopStep(), DisableStep(), UnitStep(), ConfigStep(), BinaryStep()]
    if purge:
        steps += [AppDirStep(), UserStep()]
    return steps


def preflight(*, is_root: bool, systemd_pid1: bool, dry_run: bool) -> None:
    """Checks before any step (raises PreflightError with the reason)."""
    if dry_run:
        return
    if not is_root:
        raise PreflightError("must run as root to uninstall (use sudo), or add --dry-run to see what would go")
    if not systemd_pid1:
        raise PreflightError("systemd is not running as PID 1 on this host: the service cannot be stopped; "
                           "--dry-run works without it")

