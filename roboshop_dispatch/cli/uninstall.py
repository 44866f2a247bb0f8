"""``dispatchctl uninstall``: the install steps backwards (steps/uninstall.py), run like the others
(runplan.py)."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

import typer

from ..settings import SettingsError
from . import options as opt
from .app import app


def _confirm_purge(settings: Any) -> bool:
    """Ask on a terminal before --purge deletes anything; False without one (then --yes is needed)."""
    if not sys.stdin.isatty():
        return False
    return typer.confirm(f"--purge deletes what dispatchctl created: the files it wrote in {settings.app_dir}, "
                         f"{settings.app_dir} itself when empty and created by it, and the user "
                         f"{settings.service_user} when it created that user and the user owns nothing else. "
                         "Continue?", default=False)


@app.command()
@opt.with_settings("uninstall")
def uninstall(
    given: Dict[str, Optional[str]],
    purge: bool = typer.Option(False, "--purge", help="Also remove what dispatchctl created in the app "
                               "directory, the directory when empty, and the service user it created."),
    yes: bool = opt.Yes,
    dry_run: bool = opt.DryRun,
    json_output: bool = opt.JsonOutput,
) -> None:
    """Stop and disable the service, remove the unit, the environment file, the credential and
    /app/dispatch. Keeps the user and the app directory unless --purge (which asks first, or needs
    --yes, and removes only what dispatchctl created). Idempotent."""
    from ..settings import AmqpSettings, Settings

    try:
        settings = Settings.build(amqp=AmqpSettings.placeholder(), service_user=given["service_user"],
                                  app_dir=given["app_dir"])
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
