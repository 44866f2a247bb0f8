"""The systemctl / journalctl / systemd-analyze adapter, and the one reader of ``systemctl show``.

- :data:`PROPERTIES`: every property dispatchctl reads, asked for in one list;
  :func:`parse_show` the one parser of the answer (one block per unit).
- :data:`RUNNING_STATES` / :data:`UP_STATES`: what "running" means, once.
- :meth:`Systemd.start_and_wait`: the one start (or restart) that waits for READY=1 and gives up
  early, with the reason, on a consumer that says it is retrying; :data:`START_TIMEOUT`.

Everything goes through a Runner.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .host import Runner
from .layout import READY_TIMEOUT_S
from .layout import UNIT_NAME as UNIT

# every property of a dispatch unit dispatchctl reads (status, check, the service steps)
PROPERTIES = (
    "Id", "LoadState", "ActiveState", "SubState", "Result", "UnitFileState", "MainPID", "NRestarts", "User",
    "ExecStart", "EnvironmentFiles", "FragmentPath", "DropInPaths", "Type", "ExecMainStatus", "ExecMainCode",
    "ActiveEnterTimestamp", "ExecMainStartTimestampMonotonic", "NeedDaemonReload", "StatusText",
)
# ActiveState of a unit that runs: a start leaves it be, a stop stops it
RUNNING_STATES = ("active", "activating", "reloading", "deactivating")
# ActiveState of a unit whose start succeeded: up, not on its way up (or down)
UP_STATES = ("active", "reloading")
# seconds to wait for READY=1 of the units a start waits for, unless told (steps/gate.py: --ready-timeout)
START_TIMEOUT = float(READY_TIMEOUT_S)


def parse_show(text: str) -> List[Dict[str, str]]:
    """``systemctl show [UNIT...] --property=...``: one dict per unit (blocks separated by an empty line)."""
    blocks: List[Dict[str, str]] = []
    for block in text.split("\n\n"):
        values: Dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        if values:
            blocks.append(values)
    return blocks


@dataclass(frozen=True)
class Started:
    """What ``systemctl start|restart`` came to: ``ok``; else the job's error (``job_error``), the
    units whose consumer says it is retrying (``stuck``: unit, StatusText), the units not up after
    a job that succeeded (``down``: unit, ActiveState/SubState), or no answer in time."""

    ok: bool
    job_error: str = ""
    stuck: Tuple[Tuple[str, str], ...] = ()
    down: Tuple[Tuple[str, str], ...] = ()
    timed_out: bool = False
    waited: float = START_TIMEOUT  # the timeout it was given
    states: Tuple[Dict[str, str], ...] = ()  # after a job that succeeded: each unit's properties then

    def not_ready(self, *, named: bool = True, mask: Callable[[str], str] = str) -> str:
        """Why the units did not become ready: what the stuck ones say (each after its unit's name
        unless ``named=False``; ``mask``: what shows the service's own words), or the time waited."""
        said = [f"{unit}: {mask(text)}" if named else mask(text) for unit, text in self.stuck]
        return "; ".join(said) or f"not ready within {self.waited:.0f}s (--ready-timeout)"


class Systemd:
    def __init__(self, runner: Optional[Runner] = None, unit: str = UNIT) -> None:
        self.runner = runner or Runner(timeout=90)
        self.unit = unit

    # -- state --------------------------------------------------------------------------------
    def show(self) -> Dict[str, str]:
        """This unit's :data:`PROPERTIES` ({} when systemctl answers nothing)."""
        blocks = self.show_units([self.unit])
        return blocks[0] if blocks else {}

    def show_units(self, units: Sequence[str]) -> List[Dict[str, str]]:
        """The :data:`PROPERTIES` of each of ``units``, in one ``systemctl show``."""
        res = self.runner.run(["systemctl", "show", *units, "--property=" + ",".join(PROPERTIES)],
                              check=False, timeout=30)
        return parse_show(res.stdout)

    def service_users(self) -> Dict[str, str]:
        """Every loaded service unit (running or not) and its ``User=`` ('' for root), in one
        ``systemctl list-units`` and one ``systemctl show``."""
        listed = self.runner.run(["systemctl", "list-units", "--type=service", "--all", "--plain", "--no-legend",
                                  "--no-pager"], check=False, timeout=30)
        units = [line.split()[0] for line in listed.stdout.splitlines() if line.split()]
        units = [u for u in units if u.endswith(".service")]
        if not units:
            return {}
        res = self.runner.run(["systemctl", "show", *units, "--property=Id,User"], check=False, timeout=30)
        return {b["Id"]: b.get("User", "") for b in parse_show(res.stdout) if b.get("Id")}

    # -- changes ------------------------------------------------------------------------------
    def daemon_reload(self) -> None:
        self.runner.run(["systemctl", "daemon-reload"])

    def enable(self) -> None:
        self.runner.run(["systemctl", "enable", "--quiet", self.unit])

    def reset_failed(self) -> None:
        self.runner.run(["systemctl", "reset-failed", self.unit], check=False)

    def start_and_wait(self, verb: str, units: Sequence[str], timeout: float = START_TIMEOUT) -> Started:
        """``systemctl start|restart UNITS`` waits until each unit reports READY (Type=notify). A
        consumer that cannot reach or log in to the broker keeps retrying and never does: systemd
        would hold the job for TimeoutStartSec (90 s). The consumer says so in its sd_notify
        STATUS (``StatusText``: "...; retrying in N s"), so watch that while systemctl waits and
        give up at once with the reason; after a job that succeeded, every unit must be up."""
        proc = self.runner.spawn(["systemctl", verb, *units])
        deadline = time.monotonic() + timeout
        poll = 0.05
        while True:
            try:
                _, err = proc.communicate(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                pass
            poll = min(poll * 2, 0.4)
            stuck = tuple((b.get("Id", ""), b.get("StatusText", "")) for b in self.show_units(units)
                          if "retrying" in b.get("StatusText", ""))
            if stuck or time.monotonic() > deadline:
                proc.kill()  # only our client: the jobs stay with systemd
                proc.communicate()
                return Started(False, stuck=stuck, timed_out=not stuck, waited=timeout)
        if proc.returncode != 0:
            return Started(False, job_error=err.strip() or f"systemctl {verb} exited {proc.returncode}")
        states = tuple(self.show_units(units))
        down = tuple((b.get("Id", ""), f"{b.get('ActiveState', '')}/{b.get('SubState', '')}")
                     for b in states if b.get("ActiveState") not in UP_STATES)
        return Started(not down, down=down, states=states)

    # -- logs ---------------------------------------------------------------------------------
    def journal_lines(self, lines: int = 20) -> List[str]:
        argv = ["journalctl", "-u", self.unit, "-n", str(lines), "--no-pager", "-o", "short-iso"]
        res = self.runner.run(argv, check=False, timeout=15)
        return [ln for ln in res.stdout.splitlines() if not ln.startswith("-- ")]

    # -- offline analysis ---------------------------------------------------------------------
    def verify(self, unit_file: Path) -> Dict[str, object]:
        res = self.runner.run(["systemd-analyze", "verify", str(unit_file)], check=False, timeout=60)
        return {"ok": res.ok and not res.stderr.strip(), "returncode": res.returncode, "stderr": res.stderr}
