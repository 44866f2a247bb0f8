"""A check report (``check``, ``check-rabbitmq``) as text: an aligned table of findings, then each
diagnosis with its cause and fix.

Plain text on purpose: it pastes into a ticket as it is, and leaving rich out saves a third of the
command's start-up time (these commands run while something is on fire). On a terminal: colours
(never with $NO_COLOR) and text wrapped at word boundaries to its width; into a pipe: each line as
long as its text."""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Tuple

from ..common import INVOCATION

ANSI = {"ok": "32", "warn": "33", "fail": "1;31", "skip": "2"}


def finding_lines(findings: List[Any], mask: Callable[[str], str] = str) -> List[Tuple[str, str, str]]:
    """(status, title, summary) per line of the findings table: a run of skipped checks with the
    same reason is one line ("9 checks"), naming them."""
    out: List[Tuple[str, str, str]] = []
    i = 0
    while i < len(findings):
        f = findings[i]
        j = i
        while (f.status == "skip" and j + 1 < len(findings) and findings[j + 1].status == "skip"
               and findings[j + 1].summary == f.summary):
            j += 1
        if j > i:
            names = ", ".join(g.title for g in findings[i:j + 1])
            out.append(("skip", f"{j - i + 1} checks", f"{mask(f.summary)}: {names}"))
        else:
            out.append((f.status, f.title, mask(f.summary)))
        i = j + 1
    return out


def wrap(text: str, first: str, rest: str, width: int) -> str:
    """``first`` + ``text``, wrapped at word boundaries to ``width`` (0: not wrapped), later lines
    starting with ``rest``; a word longer than the line (a URL, a path) is never split."""
    import textwrap

    if width <= len(first) + 20:
        return first + text.replace("\n", "\n" + rest)
    lines: List[str] = []
    for n, paragraph in enumerate(text.splitlines() or [""]):
        lines.extend(textwrap.wrap(paragraph, width, initial_indent=first if n == 0 else rest,
                                   subsequent_indent=rest, break_long_words=False, break_on_hyphens=False)
                     or [first if n == 0 else rest])
    return "\n".join(lines)


def print_findings(report: Any, *, title: str, mask: Callable[[str], str] = str, verbose: bool = False) -> None:
    """The findings as an aligned text table, then each diagnosis with its cause and fix."""
    import os
    import shutil

    out = sys.stdout
    tty = out.isatty()
    colour = tty and not os.environ.get("NO_COLOR")
    width = shutil.get_terminal_size((120, 24)).columns if tty else 0

    def paint(text: str, status: str) -> str:
        return f"\x1b[{ANSI[status]}m{text}\x1b[0m" if colour and status in ANSI else text

    rows = [] if INVOCATION.quiet else finding_lines(report.findings, mask)  # -q: the diagnoses only
    title_width = max((len(t) for _, t, _ in rows), default=10)
    lines = [] if INVOCATION.quiet else [title, ""]
    indent = " " * (2 + 6 + title_width + 2)
    for status, name, summary in rows:
        text = wrap(summary, indent, indent, width)[len(indent):]
        lines.append(f"  {paint(status.ljust(4), status)}  {name.ljust(title_width)}  {text}")
    for f in report.findings:
        if f.status not in ("fail", "warn") or not f.diagnosis:
            continue
        lines.append("")
        lines.append(paint(wrap(f"{'FAIL' if f.status == 'fail' else 'WARN'}: {mask(f.diagnosis)}", "", "  ", width),
                           f.status))
        if f.issue:
            lines.append(wrap(f.issue, "  manual's common issue: ", "    ", width))
        if f.cause:
            lines.append(wrap(mask(f.cause), "  cause: ", " " * 9, width))
        if f.fix:
            lines.append(wrap(mask(f.fix), "  fix:   ", " " * 9, width))
        if verbose and f.traceback:
            lines.append("  " + mask(f.traceback).rstrip("\n").replace("\n", "\n  "))
    counts = report.counts()
    summary = (f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)"
               f"{', ' + str(counts['skip']) + ' skipped' if counts['skip'] else ''} in {report.elapsed_s:.2f}s")
    if report.issues:
        summary += " — common issues: " + ", ".join(report.issues)
    if not INVOCATION.quiet:
        lines.append("")
        lines.append(paint(wrap(summary, "", "  ", width), "ok" if report.ok else "fail"))
    if lines:
        out.write("\n".join(lines).lstrip("\n") + "\n")
    out.flush()
