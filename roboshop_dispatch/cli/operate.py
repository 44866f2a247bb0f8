"""``dispatchctl status | check | check-rabbitmq | logs | uninstall``: what on-call runs.

Imported on every ``dispatchctl`` start, so everything heavy (rich, pika, psutil) is imported
inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import typer

from ..layout import APP_DIR, ENV_FILE, SERVICE_USER
from ..settings import SettingsError
from . import options as opt
from .app import app
from .common import INVOCATION
from .output import console as _console
from .output import error, print_json

# -- check-rabbitmq ----------------------------------------------------------------------------


def resolve_amqp(
    *, host: Optional[str], port: Optional[str], vhost: Optional[str], user: Optional[str],
    pass_file: Optional[str], env_file: Path, pass_value: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Tuple[Any, Any]:
    """The AMQP settings to check and a lazy password: each setting from its option, else its
    DISPATCHCTL_* variable, else what is installed (as the consumer reads it: its defaults), else
    the default (sources.resolve). The password (asked for only at the login check):
    --amqp-pass-file, --amqp-pass, $DISPATCHCTL_AMQP_PASS_FILE, $DISPATCHCTL_AMQP_PASS, the
    installed one, a hidden prompt on a terminal. Raises SettingsError naming what is wrong."""
    import os

    from ..sources import COMMAND_KNOBS, LazyPassword, build_settings, installed_password, password_given, resolve

    env = os.environ if environ is None else environ
    found, why = opt.installed_settings(env_file)
    given = {"amqp_hosts": host, "amqp_port": port, "amqp_vhost": vhost, "amqp_user": user}
    resolved = resolve(COMMAND_KNOBS["check-rabbitmq"], given, env, found, installed_missing=why)
    opt.warn_if_pass_on_command_line(pass_value)
    secret, source = password_given(pass_file, pass_value, env)
    if secret is None:
        secret, source = installed_password(found)
    ask = opt._prompt if sys.stdin.isatty() else None
    return build_settings(resolved).amqp, LazyPassword(secret, source, ask, why)


ANSI = {"ok": "32", "warn": "33", "fail": "1;31", "skip": "2"}


def finding_lines(findings: List[Any], mask: Callable[[str], str]) -> List[Tuple[str, str, str]]:
    """(status, title, summary) per line of the findings table: a run of skipped checks with the
    same reason is one line ("9 checks"), naming them."""
    out: List[Tuple[str, str, str]] = []
    i = 0
    while i < len(findings):
        f = findings[i]
        j = i
        while (f.status == "skip" and j + 1 < len(findings) and findings[j + 1].status == "skip"
               and findings[j + 1].summary == f.summary):
            j += 1
        if j > i:
            names = ", ".join(g.title for g in findings[i:j + 1])
            out.append(("skip", f"{j - i + 1} checks", f"{mask(f.summary)}: {names}"))
        else:
            out.append((f.status, f.title, mask(f.summary)))
        i = j + 1
    return out


def wrap(text: str, first: str, rest: str, width: int) -> str:
    """``first`` + ``text``, wrapped at word boundaries to ``width`` (0: not wrapped), later lines
    starting with ``rest``; a word longer than the line (a URL, a path) is never split."""
    import textwrap

    if width <= len(first) + 20:
        return first + text.replace("\n", "\n" + rest)
    lines: List[str] = []
    for n, paragraph in enumerate(text.splitlines() or [""]):
        lines.extend(textwrap.wrap(paragraph, width, initial_indent=first if n == 0 else rest,
                                   subsequent_indent=rest, break_long_words=False, break_on_hyphens=False)
                     or [first if n == 0 else rest])
    return "\n".join(lines)


def print_findings(report: Any, *, title: str, mask: Callable[[str], str], verbose: bool = False) -> None:
    """The findings as an aligned text table, then each diagnosis with its cause and fix.

    Plain text on purpose: it pastes into a ticket as it is, and leaving rich out saves a third of
    the command's start-up time (these commands run while something is on fire). On a terminal:
    colours (never with $NO_COLOR) and text wrapped at word boundaries to its width; into a pipe:
    each line as long as its text."""
    import os
    import shutil

    out = sys.stdout
    tty = out.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    width = shutil.get_terminal_size((120, 24)).columns if tty else 0

    def paint(text: str, status: str) -> str:
        return f"\x1b[{ANSI[status]}m{text}\x1b[0m" if colour and status in ANSI else text

    rows = [] if INVOCATION.quiet else finding_lines(report.findings, mask)  # -q: the diagnoses only
    title_width = max((len(t) for _, t, _ in rows), default=10)
    lines = [] if INVOCATION.quiet else [title, ""]
    indent = " " * (2 + 6 + title_width + 2)
    for status, name, summary in rows:
        text = wrap(summary, indent, indent, width)[len(indent):]
        lines.append(f"  {paint(status.ljust(4), status)}  {name.ljust(title_width)}  {text}")
    for f in report.findings:
        if f.status not in ("fail", "warn") or not f.diagnosis:
            continue
        lines.append("")
        lines.append(paint(wrap(f"{'FAIL' if f.status == 'fail' else 'WARN'}: {mask(f.diagnosis)}", "", "  ", width),
                           f.status))
        if f.issue:
            lines.append(wrap(f.issue, "  manual's common issue: ", "    ", width))
        if f.cause:
            lines.append(wrap(mask(f.cause), "  cause: ", " " * 9, width))
        if f.fix:
            lines.append(wrap(mask(f.fix), "  fix:   ", " " * 9, width))
        if verbose and f.traceback:
            lines.append("  " + mask(f.traceback).rstrip("\n").replace("\n", "\n  "))
    counts = report.counts()
    summary = (f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)"
               f"{', ' + str(counts['skip']) + ' skipped' if counts['skip'] else ''} in {report.elapsed_s:.2f}s")
    if report.issues:
        summary += " — common issues: " + ", ".join(report.issues)
    if not INVOCATION.quiet:
        lines.append("")
        lines.append(paint(wrap(summary, "", "  ", width), "ok" if report.ok else "fail"))
    if lines:
        out.write("\n".join(lines).lstrip("\n") + "\n")
    out.flush()


@app.command("check-rabbitmq")
def check_rabbitmq(
    amqp_host: Optional[str] = typer.Option(
        None, "--amqp-host", metavar="HOST[,HOST...]",
        help="RabbitMQ host(s). Else $DISPATCHCTL_AMQP_HOST, else the installed AMQP_HOST."),
    amqp_port: Optional[str] = typer.Option(
        None, "--amqp-port", metavar="PORT",
        help="RabbitMQ port. Else $DISPATCHCTL_AMQP_PORT, else installed, else 5672."),
    amqp_vhost: Optional[str] = typer.Option(
        None, "--amqp-vhost", metavar="VHOST",
        help="Virtual host. Else $DISPATCHCTL_AMQP_VHOST, else installed, else /."),
    amqp_user: Optional[str] = typer.Option(
        None, "--amqp-user", metavar="USER",
        help="RabbitMQ user. Else $DISPATCHCTL_AMQP_USER, else installed (the consumer's default when the "
             "environment file sets none), else roboshop."),
    amqp_pass_file: Optional[str] = opt.AmqpPassFile,
    amqp_pass: Optional[str] = opt.AmqpPass,
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
    broker unless --declare. The password is asked for only when the login is reached. Exit 0 when
    no check fails (warnings are shown, not failures), 1 otherwise."""
    try:
        amqp, password = resolve_amqp(host=amqp_host, port=amqp_port, vhost=amqp_vhost, user=amqp_user,
                                      pass_file=amqp_pass_file, pass_value=amqp_pass, env_file=Path(env_file))
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None

    from ..diagnostics import check_rabbitmq as run_checks
    from ..redact import Redactor

    report = run_checks(amqp, declare=declare, budget=max(0.5, timeout), password=password)
    redactor = Redactor([password.value.reveal()] if password.value else [])
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
    user: str = typer.Option(SERVICE_USER, "--user", help="The service user the unit must run as."),
    app_dir: str = typer.Option(str(APP_DIR), "--app-dir", help="Where /app/dispatch lives."),
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


Row = Tuple[str, str, str]  # (key, value, style: "" or "ok"/"warn"/"fail")


def status_rows(doc: Dict[str, Any]) -> List[Row]:
    """What ``status`` shows, as (key, value, style) rows: one renderer for a terminal (a panel)
    and one for a pipe (``key: value`` lines)."""
    from ..status import human_bytes, human_duration

    if doc.get("systemd") is False:
        return [("systemd", doc["error"]["message"], "fail"),
                ("unit file", "present" if doc.get("unit_file_present") else "absent", "")]
    if not doc["installed"]:
        return [("unit", f"{doc['unit']} is not installed", "fail"),
                ("next", "dispatchctl install --amqp-host HOST --amqp-pass-file FILE", "")]
    state = f"{doc['active_state']} ({doc['sub_state']})"
    if doc["result"] and doc["result"] != "success":
        state += f", result {doc['result']}"
    rows: List[Row] = [("state", state, "ok" if doc["running"] else "fail"), ("enabled", doc["enabled"] or "-", ""),
                       ("main PID", str(doc["main_pid"] or "-"), ""), ("uptime", human_duration(doc["uptime_s"]), ""),
                       ("restarts", str(doc["restarts"]), "")]
    proc = doc.get("process") or {}
    if proc and "error" not in proc:
        rows += [("runs as", proc["user"], "fail" if proc["user"] == "root" else ""),
                 ("memory", f"{human_bytes(proc['rss_bytes'])} RSS", ""),
                 ("CPU", f"{proc['cpu_percent']:.2f}% average ({proc['cpu_seconds']:.2f}s since start)", "")]
    else:
        rows.append(("runs as", f"User={doc['unit_user'] or '(root)'} (no process)", ""))
    binary = doc["binary"]
    rows.append(("binary", f"{binary['path']} ({binary['flavour'] or 'missing'})", "" if binary["exists"] else "fail"))
    config = doc["config"]
    if "hosts" in config:
        source = f" (from the {config['password_source']})" if config.get("password_source") else ""
        rows.append(("RabbitMQ", f"{','.join(config['hosts'])}:{config['port']} vhost {config['vhost']} "
                                 f"user {config['user']} password {config['password']}{source}", ""))
        rows.append(("queue type", config.get("queue_type") or "classic", ""))
    if doc.get("status_text"):
        rows.append(("systemd status", doc["status_text"], ""))
    if doc.get("delivery_path") or binary["flavour"] == "bundled":
        rows.append(("delivery path", doc.get("delivery_path") or "unknown", ""))
    if config.get("error"):
        rows.append(("config", f"{config['path']}: {config['error']}", "warn"))
    queue = doc.get("queue")
    if queue is not None:
        if "error" in queue:
            rows.append(("orders queue", f"unknown: {queue['error']}", "warn"))
        else:
            rows.append(("orders queue", f"{queue['messages']} waiting, {queue['consumers']} consumer(s)",
                         "warn" if not queue["consumers"] else ""))
    return rows + instance_rows(doc)


def print_status(doc: Dict[str, Any]) -> None:
    """A rich panel on a terminal; ``key: value`` lines into a pipe (no box, no fixed width)."""
    rows = status_rows(doc)
    logs = doc.get("logs") or []
    if not sys.stdout.isatty():
        width = max(len(k) for k, _, _ in rows)
        lines = [f"{k + ':':<{width + 1}} {v}" for k, v, _ in rows]
        if logs:
            lines += ["", f"last {len(logs)} log line(s):", *logs]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        return
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    styles = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    console = _console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value, style in rows:
        grid.add_row(key, Text(value, style=styles.get(style, "")))
    good = bool(doc.get("running"))
    console.print(Panel(grid, title="dispatch", title_align="left", border_style="green" if good else "red"))
    if logs:
        console.print(Text(f"last {len(logs)} log line(s):", style="bold"))
        for line in logs:
            console.print(Text(line))


def instance_rows(doc: Dict[str, Any]) -> List[Row]:
    """One row per instance when the template is in use (or a stray unit runs beside the one)."""
    from ..status import human_bytes

    instances = doc.get("instances") or []
    if len(instances) < 2 and all(r["unit"] == doc["unit"] for r in instances):
        return []
    rows: List[Row] = [("instances", f"{doc.get('configured_instances') or 0} configured", "")]
    for r in instances:
        orders = "" if r["orders_handled"] is None else f", {r['orders_handled']} orders handled"
        extra = "" if r["configured"] else " (not configured)"
        text = (f"{r['active_state']} ({r['sub_state'] or '-'}), pid {r['main_pid'] or '-'}, "
                f"{human_bytes(r['rss_bytes'])} RSS{orders}{extra}")
        rows.append((f"  {r['unit']}", text, "ok" if r["active_state"] == "active" and r["configured"] else "fail"))
    return rows


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
    """The service at a glance. Exit 0 running, 3 not running, 4 not installed or no systemd on
    this host (like systemctl is-active)."""
    from ..status import exit_code, gather, no_systemd_doc, systemd_running

    if not systemd_running():
        doc = no_systemd_doc()
    else:
        tty = sys.stdout.isatty() and not json_output
        doc = gather(lines=max(0, lines), env_file=Path(env_file) if env_file else None,
                     preload=(_import_rich,) if tty else ())
    code = exit_code(doc)
    if json_output:
        print_json({"command": "status", "ok": code == 0, **doc})
    elif not INVOCATION.quiet:
        print_status(doc)
    opt.finish(code)


# -- logs --------------------------------------------------------------------------------------


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

    from ..host import child_environment

    doc: Dict[str, Any] = {"command": "logs", "unit": argv[2], "lines": []}  # the service (and its instances)
    try:
        proc = subprocess.run([*argv, "-q"], capture_output=True, text=True, errors="replace", timeout=60,
                              stdin=subprocess.DEVNULL, env=child_environment())
    except (OSError, subprocess.SubprocessError) as exc:
        doc["error"] = {"kind": "internal" if not isinstance(exc, FileNotFoundError) else "no-systemd",
                        "message": f"journalctl: {exc}"}
        print_json(doc)
        return opt.EXIT_CHECK_FAILED
    doc["lines"] = [mask(line) for line in proc.stdout.splitlines()]
    doc["ok"] = proc.returncode == 0
    if proc.returncode != 0:
        reason = proc.stderr.strip() or f"journalctl exited {proc.returncode}"
        doc["error"] = {"kind": "journal", "message": mask(reason)}
    print_json(doc)
    return opt.EXIT_OK if proc.returncode == 0 else opt.EXIT_CHECK_FAILED


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
