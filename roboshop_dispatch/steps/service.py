"""Step 6: the service. ``daemon-reload`` only after the unit changed; enable; start when stopped;
restart only when the unit, the environment file or the binary changed.

What changed comes from ``Context.changed`` (the marks ``unit``, ``envfile``, ``binary`` set by
the config and build steps, in check mode too, so a dry run predicts exactly what the real run
does). A change that a run made but could not follow with its restart (the run failed in
between, or ``build``/``configure`` ran while the service was stopped) is remembered in
/run/dispatchctl/restart-pending, written *before* the file changes: the next run restarts then.
It lives in /run because a reboot starts the service fresh anyway. systemd's own
``NeedDaemonReload`` covers a unit written without a reload the same way.

One ``systemctl show`` call reads every property the step needs.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Tuple

from .base import Change, Context, Step, StepFailed

PENDING = Path("/run/dispatchctl/restart-pending")
RESTART_MARKS = ("unit", "envfile", "binary")
PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "NeedDaemonReload", "MainPID",
              "Result", "Type", "ExecMainStartTimestampMonotonic")
ACTIVE_STATES = ("active", "activating", "reloading")
START_TIMEOUT = 45.0  # seconds to wait for READY=1 (a cluster list is tried host by host)


def mark_pending(ctx: Context, reason: str) -> None:
    """Record, before a restart-relevant file changes, that the service must be restarted."""
    path = ctx.host_path(PENDING)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = pending_reasons(ctx)
    if reason not in existing:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(reason + "\n")


def pending_reasons(ctx: Context, started_usec: int = 0) -> List[str]:
    """What a change left pending. Nothing when the running process started after the marker was
    written (someone restarted it by hand: it already runs the new files)."""
    path = ctx.host_path(PENDING)
    try:
        reasons = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln]
        written = path.stat().st_mtime
    except OSError:
        return []
    if started_usec:
        written_monotonic = time.monotonic() - (time.time() - written)
        if started_usec / 1e6 > written_monotonic:
            return []
    return reasons


def clear_pending(ctx: Context) -> None:
    with contextlib.suppress(FileNotFoundError):
        ctx.host_path(PENDING).unlink()


class ServiceStep(Step):
    """``start`` mode (install, start): reload, enable, start or restart.
    ``follow`` mode (build, configure): reload and restart a *running* service after a change;
    it never starts or enables one."""

    name = "service"
    title = "Service"

    def __init__(self, mode: str = "start") -> None:
        if mode not in ("start", "follow"):
            raise ValueError(mode)
        self.mode = mode

    def check(self, ctx: Context) -> Change:
        unit = ctx.systemd.unit
        props: Dict[str, str] = ctx.systemd.show(PROPERTIES) if ctx.facts.systemd_pid1 else {}
        load = props.get("LoadState", "")
        active = props.get("ActiveState", "")
        will_write_unit = "unit" in ctx.changed
        if not props and not ctx.dry_run:
            raise StepFailed("systemctl show answered nothing: is systemd running?",
                             "run dispatchctl on a host booted with systemd")
        if load in ("not-found", "") and not will_write_unit and not ctx.host_path(ctx.settings.unit_path).exists():
            if self.mode == "follow":
                return Change(False, f"{unit} is not installed: nothing to restart", report={"actions": []})
            raise StepFailed(f"{unit} is not installed",
                             "run `dispatchctl install` (or `dispatchctl configure`) first")
        started = int(props.get("ExecMainStartTimestampMonotonic") or 0) if active == "active" else 0
        reasons = sorted({m for m in RESTART_MARKS if m in ctx.changed} | set(pending_reasons(ctx, started)))
        actions: List[str] = []
        if will_write_unit or props.get("NeedDaemonReload") == "yes" or load == "not-found":
            actions.append("daemon-reload")
        running = active in ACTIVE_STATES
        if self.mode == "start" and props.get("UnitFileState") != "enabled":
            actions.append("enable")
        if running and reasons:
            actions.append("restart")
        elif not running and self.mode == "start":
            actions.append("start")
        state = f"{active or 'unknown'}/{props.get('SubState') or '-'}"
        report: Dict[str, object] = {"actions": actions, "state": state}
        if reasons:
            report["because"] = reasons
        if not props:
            report["note"] = "systemd is not running here: predicted as for a fresh host"
        if not actions:
            if not running and self.mode == "follow":
                return Change(False, f"{unit} is {state}: not restarted (`dispatchctl start` starts it)",
                              report=report)
            return Change(False, f"{unit} {state}, enabled, pid {props.get('MainPID', '?')}", report=report)
        because = f" ({', '.join(reasons)} changed)" if "restart" in actions else ""
        return Change(True, ", ".join(actions) + f" {unit}{because}",
                      data={"actions": actions, "failed": active == "failed"}, report=report)

    def apply(self, ctx: Context, change: Change) -> str:
        sd = ctx.systemd
        actions: List[str] = change.data["actions"]  # type: ignore[assignment]
        done: List[str] = []
        if "enable" in actions:
            # `systemctl enable` reloads the manager itself after creating the links: a separate
            # daemon-reload first would be a second full reload (a quarter second each)
            sd.runner.run(["systemctl", "enable", "--quiet", sd.unit])
            if "daemon-reload" in actions and sd.show(["NeedDaemonReload"]).get("NeedDaemonReload") == "yes":
                sd.daemon_reload()
            done.append("reloaded systemd, enabled" if "daemon-reload" in actions else "enabled")
        elif "daemon-reload" in actions:
            sd.daemon_reload()
            done.append("reloaded systemd")
        verb = "restart" if "restart" in actions else "start" if "start" in actions else ""
        if verb:
            if change.data.get("failed"):
                sd.reset_failed()  # a unit that hit its start limit refuses a plain start
            ok, stderr, stuck = self._start_and_wait(ctx, verb)
            props = sd.show(PROPERTIES)
            if ok and props.get("Type") != "notify" and props.get("ActiveState") == "active":
                props = self._settle(ctx)
            if not ok or props.get("ActiveState") not in ("active", "reloading"):
                raise StepFailed(self._failure(ctx, verb, props, stderr, stuck),
                                 "run `dispatchctl check` for a diagnosis (`dispatchctl check-rabbitmq` for the "
                                 "broker side), fix the cause, then run `dispatchctl install` again")
            clear_pending(ctx)
            done.append(f"{verb}ed (pid {props.get('MainPID', '?')})")
        return ", ".join(done)

    @staticmethod
    def _start_and_wait(ctx: Context, verb: str) -> Tuple[bool, str, str]:
        """``systemctl start|restart`` waits until the service reports READY (Type=notify). A
        consumer that cannot reach or log in to the broker keeps retrying and never does: systemd
        would hold the job for TimeoutStartSec (90 s). The consumer says so in its sd_notify
        STATUS (``StatusText``: "...; retrying in N s"), so watch that while systemctl waits and
        give up at once with the reason. Returns (ok, systemctl's stderr, the stuck status)."""
        sd = ctx.systemd
        argv = ["systemctl", verb, sd.unit]
        sd.runner.calls.append(tuple(argv))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + START_TIMEOUT
        stuck = ""
        poll = 0.05
        while True:
            try:
                _, err = proc.communicate(timeout=poll)
                return proc.returncode == 0, err, ""
            except subprocess.TimeoutExpired:
                pass
            poll = min(poll * 2, 0.4)
            status = sd.show(["StatusText", "ActiveState"])
            if "retrying" in status.get("StatusText", "") or time.monotonic() > deadline:
                stuck = status.get("StatusText", "") or f"not ready after {START_TIMEOUT:.0f}s"
                break
        proc.kill()  # only our client: the start job itself stays with systemd
        proc.communicate()
        return False, "", stuck

    @staticmethod
    def _settle(ctx: Context, seconds: float = 1.0) -> Dict[str, str]:
        """A Type=simple service is 'active' at once; make sure it did not die straight away."""
        deadline = time.monotonic() + seconds
        props = ctx.systemd.show(PROPERTIES)
        while time.monotonic() < deadline and props.get("ActiveState") == "active":
            time.sleep(0.1)
            props = ctx.systemd.show(PROPERTIES)
        return props

    @staticmethod
    def _failure(ctx: Context, verb: str, props: Dict[str, str], stderr: str, stuck: str = "") -> str:
        state = f"{props.get('ActiveState', '?')}/{props.get('SubState', '?')} (result {props.get('Result', '?')})"
        res = ctx.systemd.runner.run(["journalctl", "-u", ctx.systemd.unit, "-n", "6", "--no-pager", "-o", "cat"],
                                     check=False, timeout=15)
        lines = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("-- ")]
        log = ("\nlast log lines:\n  " + "\n  ".join(lines)) if lines else ""
        if stuck:
            return f"{ctx.systemd.unit} did not become ready: {stuck}{log}"
        return f"{ctx.systemd.unit} failed to {verb}: it is {state}{log}"
