"""The health gate of every restart, and the rollback when a restarted instance fails it.

A unit dispatchctl starts or restarts must report READY=1 (sent once it consumes) within the ready
timeout (--ready-timeout; default layout.READY_TIMEOUT_S, more for each further AMQP host); a
consumer that says it is retrying gives up at once (Systemd.start_and_wait). When one does not:

- the last good generation (steps/generation.py: the files that ran ready before this change) is
  put back, systemd reloaded, the units this run started that did not run before stopped, and
  each unit that ran before and was restarted (or is down) restarted and waited for, one at a time:
  the instances not yet restarted keep running, untouched;
- the step fails with ``rolled back: <why>`` and the failed start's journal tail;
- a rollback that fails too says what the host is left with and what to run;
- ``--no-rollback`` keeps the new state (the good generation is kept for ``dispatchctl rollback``);
- without a good generation (dispatch did not run ready before the change) nothing is put back.

Each verdict is also in ``ctx.rollback`` for the JSON report (``rolled_back``, ``rollback``).
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence, Tuple

from .. import envfile
from ..errors import DispatchctlError, ErrorKind
from ..files import read_regular
from ..layout import READY_TIMEOUT_PER_HOST_S, READY_TIMEOUT_S
from .base import Context, StepFailed, installed_instances
from .generation import Generation, GenerationError, differences, discard_staged, promote, restore, staged, verify
from .pending import clear_pending


def ready_timeout(ctx: Context) -> float:
    """--ready-timeout, else the default for the AMQP hosts the environment file lists now."""
    if ctx.settings.ready_timeout:
        return float(ctx.settings.ready_timeout)
    try:
        text = (read_regular(ctx.host_path(ctx.settings.env_file)) or b"").decode("utf-8", "replace")
    except OSError:
        text = ""
    hosts = [h for h in envfile.parse(text).get("AMQP_HOST", "").split(",") if h.strip()]
    return float(READY_TIMEOUT_S + READY_TIMEOUT_PER_HOST_S * max(0, len(hosts) - 1))


def start_units(ctx: Context, verb: str, units: Sequence[str]) -> Tuple[bool, str]:
    """``systemctl start|restart UNITS``, waited for READY (Systemd.start_and_wait, the ready
    timeout). Returns (ok, why not). ``reset-failed`` first: a unit that failed, or that was
    started often lately (a few typos in a row), would refuse the start (its start limit)."""
    ctx.runner.run(["systemctl", "reset-failed", *units], check=False)
    started = ctx.systemd.start_and_wait(verb, units, timeout=ready_timeout(ctx))
    if started.ok:
        return True, ""
    if started.job_error:
        states = "".join(f"\n  {b.get('Id', '')}: {b.get('ActiveState', '')}/{b.get('SubState', '')} "
                         f"(result {b.get('Result', '')})" for b in ctx.systemd.show_units(units))
        return False, f"{verb} {', '.join(units)} failed: {ctx.runner.shown(started.job_error)}{states}"
    if started.down:
        return False, "not running after start: " + ", ".join(f"{unit} {state}" for unit, state in started.down)
    return False, f"{', '.join(units)} did not become ready: {started.not_ready(mask=ctx.runner.shown)}"


def journal_tail(ctx: Context, units: Sequence[str], lines: int = 6) -> List[str]:
    argv = ["journalctl", "--no-pager", "-o", "cat", "-n", str(lines)]
    for unit in units:
        argv += ["-u", unit]
    res = ctx.runner.run(argv, check=False, timeout=15)
    return [ctx.runner.shown(ln) for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("-- ")]


def with_tail(reason: str, tail: List[str]) -> str:
    return reason + ("\nlast log lines of the failed start:\n  " + "\n  ".join(tail) if tail else "")


def passed(ctx: Context, *, keep: bool = True) -> None:
    """Every restart passed the gate: the generation that ran before becomes the kept one
    (``keep=False``, the rollback command: it is dropped, the kept one being what runs now)."""
    if ctx.dry_run:
        return
    if keep:
        promote(ctx)
    else:
        discard_staged(ctx)


class RolledBack(StepFailed):
    """A restart failed the gate; the last good generation runs again."""


def not_ready(ctx: Context, reason: str, touched: Sequence[str]) -> StepFailed:
    """What a restart that failed the gate comes to (raise it): ``touched``, the units this run
    started or restarted so far (the failing one last)."""
    tail = journal_tail(ctx, touched[-1:] or [ctx.systemd.unit])
    failed = with_tail(reason, tail)
    retry = f"fix the cause above (`dispatchctl check`; `dispatchctl check-rabbitmq` for the broker side), then " \
            f"run `dispatchctl {ctx.command or 'install'}` again"
    try:
        gen = staged(ctx)
    except GenerationError as exc:
        return _failed_rollback(ctx, failed, f"the kept generation cannot be used: {exc}", restored=False)
    report: Dict[str, Any] = {"rolled_back": False, "reason": reason.splitlines()[0], "units": list(touched),
                              "journal": tail}
    ctx.rollback = report
    if gen is None:
        report["why_not"] = "dispatch did not run ready before this change: no good generation to go back to"
        return StepFailed(f"{failed}\nnot rolled back: {report['why_not']}", retry)
    if ctx.settings.no_rollback:
        promote(ctx)
        report["why_not"] = "--no-rollback: the new state is kept"
        return StepFailed(f"{failed}\nnot rolled back (--no-rollback): the new state stays",
                          f"{retry}; or run `dispatchctl rollback` to return to {gen.summary()}")
    started = time.monotonic()
    try:
        restored, runs = roll_back(ctx, gen, touched)
    except _RollbackFailed as exc:
        return _failed_rollback(ctx, failed, str(exc), restored=exc.restored)
    report.update(rolled_back=True, restored=restored, generation=gen.id, ok=True,
                  duration_s=round(time.monotonic() - started, 3))
    return RolledBack(f"rolled back: {failed}\n{runs} (put back: {', '.join(restored) or 'nothing changed'})",
                      retry + "; --no-rollback keeps a change that fails this way")


class _RollbackFailed(DispatchctlError):
    """Putting the last good generation back failed (``restored``: its files are back in place)."""

    kind = ErrorKind.STEP

    def __init__(self, message: str, restored: bool) -> None:
        super().__init__(message)
        self.restored = restored


def roll_back(ctx: Context, gen: Generation, touched: Sequence[str]) -> Tuple[List[str], str]:
    """Put ``gen`` back and restart what it ran that this run touched (or that is down), one
    unit at a time, each waited for. Returns (the paths put back, what runs now)."""
    try:
        data = verify(gen)
    except GenerationError as exc:
        raise _RollbackFailed(str(exc), restored=False) from None
    restored = [m.path for m, _ in differences(ctx, gen)]
    marks = restore(ctx, gen, data)
    run = ctx.runner.run
    if "unit" in marks:
        run(["systemctl", "daemon-reload"])
    now = installed_instances(ctx)
    extra = [u.unit for u in now.running() if u.unit not in gen.units]
    if extra:
        run(["systemctl", "stop", *extra], check=False)
    disable = [u.unit for u in now.every_unit() if u.is_enabled and u.unit not in gen.enabled]
    if disable:
        run(["systemctl", "disable", "--quiet", *disable], check=False)
    enable = [u for u in gen.enabled if not now.info(u).is_enabled]
    if enable:
        run(["systemctl", "enable", "--quiet", *enable], check=False)
    for unit in gen.units:
        info = now.info(unit)
        if unit not in touched and info.running:
            continue  # not restarted by this run: it still runs the good generation
        ok, why = start_units(ctx, "restart", (unit,))
        if not ok:
            raise _RollbackFailed(with_tail(why, journal_tail(ctx, [unit])), restored=True)
    clear_pending(ctx)
    discard_staged(ctx)
    pids = ", ".join(f"{i.unit} pid {i.main_pid}" for i in installed_instances(ctx).running())
    return restored, f"the last good generation runs again ({pids}: ready)"


def _failed_rollback(ctx: Context, failed: str, why: str, *, restored: bool) -> StepFailed:
    """The rollback failed too: what the host is left with, and what to run."""
    states = ", ".join(f"{u.unit} {u.active_state}/{u.sub_state}" for u in installed_instances(ctx).every_unit()
                       if u.running or u.active_state == "failed") or "no dispatch unit running"
    if restored:
        state = (f"the last good generation's files are back in place, but it does not start either: {states}")
        action = ("run `dispatchctl check` (and `dispatchctl logs`) for why the previous settings fail now too, "
                  "fix that, then `dispatchctl restart`; or run `dispatchctl install` with settings that work")
    else:
        state = f"nothing was put back: the new files are in place; {states}"
        action = ("run `dispatchctl install` with settings that work (`dispatchctl stop` stops the retrying "
                  "meanwhile)")
    discard_staged(ctx)  # what is in place now is the state described: nothing to go back to
    ctx.rollback = {"rolled_back": False, "reason": failed.splitlines()[0], "ok": False, "state": state,
                    "rollback_error": why.splitlines()[0]}
    return StepFailed(f"{failed}\nrollback failed: {why}\nthe host now: {state}", action)
