"""``dispatchctl stop | restart | rollback``: operate what is installed (steps/operate.py,
steps/restore.py), run like the other commands that change the host (runplan.py)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import typer

from ..settings import SettingsError
from . import options as opt
from .app import app


def installed_units(incomplete: str) -> List[str]:
    """Shell completion of INSTANCE: the units this host is configured for (the instance count
    install recorded: dispatch@1..N; else dispatch), read from the files alone (no systemctl)."""
    from .. import layout
    from ..facts.instances import recorded_instances

    count = recorded_instances(layout.INSTANCES_FILE)
    units = [f"dispatch@{n}" for n in range(1, count + 1)] if count > 1 else ["dispatch"]
    return [unit for unit in units if unit.startswith(incomplete)]


Instances = typer.Argument(None, metavar="[INSTANCE]...", show_default=False, autocompletion=installed_units,
                           help="Only these: N or dispatch@N (an instance), dispatch (dispatch.service). "
                                "Default: all of them.")


def _run(command: str, steps: List[Any], given: Dict[str, Optional[str]], *, dry_run: bool, diff: bool,
         as_json: bool) -> int:
    from ..sources import build_settings
    from ..steps.plan import preflight
    from .runplan import run_plan

    try:
        settings = build_settings(opt.resolved_settings(command, given))
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None
    return run_plan(command, steps, settings, preflight=lambda facts: preflight(facts, dry_run=dry_run),
                    dry_run=dry_run, diff=diff, as_json=as_json)


def _units(words: Optional[List[str]]) -> tuple:
    from ..steps.operate import unit_names

    try:
        return unit_names(words or [])
    except SettingsError as exc:
        raise opt.usage_error(str(exc)) from None


@app.command()
def stop(instances: Optional[List[str]] = Instances, dry_run: bool = opt.DryRun,
         json_output: bool = opt.JsonOutput) -> None:
    """Stop dispatch: every unit, or the instances named. They stay enabled (a reboot starts them;
    `dispatchctl start` now). Exit 0 stopped (or not running), 5 a unit named is not installed
    (as systemctl), else systemctl's status."""
    from ..steps.plan import operate

    named = _units(instances)
    opt.finish(_run("stop", operate("stop", named), {}, dry_run=dry_run, diff=False, as_json=json_output))


@app.command()
@opt.with_settings("restart")
def restart(given: Dict[str, Optional[str]], instances: Optional[List[str]] = Instances,
            dry_run: bool = opt.DryRun, json_output: bool = opt.JsonOutput) -> None:
    """Restart dispatch: every configured unit, or the instances named, one at a time, each ready
    (consuming) before the next; the first that is not stops it there, with its log. Exit 0 all
    ready, 1 one was not, 5 a unit named is not installed (as systemctl)."""
    from ..steps.plan import operate

    named = _units(instances)
    opt.finish(_run("restart", operate("restart", named), given, dry_run=dry_run, diff=False, as_json=json_output))


@app.command()
@opt.with_settings("rollback")
def rollback(given: Dict[str, Optional[str]], dry_run: bool = opt.DryRun, diff: bool = opt.Diff,
             json_output: bool = opt.JsonOutput) -> None:
    """Return to the last good generation (kept by the last change that restarted dispatch): its
    binary, unit, drop-ins, settings and credential, then restart what they changed, each ready
    in turn (should it not become ready, what ran before is put back). Idempotent: says when there
    is nothing to roll back to."""
    from ..steps.plan import plan

    opt.finish(_run("rollback", plan("rollback"), given, dry_run=dry_run, diff=diff, as_json=json_output))
