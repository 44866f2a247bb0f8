"""``dispatchctl check-rabbitmq`` and ``dispatchctl check``: the findings, each with its fix.

Imported on every ``dispatchctl`` start, so everything heavy (pika, psutil) is imported inside the
commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import typer

from ..errors import ExitStatus
from ..settings import SettingsError
from . import options as opt
from .app import app
from .output import print_json
from .output.findings import print_findings


def resolve_amqp(
    *, host: Optional[str], port: Optional[str], vhost: Optional[str], user: Optional[str],
    pass_file: Optional[str], env_file: Path, pass_value: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None, queue_type: Optional[str] = None,
) -> Tuple[Any, Any, str]:
    """The AMQP settings to check, a lazy password and the queue type --declare declares an
    absent ``orders`` as: each setting from its option, else its
    DISPATCHCTL_* variable, else what is installed (as the consumer reads it: its defaults), else
    the default (sources.resolve). The password (asked for only at the login check):
    --amqp-pass-file, --amqp-pass, $DISPATCHCTL_AMQP_PASS_FILE, $DISPATCHCTL_AMQP_PASS, the
    installed one, a hidden prompt on a terminal. Raises SettingsError naming what is wrong."""
    import os

    from ..knobs import COMMAND_KNOBS
    from ..sources import build_settings, password, resolve

    env = os.environ if environ is None else environ
    found, why = opt.installed_settings(env_file)
    given = {"amqp_hosts": host, "amqp_port": port, "amqp_vhost": vhost, "amqp_user": user,
             "queue_type": queue_type}
    resolved = resolve(COMMAND_KNOBS["check-rabbitmq"], given, env, found, installed_missing=why)
    opt.warn_if_pass_on_command_line(pass_value)
    lazy = password(pass_file, pass_value, env, found, opt.prompt if sys.stdin.isatty() else None, why)
    settings = build_settings(resolved)
    return settings.amqp, lazy, settings.queue_type


@app.command("check-rabbitmq")
@opt.with_settings("check-rabbitmq")
def check_rabbitmq(
    given: Dict[str, Optional[str]],
    declare: bool = typer.Option(False, "--declare",
                                 help="Declare the contract's exchange, queues and binding first (else nothing "
                                      "is ever created or changed); a queue that exists keeps its type."),
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
        amqp, password, queue_type = resolve_amqp(
            host=given["amqp_hosts"], port=given["amqp_port"], vhost=given["amqp_vhost"], user=given["amqp_user"],
            pass_file=given["amqp_pass_file"], pass_value=given["amqp_pass"], env_file=Path(env_file),
            queue_type=given["queue_type"])
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None

    from ..diagnostics import check_rabbitmq as run_checks
    from ..redact import Redactor

    report = run_checks(amqp, declare=declare, budget=max(0.5, timeout), password=password, queue_type=queue_type)
    report = report.masked(Redactor([password.value.reveal()] if password.value else []).text)
    target = amqp.masked()
    if not password.value:  # never given nor asked for: the checks stopped before the login
        target["password"] = None
    if json_output:
        print_json({"command": "check-rabbitmq", "target": target, **report.as_dict()})
    else:
        hosts = ",".join(amqp.hosts)
        said = "password ********" if password.value else "no password given"
        title = f"RabbitMQ {hosts}:{amqp.port} vhost {amqp.vhost} user {amqp.user} ({said})"
        print_findings(report, verbose=verbose, title=title)
    opt.finish(ExitStatus.OK if report.ok else ExitStatus.FAILED)


@app.command()
@opt.with_settings("check")
def check(
    given: Dict[str, Optional[str]],
    lines: int = typer.Option(10, "--lines", "-n", help="Log lines to show when the service is not running."),
    json_output: bool = opt.JsonOutput,
    verbose: bool = opt.Verbose,
    env_file: Optional[str] = opt.EnvFileOfUnit,
) -> None:
    """Host health, each item ok/warn/fail with its fix, then check-rabbitmq with the installed
    settings. Names the manual's common issues when it finds them. Exit 0 healthy, 1 not."""
    from ..diagnostics import check_host

    report, redactor = check_host(service_user=str(given["service_user"]), app_dir=Path(str(given["app_dir"])),
                                  env_file=Path(env_file) if env_file else None, log_lines=max(1, lines))
    report = report.masked(redactor.text)
    if json_output:
        print_json({"command": "check", **report.as_dict()})
    else:
        print_findings(report, verbose=verbose, title="dispatchctl check")
    opt.finish(ExitStatus.OK if report.ok else ExitStatus.FAILED)
