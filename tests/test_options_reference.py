"""docs/reference/options.md is generated from the one declaration of the settings
(roboshop_dispatch/knobs.py): it must be current, and say what the CLI really offers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from roboshop_dispatch import knobs
from roboshop_dispatch.cli.output.reference import reference

REPO = Path(__file__).resolve().parents[1]
DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")


def test_the_options_reference_is_current():
    shown = (REPO / "docs/reference/options.md").read_text()
    assert shown == reference(), "docs/reference/options.md is not current: run scripts/options-reference"


def test_every_command_offers_exactly_the_declared_options():
    """The options each command's --help lists are those the declaration gives it (generated, so
    this holds unless a command declares one of its own by hand)."""
    setting_options = {k.option for k in knobs.OPTIONS}
    for command in knobs.COMMANDS:
        res = subprocess.run([DISPATCHCTL, command, "--help"], capture_output=True, text=True, timeout=60,
                             env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
        assert res.returncode == 0, res.stderr
        listed = {word.rstrip(",") for line in res.stdout.splitlines() if line.startswith("  -")
                  for word in line.split() if word.startswith("--")}
        assert listed & setting_options == {k.option for k in knobs.options_of(command)}, command
