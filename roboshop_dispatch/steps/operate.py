"""``dispatchctl stop`` and ``dispatchctl restart``: every dispatch unit, or the instances named.

- ``stop``: the running units (named ones: those of them that run). Nothing is disabled: a
  reboot starts dispatch again (``uninstall`` removes it).
- ``restart``: every configured unit (``dispatch.service``, or ``dispatch@1..N``), or those named,
  one at a time, each ready (READY=1, once it consumes) within the ready timeout before the
  next: the others keep consuming meanwhile. The first that does not become ready stops the
  restart there, with its journal tail; the ones not yet restarted keep running as they were.

A unit named that is not installed (not one of the configured units, nor running) fails with
systemctl's exit status for a unit not loaded (5, ExitStatus.NOT_LOADED); a systemctl that fails
gives its own status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..errors import ExitStatus
from ..facts.instances import InstanceFacts, instance_unit
from ..layout import MAX_INSTANCES, UNIT_NAME
from ..validate import SettingsError
from . import gate
from .base import Action, Change, Context, Step, StepFailed, installed_instances, unchanged
from .pending import clear_pending

_NAME = re.compile(r"^(?:dispatch@)?([1-9][0-9]{0,5})(?:\.service)?$")


def unit_names(words: Sequence[str]) -> Tuple[str, ...]:
    """The units named on the command line: ``2``, ``dispatch@2`` or ``dispatch@2.service`` (an
    instance), ``dispatch`` or ``dispatch.service``; SettingsError for anything else."""
    units: List[str] = []
    for word in words:
        text = word.strip()
        m = _NAME.match(text)
        if text in ("dispatch", UNIT_NAME):
            unit = UNIT_NAME
        elif m and 1 <= int(m.group(1)) <= MAX_INSTANCES:
            unit = instance_unit(int(m.group(1)))
        else:
            raise SettingsError("INSTANCE", f"{word!r} is not a dispatch unit: give N, dispatch@N (1.."
                                f"{MAX_INSTANCES}) or dispatch")
        if unit not in units:
            units.append(unit)
    return tuple(units)


class UnitNotFound(StepFailed):
    exit_status = ExitStatus.NOT_LOADED


def _known(facts: InstanceFacts, unit: str) -> bool:
    """One of the units this host is configured for, or one that runs (a template makes any
    dispatch@N loadable: dispatch@3 of 2 configured is still not installed)."""
    configured = facts.wanted_units(facts.configured) if facts.configured else []
    return unit in configured or facts.info(unit).running


def targets(facts: InstanceFacts, named: Sequence[str], verb: str) -> List[str]:
    """The units ``verb`` acts on: those named (each must be installed), else every configured one
    and every other running one. UnitNotFound when nothing (or a named unit) is installed."""
    if not facts.configured and not facts.running():
        raise UnitNotFound("dispatch is not installed: nothing to " + verb, "run `dispatchctl install` first")
    missing = [u for u in named if not _known(facts, u)]
    if missing:
        have = ", ".join(facts.wanted_units(facts.configured or 1))
        raise UnitNotFound(f"{', '.join(missing)} not installed (this host runs {have})",
                           f"name one of {have}, or run `dispatchctl {verb}` for all of them")
    if named:
        return list(named)
    wanted = facts.wanted_units(facts.configured) if facts.configured else []
    return wanted + [u.unit for u in facts.running() if u.unit not in wanted]


@dataclass(frozen=True)
class Units:
    units: Tuple[str, ...]


class _UnitsStep(Step[Units]):
    """A step on every dispatch unit, or the ones ``named``."""

    def __init__(self, named: Sequence[str] = ()) -> None:
        self.named = tuple(named)

    def targets(self, ctx: Context) -> Tuple[InstanceFacts, List[str]]:
        facts = installed_instances(ctx)
        return facts, targets(facts, self.named, self.name)


class StopUnitsStep(_UnitsStep):
    name = "stop"
    title = "Stop dispatch"

    def check(self, ctx: Context) -> Change[Units]:
        facts, units = self.targets(ctx)
        running = [u for u in units if facts.info(u).running]
        report = {"units": running}
        if not running:
            return unchanged(f"{', '.join(self.named) or 'dispatch'}: not running (nothing to stop)", report)
        pids = ", ".join(f"{u} pid {facts.info(u).main_pid}" for u in running)
        return Change([Action("stop", ", ".join(running), f" ({pids}; still enabled: a reboot starts it)")],
                      Units(tuple(running)), report=report)

    def apply(self, ctx: Context, change: Change[Units]) -> None:
        units = change.the_plan().units
        res = ctx.runner.run(["systemctl", "stop", *units], check=False)
        if not res.ok:
            said = ctx.runner.shown(res.stderr or res.stdout).strip()
            failed = StepFailed(f"systemctl stop {' '.join(units)} failed: {said}",
                                "see `dispatchctl status` and `dispatchctl logs`")
            failed.exit_status = res.returncode
            raise failed


class RestartUnitsStep(_UnitsStep):
    name = "restart"
    title = "Restart dispatch, one unit at a time"

    def check(self, ctx: Context) -> Change[Units]:
        facts, units = self.targets(ctx)
        timeout = gate.ready_timeout(ctx)
        report = {"units": units, "ready_timeout_s": timeout}
        states = ", ".join(f"{u} {facts.info(u).active_state or 'inactive'}" for u in units)
        how = " one at a time," if len(units) > 1 else ""
        return Change([Action("restart", ", ".join(units), f" ({states};{how} each ready within {timeout:.0f}s)")],
                      Units(tuple(units)), report=report)

    def apply(self, ctx: Context, change: Change[Units]) -> str:
        units = change.the_plan().units
        done: List[str] = []
        for unit in units:
            ok, why = gate.start_units(ctx, "restart", (unit,))
            if not ok:
                left = [u for u in units if u != unit and u not in done]
                kept = f"\nnot restarted (still as they were): {', '.join(left)}" if left else ""
                restarted = f"\nrestarted and ready: {', '.join(done)}" if done else ""
                raise StepFailed(gate.with_tail(why, gate.journal_tail(ctx, [unit])) + restarted + kept,
                                 "run `dispatchctl check` for a diagnosis, fix the cause, then "
                                 f"`dispatchctl restart {unit}`")
            done.append(unit)
        if not self.named:
            clear_pending(ctx)  # every unit runs the files on disk now
        pids = ", ".join(f"{u.unit} pid {u.main_pid}" for u in installed_instances(ctx).running() if u.unit in done)
        return f"restarted {', '.join(done)}, each ready ({pids})"
