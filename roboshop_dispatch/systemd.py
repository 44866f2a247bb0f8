"""The systemctl / journalctl / systemd-analyze adapter. Everything goes through a Runner."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Dict, List, Optional

from .host import Runner
from .layout import UNIT_NAME as UNIT


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

    # -- changes ------------------------------------------------------------------------------
    def daemon_reload(self) -> None:
        self.runner.run(["systemctl", "daemon-reload"])

    def enable(self) -> None:
        self.runner.run(["systemctl", "enable", "--quiet", self.unit])

    def disable(self) -> None:
        self.runner.run(["systemctl", "disable", self.unit])

    def stop(self) -> None:
        self.runner.run(["systemctl", "stop", self.unit])

    def start_job(self, verb: str) -> subprocess.Popen:
        """``systemctl start|restart`` in the background: the caller watches the unit while the
        job runs (a Type=notify start waits for READY=1)."""
        return self.runner.spawn(["systemctl", verb, self.unit])

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

