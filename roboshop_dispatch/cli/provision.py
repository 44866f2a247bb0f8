"""``dispatchctl install | build | configure | start``: provision the host, step by step.

Every option is validated before anything is touched (exit 2, one line naming the option); then
the host is checked (OS family; root and systemd unless ``--dry-run``: exit 1 with the reason);
then the steps run in order and stop at the first failure (exit 1, the step named with what to
run next).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import typer

from ..settings import DEFAULT_ARTIFACT, AmqpSettings, Settings, SettingsError, parse_int
from . import options as opt
from .app import app

UserOpt = typer.Option("roboshop", "--user", help="The service user (a system account, created when missing).")
AppDirOpt = typer.Option("/app", "--app-dir", help="Where /app/dispatch lives.")
FlavourOpt = typer.Option("bundled", "--flavour", metavar="bundled|go",
                          help="bundled: a self-contained python zipapp (offline); go: the manual's go build.")
ArtifactOpt = typer.Option(DEFAULT_ARTIFACT, "--artifact", metavar="URL|PATH",
                           help="The go flavour's source zip (a URL or a local path).")
ErrorPercentOpt = typer.Option("0", "--error-percent", metavar="0..100",
                               help="Share of orders logged as failed (DISPATCH_ERROR_PERCENT, for demos).")
PortOpt = typer.Option("5672", "--amqp-port", metavar="PORT", help="RabbitMQ port.")
HostOpt = typer.Option(None, "--amqp-host", metavar="HOST[,HOST...]",
                       help="RabbitMQ host (required): an IP, an RFC 1123 name, or a comma-separated cluster list.")


def _full_settings(host: Optional[str], port: str, vhost: str, amqp_user: str, pass_file: Optional[str],
                   pass_value: Optional[str], user: str, app_dir: str, flavour: str, artifact: str,
                   error_percent: str) -> Callable[[], Settings]:
    def build() -> Settings:
        if host is None:
            raise SettingsError("--amqp-host", "is required (the RabbitMQ host or a comma-separated list)")
        return opt.settings(
            host=host, port=parse_int("--amqp-port", port), vhost=vhost, user=amqp_user, pass_file=pass_file,
            pass_value=pass_value, service_user=user, app_dir=app_dir, flavour=flavour, artifact=artifact,
            error_percent=parse_int("--error-percent", error_percent),
        )
    return build


def execute(command: str, make_settings: Callable[[], Settings], *, dry_run: bool, diff: bool,
            as_json: bool) -> int:
    """Validate, check the host, run the command's steps, show the results. Returns the exit code."""
    try:
        settings = make_settings()
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None

    from ..host import HostFacts
    from ..steps.base import run_steps
    from ..steps.plan import PLANS, PreflightError, context, plan, preflight
    from .render import Progress, show

    facts = HostFacts.gather()
    try:
        preflight(facts, dry_run=dry_run)
    except PreflightError as exc:
        typer.echo(f"dispatchctl: error: {exc}", err=True)
        return opt.EXIT_CHECK_FAILED
    lock = None if dry_run else opt.change_lock()
    try:
        started = time.monotonic()
        steps = plan(command)
        ctx = context(settings, dry_run=dry_run, facts=facts)
        with Progress(not as_json, len(steps), command) as progress:
            results = run_steps(steps, ctx, progress.on_start, progress.on_done)
        document = show(command, results, dry_run=dry_run, planned=PLANS[command],
                        duration_s=time.monotonic() - started, as_json=as_json, show_diff=diff)
    finally:
        if lock is not None:
            lock.close()
    return opt.EXIT_OK if document["ok"] else opt.EXIT_CHECK_FAILED


@app.command()
def install(
    amqp_host: Optional[str] = HostOpt,
    amqp_port: str = PortOpt,
    amqp_vhost: str = opt.AmqpVhost,
    amqp_user: str = opt.AmqpUser,
    amqp_pass_file: Optional[str] = opt.AmqpPassFile,
    amqp_pass: Optional[str] = opt.AmqpPass,
    user: str = UserOpt,
    app_dir: str = AppDirOpt,
    flavour: str = FlavourOpt,
    artifact: str = ArtifactOpt,
    error_percent: str = ErrorPercentOpt,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Every step of the manual procedure: packages, user, app dir, build, unit + settings, start."""
    make = _full_settings(amqp_host, amqp_port, amqp_vhost, amqp_user, amqp_pass_file, amqp_pass,
                          user, app_dir, flavour, artifact, error_percent)
    opt.finish(execute("install", make, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
def configure(
    amqp_host: Optional[str] = HostOpt,
    amqp_port: str = PortOpt,
    amqp_vhost: str = opt.AmqpVhost,
    amqp_user: str = opt.AmqpUser,
    amqp_pass_file: Optional[str] = opt.AmqpPassFile,
    amqp_pass: Optional[str] = opt.AmqpPass,
    user: str = UserOpt,
    app_dir: str = AppDirOpt,
    flavour: str = FlavourOpt,
    error_percent: str = ErrorPercentOpt,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Write the systemd unit and the environment file; restart a running service they changed."""
    make = _full_settings(amqp_host, amqp_port, amqp_vhost, amqp_user, amqp_pass_file, amqp_pass,
                          user, app_dir, flavour, DEFAULT_ARTIFACT, error_percent)
    opt.finish(execute("configure", make, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
def build(
    app_dir: str = AppDirOpt,
    flavour: str = FlavourOpt,
    artifact: str = ArtifactOpt,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Put /app/dispatch in place (the zipapp, or a go build); restart a running service it changed."""
    def make() -> Settings:
        return Settings.build(amqp=AmqpSettings.placeholder(), app_dir=app_dir, flavour=flavour, artifact=artifact)

    opt.finish(execute("build", make, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
def start(
    dry_run: bool = opt.DryRun,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Reload systemd if the unit changed, enable, start (or restart after a pending change)."""
    def make() -> Settings:
        return Settings.build(amqp=AmqpSettings.placeholder())

    opt.finish(execute("start", make, dry_run=dry_run, diff=False, as_json=json_output))
