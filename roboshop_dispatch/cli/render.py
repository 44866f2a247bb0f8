"""How step results are shown: rich progress while steps run, a summary table (or JSON) after.

Shared by every command that runs steps (provisioning here, uninstall in operate). rich is
imported only when something is drawn, and never for ``--json``.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

from ..redact import Redactor
from ..steps.base import CHANGED, FAILED, OK, StepResult
from .output import NO_SECRETS, console, print_json

STATUS_STYLE = {OK: "green", CHANGED: "yellow", FAILED: "bold red"}


class Progress:
    """A spinner per step while it runs (stderr, terminals only, gone when done)."""

    def __init__(self, enabled: bool, total: int, title: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total
        self.title = title
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, SpinnerColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                TextColumn("{task.completed}/{task.total}"), console=console(stderr=True), transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.title, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def on_start(self, step) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=f"{self.title}: {step.title or step.name}")

    def on_done(self, step, result: StepResult) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)


def results_document(command: str, results: List[StepResult], *, dry_run: bool, planned: List[str],
                     duration_s: float, show_diff: bool = False) -> Dict[str, Any]:
    steps = []
    for r in results:
        item = r.as_dict()
        if show_diff and r.diff:
            item["diff_text"] = r.diff
        steps.append(item)
    ran = {r.name for r in results}
    for name in planned:
        if name not in ran:
            steps.append({"name": name, "status": "skipped", "changed": False, "failed": False,
                          "message": "not run: an earlier step failed",
                          "diff": {"added": 0, "removed": 0}, "next_action": "", "duration_s": 0.0})
    failed = next((r for r in results if r.failed), None)
    return {
        "command": command,
        "dry_run": dry_run,
        "ok": failed is None,
        "changed": sum(1 for r in results if r.changed),
        "failed_step": failed.name if failed else None,
        "duration_s": round(duration_s, 3),
        "steps": steps,
    }


def _rows(document: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for item in document["steps"]:
        status = item["status"]
        shown = "would change" if document["dry_run"] and status == CHANGED else status
        message = item["message"]
        if status == FAILED and "\n" in message:  # the full reason follows on stderr
            message = message.splitlines()[0] + " (details below)"
        rows.append([item["name"], shown, message, f"{item['duration_s']:.2f}s", status])
    return rows


def _summary(document: Dict[str, Any], results: List[StepResult]) -> str:
    changed = document["changed"]
    verb = "would change" if document["dry_run"] else "changed"
    ok = sum(1 for r in results if r.status == OK)
    failed = sum(1 for r in results if r.failed)
    text = f"{len(results)} step(s): {changed} {verb}, {ok} ok"
    return text + (f", {failed} failed" if failed else "") + f" in {document['duration_s']:.2f}s"


def print_table(document: Dict[str, Any], results: List[StepResult], *, show_diff: bool = False,
                title: Optional[str] = None, redactor: Redactor = NO_SECRETS) -> None:
    """A rich table on a terminal; plain aligned text into a pipe or a log (rich would draw the
    same table without colours, at the cost of importing it: a third of a re-run's time)."""
    title = title or f"dispatchctl {document['command']}" + (" (dry run)" if document["dry_run"] else "")
    diffs = [(r.name, redactor.text(r.diff)) for r in results if r.diff] if show_diff else []
    document = redactor.document(document)
    if sys.stdout.isatty():
        _print_rich(title, _rows(document), diffs, _summary(document, results), bool(document["changed"]))
    else:
        _print_plain(title, _rows(document), diffs, _summary(document, results))


def _print_plain(title: str, rows: List[List[str]], diffs, summary: str) -> None:
    out = [title]
    header = ["step", "result", "details", "time"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    for row in [header, *rows]:
        details = row[2].splitlines() or [""]
        out.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[3]:>6}  {details[0]}".rstrip())
        out.extend(" " * (widths[0] + widths[1] + 12) + extra for extra in details[1:])
    for name, diff in diffs:
        out.append(f"-- diff: {name} --")
        out.append(diff.rstrip("\n"))
    out.append(summary)
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def _print_rich(title: str, rows: List[List[str]], diffs, summary: str, changed: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    con = console()
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("step", style="bold", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("details", overflow="fold")
    table.add_column("time", justify="right", no_wrap=True)
    for name, shown, message, seconds, status in rows:
        table.add_row(name, Text(shown, style=STATUS_STYLE.get(status, "dim")), Text(message), seconds)
    con.print(table)
    for name, diff in diffs:
        con.print(Text(f"── diff: {name} ──", style="bold"))
        for line in diff.splitlines():
            style = ("green" if line.startswith("+") and not line.startswith("+++") else
                     "red" if line.startswith("-") and not line.startswith("---") else
                     "cyan" if line.startswith("@@") else "")
            con.print(Text(line, style=style))
    con.print(Text(summary, style="yellow" if changed else "green"))


def print_failure(results: List[StepResult], redactor: Redactor = NO_SECRETS) -> None:
    from .output import write

    failed = next((r for r in results if r.failed), None)
    if failed is None:
        return
    text = f"dispatchctl: error: step '{failed.name}' failed: {failed.message}\n"
    if failed.next_action:
        text += f"dispatchctl: next: {failed.next_action}\n"
    write(text, redactor, err=True)


def show(command: str, results: List[StepResult], *, dry_run: bool, planned: List[str], duration_s: float,
         as_json: bool, show_diff: bool, redactor: Redactor = NO_SECRETS,
         section: Optional[Tuple[str, Dict[str, Any], str]] = None) -> Dict[str, Any]:
    """Print the results the way the user asked, redacted; return the JSON document either way.
    ``section`` (JSON key, JSON value, text): one more part of the report, e.g. the settings' sources."""
    document = results_document(command, results, dry_run=dry_run, planned=planned, duration_s=duration_s,
                                show_diff=show_diff)
    if section is not None:
        document[section[0]] = section[1]
    if as_json:
        print_json(document, redactor)
    else:
        if section is not None:
            from .output import write

            write(section[2], redactor)
        print_table(document, results, show_diff=show_diff, redactor=redactor)
    print_failure(results, redactor)
    return document
