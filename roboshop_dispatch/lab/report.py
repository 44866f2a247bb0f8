"""What ``lab up`` reports: its phases, each timed as it finishes, and the lab it left up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .state import LabState

NAME_WIDTH = 8
OUTCOME_WIDTH = 36


@dataclass(frozen=True)
class Phase:
    name: str      # rootfs, broker, hosts, install, orders, status
    outcome: str   # what it did: "cached", "3 booted", "5 published, 5 dispatched"
    seconds: float


def format_phase(phase: Phase) -> str:
    """One aligned line: ``rootfs  cached                 0.0 s`` (never wraps: the outcome is
    one line, cut at its first line break)."""
    outcome = phase.outcome.splitlines()[0] if phase.outcome else ""
    return f"{phase.name:<{NAME_WIDTH}}{outcome:<{OUTCOME_WIDTH}}{max(phase.seconds, 0.0):6.1f} s"


@dataclass
class LabReport:
    state_dir: str
    already_up: bool = False
    cleaned_stale: bool = False
    phases: List[Phase] = field(default_factory=list)
    state: Optional[LabState] = None
    status_text: str = ""  # `dispatchctl status` inside host 1 (installed labs)

    def document(self) -> Dict[str, Any]:
        """The members of the ``lab up`` JSON document (the envelope is the CLI's)."""
        state = self.state
        return {
            "changed": not self.already_up,
            "cleaned_stale": self.cleaned_stale,
            "state_dir": self.state_dir,
            "phases": [{"name": p.name, "outcome": p.outcome, "duration_s": round(p.seconds, 3)} for p in self.phases],
            "hosts": hosts_document(state),
            "broker": broker_document(state),
            "installed": bool(state and state.installed),
            "status": self.status_text,
        }


def hosts_document(state: Optional[LabState]) -> List[Dict[str, Any]]:
    return [{"name": h.name, "ssh_port": h.ssh_port, "nspawn_pid": h.nspawn_pid, "leader_pid": h.leader_pid}
            for h in (state.hosts if state else [])]


def broker_document(state: Optional[LabState]) -> Optional[Dict[str, Any]]:
    b = state.broker if state else None
    if b is None:
        return None
    return {"host": "127.0.0.1", "port": b.port, "node": b.node, "user": b.user, "pid": b.pid, "dir": b.dir}
