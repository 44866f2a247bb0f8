"""Print dispatchctl(1), the man page, made from the CLI's own help: ``python3 -I manpage.py PYZ``.

It imports dispatchctl from PYZ (the single-file build), walks its commands as ``--help`` does and
sets each one's help text verbatim (80 columns) in a roff page. Run by packaging/build_dist.py.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, List, Tuple

# the build's lab-less pyz: `dispatchctl lab` says so, and has no page here
LEFT_OUT = {"lab"}
WIDTH = 80


def escape(line: str) -> str:
    """One line of text as roff shows it verbatim (no request, no escape, minus signs as such)."""
    text = line.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def commands(group: Any, ctx: Any, path: str) -> Iterator[Tuple[str, str]]:
    """(command path, its --help text) for ``group`` and every command under it, in --help's order."""
    import click

    yield path, group.get_help(ctx)
    for name in group.list_commands(ctx) if isinstance(group, click.Group) else []:
        if name in LEFT_OUT:
            continue
        sub = group.get_command(ctx, name)
        yield from commands(sub, context(sub, name, ctx), f"{path} {name}")


def context(command: Any, name: str, parent: Any = None) -> Any:
    """The context --help would give ``command`` (its own settings: -h too), at 80 columns."""
    import click

    settings = {**(command.context_settings or {}), "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def page(version: str, sections: List[Tuple[str, str]]) -> str:
    _, top = sections[0]
    summary = next(line.strip() for line in top.splitlines()[1:] if line.strip())
    out = [f'.TH DISPATCHCTL 1 "" "dispatchctl {version}" "User Commands"', ".SH NAME",
           f"dispatchctl \\- {escape(summary.rstrip('.'))}", ".SH SYNOPSIS", ".B dispatchctl",
           "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...", ".SH DESCRIPTION", ".nf",
           *map(escape, top.rstrip().splitlines()), ".fi", ".SH COMMANDS"]
    for path, text in sections[1:]:
        out += [f'.SS "{path}"', ".nf", *map(escape, text.rstrip().splitlines()), ".fi"]
    out += [".SH NOTES", "The lab (\\fBdispatchctl lab\\fR) is not part of this build: run it from a checkout.",
            ".SH SEE ALSO", "systemctl(1), journalctl(1)"]
    return "\n".join(out) + "\n"


def main(pyz: str) -> None:
    sys.path.insert(0, pyz)
    import typer

    from roboshop_dispatch import __version__
    from roboshop_dispatch.cli.app import app

    root = typer.main.get_command(app)
    sys.stdout.write(page(__version__, list(commands(root, context(root, "dispatchctl"), "dispatchctl"))))


if __name__ == "__main__":
    main(sys.argv[1])
