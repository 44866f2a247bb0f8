"""Options shared by several commands, and how they become validated Settings."""

from __future__ import annotations

import sys
from typing import NoReturn, Optional

import typer

from ..settings import (
    DEFAULT_ARTIFACT,
    AmqpSettings,
    Secret,
    Settings,
    SettingsError,
    read_password,
)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

AmqpHost = typer.Option(
    ..., "--amqp-host", help="RabbitMQ host: an IP, an RFC 1123 name, or a comma-separated cluster list."
)
AmqpHostOptional = typer.Option(None, "--amqp-host", help="RabbitMQ host (default: the installed configuration).")
AmqpPort = typer.Option(5672, "--amqp-port", help="RabbitMQ port.")
AmqpVhost = typer.Option("/", "--amqp-vhost", help="RabbitMQ virtual host.")
AmqpUser = typer.Option("roboshop", "--amqp-user", help="RabbitMQ user.")
AmqpPassFile = typer.Option(
    None, "--amqp-pass-file",
    help="File holding the RabbitMQ password (else $DISPATCHCTL_AMQP_PASS, else a hidden prompt).",
)
AmqpPass = typer.Option(
    None, "--amqp-pass", help="The RabbitMQ password on the command line: visible in `ps`, prefer --amqp-pass-file.",
)
JsonOutput = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
DryRun = typer.Option(False, "--dry-run", "--check", help="Report what would change; change nothing.")
Diff = typer.Option(False, "--diff", help="Show unified diffs of the changes (passwords masked).")


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
    typer.echo(f"dispatchctl: error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _prompt() -> Optional[str]:
    if not sys.stdin.isatty():
        return None
    import getpass

    return getpass.getpass("RabbitMQ password: ")


def password(pass_file: Optional[str], pass_value: Optional[str]) -> Optional[Secret]:
    if pass_value is not None:
        typer.echo("dispatchctl: warning: --amqp-pass is visible to every user in `ps`; "
                   "use --amqp-pass-file or $DISPATCHCTL_AMQP_PASS", err=True)
    return read_password(
        pass_file=pass_file, pass_value=pass_value, prompt=(_prompt if sys.stdin.isatty() else None),
    )


def settings(
    *, host: str, port: int, vhost: str, user: str, pass_file: Optional[str], pass_value: Optional[str],
    service_user: str = "roboshop", app_dir: str = "/app", flavour: str = "bundled",
    artifact: str = DEFAULT_ARTIFACT, error_percent: int = 0,
) -> Settings:
    """Validate every option (raises SettingsError naming the option) before anything runs."""
    # validate the cheap, non-interactive options first so a typo never costs a password prompt
    Settings.build(
        amqp=AmqpSettings.placeholder(), service_user=service_user,
        app_dir=app_dir, flavour=flavour, artifact=artifact, error_percent=error_percent,
    )
    AmqpSettings.build(hosts=host, port=port, vhost=vhost, user=user, password=Secret("unused"))
    amqp = AmqpSettings.build(
        hosts=host, port=port, vhost=vhost, user=user, password=password(pass_file, pass_value),
    )
    return Settings.build(
        amqp=amqp, service_user=service_user, app_dir=app_dir, flavour=flavour,
        artifact=artifact, error_percent=error_percent,
    )


__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "SettingsError", "settings", "usage_error"]
