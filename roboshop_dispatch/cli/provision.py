"""``dispatchctl install | build | configure | start``: provision the host, step by step.

Every setting not given as an option is taken from its ``DISPATCHCTL_*`` variable, else from what
is installed, else its default (:mod:`roboshop_dispatch.sources`), and every value is validated
before anything is touched (exit 2, one line naming the option, variable or installed file); then
the host is checked (OS family; root and systemd unless ``--dry-run``: exit 1 with the reason);
then the steps run in order and stop at the first failure (exit 1, the step named with what to
run next). ``--dry-run`` also shows where each value came from.
"""

from __future__ import annotations

from typing import Dict, Optional

from ..settings import SettingsError
from . import options as opt
from .app import app


def execute(command: str, given: Dict[str, Optional[str]], *, pass_file: Optional[str] = None,
            pass_value: Optional[str] = None, dry_run: bool, diff: bool, as_json: bool) -> int:
    """Resolve and validate the settings, then run the command's plan (see runplan.run_plan).
    Returns the exit code."""
    from ..sources import build_settings

    try:
        resolved = opt.resolved_settings(command, given, pass_file=pass_file, pass_value=pass_value)
        settings = build_settings(resolved)
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None

    from ..steps.plan import plan, preflight
    from .output.settings import settings_text
    from .runplan import run_plan

    section = ("settings", resolved.document(), settings_text(resolved)) if dry_run else None
    return run_plan(command, plan(command), settings, preflight=lambda facts: preflight(facts, dry_run=dry_run),
                    dry_run=dry_run, diff=diff, as_json=as_json, section=section)


@app.command()
def install(
    amqp_host: Optional[str] = opt.AmqpHost,
    amqp_port: Optional[str] = opt.AmqpPort,
    amqp_vhost: Optional[str] = opt.AmqpVhost,
    amqp_user: Optional[str] = opt.AmqpUser,
    amqp_pass_file: Optional[str] = opt.AmqpPassFile,
    amqp_pass: Optional[str] = opt.AmqpPass,
    user: Optional[str] = opt.User,
    app_dir: Optional[str] = opt.AppDir,
    flavour: Optional[str] = opt.Flavour,
    artifact: Optional[str] = opt.Artifact,
    sha256: Optional[str] = opt.Sha256,
    insecure: bool = opt.Insecure,
    error_percent: Optional[str] = opt.ErrorPercent,
    instances: Optional[str] = opt.Instances,
    queue_type: Optional[str] = opt.QueueType,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Every step of the manual procedure: packages, user, app dir, build, unit + settings, start."""
    given = {"amqp_hosts": amqp_host, "amqp_port": amqp_port, "amqp_vhost": amqp_vhost, "amqp_user": amqp_user,
             "service_user": user, "app_dir": app_dir, "flavour": flavour, "artifact": artifact,
             "artifact_sha256": sha256, "insecure": "1" if insecure else None, "error_percent": error_percent,
             "instances": instances, "queue_type": queue_type}
    opt.finish(execute("install", given, pass_file=amqp_pass_file, pass_value=amqp_pass, dry_run=dry_run,
                       diff=diff, as_json=json_output))


@app.command()
def configure(
    amqp_host: Optional[str] = opt.AmqpHost,
    amqp_port: Optional[str] = opt.AmqpPort,
    amqp_vhost: Optional[str] = opt.AmqpVhost,
    amqp_user: Optional[str] = opt.AmqpUser,
    amqp_pass_file: Optional[str] = opt.AmqpPassFile,
    amqp_pass: Optional[str] = opt.AmqpPass,
    user: Optional[str] = opt.User,
    app_dir: Optional[str] = opt.AppDir,
    flavour: Optional[str] = opt.Flavour,
    error_percent: Optional[str] = opt.ErrorPercent,
    instances: Optional[str] = opt.Instances,
    queue_type: Optional[str] = opt.QueueType,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Write the systemd unit and the environment file; restart a running service they changed."""
    given = {"amqp_hosts": amqp_host, "amqp_port": amqp_port, "amqp_vhost": amqp_vhost, "amqp_user": amqp_user,
             "service_user": user, "app_dir": app_dir, "flavour": flavour, "error_percent": error_percent,
             "instances": instances, "queue_type": queue_type}
    opt.finish(execute("configure", given, pass_file=amqp_pass_file, pass_value=amqp_pass, dry_run=dry_run,
                       diff=diff, as_json=json_output))


@app.command()
def build(
    app_dir: Optional[str] = opt.AppDir,
    flavour: Optional[str] = opt.Flavour,
    artifact: Optional[str] = opt.Artifact,
    sha256: Optional[str] = opt.Sha256,
    insecure: bool = opt.Insecure,
    dry_run: bool = opt.DryRun,
    diff: bool = opt.Diff,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Put /app/dispatch in place (the zipapp, or a go build); restart a running service it changed."""
    given = {"app_dir": app_dir, "flavour": flavour, "artifact": artifact, "artifact_sha256": sha256,
             "insecure": "1" if insecure else None}
    opt.finish(execute("build", given, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
def start(
    dry_run: bool = opt.DryRun,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Reload systemd if the unit changed, enable, start (or restart after a pending change); every
    configured instance (the count `install --instances` recorded)."""
    opt.finish(execute("start", {}, dry_run=dry_run, diff=False, as_json=json_output))
