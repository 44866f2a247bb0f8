"""Every CLI option, declared once, and how the options become validated Settings."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, NoReturn, Optional, Tuple

import typer

from ..errors import ExitStatus
from ..layout import ENV_FILE, MAX_INSTANCES
from ..settings import PASSWORD_ENV, SettingsError, validate_password
from ..sources import PASS_FILE_ENV

if TYPE_CHECKING:
    from ..sources import Remembered, Resolved


# -- provisioning -------------------------------------------------------------------------------
# Every remembered setting defaults to None (not given): its value is then taken from its
# DISPATCHCTL_* variable, the installed files, or its default (sources.resolve), and --help says so.


def _remembered(name: str, *decls: str, help: str, metavar: Optional[str] = None) -> Any:
    from ..sources import KNOB

    knob = KNOB[name]
    default = "none" if knob.default is None else knob.default
    remembered = "the installed value, else " if knob.installed else ""
    return typer.Option(None, knob.option, *decls, metavar=metavar,
                        help=f"{help} Else ${knob.envvar}, else {remembered}{default}.")


AmqpHost = _remembered("amqp_hosts", metavar="HOST[,HOST...]",
                       help="RabbitMQ host: an IP, an RFC 1123 name, or a comma-separated cluster list.")
AmqpPort = _remembered("amqp_port", metavar="PORT", help="RabbitMQ port.")
AmqpVhost = _remembered("amqp_vhost", metavar="VHOST", help="RabbitMQ virtual host.")
AmqpUser = _remembered("amqp_user", metavar="USER", help="RabbitMQ user.")
AmqpPassFile = typer.Option(
    None, "--amqp-pass-file", metavar="FILE",
    help=f"File holding the RabbitMQ password. Else --amqp-pass, ${PASS_FILE_ENV}, ${PASSWORD_ENV}, the installed "
         "password, a hidden prompt on a terminal.",
)
AmqpPass = typer.Option(
    None, "--amqp-pass", help="The RabbitMQ password on the command line: visible in `ps`, prefer --amqp-pass-file.",
)
User = _remembered("service_user", metavar="USER", help="The service user (a system account, created when missing).")
AppDir = _remembered("app_dir", metavar="DIR", help="Where dispatch lives.")
Flavour = _remembered("flavour", metavar="bundled|go",
                      help="bundled: a self-contained python zipapp (offline); go: the manual's go build.")
Artifact = _remembered("artifact", metavar="URL|PATH", help="The go flavour's source zip (a URL or a local path).")
Sha256 = _remembered("artifact_sha256", metavar="HEX",
                     help="The artifact's expected SHA-256 (64 hex digits): refused when it differs.")
Insecure = typer.Option(False, "--insecure",
                        help="Allow an http:// artifact (no transport security). Else $DISPATCHCTL_INSECURE=1.")
ErrorPercent = _remembered("error_percent", metavar="0..100",
                           help="Share of orders logged as failed (DISPATCH_ERROR_PERCENT, for demos).")
Instances = _remembered(
    "instances", metavar=f"1..{MAX_INSTANCES}",
    help="Consumers on this host: 1 runs dispatch.service; N > 1 runs dispatch@1..N from the template "
         "dispatch@.service. A change starts/stops only the difference.")
QueueType = _remembered("queue_type", metavar="classic|quorum",
                        help="The orders queue's type (DISPATCH_QUEUE_TYPE): classic is the contract; "
                             "quorum survives the loss of a cluster node (bundled flavour only).")

# -- every command --------------------------------------------------------------------------------
JsonOutput = typer.Option(False, "--json", help="Print one JSON document instead of tables.")
Verbose = typer.Option(False, "--verbose", "-v", help="Also show the traceback of an internal error.")
DryRun = typer.Option(False, "--dry-run", "--check", help="Report what would change; change nothing.")
Diff = typer.Option(False, "--diff", help="Show unified diffs of the changes (passwords masked).")
Yes = typer.Option(False, "--yes", "-y", help="Do not ask before deleting (uninstall --purge).")
EnvFile = typer.Option(str(ENV_FILE), "--env-file", hidden=True, help="The installed environment file (for tests).")
EnvFileOfUnit = typer.Option(None, "--env-file", hidden=True,
                             help="The installed environment file (default: the unit's).")


def finish(code: int) -> NoReturn:
    """End the command with ``code`` (after flushing what it printed)."""
    sys.stdout.flush()
    raise typer.Exit(code)


def change_lock():
    """The host's lock for runs that change it (see host.change_lock), telling the user if it waits."""
    from ..host import change_lock as lock

    return lock(on_wait=lambda: typer.echo(
        "dispatchctl: waiting for another dispatchctl run on this host to finish…", err=True))


def usage_error(message: str) -> typer.Exit:
    """Print one line naming the bad option and return the exit (code 2) to raise."""
    from .output import error

    error(message)
    return typer.Exit(ExitStatus.USAGE)


def _prompt() -> Optional[str]:
    if not sys.stdin.isatty():
        return None
    import getpass

    return getpass.getpass("RabbitMQ password: ")


def warn_if_pass_on_command_line(pass_value: Optional[str]) -> None:
    if pass_value is not None:
        from .output import warning

        warning("--amqp-pass is visible to every user in `ps`; use --amqp-pass-file or $DISPATCHCTL_AMQP_PASS")


def installed_settings(env_file: Path = ENV_FILE) -> Tuple[Mapping[str, Remembered], str]:
    """What is installed (installed.remembered: the one parser), and why nothing could be read
    ('' when it could, or when nothing is installed)."""
    from ..facts.installed import read_settings
    from ..sources import remembered

    state = read_settings(env_file, interpret=False)
    why = state.env_unreadable() if state.env_error and state.env_file.kind != "missing" else ""
    return remembered(state), why


def resolved_settings(
    command: str, given: Dict[str, Optional[str]], *, pass_file: Optional[str] = None,
    pass_value: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
    installed: Optional[Tuple[Mapping[str, Remembered], str]] = None,
) -> Resolved:
    """Each setting of ``command`` from the option given, else DISPATCHCTL_*, else what is installed,
    else its default, all validated before the password is asked for (a typo never costs a
    prompt); then the password (for install and configure): given, else installed, else a prompt
    on a terminal. Raises SettingsError naming the source of a bad value."""
    from ..sources import (
        COMMAND_KNOBS,
        NEEDS_PASSWORD,
        PROMPT,
        Source,
        installed_password,
        no_password_error,
        password_given,
        resolve,
    )

    env = os.environ if environ is None else environ
    found, why = installed if installed is not None else installed_settings()
    resolved = resolve(COMMAND_KNOBS[command], given, env, found, installed_missing=why)
    if command not in NEEDS_PASSWORD:
        return resolved
    warn_if_pass_on_command_line(pass_value)
    secret, source = password_given(pass_file, pass_value, env)
    if secret is None:
        secret, source = installed_password(found)
    if secret is None and sys.stdin.isatty():
        text = _prompt()
        secret, source = (validate_password("password prompt", text), Source(PROMPT, PROMPT)) if text else (None, None)
    if secret is None:
        raise no_password_error(why)
    return replace(resolved, password=secret, password_source=source)


__all__ = ["SettingsError", "resolved_settings", "usage_error"]
