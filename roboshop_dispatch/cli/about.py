"""``dispatchctl help [COMMAND...]``, ``dispatchctl version`` and ``dispatchctl completion SHELL``:
about dispatchctl itself, the habits users bring from git, kubectl and the like.

``completion`` prints the script of the shell it is given (never guessed from the parent process
or ``$SHELL``): the script calls dispatchctl back through click's completion protocol
(``_DISPATCHCTL_COMPLETE``), which completes commands, options, the values of ``--flavour`` and
``--queue-type`` and the instances ``stop``/``restart`` take. ``help`` is ``COMMAND --help``.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from ..errors import ExitStatus
from . import options as opt
from .app import app
from .output import print_json

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_DISPATCHCTL_COMPLETE"  # click's: _{PROG}_COMPLETE


def _root() -> typer.core.TyperGroup:
    """The whole command tree, as click runs it (typer.main.get_command: typer's public API)."""
    return typer.main.get_command(app)  # type: ignore[return-value]


def _shell(value: str) -> str:
    if value not in SHELLS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(SHELLS)}")
    return value


@app.command("completion")
def completion(
    shell: str = typer.Argument(..., metavar="bash|zsh|fish", callback=_shell, autocompletion=lambda: list(SHELLS),
                                help="The shell to print the script for."),
) -> None:
    """Print the shell completion script for SHELL: `dispatchctl completion bash >
    /etc/bash_completion.d/dispatchctl`, `dispatchctl completion zsh > "${fpath[1]}/_dispatchctl"`,
    `dispatchctl completion fish > ~/.config/fish/completions/dispatchctl.fish`. It completes
    commands, options, --flavour and --queue-type values and the instances of stop/restart."""
    import contextlib
    import io

    os.environ[COMPLETE_VAR] = f"source_{shell}"  # the completion protocol: print the script, exit
    script = io.StringIO()
    with contextlib.redirect_stdout(script), contextlib.suppress(SystemExit):
        _root().main(args=[], prog_name="dispatchctl")
    del os.environ[COMPLETE_VAR]
    # zsh finds a completion function in $fpath by its first line, #compdef: nothing before it
    sys.stdout.write(script.getvalue().strip() + "\n")
    opt.finish(ExitStatus.OK)


@app.command("help")
def help_(
    command: Optional[List[str]] = typer.Argument(None, metavar="[COMMAND]...",
                                                  help="The command (lab up: two words); none: the command list."),
) -> None:
    """Show the help of COMMAND (the same as `dispatchctl COMMAND --help`), or the command list."""
    code = _root().main(args=[*(command or []), "--help"], prog_name="dispatchctl", standalone_mode=False)
    opt.finish(code if isinstance(code, int) else ExitStatus.OK)


@app.command("version")
def version(json_output: bool = opt.JsonOutput) -> None:
    """Show dispatchctl's version (the same as `dispatchctl --version`)."""
    import platform

    from .. import __version__

    if json_output:
        print_json({"command": "version", "ok": True, "python": platform.python_version(),
                    "executable": sys.executable})
    else:
        sys.stdout.write(f"dispatchctl {__version__}\n")
    opt.finish(ExitStatus.OK)
