"""``dispatchctl status``: the service at a glance (status.py gathers, output/status.py draws)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import options as opt
from .app import app
from .common import INVOCATION
from .output import print_json


@app.command()
def status(
    lines: int = typer.Option(10, "--lines", "-n", help="How many recent log lines to show."),
    json_output: bool = opt.JsonOutput,
    env_file: Optional[str] = opt.EnvFileOfUnit,
) -> None:
    """The service at a glance. Exit 0 running, 3 not running, 4 not installed or no systemd on
    this host (like systemctl is-active)."""
    from ..status import exit_code, gather, no_systemd_doc, systemd_running
    from .output.status import import_rich, print_status

    if not systemd_running():
        doc = no_systemd_doc()
    else:
        tty = sys.stdout.isatty() and not json_output
        doc = gather(lines=max(0, lines), env_file=Path(env_file) if env_file else None,
                     preload=(import_rich,) if tty else ())
    code = exit_code(doc)
    if json_output:
        print_json({"command": "status", "ok": code == 0, **doc})
    elif not INVOCATION.quiet:
        print_status(doc)
    opt.finish(code)
