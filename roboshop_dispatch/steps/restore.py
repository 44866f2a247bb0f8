"""``dispatchctl rollback``'s first step: put the kept generation (steps/generation.py) back.

Compares the kept generation with the host; each file that differs is written back (or removed,
when the generation did not have it), with its owner and mode, after every copy was checked
against its sha256. Nothing kept, or the host already as kept: nothing to roll back to (the
command is idempotent). The service step that follows restarts what the files changed, through
the health gate: should the kept generation not become ready, what ran before the rollback is put
back. The diff masks every secret, as ``configure``'s does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from ..consumer.telemetry_settings import header_secrets
from ..files import read_regular
from .base import Action, Change, Context, Step, StepFailed, unchanged
from .generation import (
    MARKS,
    Generation,
    GenerationError,
    Member,
    before_change,
    differences,
    kept,
    restore,
    verify,
)
from .textfiles import WHOLE_SECRETS, WantedFile, file_diff, old_secrets

VERBS = {"write": "write", "replace": "replace", "fix": "fix", "remove": "remove"}


def _text(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else data.decode("utf-8", "replace")


class RestoreStep(Step[Generation]):
    name = "restore"
    title = "Put the kept generation back"

    def check(self, ctx: Context) -> Change[Generation]:
        try:
            gen = kept(ctx)
        except GenerationError as exc:
            raise StepFailed(f"the kept generation cannot be used: {exc}; nothing was changed",
                             "run `dispatchctl install` with the settings you want instead") from None
        if gen is None:
            return unchanged("nothing to roll back to: no generation is kept (each change that restarts dispatch "
                             "keeps the one it replaces)", {"generation": None})
        # the service step decides with the generation's instance count (a dry run predicts it)
        ctx.settings = replace(ctx.settings, instances=gen.instances)
        report = {"generation": gen.id, "kept_at": gen.kept_at, "kept_by": gen.command, "instances": gen.instances}
        found = differences(ctx, gen)
        if not found:
            return unchanged(f"nothing to roll back to: dispatch already runs {gen.summary()}", report)
        report["files"] = {m.path: what for m, what in found}
        actions = [Action(VERBS[what], m.path, f" ({m.role})") for m, what in found]
        actions.insert(0, Action("put back", gen.summary()))
        marks = frozenset(MARKS[m.role] for m, _ in found)
        return Change(actions, gen, diff=self._diff(ctx, gen, [m for m, _ in found]), marks=marks, report=report)

    @staticmethod
    def _diff(ctx: Context, gen: Generation, members: List[Member]) -> str:
        """Current -> kept, for the text files; the credentials masked, the binary named only."""
        from ..redact import Redactor

        now: Dict[str, Optional[str]] = {m.path: _text(read_regular(ctx.host_path(Path(m.path)))) for m in members}
        then: Dict[str, Optional[str]] = {}
        for m in members:
            blob = read_regular(gen.directory / m.blob) if m.present else None
            then[m.path] = _text(blob)
        secrets = [v for m in members if m.role in WHOLE_SECRETS for t in (now[m.path], then[m.path]) if t
                   for v in (t, *header_secrets(t))]
        secrets += [v for m in members if m.role == "envfile" for t in (now[m.path], then[m.path])
                    for v in old_secrets(t)]
        redactor = Redactor(secrets)
        out = []
        for m in members:
            if m.role == "binary":
                continue
            want = WantedFile(m.role if m.role in (*WHOLE_SECRETS, "envfile") else "unit", Path(m.path), then[m.path],
                              m.mode, secret=m.role == "envfile")
            out.append(file_diff(want, now[m.path], redactor))
        return "".join(out)

    def apply(self, ctx: Context, change: Change[Generation]) -> str:
        gen = change.the_plan()
        try:
            data = verify(gen)
        except GenerationError as exc:
            raise StepFailed(f"the kept generation cannot be used: {exc}; nothing was changed",
                             "run `dispatchctl install` with the settings you want instead") from None
        for mark in sorted(change.marks):
            before_change(ctx, mark)  # what runs now is kept, should the kept generation not start
        restore(ctx, gen, data)
        return f"put back {gen.summary()}: " + ", ".join(a.render(done=True) for a in change.actions[1:])
