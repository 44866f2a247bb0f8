"""``dispatchctl status | check | check-rabbitmq | logs | uninstall``: what on-call runs.

Imported on every ``dispatchctl`` start, so everything heavy (rich, pika, psutil) is imported
inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import typer

from ..layout import ENV_FILE
from ..settings import PASSWORD_ENV, SettingsError
from . import options as opt
from .app import app
from .output import console as _console
from .output import error, print_json

# -- check-rabbitmq ----------------------------------------------------------------------------


def resolve_amqp(
    *, host: Optional[str], port: Optional[str], vhost: Optional[str], user: Optional[str],
    pass_file: Optional[str], env_file: Path,
):
    """The AMQP settings to check: each option given wins, else the installed configuration, else
    the contract's default. The password: --amqp-pass-file, $DISPATCHCTL_AMQP_PASS, the installed
    AMQP_PASS, a hidden prompt on a TTY. Raises SettingsError naming what is wrong or missing."""
    import os

    from ..installed import read_settings
    from ..settings import AmqpSettings, parse_int, read_password, validate_hosts, validate_port

    # the options given are validated first, so that a typo never costs a password prompt
    if host is not None:
        validate_hosts("--amqp-host", host)
    port_value = validate_port("--amqp-port", parse_int("--amqp-port", port)) if port is not None else None
    installed: Dict[str, str] = {}
    installed_password = None
    need_installed = host is None or (pass_file is None and os.environ.get(PASSWORD_ENV) is None)
    if need_installed:  # the settings the consumer reads (its defaults; the password from its credential)
        state = read_settings(env_file)
        if state.env_error and host is None:
            raise SettingsError("--amqp-host", f"not given, and {state.env_unreadable()}")
        installed, installed_password = state.amqp_values(), state.password
    password = read_password(pass_file=pass_file)
    if password is None and installed_password:
        password = installed_password
    if password is None and sys.stdin.isatty():
        password = read_password(pass_file=None, prompt=opt._prompt)
    if port_value is None:
        port_value = parse_int("AMQP_PORT", installed.get("AMQP_PORT") or "5672")
    return AmqpSettings.build(
        hosts=host if host is not None else installed.get("AMQP_HOST", ""),
        port=port_value,
        vhost=vhost if vhost is not None else (installed.get("AMQP_VHOST") or "/"),
        user=user if user is not None else (installed.get("AMQP_USER") or "roboshop"),
        password=password,
    )


ANSI = {"ok": "32", "warn": "33", "fail": "1;31", "skip": "2"}


def print_findings(report: Any, *, title: str, mask: Callable[[str], str], verbose: bool = False) -> None:
    """The findings as an aligned text table, then each diagnosis with its cause and fix.

    Plain text on purpose: it pastes into a ticket as it is, and leaving rich out saves a third of
    the command's start-up time (these commands run while something is on fire). Colours only on
    a terminal, and never with $NO_COLOR."""
    import os
    import shutil
    import textwrap

    out = sys.stdout
    tty = out.isatty() and not os.environ.get("NO_COLOR")
    width = shutil.get_terminal_size((120, 24)).columns if tty else 0

    def paint(text: str, status: str) -> str:
        return f"\x1b[{ANSI[status]}m{text}\x1b[0m" if tty and status in ANSI else text

    title_width = max(len(f.title) for f in report.findings) if report.findings else 10
    lines = [title, ""]
    indent = 2 + 6 + title_width + 2
    for f in report.findings:
        summary = mask(f.summary)
        if width > indent + 20:
            wrapped = textwrap.wrap(summary, width - indent) or [""]
            summary = ("\n" + " " * indent).join(wrapped)
        lines.append(f"  {paint(f.status.ljust(4), f.status)}  {f.title.ljust(title_width)}  {summary}")
    for f in report.findings:
        if f.status not in ("fail", "warn") or not f.diagnosis:
            continue
        lines.append("")
        lines.append(paint(f"{'FAIL' if f.status == 'fail' else 'WARN'}: {mask(f.diagnosis)}", f.status))
        if f.issue:
            lines.append(f"  manual's common issue: {f.issue}")
        if f.cause:
            lines.append("  cause: " + mask(f.cause).replace("\n", "\n         "))
        if f.fix:
            lines.append("  fix:   " + mask(f.fix).replace("\n", "\n         "))
        if verbose and f.traceback:
            lines.append("  " + mask(f.traceback).rstrip("\n").replace("\n", "\n  "))
    counts = report.counts()
    summary = (f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)"
               f"{', ' + str(counts['skip']) + ' skipped' if counts['skip'] else ''} in {report.elapsed_s:.2f}s")
    if report.issues:
        summary += " — common issues: " + ", ".join(report.issues)
    lines.append("")
    lines.append(paint(summary, "ok" if report.ok else "fail"))
    out.write("\n".join(lines) + "\n")
    out.flush()


@app.command("check-rabbitmq")
def check_rabbitmq(
    amqp_host: Optional[str] = typer.Option(
        None, "--amqp-host", metavar="HOST[,HOST...]", help="RabbitMQ host(s) (default: the installed AMQP_HOST)."),
    amqp_port: Optional[str] = typer.Option(None, "--amqp-port", metavar="PORT",
                                            help="RabbitMQ port (default: installed, else 5672)."),
    amqp_vhost: Optional[str] = typer.Option(None, "--amqp-vhost", help="Virtual host (default: installed, else /)."),
    amqp_user: Optional[str] = typer.Option(None, "--amqp-user",
                                            help="RabbitMQ user (default: installed, else roboshop)."),
    amqp_pass_file: Optional[str] = typer.Option(
        None, "--amqp-pass-file", help=f"File holding the password (else ${PASSWORD_ENV}, else the installed one)."),
    declare: bool = typer.Option(False, "--declare",
                                 help="Declare the contract's exchange, queues and binding first (else nothing "
                                      "is ever created or changed)."),
    json_output: bool = opt.JsonOutput,
    verbose: bool = opt.Verbose,
    env_file: str = opt.EnvFile,
    timeout: float = typer.Option(4.0, "--timeout", hidden=True, help="Time budget in seconds."),
) -> None:
    """Can dispatch reach RabbitMQ and use its queue? Name, port, handshake, login, vhost,
    permissions, exchange, queue, binding, counts, latency: each with its fix. Changes nothing on the
    broker unless --declare. Exit 0 when no check fails (warnings are shown, not failures), 1 otherwise."""
    try:
        amqp = resolve_amqp(host=amqp_host, port=amqp_port, vhost=amqp_vhost, user=amqp_user,
                            pass_file=amqp_pass_file, env_file=Path(env_file))
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None

    from ..diagnostics import check_rabbitmq as run_checks
    from ..redact import Redactor

    report = run_checks(amqp, declare=declare, budget=max(0.5, timeout))
    redactor = Redactor([amqp.password.reveal()])
    target = amqp.masked()
    if json_output:
        print_json({"command": "check-rabbitmq", "target": target, **report.as_dict()}, redactor)
    else:
        hosts = ",".join(amqp.hosts)
        title = f"RabbitMQ {hosts}:{amqp.port} vhost {amqp.vhost} user {amqp.user} (password ********)"
        print_findings(report, mask=redactor.text, verbose=verbose, title=title)
    opt.finish(opt.EXIT_OK if report.ok else opt.EXIT_CHECK_FAILED)


# -- check -------------------------------------------------------------------------------------


@app.command()
def check(
    user: str = typer.Option("roboshop", "--user", help="The service user the unit must run as."),
    app_dir: str = typer.Option("/app", "--app-dir", help="Where /app/dispatch lives."),
    lines: int = typer.Option(10, "--lines", "-n", help="Log lines to show when the service is not running."),
    json_output: bool = opt.JsonOutput,
    verbose: bool = opt.Verbose,
    env_file: Optional[str] = opt.EnvFileOfUnit,
) -> None:
    """Host health, each item ok/warn/fail with its fix, then check-rabbitmq with the installed
    settings. Names the manual's common issues when it finds them. Exit 0 healthy, 1 not."""
    from ..diagnostics import check_host

    report, redactor = check_host(service_user=user, app_dir=Path(app_dir),
                                  env_file=Path(env_file) if env_file else None, log_lines=max(1, lines))
    if json_output:
        print_json({"command": "check", **report.as_dict()}, redactor)
    else:
        print_findings(report, mask=redactor.text, verbose=verbose, title="dispatchctl check")
    opt.finish(opt.EXIT_OK if report.ok else opt.EXIT_CHECK_FAILED)


# -- status ------------------------------------------------------------------------------------


def print_status(doc: Dict[str, Any]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from ..status import human_bytes, human_duration

    console = _console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    if not doc["installed"]:
        grid.add_row("unit", Text(f"{doc['unit']} is not installed", style="bold red"))
        grid.add_row("next", "dispatchctl install --amqp-host HOST --amqp-pass-file FILE")
        console.print(Panel(grid, title="dispatch", title_align="left", border_style="red"))
        return
    running = doc["running"]
    state = f"{doc['active_state']} ({doc['sub_state']})"
    if doc["result"] and doc["result"] != "success":
        state += f", result {doc['result']}"
    grid.add_row("state", Text(state, style="green" if running else "bold red"))
    grid.add_row("enabled", doc["enabled"] or "-")
    grid.add_row("main PID", str(doc["main_pid"] or "-"))
    grid.add_row("uptime", human_duration(doc["uptime_s"]))
    grid.add_row("restarts", str(doc["restarts"]))
    proc = doc.get("process") or {}
    if proc and "error" not in proc:
        grid.add_row("runs as", Text(proc["user"], style="bold red" if proc["user"] == "root" else ""))
        grid.add_row("memory", f"{human_bytes(proc['rss_bytes'])} RSS")
        grid.add_row("CPU", f"{proc['cpu_percent']:.2f}% average ({proc['cpu_seconds']:.2f}s since start)")
    else:
        grid.add_row("runs as", f"User={doc['unit_user'] or '(root)'} (no process)")
    binary = doc["binary"]
    grid.add_row("binary", Text(f"{binary['path']} ({binary['flavour'] or 'missing'})",
                                style="" if binary["exists"] else "bold red"))
    config = doc["config"]
    if "hosts" in config:
        source = f" (from the {config['password_source']})" if config.get("password_source") else ""
        grid.add_row("RabbitMQ", f"{','.join(config['hosts'])}:{config['port']} vhost {config['vhost']} "
                                 f"user {config['user']} password {config['password']}{source}")
        grid.add_row("queue type", config.get("queue_type") or "classic")
    if doc.get("status_text"):
        grid.add_row("systemd status", doc["status_text"])
    if doc.get("delivery_path") or binary["flavour"] == "bundled":
        grid.add_row("delivery path", doc.get("delivery_path") or "unknown")
    if config.get("error"):
        grid.add_row("config", Text(f"{config['path']}: {config['error']}", style="yellow"))
    queue = doc.get("queue")
    if queue is not None:
        if "error" in queue:
            grid.add_row("orders queue", Text(f"unknown: {queue['error']}", style="yellow"))
        else:
            grid.add_row("orders queue", Text(
                f"{queue['messages']} waiting, {queue['consumers']} consumer(s)",
                style="yellow" if not queue["consumers"] else ""))
    _instance_rows(grid, doc)
    console.print(Panel(grid, title="dispatch", title_align="left", border_style="green" if running else "red"))
    if doc["logs"]:
        console.print(Text(f"last {len(doc['logs'])} log line(s):", style="bold"))
        for line in doc["logs"]:
            console.print(Text(line))


def _instance_rows(grid: Any, doc: Dict[str, Any]) -> None:
    """One row per instance when the template is in use (or a stray unit runs beside the one)."""
    from rich.text import Text

    from ..status import human_bytes

    rows = doc.get("instances") or []
    if len(rows) < 2 and all(r["unit"] == doc["unit"] for r in rows):
        return
    grid.add_row("instances", f"{doc.get('configured_instances') or 0} configured")
    for r in rows:
        orders = "" if r["orders_handled"] is None else f", {r['orders_handled']} orders handled"
        extra = "" if r["configured"] else " (not configured)"
        text = (f"{r['active_state']} ({r['sub_state'] or '-'}), pid {r['main_pid'] or '-'}, "
                f"{human_bytes(r['rss_bytes'])} RSS{orders}{extra}")
        grid.add_row(f"  {r['unit']}", Text(text, style="green" if r["active_state"] == "active" and r["configured"]
                                            else "bold red"))


def _import_rich() -> None:
    import rich.console
    import rich.panel
    import rich.table
    import rich.text  # noqa: F401


@app.command()
def status(
    lines: int = typer.Option(10, "--lines", "-n", help="How many recent log lines to show."),
    json_output: bool = opt.JsonOutput,
    env_file: Optional[str] = opt.EnvFileOfUnit,
) -> None:
    """The service at a glance. Exit 0 running, 3 not running, 4 not installed (like systemctl is-active)."""
    from ..status import exit_code, gather

    doc = gather(lines=max(0, lines), env_file=Path(env_file) if env_file else None,
                 preload=() if json_output else (_import_rich,))
    if json_output:
        print_json(doc)
    else:
        print_status(doc)
    opt.finish(exit_code(doc))


# -- logs --------------------------------------------------------------------------------------


@app.command()
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    lines: int = typer.Option(50, "--lines", "-n", help="How many recent lines."),
    env_file: Optional[str] = opt.EnvFileOfUnit,
) -> None:
    """The service's journal (journalctl -u dispatch), with the AMQP password masked."""

    from ..installed import read_settings
    from ..redact import Redactor
    from ..systemd import UNIT

    # every password the installation holds (credential, environment file), as the consumer reads them
    mask = Redactor(read_settings(Path(env_file) if env_file else ENV_FILE, interpret=False).secrets()).text
    # and every instance's (--instances N > 1 runs dispatch@1..N)
    argv = ["journalctl", "-u", UNIT, "-u", "dispatch@*.service", "--no-pager", "-n", str(max(0, lines))] + \
        (["-f"] if follow else [])
    opt.finish(_stream_journal(argv, mask, follow))


def _stream_journal(argv: List[str], mask: Callable[[str], str], follow: bool) -> int:
    """Copy journalctl's output, masked. SIGINT/SIGTERM (Ctrl-C ends `-f`) stop journalctl, and the
    copy ends at its last line: an interrupt never lands half-way through our own code."""
    import signal
    import subprocess

    from ..host import child_environment

    procs: List[subprocess.Popen] = []
    stopped: List[int] = []

    def stop(signum: int, frame: Any) -> None:
        stopped.append(signum)
        for proc in procs:
            proc.terminate()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                      errors="replace", bufsize=1, env=child_environment()))
    except FileNotFoundError:
        error("journalctl not found: is this a systemd host?")
        return opt.EXIT_CHECK_FAILED
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
    interrupted = code in (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM)
    return 0 if stopped or (follow and interrupted) else code


# -- uninstall ---------------------------------------------------------------------------------


def _confirm_purge(settings: Any) -> bool:
    """Ask on a terminal before --purge deletes anything; False without one (then --yes is needed)."""
    if not sys.stdin.isatty():
        return False
    return typer.confirm(f"--purge deletes what dispatchctl created: the files it wrote in {settings.app_dir}, "
                         f"{settings.app_dir} itself when empty and created by it, and the user "
                         f"{settings.service_user} when it created that user and the user owns nothing else. "
                         "Continue?", default=False)


@app.command()
def uninstall(
    purge: bool = typer.Option(False, "--purge", help="Also remove what dispatchctl created in the app "
                               "directory, the directory when empty, and the service user it created."),
    user: str = typer.Option("roboshop", "--user", help="The service user (deleted only with --purge)."),
    app_dir: str = typer.Option("/app", "--app-dir", help="The app directory (see --purge)."),
    yes: bool = opt.Yes,
    dry_run: bool = opt.DryRun,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Stop and disable the service, remove the unit, the environment file, the credential and
    /app/dispatch. Keeps the user and the app directory unless --purge (which asks first, or needs
    --yes, and removes only what dispatchctl created). Idempotent."""
    from ..settings import AmqpSettings, Settings

    try:
        settings = Settings.build(amqp=AmqpSettings.placeholder(), service_user=user, app_dir=app_dir)
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None
    confirmed = yes or dry_run or not purge
    if not confirmed and not _confirm_purge(settings):
        raise opt.usage_error("--purge deletes files and possibly a user: add --yes to confirm "
                              "(or run it on a terminal to be asked); --dry-run shows what would go")

    from ..steps.uninstall import plan, preflight
    from .runplan import run_plan

    code = run_plan("uninstall", plan(purge), settings, dry_run=dry_run, diff=False, as_json=json_output,
                    preflight=lambda facts: preflight(is_root=facts.is_root, systemd_pid1=facts.systemd_pid1,
                                                      dry_run=dry_run),
                    confirmed=True)
    opt.finish(code)
