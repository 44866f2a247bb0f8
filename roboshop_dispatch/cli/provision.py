"""``dispatchctl install | build | configure | start``: provision the host, step by step.

Every option is validated before anything is touched (exit 2, one line naming the option); then
the host is checked (OS family; root and systemd unless ``--dry-run``: exit 1 with the reason);
then the steps run in order and stop at the first failure (exit 1, the step named with what to
run next).
"""

from __future__ import annotations

from typing import Callable, Optional

from ..settings import AmqpSettings, Settings, SettingsError
from . import options as opt
from .app import app


def execute(command: str, make_settings: Callable[[], Settings], *, dry_run: bool, diff: bool,
            as_json: bool) -> int:
    """Validate, then run the command's plan (see runplan.run_plan). Returns the exit code."""
    try:
        settings = make_settings()
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None

    from ..steps.plan import plan, preflight
    from .runplan import run_plan

    return run_plan(command, plan(command), settings, preflight=lambda facts: preflight(facts, dry_run=dry_run),
                    dry_run=dry_run, diff=diff, as_json=as_json)


@app.command()
def install(
    amqp_host: Optional[str] = opt.AmqpHost,
    amqp_port: str = opt.AmqpPort,
    amqp_vhost: str = opt.AmqpVhost,
    amqp_user: str = opt.AmqpUser,
    amqp_pass_file: Optional[str] = opt.AmqpPassFile,
    amqp_pass: Optional[str] = opt.AmqpPass,
    user: str = opt.User,
    app_dir: str = opt.AppDir,
    flavour: str = opt.Flavour,
    artifact: str = opt.Artifact,
    sha256: Optional[str] = opt.Sha256,
    insecure: bool = opt.Insecure,
    error_percent: str = opt.ErrorPercent,
    instances: Optional[str] = opt.Instances,
    queue_type: str = opt.QueueType,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Every step of the manual procedure: packages, user, app dir, build, unit + settings, start."""
    def make() -> Settings:
        return opt.settings(host=amqp_host, port=amqp_port, vhost=amqp_vhost, user=amqp_user,
                            pass_file=amqp_pass_file, pass_value=amqp_pass, service_user=user, app_dir=app_dir,
                            flavour=flavour, artifact=artifact, error_percent=error_percent, sha256=sha256,
                            insecure=insecure, instances=instances, queue_type=queue_type)

    opt.finish(execute("install", make, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
def configure(
    amqp_host: Optional[str] = opt.AmqpHost,
    amqp_port: str = opt.AmqpPort,
    amqp_vhost: str = opt.AmqpVhost,
    amqp_user: str = opt.AmqpUser,
    amqp_pass_file: Optional[str] = opt.AmqpPassFile,
    amqp_pass: Optional[str] = opt.AmqpPass,
    user: str = opt.User,
    app_dir: str = opt.AppDir,
    flavour: str = opt.Flavour,
    error_percent: str = opt.ErrorPercent,
    instances: Optional[str] = opt.Instances,
    queue_type: str = opt.QueueType,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Write the systemd unit and the environment file; restart a running service they changed."""
    def make() -> Settings:
        return opt.settings(host=amqp_host, port=amqp_port, vhost=amqp_vhost, user=amqp_user,
                            pass_file=amqp_pass_file, pass_value=amqp_pass, service_user=user, app_dir=app_dir,
                            flavour=flavour, error_percent=error_percent, instances=instances,
                            queue_type=queue_type)

    opt.finish(execute("configure", make, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
def build(
    app_dir: str = opt.AppDir,
    flavour: str = opt.Flavour,
    artifact: str = opt.Artifact,
    sha256: Optional[str] = opt.Sha256,
    insecure: bool = opt.Insecure,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Put /app/dispatch in place (the zipapp, or a go build); restart a running service it changed."""
    def make() -> Settings:
        return Settings.build(amqp=AmqpSettings.placeholder(), app_dir=app_dir, flavour=flavour, artifact=artifact,
                              sha256=sha256, insecure=insecure)

    opt.finish(execute("build", make, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
def start(
    dry_run: bool = opt.DryRun,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Reload systemd if the unit changed, enable, start (or restart after a pending change); every
    configured instance (the count `install --instances` recorded)."""
    def make() -> Settings:
        return Settings.build(amqp=AmqpSettings.placeholder())

    opt.finish(execute("start", make, dry_run=dry_run, diff=False, as_json=json_output))
