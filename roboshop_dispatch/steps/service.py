"""Step 6: the service. ``daemon-reload`` only after the unit changed; enable; start when stopped;
restart only when the unit, the environment file, the credential or the binary changed.

What changed comes from ``Context.changed`` (the marks set by the config and build steps, in
check mode too, so a dry run predicts exactly what the real run does) and from what an earlier
run left pending (:mod:`.pending`). systemd's own ``NeedDaemonReload`` covers a unit written
without a reload the same way. One ``systemctl show`` call reads every property the step needs;
:func:`decide` turns that answer into the actions, a pure function tested from recorded answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Collection, Dict, List, Optional, Tuple

from ..facts.instances import InstanceFacts
from ..layout import RESTART_PENDING as PENDING
from ..layout import SIMPLE_SETTLE_S
from ..systemd import RUNNING_STATES, UP_STATES
from . import dropins, gate, instances
from .base import Action, Change, Context, Step, StepFailed, unchanged
from .generation import ready_now
from .pending import RESTART_MARKS, clear_pending, mark_pending, pending_reasons

__all__ = ["PENDING", "ServiceStep", "decide", "mark_pending"]



@dataclass(frozen=True)
class ServicePlan:
    actions: Tuple[str, ...]
    # several instances (or a migration between dispatch.service and them): see steps/instances.py
    scale: Optional[instances.ScalePlan] = None


def decide(unit: str, props: Dict[str, str], *, mode: str, changed: Collection[str], pending: Collection[str],
           unit_known: bool) -> Change[ServicePlan]:
    """The actions from ``systemctl show``'s answer (``props``, {} without systemd), what this run
    changed, what an earlier run left pending, and whether a unit file exists or will."""
    load = props.get("LoadState", "")
    active = props.get("ActiveState", "")
    if load in ("not-found", "") and not unit_known:
        if mode == "follow":
            return unchanged(f"{unit} is not installed: nothing to restart", {"actions": []})
        raise StepFailed(f"{unit} is not installed", "run `dispatchctl install` (or `dispatchctl configure`) first")
    reasons = sorted({m for m in RESTART_MARKS if m in changed} | set(pending))
    actions: List[str] = []
    if "unit" in changed or props.get("NeedDaemonReload") == "yes" or load == "not-found":
        actions.append("daemon-reload")
    running = active in RUNNING_STATES
    if mode == "start" and props.get("UnitFileState") != "enabled":
        actions.append("enable")
    if running and reasons:
        actions.append("restart")
    elif not running and mode == "start":
        actions.append("start")
    state = f"{active or 'unknown'}/{props.get('SubState') or '-'}"
    report: Dict[str, object] = {"actions": actions, "state": state}
    if reasons:
        report["because"] = reasons
    if not props:
        report["note"] = "systemd is not running here: predicted as for a fresh host"
    if not actions:
        if not running and mode == "follow":
            return unchanged(f"{unit} is {state}: not restarted (`dispatchctl start` starts it)", report)
        return unchanged(f"{unit} {state}, enabled, pid {props.get('MainPID', '?')}", report)
    because = f" ({', '.join(reasons)} changed)" if "restart" in actions else ""
    return Change([Action(", ".join(actions), unit, because)], ServicePlan(tuple(actions)),
                  report=report)


def gated(ctx: Context, change: Change[ServicePlan], facts: InstanceFacts) -> Change[ServicePlan]:
    """What the health gate will do about the starts and restarts ``change`` plans (a dry run
    predicts it): the ready timeout, and whether a failure rolls back (only to a generation that
    runs ready now, not with --no-rollback)."""
    plan = change.plan
    if plan is None:
        return change
    starts = plan.scale.start + plan.scale.restart if plan.scale else \
        tuple(a for a in plan.actions if a in ("start", "restart"))
    if not starts:
        return change
    timeout = gate.ready_timeout(ctx)
    running = facts.running()
    ready = bool(running) and ready_now(running)
    rollback = "off (--no-rollback)" if ctx.settings.no_rollback else \
        "to the generation running now" if ready else "none: dispatch does not run ready now"
    change.report["gate"] = {"ready_timeout_s": timeout, "rollback": rollback}
    how = "rolled back unless" if ready and not ctx.settings.no_rollback else "must be"
    last = change.actions[-1]
    change.actions[-1] = replace(last, note=f"{last.note}; {how} ready within {timeout:.0f}s")
    return change


class ServiceStep(Step[ServicePlan]):
    """``start`` mode (install, start): reload, enable, start or restart.
    ``follow`` mode (build, configure): reload and restart a *running* service after a change;
    it never starts or enables one."""

    name = "service"
    title = "Service"

    def __init__(self, mode: str = "start") -> None:
        if mode not in ("start", "follow"):
            raise ValueError(mode)
        self.mode = mode

    def check(self, ctx: Context) -> Change[ServicePlan]:
        facts = instances.installed_instances(ctx)
        count = ctx.settings.instances or facts.configured or 1
        if instances.in_use(facts, count):
            return gated(ctx, self._check_instances(ctx, facts, count), facts)
        return gated(ctx, self._check_single(ctx), facts)

    def _check_single(self, ctx: Context) -> Change[ServicePlan]:
        props: Dict[str, str] = ctx.systemd.show() if ctx.facts.systemd_pid1 else {}
        if not props and not ctx.dry_run:
            raise StepFailed("systemctl show answered nothing: is systemd running?",
                             "run dispatchctl on a host booted with systemd")
        active = props.get("ActiveState", "")
        started = int(props.get("ExecMainStartTimestampMonotonic") or 0) if active == "active" else 0
        unit_known = "unit" in ctx.changed or ctx.host_path(ctx.settings.unit_path).exists()
        return decide(ctx.systemd.unit, props, mode=self.mode, changed=ctx.changed,
                      pending=pending_reasons(ctx, started), unit_known=unit_known)

    def _check_instances(self, ctx: Context, facts: InstanceFacts, count: int) -> Change[ServicePlan]:
        s = ctx.settings
        if not ctx.facts.systemd_pid1 and not ctx.dry_run:
            raise StepFailed("systemd is not running here", "run dispatchctl on a host booted with systemd")
        wanted_file = s.template_path if count > 1 else s.unit_path
        if not ctx.host_path(wanted_file).exists() and "unit" not in ctx.changed:
            if self.mode == "follow":
                return unchanged(f"{wanted_file} is not installed: nothing to restart", {"actions": []})
            raise StepFailed(f"{wanted_file} is not installed", "run `dispatchctl install` (or `dispatchctl "
                             f"configure --instances {count}`) first")
        stale = s.unit_path if count > 1 else s.template_path
        change = instances.decide(count, facts, mode=self.mode, changed=ctx.changed, pending=pending_reasons(ctx),
                                  stale_file=stale if ctx.host_path(stale).exists() else None)
        if not change.needed:
            return unchanged(change.summary, change.report)
        scale = change.the_plan()
        if scale.remove:  # a migration between the shapes: the operator's drop-ins go along
            carry = dropins.plan_carry(ctx, count)
            scale = replace(scale, carry=carry)
            change.actions[:0] = dropins.actions(carry)
        return Change(change.actions, ServicePlan((), scale), report=change.report)

    def apply(self, ctx: Context, change: Change[ServicePlan]) -> str:
        sd = ctx.systemd
        plan = change.the_plan()
        if plan.scale is not None:
            message = instances.apply(ctx, plan.scale)
            clear_pending(ctx)
            return message
        done: List[str] = []
        if "enable" in plan.actions:
            # `systemctl enable` reloads the manager itself after creating the links: a separate
            # daemon-reload first would be a second full reload (0.1 to 0.25 s each). Never
            # `enable --no-reload`: systemd keeps the UnitFileState it last computed until a reload,
            # so a unit looked at before (a reinstall) would still say "disabled" to the next run
            sd.enable()
            if "daemon-reload" in plan.actions and sd.show().get("NeedDaemonReload") == "yes":
                sd.daemon_reload()
            done.append("reloaded systemd, enabled" if "daemon-reload" in plan.actions else "enabled")
        elif "daemon-reload" in plan.actions:
            sd.daemon_reload()
            done.append("reloaded systemd")
        verb = "restart" if "restart" in plan.actions else "start" if "start" in plan.actions else ""
        if verb:
            done.append(self._start(ctx, verb))
        return ", ".join(done)

    def _start(self, ctx: Context, verb: str) -> str:
        """Start or restart the unit, through the health gate (steps/gate.py)."""
        sd = ctx.systemd
        sd.reset_failed()  # a unit that failed or hit its start limit refuses a plain start
        started = sd.start_and_wait(verb, [sd.unit], timeout=gate.ready_timeout(ctx))
        props = started.states[0] if len(started.states) == 1 else sd.show()
        if started.ok and props.get("Type") != "notify" and props.get("ActiveState") == "active":
            props = self._settle(ctx, props)
        if not started.ok or props.get("ActiveState") not in UP_STATES:
            stuck = started.not_ready(named=False, mask=ctx.runner.shown) if started.stuck or started.timed_out else ""
            raise gate.not_ready(ctx, self._failure(ctx, verb, props, stuck), [sd.unit])
        clear_pending(ctx)
        gate.passed(ctx, keep=not ctx.returning)
        return f"{verb}ed (pid {props.get('MainPID', '?')})"

    @staticmethod
    def _settle(ctx: Context, props: Dict[str, str], seconds: float = SIMPLE_SETTLE_S) -> Dict[str, str]:
        """A Type=simple service is 'active' as soon as it was forked: make sure its main process
        did not die straight away: it is watched in /proc (no systemctl call per look) until it
        has run ``seconds`` since systemd started it (both clocks are CLOCK_MONOTONIC); then
        systemd's view, waited for a moment when the process ended. ``props``: systemd's view
        right after the start."""
        pid = props.get("MainPID", "0")
        started = props.get("ExecMainStartTimestampMonotonic", "")
        now = time.monotonic()
        deadline = min(int(started) / 1e6, now) + seconds if started.isdigit() and started != "0" else now + seconds
        alive = process_alive(pid)
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = process_alive(pid)
        props = ctx.systemd.show()
        settle = time.monotonic() + 2.0  # systemd may not have noticed the exit yet
        while not alive and props.get("MainPID") == pid and props.get("ActiveState") == "active" \
                and time.monotonic() < settle:
            time.sleep(0.02)
            props = ctx.systemd.show()
        if not alive and props.get("ActiveState") == "active" and props.get("MainPID") == pid:
            props = dict(props, ActiveState="failed", SubState=f"main process {pid} exited")
        return props

    @staticmethod
    def _failure(ctx: Context, verb: str, props: Dict[str, str], stuck: str = "") -> str:
        state = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')} (result {props.get('Result', '?')})"
        if stuck:
            return f"{ctx.systemd.unit} did not become ready: {stuck}"
        return f"{ctx.systemd.unit} failed to {verb}: it is {state}"


def process_alive(pid: str) -> bool:
    """Whether process ``pid`` (a MainPID: "0" when none) runs and is no zombie."""
    if not pid.isdigit() or pid == "0":
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")
