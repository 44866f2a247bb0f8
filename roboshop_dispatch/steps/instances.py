"""Several dispatch instances on one host (``--instances N``): the service step's decisions and
actions when the template ``dispatch@.service`` is (or was) in use. Not a step itself: the
config, service and uninstall steps share it.

N = 1 runs ``dispatch.service``, the manual's unit (``systemctl status dispatch`` keeps working);
N > 1 runs ``dispatch@1.service`` .. ``dispatch@N.service`` from the template, all sharing one
environment file and one credential. Facts first: :func:`installed_instances` reads every
dispatch unit once (:func:`roboshop_dispatch.facts.instances.read_instances`); :func:`decide` is a pure
function from those facts to a :class:`ScalePlan`, unit-tested from recorded facts.

- Changing N starts or stops only the difference: dispatch@1 keeps its process going 2 -> 3.
- A migration 1 <-> N starts the new units before it stops the old ones (never a window with no
  consumer longer than systemd's own start), then disables the old ones and removes the unit
  file no longer used: a stale dispatch.service never runs beside instances. The operator's
  drop-ins go along (steps/dropins.py).
- A restart a change needs (unit, environment file, credential, binary) goes instance by instance,
  each ready before the next, so the other instances keep consuming meanwhile; it stops at the
  first that is not, and the change is rolled back (steps/gate.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Dict, List, Optional, Tuple

from ..facts.instances import InstanceFacts
from . import dropins, gate
from .base import Action, Change, Context, installed_instances, unchanged
from .dropins import Carry
from .pending import RESTART_MARKS

INSTANCES = "instances"  # the mark of the instance count file (restarts nothing)


def wanted_count(ctx: Context) -> int:
    """--instances when given, else what the host is configured for, else 1."""
    if ctx.settings.instances is not None:
        return ctx.settings.instances
    return installed_instances(ctx, ask_systemd=False).configured or 1


def in_use(facts: InstanceFacts, count: int) -> bool:
    """Whether the instance logic applies: more than one wanted, or instances left from before."""
    return count > 1 or facts.template_file or any(u.running or u.is_enabled for u in facts.units)


@dataclass(frozen=True)
class ScalePlan:
    reload: bool = False
    enable: Tuple[str, ...] = ()
    start: Tuple[str, ...] = ()  # wanted units not running, started together
    restart: Tuple[str, ...] = ()  # wanted units running that a change needs restarted, one by one
    stop: Tuple[str, ...] = ()  # units no longer wanted, stopped after the wanted ones run
    disable: Tuple[str, ...] = ()
    remove: Tuple[Path, ...] = ()  # the unit file no longer used (as on the host)
    reset_failed: Tuple[str, ...] = ()
    reasons: Tuple[str, ...] = field(default=())
    carry: Carry = field(default_factory=Carry)  # the operator's drop-ins, carried to the new shape (steps/dropins.py)


def decide(count: int, facts: InstanceFacts, *, mode: str, changed: Collection[str], pending: Collection[str],
           stale_file: Optional[Path]) -> Change[ScalePlan]:
    """What to do to run ``count`` instances, from the facts, this run's changes, what an earlier
    run left pending, and the unit file the other shape used (``stale_file``, None: none exists).
    ``mode`` ``start`` (install, start) starts and enables; ``follow`` (configure, build) acts on a
    running dispatch only: it scales and restarts it, and never starts a stopped one."""
    wanted = facts.wanted_units(count)
    infos = [facts.info(u) for u in wanted]
    others = [u for u in facts.every_unit() if u.unit not in wanted]
    reasons = tuple(sorted({m for m in RESTART_MARKS if m in changed} | set(pending)))
    acting = mode == "start" or bool(facts.running())
    start = tuple(i.unit for i in infos if not i.running) if acting else ()
    plan = ScalePlan(
        reload="unit" in changed or any(u.need_reload for u in facts.every_unit())
        or any(i.load_state == "not-found" for i in infos),
        enable=tuple(i.unit for i in infos if not i.is_enabled and (mode == "start" or i.unit in start)),
        start=start,
        restart=tuple(i.unit for i in infos if i.running and reasons) if acting else (),
        stop=tuple(o.unit for o in others if o.running) if acting else (),
        disable=tuple(o.unit for o in others if o.is_enabled) if acting else (),
        remove=(stale_file,) if acting and stale_file is not None else (),
        reset_failed=tuple(i.unit for i in infos if i.active_state == "failed" and i.unit in start),
        reasons=reasons,
    )
    actions = _actions(plan, count)
    report: Dict[str, object] = {
        "instances": count, "units": {u.unit: u.active_state or "inactive" for u in facts.every_unit()
                                      if u.unit in wanted or u.running or u.is_enabled},
        "actions": [a.render() for a in actions]}
    if reasons:
        report["because"] = list(reasons)
    if not actions:
        running = sum(1 for i in infos if i.running)
        if not acting:
            return unchanged(f"dispatch is not running: not started (`dispatchctl start` starts {count} "
                             f"instance{'s' if count > 1 else ''})", report)
        return unchanged(f"{running} of {count} instance(s) running, enabled: " + ", ".join(
            f"{i.unit} pid {i.main_pid}" for i in infos), report)
    return Change(actions, plan, report=report)


def _actions(plan: ScalePlan, count: int) -> List[Action]:
    def units(names: Tuple[str, ...]) -> str:
        return ", ".join(names)

    actions: List[Action] = []
    if plan.reload:
        actions.append(Action("daemon-reload", "systemd"))
    if plan.enable:
        actions.append(Action("enable", units(plan.enable)))
    if plan.start:
        actions.append(Action("start", units(plan.start), f" ({count} instance{'s' if count > 1 else ''} wanted)"))
    if plan.restart:
        actions.append(Action("restart", units(plan.restart), f" one by one ({', '.join(plan.reasons)} changed)"))
    if plan.stop:
        actions.append(Action("stop", units(plan.stop), f" (not wanted: {count} instance{'s' if count > 1 else ''})"))
    if plan.disable:
        actions.append(Action("disable", units(plan.disable)))
    if plan.remove:
        actions.append(Action("remove", units(tuple(str(p) for p in plan.remove)), " (no longer used)"))
    return actions


def apply(ctx: Context, plan: ScalePlan) -> str:
    """Carry out the plan in its safe order: the wanted units run before the old ones stop; each
    start and restart passes the health gate (steps/gate.py), else the change is rolled back."""
    run = ctx.runner.run
    done: List[str] = []
    if plan.carry.moves:
        dropins.carry_over(ctx, plan.carry)
        done.append("carried " + ", ".join(str(target) for _, target in plan.carry.moves))
    if plan.reload or plan.carry.moves:
        run(["systemctl", "daemon-reload"])
        done.append("reloaded systemd")
    if plan.reset_failed:
        run(["systemctl", "reset-failed", *plan.reset_failed], check=False)
    if plan.enable:
        run(["systemctl", "enable", "--quiet", *plan.enable])
        done.append("enabled " + ", ".join(plan.enable))
    if plan.start:
        ok, why = gate.start_units(ctx, "start", plan.start)
        if not ok:
            if plan.stop:  # the old units still run: go back to them rather than run both
                run(["systemctl", "stop", *plan.start], check=False)
            raise gate.not_ready(ctx, why, plan.start)
        done.append("started " + ", ".join(plan.start))
    restarted: List[str] = []
    for unit in plan.restart:  # one at a time, each ready before the next: the others keep consuming
        restarted.append(unit)
        ok, why = gate.start_units(ctx, "restart", (unit,))
        if not ok:  # stop at the first failure: the ones not yet restarted stay as they are
            raise gate.not_ready(ctx, why, restarted)
    if plan.restart:
        done.append("restarted " + ", ".join(plan.restart) + " one by one, each ready")
    _retire(ctx, plan, done)
    gate.passed(ctx, keep=not ctx.returning)
    return "; ".join(done)


def _retire(ctx: Context, plan: ScalePlan, done: List[str]) -> None:
    """Stop, disable and remove what the wanted units replace (they run: they passed the gate)."""
    run = ctx.runner.run
    if plan.stop:
        run(["systemctl", "stop", *plan.stop])
        done.append("stopped " + ", ".join(plan.stop))
    if plan.disable:
        run(["systemctl", "disable", "--quiet", *plan.disable])
        done.append("disabled " + ", ".join(plan.disable))
    if plan.remove:
        for path in plan.remove:
            ctx.host_path(path).unlink(missing_ok=True)
        dropins.retire(ctx, plan.carry)
        run(["systemctl", "daemon-reload"])
        done.append("removed " + ", ".join(str(p) for p in plan.remove))
    if plan.stop:
        run(["systemctl", "reset-failed", *plan.stop], check=False)
