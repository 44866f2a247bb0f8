"""Run a plan of steps for a command (install, build, configure, start, uninstall): check the host,
take the host lock, run the steps with progress, show the results redacted. One function for all."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..host import HostFacts
from ..settings import Settings
from ..steps.base import PreflightError, Step
from . import options as opt
from .output import error


def run_plan(command: str, steps: List[Step[Any]], settings: Settings, *,
             preflight: Callable[[HostFacts], None], dry_run: bool, diff: bool, as_json: bool,
             confirmed: bool = False, section: Optional[Tuple[str, Dict[str, Any], str]] = None) -> int:
    """Returns the exit code: 0 every step ok, 1 the host cannot run it or a step failed.
    ``section``: an extra part of the report, (its JSON key, its JSON value, its text)."""
    from ..steps.base import run_steps
    from ..steps.plan import context
    from .render import Progress, show

    facts = HostFacts.gather()
    try:
        preflight(facts)
    except PreflightError as exc:
        error(str(exc))
        return opt.EXIT_CHECK_FAILED
    lock = None if dry_run else opt.change_lock()
    try:
        started = time.monotonic()
        ctx = context(settings, dry_run=dry_run, facts=facts)
        ctx.confirmed = confirmed
        with Progress(not as_json, len(steps), command) as progress:
            results = run_steps(steps, ctx, progress.on_start, progress.on_done)
        document = show(command, results, dry_run=dry_run, planned=[s.name for s in steps],
                        duration_s=time.monotonic() - started, as_json=as_json, show_diff=diff,
                        redactor=settings.redactor(), section=section)
    finally:
        if lock is not None:
            lock.close()
    return opt.EXIT_OK if document["ok"] else opt.EXIT_CHECK_FAILED
