"""How step results are shown: progress while steps run (a row per finished step into a pipe,
each running step's elapsed time on a terminal), a table (or JSON) after, then the recap,
Ansible's: ``ok=N changed=N failed=N skipped=N``, every row counted once.

Shared by every command that runs steps (install, build, configure, start, stop, restart,
rollback, uninstall). The columns are the same on a terminal and in a pipe: step, result, time,
details. Nothing here searches dispatchctl's own text for a secret (redact.py): a step's message
and diff hold none (a diff masks the secret files by field), and a command's output is masked
where it is quoted (host.Runner) or streamed (``child_line``). rich is imported only when
something is drawn on a terminal, and never for ``--json``.
"""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...errors import ErrorKind
from ...redact import Redactor
from ...steps.base import CHANGED, FAILED, OK, StepResult
from . import NO_SECRETS, console, print_json

STATUS_STYLE = {OK: "green", CHANGED: "yellow", FAILED: "bold red"}


RESULT_WIDTH = len("would change")


def row_text(name: str, shown: str, seconds: str, details: str, name_width: int) -> List[str]:
    """One step's row of the plain table (continuation lines indented under the details)."""
    lines = details.splitlines() or [""]
    out = [f"{name:<{name_width}}  {shown:<{RESULT_WIDTH}}  {seconds:>6}  {lines[0]}".rstrip()]
    out.extend(" " * (name_width + RESULT_WIDTH + 12) + extra for extra in lines[1:])
    return out


class Progress:
    """What is shown while steps run.

    - ``live``: a terminal: each step with its elapsed time while it runs (rich, on stderr, gone
      when done: the table follows);
    - ``rows``: not a terminal (CI, ``| tee``): each step's row of the plain table as it finishes,
      flushed (on stdout, which then gets only the rest of the table; on stderr with --json -v);
    - ``off``: ``-q``, or ``--json`` without ``-v`` (stderr holds only errors then).

    ``command_line`` shows each command as it starts (``-vv``: ``$ dpkg-query ...``),
    ``child_line`` a line of its output (masked: a command's output can echo anything),
    ``command_done`` its exit status and time (``-vvv``)."""

    def __init__(self, mode: str, planned: List[str], title: str, *, dry_run: bool, stream=None,
                 redactor: Redactor = NO_SECRETS) -> None:
        self.mode = mode
        self.title = title
        self.dry_run = dry_run
        self.stream = stream or sys.stdout
        self.redactor = redactor
        self.name_width = max([len("step"), *(len(n) for n in planned)])
        self._progress: Any = None
        self._task: Any = None

    @staticmethod
    def mode_for(*, as_json: bool, quiet: bool, verbosity: int = 0) -> str:
        if quiet:
            return "off"
        if as_json:  # stderr stays for errors; -v adds the rows there (rich is never imported for --json)
            return "rows" if verbosity else "off"
        if sys.stdout.isatty():
            return "live" if sys.stderr.isatty() else "off"
        return "rows"

    def __enter__(self) -> Progress:
        if self.mode == "live":
            from rich.progress import Progress as RichProgress
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = RichProgress(SpinnerColumn(finished_text="•"), TextColumn("{task.description}"),
                                          TimeElapsedColumn(), console=console(stderr=True), transient=True)
            self._progress.__enter__()
        elif self.mode == "rows":
            self._write([self.title, row_text("step", "result", "time", "details", self.name_width)[0]])
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def _write(self, lines: List[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def on_start(self, step) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(f"{step.name}: {step.title or 'running'}", total=1)

    def on_done(self, step, result: StepResult) -> None:
        shown = "would change" if self.dry_run and result.status == CHANGED else result.status
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=1, description=f"{step.name}: {shown}")
        elif self.mode == "rows":
            message = result.message
            if result.failed and "\n" in message:
                message = message.splitlines()[0] + " (details below)"
            self._write(row_text(result.name, shown, f"{result.duration_s:.2f}s", message, self.name_width))

    def child_line(self, line: str) -> None:
        """A line of a command's output as it comes (-vv), every secret masked."""
        self._show(f"  | {self.redactor.text(line.rstrip(chr(13) + chr(10)))}")

    def command_line(self, argv: Sequence[str]) -> None:
        """A command as it starts (-vv). Its line holds no secret: it would show in ``ps``."""
        self._show(f"  $ {shlex.join(argv)}")

    def command_done(self, result: Any) -> None:
        """A command's exit status and time (-vvv)."""
        self._show(f"  = exit {result.returncode} in {result.duration_s:.3f}s")

    def _show(self, text: str) -> None:
        if self._progress is not None:
            from rich.text import Text

            self._progress.console.print(Text(text, style="dim"), soft_wrap=True)
        elif self.mode == "rows":
            self._write([text])


def results_document(command: str, results: List[StepResult], *, dry_run: bool, planned: List[str],
                     duration_s: float, show_diff: bool = False,
                     rollback: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    steps = []
    for r in results:
        item = r.as_dict()
        if show_diff and r.diff:
            item["diff_text"] = r.diff
        steps.append(item)
    ran = {r.name for r in results}
    for name in planned:
        if name not in ran:
            steps.append({"name": name, "status": SKIPPED, "changed": False, "failed": False,
                          "message": "not run: an earlier step failed",
                          "diff": {"added": 0, "removed": 0}, "next_action": "", "duration_s": 0.0})
    if dry_run:
        for item in steps:
            item["next_action"] = dry_run_hint(item["next_action"])
    failed = next((r for r in results if r.failed), None)
    document: Dict[str, Any] = {
        "command": command,
        "ok": failed is None,
        "dry_run": dry_run,
        "changed": sum(1 for r in results if r.changed),
        "failed_step": failed.name if failed else None,
        "duration_s": round(duration_s, 3),
        "steps": steps,
        "recap": {status: sum(1 for item in steps if item["status"] == status) for status in RECAP},
        "rolled_back": bool(rollback and rollback.get("rolled_back")),
    }
    if rollback:  # a restart failed its health gate (steps/gate.py): what failed, what was put back
        document["rollback"] = rollback
    if failed is not None:
        document["error"] = {"kind": ErrorKind.STEP, "message": f"step '{failed.name}' failed: {failed.message}",
                             "step": failed.name, "next_action": next(i["next_action"] for i in steps
                                                                      if i["name"] == failed.name)}
    return document


SKIPPED = "skipped"
RECAP = (OK, CHANGED, FAILED, SKIPPED)  # Ansible's order; each row is counted once
# the commands that change the host: a dry run's hint names them with --dry-run
CHANGING = ("install", "configure", "build", "start", "stop", "restart", "rollback", "uninstall")
_COMMAND_IN_HINT = re.compile(rf"`dispatchctl ({'|'.join(CHANGING)})\b([^`]*)`")


def dry_run_hint(hint: str) -> str:
    """A failed step's hint, as a dry run gives it: every command it names that would change the
    host is named with --dry-run (this run changed nothing; a real run is the user's choice)."""
    return _COMMAND_IN_HINT.sub(lambda m: m.group(0) if "--dry-run" in m.group(2)
                                else f"`dispatchctl {m.group(1)}{m.group(2)} --dry-run`", hint)


def recap(document: Dict[str, Any]) -> str:
    """The run's last line: ``recap: ok=N changed=N failed=N skipped=N in S`` (Ansible's order)."""
    counts = " ".join(f"{status}={document['recap'][status]}" for status in RECAP)
    dry = " (dry run)" if document["dry_run"] else ""  # changed: what would change
    return f"recap: {counts} in {document['duration_s']:.2f}s{dry}"


def print_recap(document: Dict[str, Any]) -> None:
    """The recap, last (after the failure's lines on stderr): yellow on a terminal when something
    changed, red when a step failed, else green; plain into a pipe."""
    line = recap(document)
    if not sys.stdout.isatty():
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return
    from rich.text import Text

    style = "red" if document["recap"][FAILED] else "yellow" if document["changed"] else "green"
    console().print(Text(line, style=style))


def print_not_run(planned: Sequence[str], *, dry_run: bool) -> None:
    """The recap of a run the host refused before any step ran (preflight): every step skipped."""
    print_recap({"dry_run": dry_run, "changed": False, "duration_s": 0.0,
                 "recap": {status: len(planned) if status == SKIPPED else 0 for status in RECAP}})


def _shown(status: str, dry_run: bool) -> str:
    return "would change" if dry_run and status == CHANGED else status


def _rows(document: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for item in document["steps"]:
        status = item["status"]
        message = item["message"]
        if status == FAILED and "\n" in message:  # the full reason follows on stderr
            message = message.splitlines()[0] + " (details below)"
        rows.append([item["name"], _shown(status, document["dry_run"]), message, f"{item['duration_s']:.2f}s",
                     status])
    return rows


def print_table(document: Dict[str, Any], results: List[StepResult], *, show_diff: bool = False,
                title: Optional[str] = None, streamed: bool = False) -> None:
    """A rich table on a terminal; plain aligned text into a pipe or a log (rich would draw the
    same table without colours, at the cost of importing it: a third of a re-run's time).
    ``streamed``: the title and the rows of the steps that ran are printed already (Progress)."""
    title = title or f"dispatchctl {document['command']}" + (" (dry run)" if document["dry_run"] else "")
    diffs = [(r.name, r.diff) for r in results if r.diff] if show_diff else []
    rows = _rows(document)
    if sys.stdout.isatty():
        _print_rich(title, rows, diffs)
        return
    width = max([len("step"), *(len(r[0]) for r in rows)])  # the streamed rows' width: every planned step
    if streamed:
        rows = [row for row in rows if row[4] == SKIPPED]
    _print_plain(None if streamed else title, rows, diffs, width)


def _print_plain(title: Optional[str], rows: List[List[str]], diffs, width: int) -> None:
    out = [title] if title is not None else []
    if title is not None:
        out.extend(row_text("step", "result", "time", "details", width))
    for row in rows:
        out.extend(row_text(row[0], row[1], row[3], row[2], width))
    for name, diff in diffs:
        out.append(f"-- diff: {name} --")
        out.append(diff.rstrip("\n"))
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


def _print_rich(title: str, rows: List[List[str]], diffs) -> None:
    from rich.table import Table
    from rich.text import Text

    con = console()
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("step", style="bold", no_wrap=True)  # the plain table's columns, in its order
    table.add_column("result", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("details", overflow="fold")
    for name, shown, message, seconds, status in rows:
        table.add_row(name, Text(shown, style=STATUS_STYLE.get(status, "dim")), seconds, Text(message))
    con.print(table)
    for name, diff in diffs:
        con.print(Text(f"── diff: {name} ──", style="bold"))
        for line in diff.splitlines():
            style = ("green" if line.startswith("+") and not line.startswith("+++") else
                     "red" if line.startswith("-") and not line.startswith("---") else
                     "cyan" if line.startswith("@@") else "")
            # never wrapped: a continuation line would lose its +/- (the terminal folds it instead)
            con.print(Text(line, style=style), soft_wrap=True)


def print_failure(document: Dict[str, Any], log_path: str = "") -> None:
    from . import write

    error = document.get("error")
    if not error:
        return
    text = f"dispatchctl: error: {error['message']}\n"
    if error["next_action"]:
        text += f"dispatchctl: next: {error['next_action']}\n"
    if log_path:
        text += f"dispatchctl: the full output of the failed step: {log_path}\n"
    write(text, err=True)


def show(command: str, results: List[StepResult], *, dry_run: bool, planned: List[str], duration_s: float,
         as_json: bool, show_diff: bool, quiet: bool = False,
         streamed: bool = False, log_path: str = "",
         section: Optional[Tuple[str, Dict[str, Any], str]] = None,
         rollback: Optional[Dict[str, Any]] = None, warnings: Sequence[str] = ()) -> Dict[str, Any]:
    """Print the results the way the user asked; return the JSON document either way.
    ``section`` (JSON key, JSON value, text): one more part of the JSON report, e.g. the settings'
    sources (its text is printed before the steps run, see runplan); ``warnings`` (already said on
    stderr) go in the JSON document too."""
    document = results_document(command, results, dry_run=dry_run, planned=planned, duration_s=duration_s,
                                show_diff=show_diff, rollback=rollback)
    if warnings:
        document["warnings"] = list(warnings)
    if section is not None:
        document[section[0]] = section[1]
    if as_json:
        print_json(document)
    elif not quiet:
        print_table(document, results, show_diff=show_diff, streamed=streamed)
    print_failure(document, log_path)
    if not as_json and not quiet:
        print_recap(document)  # every run's last line, Ansible's
    return document
