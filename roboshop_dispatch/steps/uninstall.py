"""``dispatchctl uninstall``: the install steps backwards, with the same step contract, so
``--dry-run`` reports exactly what a real run removes and a second run changes nothing.

Stop and disable the service and every dispatch@N instance, remove the unit and the template
(and their drop-ins), the environment file, the instance count, the credentials, the kept
generation (steps/generation.py) and ``/app/dispatch``. The service user and the app directory stay unless ``purge``,
and are shared with the other RoboShop services, so ``purge`` (confirmed with ``--yes`` or at a
prompt) removes only what dispatchctl created (layout.CREATED_RECORD): the files it wrote in the
app directory, the directory itself only when it created it and it is empty then, and the user
only when it created it and the user owns no file left on the host. Nothing is followed through
a link, and nothing else is ever deleted recursively.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple

from ..facts.instances import InstanceInfo
from ..files import lstat_regular
from ..layout import GENERATIONS_DIR, INSTANCE_PREFIX
from ..layout import RESTART_PENDING as PENDING
from . import record
from .base import Action, Change, Context, PreflightError, Step, StepFailed, installed_instances, unchanged


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    """Remove a file or a link (never what it points to), or the unit's own drop-in directory."""
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
        running = installed_instances(ctx).running()  # dispatch.service and every dispatch@N
        if running:
            return Change([Action("stop", ", ".join(u.unit for u in running),
                                  " (" + ", ".join(f"{u.active_state}, MainPID {u.main_pid}" for u in running) + ")")],
                          report={"active_state": running[0].active_state, "units": [u.unit for u in running]})
        return unchanged(f"{ctx.systemd.unit} is not running (nor any dispatch@ instance)")

    def apply(self, ctx: Context, change: Change[None]) -> str:
        units = change.report["units"]
        ctx.runner.run(["systemctl", "stop", *units])
        return "stopped " + ", ".join(units)


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
        enabled = [u for u in installed_instances(ctx).every_unit() if u.is_enabled]
        if enabled:
            return Change([Action("disable", ", ".join(u.unit for u in enabled),
                                  " (" + ", ".join(sorted({u.enabled for u in enabled})) + ")")],
                          RemovePlan(()), report={"units": [u.unit for u in enabled]})
        return unchanged(f"{ctx.systemd.unit} is not enabled (nor any dispatch@ instance)")

    def _links(self, ctx: Context) -> List[Path]:
        unit_dir = ctx.host_path(ctx.settings.unit_dir)
        if not unit_dir.is_dir():
            return []
        links = []
        for directory in unit_dir.iterdir():
            if not directory.name.endswith((".wants", ".requires")) or not directory.is_dir():
                continue
            links += [entry for entry in directory.iterdir() if entry.is_symlink() and
                      (entry.name == ctx.systemd.unit or InstanceInfo(entry.name).number)]
        return sorted(links)

    def apply(self, ctx: Context, change: Change[RemovePlan]) -> str:
        links = change.the_plan().paths
        if links:
            for link in links:
                _remove(link)
            return "removed the enablement links"
        units = change.report["units"]
        ctx.runner.run(["systemctl", "disable", *units])
        return "disabled " + ", ".join(units)


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
        template = ctx.host_path(ctx.settings.template_path)
        paths = [unit, unit.with_name(unit.name + ".d"), template, template.with_name(template.name + ".d")]
        pending = ctx.host_path(PENDING)
        if _exists(pending):  # a restart a previous run left pending means nothing now
            paths.append(pending)
        return paths

    def check(self, ctx: Context) -> Change[RemovePlan]:
        change = super().check(ctx)
        if change.needed or not ctx.facts.systemd_pid1:
            return change
        # the file is gone but systemd still knows the unit (removed by hand, no daemon-reload)
        props = ctx.systemd.show()
        if props.get("LoadState", "") not in ("", "not-found") or props.get("ActiveState") == "failed":
            return Change([Action("daemon-reload", f"to forget {ctx.systemd.unit}", f" ({props.get('LoadState')})")],
                          RemovePlan(()))
        known = [u.unit for u in installed_instances(ctx).units]  # dispatch@N loaded or failed
        if known:
            return Change([Action("daemon-reload", "to forget " + ", ".join(known))], RemovePlan(()))
        return change

    def after(self, ctx: Context) -> None:
        if ctx.facts.systemd_pid1:
            ctx.systemd.daemon_reload()
            ctx.systemd.reset_failed()
            ctx.runner.run(["systemctl", "reset-failed", INSTANCE_PREFIX + "*"], check=False)


class ConfigStep(_RemoveFiles):
    name = "config"
    title = "Remove the environment file, the credential and the kept generation"

    def paths(self, ctx: Context) -> List[Path]:
        s = ctx.settings
        # the kept generation holds copies of them (the password too): it goes with them
        return [ctx.host_path(s.env_file), ctx.host_path(s.credential_file), ctx.host_path(s.instances_file),
                ctx.host_path(s.otlp_headers_file), ctx.host_path(GENERATIONS_DIR)]

    def after(self, ctx: Context) -> None:
        directory = ctx.host_path(ctx.settings.env_file).parent
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: other RoboShop services may keep files there


class BinaryStep(_RemoveFiles):
    name = "binary"
    title = "Remove /app/dispatch"

    def paths(self, ctx: Context) -> List[Path]:
        binary = ctx.host_path(ctx.settings.binary)
        lstat_regular(binary)  # a link or a directory there was not written by dispatchctl: refused
        return [binary]


def _needs_confirmation(ctx: Context) -> None:
    if not ctx.confirmed and not ctx.dry_run:
        raise StepFailed("--purge deletes files and users: not confirmed", "add --yes")


@dataclass(frozen=True)
class PurgePlan:
    files: Tuple[Path, ...]  # on the host (not under ctx.root)
    remove_dir: bool


def decide_app_dir(app_dir: Path, present: List[Path], dir_created: bool,
                   leftovers: List[str]) -> Change[PurgePlan]:
    """What purge does with the app directory: remove the files dispatchctl created that are
    ``present``, then the directory only if dispatchctl created it and nothing else is left in it."""
    actions = [Action("remove", str(p)) for p in present]
    if not dir_created:
        note = f"{app_dir} stays: dispatchctl did not create it (shared with the other RoboShop services)"
    elif leftovers:
        note = f"{app_dir} stays: it holds files dispatchctl did not create ({', '.join(sorted(leftovers)[:5])})"
    else:
        note = ""
        actions.append(Action("remove", str(app_dir), " (created by dispatchctl, now empty)"))
    report = {"removed": [str(p) for p in present], "kept": note}
    if not actions:
        return unchanged(note or f"nothing of dispatchctl's left in {app_dir}", report)
    if note:
        actions.append(Action("keep", str(app_dir), " (" + note.split(": ", 1)[1] + ")"))
    return Change(actions, PurgePlan(tuple(present), remove_dir=not note), report=report)


class AppDirStep(Step[PurgePlan]):
    name = "appdir"
    title = "Remove what dispatchctl created in the app directory (--purge)"

    def check(self, ctx: Context) -> Change[PurgePlan]:
        app_dir = ctx.settings.app_dir
        real = ctx.host_path(app_dir)
        ours = [p for p in record.created_paths(ctx, "files") if p.parent == app_dir]
        # the binary is the binary step's (it ran before this one)
        present = [p for p in ours if p != ctx.settings.binary and _exists(ctx.host_path(p))]
        try:
            names = {entry.name for entry in real.iterdir()} if real.is_dir() and not real.is_symlink() else set()
        except OSError:
            names = set()
        leftovers = sorted(names - {p.name for p in ours})
        dir_created = record.was_created(ctx, "dirs", app_dir) and _exists(real)
        change = decide_app_dir(app_dir, present, dir_created, leftovers)
        if change.needed:
            _needs_confirmation(ctx)
        return change

    def apply(self, ctx: Context, change: Change[PurgePlan]) -> None:
        plan = change.the_plan()
        for path in plan.files:
            real = ctx.host_path(path)
            if real.is_dir() and not real.is_symlink():
                shutil.rmtree(real)  # the go sources dispatchctl unpacked (rmtree never follows links)
            else:
                real.unlink(missing_ok=True)
            record.forget(ctx, "files", path)
        if plan.remove_dir:
            ctx.host_path(ctx.settings.app_dir).rmdir()  # fails, keeping it, if something appeared
            record.forget(ctx, "dirs", ctx.settings.app_dir)


class UserStep(Step[None]):
    name = "user"
    title = "Delete the service user dispatchctl created (--purge)"

    def check(self, ctx: Context) -> Change[None]:
        import pwd

        name = ctx.settings.service_user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return unchanged(f"user {name} does not exist")
        if entry.pw_uid == 0:
            raise StepFailed(f"user {name} has uid 0: refusing to delete it", "delete it by hand if you must")
        if not record.was_created(ctx, "users", name):
            return unchanged(f"user {name} stays: dispatchctl did not create it (shared with the other "
                             "RoboShop services)", {"user": name, "kept": True})
        owned = self._owned_file(ctx, name)
        if owned:
            return unchanged(f"user {name} stays: it owns files outside what dispatchctl removed (e.g. {owned})",
                             {"user": name, "kept": True})
        _needs_confirmation(ctx)
        return Change([Action("delete", f"user {name}", f" (uid {entry.pw_uid}, created by dispatchctl)")],
                      report={"user": name})

    @staticmethod
    def _owned_file(ctx: Context, name: str) -> str:
        """A file the user owns on the root file system (after this run's removals), or ''."""
        root = str(ctx.root)
        res = ctx.runner.run(["find", root, "-xdev", "-user", name, "-print", "-quit"], check=False, timeout=120)
        return res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""

    def apply(self, ctx: Context, change: Change[None]) -> str:
        name = ctx.settings.service_user
        res = ctx.runner.run(["userdel", name], check=False, timeout=60)
        if not res.ok:
            raise StepFailed(f"userdel {name} failed: {ctx.runner.shown(res.stderr or res.stdout).strip()}",
                             f"stop what still runs as {name} (ps -u {name}), then run "
                             "`dispatchctl uninstall --purge` again")
        record.forget(ctx, "users", name)
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

