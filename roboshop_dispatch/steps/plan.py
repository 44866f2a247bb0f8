"""Which steps each command runs, and the checks that come before any of them.

- ``install``: packages, user, appdir, build, config, service (reload, enable, start/restart)
- ``build``: packages, appdir, build, then restart a *running* service whose binary changed
- ``configure``: user, config, then reload and restart a *running* service whose settings changed
- ``start``: service (reload if needed, enable, start when stopped, restart when a change is pending)
- ``rollback``: restore (the kept generation's files), then service as ``configure``'s
- ``stop``, ``restart``: their one step, on every dispatch unit or the ones named (steps/operate.py)

Every start and restart passes the health gate (steps/gate.py).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from ..facts.host import HostFacts
from ..facts.paths import FileInfo
from ..host import Runner
from ..settings import Settings
from ..systemd import Systemd
from .base import Context, PreflightError, Step

__all__ = ["COMMANDS", "PLANS", "PreflightError", "context", "plan", "preflight"]

COMMANDS = ("install", "build", "configure", "start")


def _steps(names: List[str], service_mode: str) -> List[Step[Any]]:
    from .appdir import AppDirStep
    from .build import BuildStep
    from .config import ConfigStep
    from .packages import PackagesStep
    from .restore import RestoreStep
    from .service import ServiceStep
    from .user import UserStep

    factories: Dict[str, Callable[[], Step[Any]]] = {
        "packages": PackagesStep, "user": UserStep, "appdir": AppDirStep, "build": BuildStep,
        "config": ConfigStep, "service": lambda: ServiceStep(service_mode), "restore": RestoreStep,
    }
    return [factories[name]() for name in names]


PLANS: Dict[str, List[str]] = {
    "install": ["packages", "user", "appdir", "build", "config", "service"],
    "build": ["packages", "appdir", "build", "service"],
    "configure": ["user", "config", "service"],
    "start": ["service"],
    "rollback": ["restore", "service"],
}


def plan(command: str) -> List[Step[Any]]:
    """The steps of ``command``, in order."""
    if command not in PLANS:
        raise ValueError(f"unknown command {command!r}")
    return _steps(PLANS[command], "start" if command in ("install", "start") else "follow")


def operate(command: str, named: Sequence[str] = ()) -> List[Step[Any]]:
    """``stop`` or ``restart``: every dispatch unit, or the ones ``named``."""
    from .operate import RestartUnitsStep, StopUnitsStep

    return [StopUnitsStep(named) if command == "stop" else RestartUnitsStep(named)]


def preflight(facts: HostFacts, *, dry_run: bool, dirs: Sequence[FileInfo] = ()) -> None:
    """Checks before any step: OS family and the directories dispatch's files go in (``dirs``:
    their lstat facts, :func:`roboshop_dispatch.trust.read`) always; root and systemd as PID 1
    unless dry run."""
    from .. import trust

    if facts.family is None:
        name = facts.os_name or facts.os_id or "an unknown OS"
        raise PreflightError(
            f"unsupported OS: {name} (ID={facts.os_id or '?'}, ID_LIKE={' '.join(facts.os_like) or '-'}); "
            "dispatchctl supports the RHEL family (dnf) and the Debian family (apt-get)")
    untrusted = trust.problems(dirs)
    if untrusted:
        raise PreflightError(trust.message(untrusted))
    if dry_run:
        return
    if not facts.is_root:
        raise PreflightError("must run as root to change the host (use sudo), "
                             "or add --dry-run to see what would change")
    if not facts.systemd_pid1:
        raise PreflightError("systemd is not running as PID 1 on this host (no /run/systemd/system): "
                             "dispatch needs a systemd host; --dry-run works without one")


def context(settings: Settings, *, dry_run: bool, facts: Optional[HostFacts] = None,
            runner: Optional[Runner] = None) -> Context:
    runner = runner or Runner(timeout=300, mask=settings.redactor().text)
    return Context(settings=settings, facts=facts or HostFacts.gather(), runner=runner,
                   systemd=Systemd(runner), dry_run=dry_run)
