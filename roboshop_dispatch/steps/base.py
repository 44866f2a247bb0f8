"""The step contract, modelled on Ansible modules and pyinfra operations.

A step first ``check``s the current state against the wanted one and returns a :class:`Change`
(nothing to do, or what differs with a diff). In check mode (``--dry-run``) that is reported as
"would change"; otherwise ``apply`` reaches the wanted state. A step that changed something is
recorded in ``Context.changed`` so later steps (the service restart) can react to it, in check
mode too: a dry run predicts exactly what the real run does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Set

from ..files import diff_stat
from ..host import CommandError, HostFacts, Runner
from ..settings import Settings
from ..systemd import Systemd

OK = "ok"
CHANGED = "changed"
FAILED = "failed"


class StepFailed(RuntimeError):
    """A step could not reach its wanted state; ``next_action`` tells the user what to run."""

    def __init__(self, message: str, next_action: str = "") -> None:
        super().__init__(message)
        self.next_action = next_action


@dataclass
class Change:
    """What ``check`` found: ``needed`` False means the host is already as wanted."""

    needed: bool
    message: str
    diff: str = ""
    data: Dict[str, object] = field(default_factory=dict)
    # what the change touches that later steps react to (``unit``, ``envfile``, ``binary``):
    # added to ``Context.changed`` with the step's name, in check mode too
    marks: FrozenSet[str] = frozenset()
    # JSON-safe facts reported with the result (``--json``): the actions, the files
    report: Dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    name: str
    status: str
    message: str
    diff: str = ""
    next_action: str = ""
    duration_s: float = 0.0
    data: Dict[str, Any] = field(default_factory=dict)

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

    def host_path(self, path: Path) -> Path:
        """``path`` (absolute, as on the host) under ``root``: tests point ``root`` at a temp dir."""
        if self.root == Path("/"):
            return Path(path)
        return self.root / Path(path).relative_to("/")


class Step:
    name: str = "step"
    title: str = ""

    def check(self, ctx: Context) -> Change:
        raise NotImplementedError

    def apply(self, ctx: Context, change: Change) -> str:
        """Reach the wanted state; return the message to report."""
        raise NotImplementedError

    def run(self, ctx: Context) -> StepResult:
        import time

        started = time.monotonic()
        try:
            change = self.check(ctx)
            if not change.needed:
                result = StepResult(self.name, OK, change.message, data=dict(change.report))
            elif ctx.dry_run:
                ctx.changed.add(self.name)
                ctx.changed.update(change.marks)
                result = StepResult(self.name, CHANGED, "would " + change.message, change.diff,
                                    data=dict(change.report))
            else:
                message = self.apply(ctx, change)
                ctx.changed.add(self.name)
                ctx.changed.update(change.marks)
                result = StepResult(self.name, CHANGED, message, change.diff, data=dict(change.report))
        except StepFailed as exc:
            result = StepResult(self.name, FAILED, str(exc), next_action=exc.next_action)
        except CommandError as exc:
            result = StepResult(self.name, FAILED, str(exc), next_action=self.retry_hint(ctx))
        except OSError as exc:
            result = StepResult(self.name, FAILED, f"{exc.strerror or exc}: {exc.filename or ''}".strip(),
                                next_action=self.retry_hint(ctx))
        result.duration_s = time.monotonic() - started
        return result

    def retry_hint(self, ctx: Context) -> str:
        return f"fix the cause above, then run `dispatchctl {self.name}` again"


def run_steps(steps: List[Step], ctx: Context, on_start=None, on_done=None) -> List[StepResult]:
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
    """The cache record at ``path`` (on the host), or {} when absent or unreadable."""
    import json

    try:
        value = json.loads(ctx.host_path(path).read_text())
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

