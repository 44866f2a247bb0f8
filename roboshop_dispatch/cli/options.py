"""Every CLI option, declared once, and how the options become validated Settings."""

from __future__ import annotations

import sys
from typing import NoReturn, Optional

import typer

from ..layout import APP_DIR, ENV_FILE, MAX_INSTANCES, SERVICE_USER
from ..settings import (
    DEFAULT_ARTIFACT,
    PASSWORD_ENV,
    AmqpSettings,
    Secret,
    Settings,
    SettingsError,
    parse_int,
    read_password,
)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

# -- provisioning -------------------------------------------------------------------------------
AmqpHost = typer.Option(None, "--amqp-host", metavar="HOST[,HOST...]",
                        help="RabbitMQ host (required): an IP, an RFC 1123 name, or a comma-separated cluster list.")
AmqpPort = typer.Option("5672", "--amqp-port", metavar="PORT", help="RabbitMQ port.")
AmqpVhost = typer.Option("/", "--amqp-vhost", help="RabbitMQ virtual host.")
AmqpUser = typer.Option("roboshop", "--amqp-user", help="RabbitMQ user.")
AmqpPassFile = typer.Option(
    None, "--amqp-pass-file",
    help=f"File holding the RabbitMQ password (else ${PASSWORD_ENV}, else a hidden prompt).",
)
AmqpPass = typer.Option(
    None, "--amqp-pass", help="The RabbitMQ password on the command line: visible in `ps`, prefer --amqp-pass-file.",
)
User = typer.Option(SERVICE_USER, "--user", help="The service user (a system account, created when missing).")
AppDir = typer.Option(str(APP_DIR), "--app-dir", help="Where /app/dispatch lives.")
Flavour = typer.Option("bundled", "--flavour", metavar="bundled|go",
                       help="bundled: a self-contained python zipapp (offline); go: the manual's go build.")
Artifact = typer.Option(DEFAULT_ARTIFACT, "--artifact", metavar="URL|PATH",
                        help="The go flavour's source zip (a URL or a local path).")
Sha256 = typer.Option(None, "--sha256", metavar="HEX",
                      help="The artifact's expected SHA-256 (64 hex digits): refused when it differs.")
Insecure = typer.Option(False, "--insecure", help="Allow an http:// artifact (no transport security).")
ErrorPercent = typer.Option("0", "--error-percent", metavar="0..100",
                            help="Share of orders logged as failed (DISPATCH_ERROR_PERCENT, for demos).")
Instances = typer.Option(
    None, "--instances", metavar=f"1..{MAX_INSTANCES}",
    help="Consumers on this host (default: as installed, 1 on a fresh host). 1 runs dispatch.service; "
         "N > 1 runs dispatch@1..N from the template dispatch@.service. A change starts/stops only the difference.")
QueueType = typer.Option("classic", "--queue-type", metavar="classic|quorum",
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
    return typer.Exit(EXIT_USAGE)


def _prompt() -> Optional[str]:
    if not sys.stdin.isatty():
        return None
    import getpass

    return getpass.getpass("RabbitMQ password: ")


def password(pass_file: Optional[str], pass_value: Optional[str]) -> Optional[Secret]:
    if pass_value is not None:
        from .output import warning

        warning("--amqp-pass is visible to every user in `ps`; use --amqp-pass-file or $DISPATCHCTL_AMQP_PASS")
    return read_password(
        pass_file=pass_file, pass_value=pass_value, prompt=(_prompt if sys.stdin.isatty() else None),
    )


def settings(
    *, host: Optional[str], port: str, vhost: str, user: str, pass_file: Optional[str],
    pass_value: Optional[str], service_user: str = SERVICE_USER, app_dir: str = str(APP_DIR),
    flavour: str = "bundled", artifact: str = DEFAULT_ARTIFACT, error_percent: str = "0",
    sha256: Optional[str] = None, insecure: bool = False, instances: Optional[str] = None,
    queue_type: str = "classic",
) -> Settings:
    """Validate every option (raises SettingsError naming the option) before anything runs; the
    password is asked for last, so a typo never costs a prompt."""
    if host is None:
        raise SettingsError("--amqp-host", "is required (the RabbitMQ host or a comma-separated list)")
    port_number = parse_int("--amqp-port", port)
    percent = parse_int("--error-percent", error_percent)

    def build(secret: Optional[Secret]) -> Settings:
        amqp = AmqpSettings.build(hosts=host, port=port_number, vhost=vhost, user=user, password=secret)
        return Settings.build(amqp=amqp, service_user=service_user, app_dir=app_dir, flavour=flavour,
                              artifact=artifact, error_percent=percent, sha256=sha256, insecure=insecure,
                              instances=instances, queue_type=queue_type)

    build(Secret("unused"))
    return build(password(pass_file, pass_value))


__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "SettingsError", "settings", "usage_error"]
