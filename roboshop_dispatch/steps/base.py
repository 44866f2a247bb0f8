"""The step contract, modelled on Ansible modules and pyinfra operations.

A step first ``check``s the current state against the wanted one and returns a :class:`Change`:
the :class:`Action` s that would reach the wanted state (none: the host is already as wanted),
a typed plan holding what ``apply`` needs, a diff, and the marks later steps react to. In check
mode (``--dry-run``) the actions are reported as "would ..."; otherwise ``apply`` carries out the
plan and the same actions are reported in the past tense. Marks (``unit``, ``envfile``,
``binary``, ``credential``) go to ``Context.changed`` in check mode too: a dry run predicts
exactly what the real run does.

Each step's deciding part is a small pure function from facts (a stat, ``systemctl show``'s
answer, the package database's) to a Change, so it is unit-tested from recorded facts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Generic, List, Optional, Sequence, Set, TypeVar

from ..errors import DispatchctlError, ErrorKind
from ..facts.host import HostFacts
from ..facts.instances import InstanceFacts, read_instances
from ..files import NotRegularFile, diff_stat
from ..host import CommandError, Runner
from ..settings import Settings
from ..systemd import Systemd

OK = "ok"
CHANGED = "changed"
FAILED = "failed"

# present tense -> past tense of the verbs actions use
PAST = {"write": "wrote", "rewrite": "rewrote", "update": "updated", "fix": "fixed", "create": "created",
        "install": "installed", "remove": "removed", "delete": "deleted", "stop": "stopped",
        "disable": "disabled", "build": "built", "replace": "replaced", "go build": "built",
        "migrate": "migrated", "keep": "kept", "daemon-reload": "ran daemon-reload", "put back": "put back",
        "restart": "restarted", "carry": "carried"}

P = TypeVar("P")


class PreflightError(DispatchctlError):
    """The host cannot run the command at all; nothing was touched."""

    kind = ErrorKind.PREFLIGHT


class StepFailed(DispatchctlError):
    """A step could not reach its wanted state; ``next_action`` tells the user what to run;
    ``exit_status`` the command's exit status when not 1 (stop and restart: systemctl's)."""

    kind = ErrorKind.STEP
    exit_status: int = 0


@dataclass(frozen=True)
class Action:
    """One thing a step does: ``verb`` (present tense) ``target`` ``note``, e.g.
    ``fix`` ``/app/dispatch`` ``: mode 0777 -> 0755``. Rendered, never edited as a string."""

    verb: str
    target: str
    note: str = ""

    def render(self, done: bool = False) -> str:
        verb = PAST.get(self.verb, self.verb) if done else self.verb
        return f"{verb} {self.target}{self.note}"


def render_actions(actions: Sequence[Action], done: bool = False) -> str:
    return "; ".join(a.render(done) for a in actions)


@dataclass
class Change(Generic[P]):
    """What ``check`` found. No actions: the host is as wanted (``summary`` says how)."""

    actions: List[Action] = field(default_factory=list)
    plan: Optional[P] = None
    summary: str = ""
    diff: str = ""
    # what the change touches that later steps react to: added to ``Context.changed``
    marks: FrozenSet[str] = frozenset()
    # JSON-safe facts reported with the result (``--json``): the actions, the files
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def needed(self) -> bool:
        return bool(self.actions)

    def message(self, done: bool = False) -> str:
        return render_actions(self.actions, done) if self.actions else self.summary

    def the_plan(self) -> P:
        if self.plan is None:
            raise RuntimeError("a change with actions must carry its plan")
        return self.plan


def unchanged(summary: str, report: Optional[Dict[str, Any]] = None) -> Change[Any]:
    return Change(summary=summary, report=report or {})


@dataclass
class StepResult:
    name: str
    status: str
    message: str
    diff: str = ""
    next_action: str = ""
    duration_s: float = 0.0
    data: Dict[str, Any] = field(default_factory=dict)
    exit_status: int = 0  # a failed step's exit status when not 1 (StepFailed.exit_status)

    @property
    def changed(self) -> bool:
        return self.status == CHANGED

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "changed": self.changed,
            "failed": self.failed,
            "message": self.message,
            "diff": diff_stat(self.diff) if self.diff else {"added": 0, "removed": 0},
            "next_action": self.next_action,
            "duration_s": round(self.duration_s, 3),
            **({"data": self.data} if self.data else {}),
        }


@dataclass
class Context:
    settings: Settings
    facts: HostFacts
    runner: Runner
    systemd: Systemd
    dry_run: bool = False
    changed: Set[str] = field(default_factory=set)
    root: Path = Path("/")
    # uninstall --purge: the operator confirmed (--yes or at the prompt) that files may go
    confirmed: bool = False
    command: str = ""  # the dispatchctl command running (recorded with a kept generation)
    returning: bool = False  # `dispatchctl rollback`: this run puts the kept generation back
    staging_done: bool = False  # the generation running before this run's first write is staged
    # the health gate's verdict on this run's restarts (steps/gate.py), for the JSON report
    rollback: Dict[str, Any] = field(default_factory=dict)

    def host_path(self, path: Path) -> Path:
        """``path`` (absolute, as on the host) under ``root``: tests point ``root`` at a temp dir."""
        if self.root == Path("/"):
            return Path(path)
        return self.root / Path(path).relative_to("/")


def installed_instances(ctx: Context, *, ask_systemd: bool = True) -> InstanceFacts:
    """The dispatch units on the host, read once (facts.instances; ``ask_systemd=False``: only
    the files, no systemctl)."""
    s = ctx.settings
    return read_instances(ctx.runner, systemd_pid1=ask_systemd and ctx.facts.systemd_pid1,
                          unit_dir=ctx.host_path(s.unit_dir), instances_file=ctx.host_path(s.instances_file))


class Step(Generic[P]):
    name: str = "step"
    title: str = ""

    def check(self, ctx: Context) -> Change[P]:
        raise NotImplementedError

    def apply(self, ctx: Context, change: Change[P]) -> Optional[str]:
        """Carry out ``change.plan``; return the message to report (None: the actions, done)."""
        raise NotImplementedError

    def run(self, ctx: Context) -> StepResult:
        started = time.monotonic()
        try:
            result = self._run(ctx)
        except (StepFailed, NotRegularFile) as exc:
            result = StepResult(self.name, FAILED, str(exc), next_action=exc.next_action,
                                exit_status=getattr(exc, "exit_status", 0))
        except CommandError as exc:
            result = StepResult(self.name, FAILED, str(exc), next_action=self.retry_hint(ctx))
        except OSError as exc:
            result = StepResult(self.name, FAILED, f"{exc.strerror or exc}: {exc.filename or ''}".strip(),
                                next_action=self.retry_hint(ctx))
        result.duration_s = time.monotonic() - started
        return result

    def _run(self, ctx: Context) -> StepResult:
        change = self.check(ctx)
        report = dict(change.report)
        if not change.needed:
            return StepResult(self.name, OK, change.message(), data=report)
        message = ("would " + change.message()) if ctx.dry_run else \
            (self.apply(ctx, change) or change.message(done=True))
        ctx.changed.add(self.name)
        ctx.changed.update(change.marks)
        return StepResult(self.name, CHANGED, message, change.diff, data=report)

    def retry_hint(self, ctx: Context) -> str:
        return f"fix the cause above, then run `dispatchctl {self.name}` again"


def run_steps(steps: Sequence[Step[Any]], ctx: Context, on_start: Optional[Callable[[Step[Any]], None]] = None,
              on_done: Optional[Callable[[Step[Any], StepResult], None]] = None) -> List[StepResult]:
    """Run steps in order; stop at the first failure (later steps would build on it)."""
    results: List[StepResult] = []
    for step in steps:
        if on_start is not None:
            on_start(step)
        result = step.run(ctx)
        results.append(result)
        if on_done is not None:
            on_done(step, result)
        if result.failed:
            break
    return results


# -- re-run caches: records that let a re-run skip work; losing one only costs time ------------


def load_cache(ctx: Context, path: Path) -> Dict[str, Any]:
    """The cache record at ``path`` (on the host), or {} when absent, unreadable or not a file."""
    import json

    from ..files import read_regular

    try:
        data = read_regular(ctx.host_path(path))
        value = json.loads(data) if data is not None else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def save_cache(ctx: Context, path: Path, record: Dict[str, Any]) -> None:
    """Write a cache record, root-only (0600 in a 0700 directory); failing to is not an error."""
    import json

    from ..files import write_atomic

    try:
        cache = ctx.host_path(path)
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(cache, json.dumps(record).encode(), mode=0o600)
    except OSError:
        pass
