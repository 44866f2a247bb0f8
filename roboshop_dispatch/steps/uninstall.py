"""``dispatchctl uninstall``: the install steps backwards, with the same step contract, so
``--dry-run`` reports exactly what a real run removes and a second run changes nothing.

Stop and disable the service, remove the unit (and drop-ins), the environment file and
``/app/dispatch``. The service user and the app directory stay unless ``purge``: then the app
directory is removed with everything in it (go sources, ``go.mod``) and the user is deleted.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import List

from .base import Change, Context, Step, StepFailed

STOPPABLE = ("active", "activating", "reloading", "deactivating")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class StopStep(Step):
    name = "stop"
    title = "Stop the service"

    def check(self, ctx: Context) -> Change:
        if not ctx.facts.systemd_pid1:
            return Change(False, "no systemd on this host: nothing runs")
        props = ctx.systemd.show(["LoadState", "ActiveState", "SubState", "MainPID"])
        state = props.get("ActiveState", "")
        if state in STOPPABLE:
            return Change(True, f"stop {ctx.systemd.unit} ({state}, MainPID {props.get('MainPID', '0')})",
                          report={"active_state": state})
        return Change(False, f"{ctx.systemd.unit} is not running ({state or 'unknown'})")

    def apply(self, ctx: Context, change: Change) -> str:
        ctx.systemd.stop()
        return f"stopped {ctx.systemd.unit}"


class DisableStep(Step):
    name = "disable"
    title = "Disable the service"

    def check(self, ctx: Context) -> Change:
        if not ctx.facts.systemd_pid1:
            links = self._links(ctx)
            if links:
                return Change(True, "remove the enablement links " + ", ".join(map(str, links)),
                              data={"links": links})
            return Change(False, "not enabled")
        state = ctx.systemd.show(["UnitFileState"]).get("UnitFileState", "")
        if state in ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias"):
            return Change(True, f"disable {ctx.systemd.unit} ({state})")
        return Change(False, f"{ctx.systemd.unit} is not enabled ({state or 'not installed'})")

    def _links(self, ctx: Context) -> List[Path]:
        unit_dir = ctx.host_path(ctx.settings.unit_dir)
        if not unit_dir.is_dir():
            return []
        links = []
        for directory in unit_dir.iterdir():
            if directory.name.endswith((".wants", ".requires")) and (directory / ctx.systemd.unit).is_symlink():
                links.append(directory / ctx.systemd.unit)
        return sorted(links)

    def apply(self, ctx: Context, change: Change) -> str:
        if "links" in change.data:
            links: List[Path] = change.data["links"]  # type: ignore[assignment]
            for link in links:
                _remove(link)
            return "removed the enablement links"
        ctx.systemd.disable()
        return f"disabled {ctx.systemd.unit}"


class _RemoveFiles(Step):
    """Remove paths; what exists is the change."""

    def paths(self, ctx: Context) -> List[Path]:
        raise NotImplementedError

    def check(self, ctx: Context) -> Change:
        present = [p for p in self.paths(ctx) if _exists(p)]
        if not present:
            return Change(False, "nothing to remove: " + ", ".join(str(p) for p in self.paths(ctx)) + " absent")
        return Change(True, "remove " + ", ".join(str(p) for p in present), data={"paths": present},
                      report={"removed": [str(p) for p in present]})

    def apply(self, ctx: Context, change: Change) -> str:
        present: List[Path] = change.data["paths"]  # type: ignore[assignment]
        for path in present:
            _remove(path)
        self.after(ctx)
        return "removed " + ", ".join(str(p) for p in present)

    def after(self, ctx: Context) -> None:
        pass


class UnitStep(_RemoveFiles):
    name = "unit"
    title = "Remove the unit"

    def paths(self, ctx: Context) -> List[Path]:
        from .service import PENDING

        unit = ctx.host_path(ctx.settings.unit_path)
        dropins = unit.with_name(unit.name + ".d")
        paths = [unit, dropins]
        pending = ctx.host_path(PENDING)
        if _exists(pending):  # a restart a previous run left pending means nothing now
            paths.append(pending)
        return paths

    def check(self, ctx: Context) -> Change:
        change = super().check(ctx)
        if change.needed or not ctx.facts.systemd_pid1:
            return change
        # the file is gone but systemd still knows the unit (removed by hand, no daemon-reload)
        props = ctx.systemd.show(["LoadState", "ActiveState", "Result"])
        if props.get("LoadState", "") not in ("", "not-found") or props.get("ActiveState") == "failed":
            return Change(True, f"daemon-reload to forget {ctx.systemd.unit} ({props.get('LoadState')})",
                          data={"paths": []})
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


class UserStep(Step):
    name = "user"
    title = "Delete the service user (--purge)"

    def check(self, ctx: Context) -> Change:
        import pwd

        name = ctx.settings.service_user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return Change(False, f"user {name} does not exist")
        if entry.pw_uid == 0:
            raise StepFailed(f"user {name} has uid 0: refusing to delete it", "delete it by hand if you must")
        return Change(True, f"delete user {name} (uid {entry.pw_uid})", report={"user": name})

    def apply(self, ctx: Context, change: Change) -> str:
        name = ctx.settings.service_user
        res = ctx.runner.run(["userdel", name], check=False, timeout=60)
        if not res.ok:
            raise StepFailed(f"userdel {name} failed: {(res.stderr or res.stdout).strip()}",
                             f"stop what still runs as {name} (ps -u {name}), then run uninstall --purge again")
        return f"deleted user {name}"


def plan(purge: bool) -> List[Step]:
    steps: List[Step] = [StopStep(), DisableStep(), UnitStep(), ConfigStep(), BinaryStep()]
    if purge:
        steps += [AppDirStep(), UserStep()]
    return steps


def preflight(*, is_root: bool, systemd_pid1: bool, dry_run: bool) -> None:
    """Checks before any step (raises RuntimeError with the reason)."""
    if dry_run:
        return
    if not is_root:
        raise RuntimeError("must run as root to uninstall (use sudo), or add --dry-run to see what would go")
    if not systemd_pid1:
        raise RuntimeError("systemd is not running as PID 1 on this host: the service cannot be stopped; "
                           "--dry-run works without it")

