"""Run a plan of steps for a command (install, build, configure, start, uninstall): check the host,
take the host lock, run the steps with progress, show the results, log a run that changes the
host. One function for all. The run's secrets are masked by field (redact.py); what the commands
the steps run print is masked by value (the Runner's ``mask``, the progress's ``child_line``)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import ExitStatus
from ..facts.host import HostFacts
from ..host import Runner
from ..settings import Settings
from ..steps.base import PreflightError, Step, StepResult
from . import options as opt
from .common import INVOCATION
from .output import error, error_document, print_json, write


def run_plan(command: str, steps: List[Step[Any]], settings: Settings, *,
             preflight: Callable[[HostFacts], None], dry_run: bool, diff: bool, as_json: bool,
             confirmed: bool = False, section: Optional[Tuple[str, Dict[str, Any], str]] = None,
             warnings: Sequence[str] = ()) -> int:
    """Returns the exit code: 0 every step ok, 1 the host cannot run it or a step failed, and
    with --exit-code 3 when something would change (dry run) or changed. ``section``: an extra part
    of the report, (its JSON key, its JSON value, its text); ``warnings``: said first, and in the
    JSON document's ``warnings``."""
    from .output import warning

    for text in warnings:
        warning(text)
    facts = HostFacts.gather()
    try:
        preflight(facts)
    except PreflightError as exc:
        error(str(exc))
        if as_json:
            print_json(error_document(command, exc.kind, str(exc), dry_run=dry_run))
        elif not INVOCATION.quiet:
            from .output.steps import print_not_run

            print_not_run([s.name for s in steps], dry_run=dry_run)
        return ExitStatus.FAILED
    lock = None if dry_run else opt.change_lock()
    try:
        document, results = _run(command, steps, settings, facts, dry_run=dry_run, diff=diff, as_json=as_json,
                                 confirmed=confirmed, section=section, warnings=warnings)
    finally:
        if lock is not None:
            lock.close()
    if not document["ok"]:
        return failed_status(results)
    return ExitStatus.CHANGES if INVOCATION.exit_code and document["changed"] else ExitStatus.OK


def _open_log(command: str, settings: Settings, facts: HostFacts, dry_run: bool):
    """The run log for a run that changes the host (root, not a dry run), else None."""
    if dry_run or not facts.is_root:
        return None
    from ..runlog import RunLog
    from .output import warning

    log, reason = RunLog.open(settings.redactor())
    if log is None:
        warning(f"{reason}: this run is not logged")
        return None
    log.start(command, sys.argv[1:])
    return log


def _run(command: str, steps: List[Step[Any]], settings: Settings, facts: HostFacts, *, dry_run: bool,
         diff: bool, as_json: bool, confirmed: bool,
         section: Optional[Tuple[str, Dict[str, Any], str]] = None,
         warnings: Sequence[str] = ()) -> Tuple[Dict[str, Any], List[StepResult]]:
    from ..steps.base import run_steps
    from ..steps.plan import context
    from .output.steps import Progress, show

    redactor = settings.redactor()
    log = _open_log(command, settings, facts, dry_run)
    mode = Progress.mode_for(as_json=as_json, quiet=INVOCATION.quiet, verbosity=INVOCATION.verbosity)
    title = f"dispatchctl {command}" + (" (dry run)" if dry_run else "")
    planned = [s.name for s in steps]
    if section is not None and not as_json and not INVOCATION.quiet:
        write(section[2])  # the values this run uses, and where each came from, first
    started = time.monotonic()
    with Progress(mode, planned, title, dry_run=dry_run, stream=sys.stderr if as_json else sys.stdout,
                  redactor=redactor) as progress, traced(progress):
        runner = Runner(timeout=300, on_line=progress.child_line if INVOCATION.streaming else None,
                        on_result=log.command_done if log is not None else None,
                        on_notice=lambda message: write(message + "\n", err=True), mask=redactor.text)
        ctx = context(settings, dry_run=dry_run, facts=facts, runner=runner)
        ctx.confirmed, ctx.command, ctx.returning = confirmed, command, command == "rollback"
        results = run_steps(steps, ctx, _both(progress.on_start, log and (lambda s: log.step_started(s.name))),
                            _both(progress.on_done, log and (lambda s, r: log.step_done(r))))
    try:
        document = show(command, results, dry_run=dry_run, planned=planned, duration_s=time.monotonic() - started,
                        as_json=as_json, show_diff=diff, quiet=INVOCATION.quiet,
                        streamed=mode == "rows" and not as_json, log_path=str(log.path) if log else "", section=section,
                        rollback=ctx.rollback, warnings=warnings)
    finally:
        if log is not None:
            log.finish("ok" if all(not r.failed for r in results) else "failed")
            log.close()
    return document, results


@contextlib.contextmanager
def traced(progress: Any) -> Iterator[None]:
    """-vv: every command the steps run is shown in the progress as it starts (-vvv: with its exit
    status and time), in place of the stderr echo the other commands get (common.py)."""
    from ..host import TRACE

    before = (TRACE.command, TRACE.done)
    if INVOCATION.verbosity >= 2 and progress.mode != "off":
        TRACE.command = progress.command_line
        TRACE.done = progress.command_done if INVOCATION.verbosity >= 3 else None
    try:
        yield
    finally:
        TRACE.command, TRACE.done = before


def failed_status(results: List[StepResult]) -> int:
    """The exit status of a run that failed: the failed step's own (stop and restart: systemctl's), else 1."""
    return next((r.exit_status for r in results if r.failed and r.exit_status), ExitStatus.FAILED)


def _both(first: Callable[..., None], second: Optional[Callable[..., None]]) -> Callable[..., None]:
    if not second:
        return first

    def call(*args: Any) -> None:
        first(*args)
        second(*args)
    return call
