"""``dispatchctl logs``: the service's journal (and its instances'), every password masked."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import typer

from ..errors import ErrorKind, ExitStatus
from ..layout import ENV_FILE
from . import options as opt
from .app import app
from .output import error, print_json


@app.command()
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(50, "--lines", "-n", help="How many recent lines."),
    json_output: bool = typer.Option(False, "--json", help="Print the lines as one JSON document (not with -f)."),
    env_file: Optional[str] = opt.EnvFileOfUnit,
) -> None:
    """The service's journal (journalctl -u dispatch), with the AMQP password masked."""

    from ..facts.installed import read_settings
    from ..redact import Redactor
    from ..systemd import UNIT

    if json_output and follow:
        raise opt.usage_error("--json prints one document: it cannot be combined with --follow")
    # every password the installation holds (credential, environment file), as the consumer reads them
    mask = Redactor(read_settings(Path(env_file) if env_file else ENV_FILE, interpret=False).secrets()).text
    # and every instance's (--instances N > 1 runs dispatch@1..N)
    argv = ["journalctl", "-u", UNIT, "-u", "dispatch@*.service", "--no-pager", "-n", str(max(0, lines))] + \
        (["-f"] if follow else [])
    opt.finish(_journal_document(argv, mask) if json_output else _stream_journal(argv, mask, follow))


def _journal_document(argv: List[str], mask: Callable[[str], str]) -> int:
    """``logs --json``: the lines (masked) in one document; journalctl's exit code."""
    import subprocess

    from ..host import child_environment, traced_end, traced_start

    doc: Dict[str, Any] = {"command": "logs", "unit": argv[2], "lines": []}  # the service (and its instances)
    started = traced_start([*argv, "-q"])  # -vv: $ journalctl ...
    try:
        proc = subprocess.run([*argv, "-q"], capture_output=True, text=True, errors="replace", timeout=60,
                              stdin=subprocess.DEVNULL, env=child_environment())
        traced_end([*argv, "-q"], proc.returncode, started)
    except (OSError, subprocess.SubprocessError) as exc:
        doc["error"] = {"kind": ErrorKind.INTERNAL if not isinstance(exc, FileNotFoundError) else ErrorKind.NO_SYSTEMD,
                        "message": f"journalctl: {exc}"}
        print_json(doc)
        return ExitStatus.FAILED
    doc["lines"] = [mask(line) for line in proc.stdout.splitlines()]
    doc["ok"] = proc.returncode == 0
    if proc.returncode != 0:
        reason = proc.stderr.strip() or f"journalctl exited {proc.returncode}"
        doc["error"] = {"kind": ErrorKind.JOURNAL, "message": mask(reason)}
    print_json(doc)
    return ExitStatus.OK if proc.returncode == 0 else ExitStatus.FAILED


def _stream_journal(argv: List[str], mask: Callable[[str], str], follow: bool) -> int:
    """Copy journalctl's output, masked. SIGINT/SIGTERM (Ctrl-C ends `-f`) stop journalctl, and the
    copy ends at its last line: an interrupt never lands half-way through our own code."""
    import signal
    import subprocess

    from ..host import child_environment, traced_end, traced_start

    procs: List[subprocess.Popen] = []
    stopped: List[int] = []

    def stop(signum: int, frame: Any) -> None:
        stopped.append(signum)
        for proc in procs:
            proc.terminate()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    started = traced_start(argv)  # -vv: $ journalctl ...
    try:
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                      errors="replace", bufsize=1, env=child_environment()))
    except FileNotFoundError:
        error("journalctl not found: is this a systemd host?")
        return ExitStatus.FAILED
    proc = procs[0]
    if stopped:
        proc.terminate()
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stdout.write(mask(line))
            if follow:
                sys.stdout.flush()
    except BrokenPipeError:  # `dispatchctl logs | head`
        proc.terminate()
        proc.wait()
        return 0
    code = proc.wait()
    traced_end(argv, code, started)  # -vvv: its exit status and time
    interrupted = code in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM)
    return 0 if stopped or (follow and interrupted) else code
