"""The systemctl / journalctl / systemd-analyze adapter. Everything goes through a Runner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Dict, List, Optional

from .host import Runner

UNIT = "dispatch.service"


class Systemd:
    def __init__(self, runner: Optional[Runner] = None, unit: str = UNIT) -> None:
        self.runner = runner or Runner(timeout=90)
        self.unit = unit

    # -- state --------------------------------------------------------------------------------
    def show(self, properties: Sequence[str]) -> Dict[str, str]:
        res = self.runner.run(
            ["systemctl", "show", self.unit, "--property=" + ",".join(properties)], check=False,
        )
        values: Dict[str, str] = {}
        for line in res.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        return values

    def is_active(self) -> bool:
        return self.runner.run(["systemctl", "is-active", "--quiet", self.unit], check=False).ok

    def main_pid(self) -> int:
        return int(self.show(["MainPID"]).get("MainPID", "0") or 0)

    # -- changes ------------------------------------------------------------------------------
    def daemon_reload(self) -> None:
        self.runner.run(["systemctl", "daemon-reload"])

    def enable(self) -> None:
        self.runner.run(["systemctl", "enable", self.unit])

    def disable(self) -> None:
        self.runner.run(["systemctl", "disable", self.unit])

    def start(self) -> None:
        self.runner.run(["systemctl", "start", self.unit])

    def stop(self) -> None:
        self.runner.run(["systemctl", "stop", self.unit])

    def restart(self) -> None:
        self.runner.run(["systemctl", "restart", self.unit])

    def reset_failed(self) -> None:
        self.runner.run(["systemctl", "reset-failed", self.unit], check=False)

    # -- logs ---------------------------------------------------------------------------------
    def journal_lines(self, lines: int = 20, since_invocation: bool = False) -> List[str]:
        argv = ["journalctl", "-u", self.unit, "-n", str(lines), "--no-pager", "-o", "short-iso"]
        res = self.runner.run(argv, check=False, timeout=15)
        return [ln for ln in res.stdout.splitlines() if not ln.startswith("-- ")]

    # -- offline analysis ---------------------------------------------------------------------
    def verify(self, unit_file: Path) -> Dict[str, object]:
        res = self.runner.run(["systemd-analyze", "verify", str(unit_file)], check=False, timeout=60)
        return {"ok": res.ok and not res.stderr.strip(), "returncode": res.returncode, "stderr": res.stderr}

