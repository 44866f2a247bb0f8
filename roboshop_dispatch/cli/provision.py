"""``dispatchctl install | build | configure | start``: provision the host, step by step.

Every setting not given as an option is taken from its ``DISPATCHCTL_*`` variable, else from what
is installed, else its default (:mod:`roboshop_dispatch.sources`), and every value is validated
before anything is touched (exit 2, one line naming the option, variable or installed file); then
the host is checked (OS family; root and systemd unless ``--dry-run``: exit 1 with the reason);
then the steps run in order and stop at the first failure (exit 1, the step named with what to
run next). ``--dry-run`` also shows where each value came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional

from ..settings import SettingsError
from . import options as opt
from .app import app

if TYPE_CHECKING:
    from ..settings import Settings
    from ..sources import Resolved


def execute(command: str, given: Dict[str, Optional[str]], *, dry_run: bool, diff: bool, as_json: bool) -> int:
    """Resolve and validate the settings, then run the command's plan (see runplan.run_plan).
    Returns the exit code."""
    from ..sources import build_settings

    try:
        resolved = opt.resolved_settings(command, given)
        settings = build_settings(resolved)
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None

    from .. import trust
    from ..facts.paths import chains
    from ..steps.plan import plan, preflight
    from .output.settings import settings_text
    from .runplan import run_plan

    section = ("settings", resolved.document(), settings_text(resolved)) if dry_run else None
    dirs = chains(trust.provisioned_dirs(settings.app_dir))
    return run_plan(command, plan(command), settings, warnings=password_warnings(resolved, settings),
                    preflight=lambda facts: preflight(facts, dry_run=dry_run, dirs=dirs),
                    dry_run=dry_run, diff=diff, as_json=as_json, section=section)


def password_warnings(resolved: Resolved, settings: Settings) -> List[str]:
    """A weak AMQP password is warned about (never refused), on the screen and in --json."""
    from ..validate import weak_password

    if resolved.password is None:
        return []
    reasons = weak_password(resolved.password.reveal(), settings.amqp.user)
    if not reasons:
        return []
    where = resolved.password_source.where if resolved.password_source else "the password"
    return [f"the AMQP password ({where}) is weak: {'; '.join(reasons)}. Give the broker user a long random "
            "one (openssl rand -base64 24; rabbitmqctl change_password USER), then dispatchctl configure "
            "--amqp-pass-file FILE"]


@app.command()
@opt.with_settings("install")
def install(given: Dict[str, Optional[str]], dry_run: bool = opt.DryRun, diff: bool = opt.Diff,
            json_output: bool = opt.JsonOutput) -> None:
    """Every step of the manual procedure: packages, user, app dir, build, unit + settings, start."""
    opt.finish(execute("install", given, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
@opt.with_settings("configure")
def configure(given: Dict[str, Optional[str]], dry_run: bool = opt.DryRun, diff: bool = opt.Diff,
              json_output: bool = opt.JsonOutput) -> None:
    """Write the systemd unit and the environment file; restart a running service they changed."""
    opt.finish(execute("configure", given, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
@opt.with_settings("build")
def build(given: Dict[str, Optional[str]], dry_run: bool = opt.DryRun, diff: bool = opt.Diff,
          json_output: bool = opt.JsonOutput) -> None:
    """Put /app/dispatch in place (the zipapp, or a go build); restart a running service it changed."""
    opt.finish(execute("build", given, dry_run=dry_run, diff=diff, as_json=json_output))


@app.command()
@opt.with_settings("start")
def start(given: Dict[str, Optional[str]], dry_run: bool = opt.DryRun, json_output: bool = opt.JsonOutput) -> None:
    """Reload systemd if the unit changed, enable, start (or restart after a pending change); every
    configured instance (the count `install --instances` recorded)."""
    opt.finish(execute("start", given, dry_run=dry_run, diff=False, as_json=json_output))
