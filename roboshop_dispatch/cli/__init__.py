"""The ``dispatchctl`` command. Imports are lazy (not even ``typing``) so ``dispatchctl --version``
starts fast.

``main()`` keeps two promises for every command: exit codes (0 ok, 1 a check failed, 2 usage,
130 interrupted; ``status``: 3/4; ``--exit-code``: 3) and, with ``--json``, exactly one JSON
document on stdout, also when the command never ran (a usage error) or crashed."""

from __future__ import annotations

import sys


def wants_json(argv: list[str]) -> bool:
    """``--json`` or ``-o json`` (``-ojson``, ``--output json``, ``--output=json``) among the
    options (not after ``--``)."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    pairs = zip(words, [*words[1:], ""])
    return "--json" in words or any(w in ("-ojson", "--output=json") or (w in ("-o", "--output") and n == "json")
                                    for w, n in pairs)


def command_of(argv: list[str], names: set[str]) -> str:
    """The command named on the command line (its first word that is one), else ``dispatchctl``."""
    for word in argv:
        if word == "--":
            break
        if word in names:
            return word
    return "dispatchctl"


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from .. import __version__

        print(f"dispatchctl {__version__}")
        return
    code, kind, message = _not_in_this_build(sys.argv[1:]) or _run()
    argv = sys.argv[1:]
    if kind and wants_json(argv):
        from .app import app
        from .output import error_document, json_printed, print_json

        if not json_printed():
            names = {c.name or (c.callback.__name__.replace("_", "-") if c.callback else "")
                     for c in app.registered_commands}
            print_json(error_document(command_of(argv, names), kind, message or "see stderr"))
    sys.exit(code)


LAB_LEFT_OUT = (
    "the lab is not part of this build of dispatchctl: the single-file dispatchctl and the RPM carry only "
    "what runs on target hosts. Run the lab from a checkout: python3 -m venv .venv && .venv/bin/pip install . "
    "&& sudo .venv/bin/dispatchctl lab up"
)


def _not_in_this_build(argv: list[str]) -> tuple[int, str, str] | None:
    """``dispatchctl lab ...`` where the lab was left out (the one-file dispatchctl and the RPM: the
    command is not even listed there): one clear line instead of "No such command"."""
    words = [w for w in (argv[: argv.index("--")] if "--" in argv else argv) if not w.startswith("-")]
    if words[:1] != ["lab"]:
        return None
    import importlib.util

    if importlib.util.find_spec(f"{__name__.rpartition('.')[0]}.lab") is not None:
        return None
    from ..errors import ErrorKind, ExitStatus
    from .output import error, error_document, print_json

    error(LAB_LEFT_OUT)
    if wants_json(argv):
        print_json(error_document(" ".join(words[:2]), ErrorKind.PREFLIGHT, LAB_LEFT_OUT))
    return ExitStatus.FAILED, ErrorKind.PREFLIGHT, LAB_LEFT_OUT


def _usage_message(exc: Exception) -> str | None:
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    if not message:  # empty for `no_args_is_help`, which has printed the help already
        return None
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{message}{hint}"


def _run() -> tuple[int, str, str]:
    """Run the command: (exit code, error kind when it ended in error, the error's message)."""
    import typer

    from ..errors import ErrorKind, ExitStatus
    from . import output
    from .app import app

    # click's standalone mode prints a multi-line box for a usage error; ours is one line
    # naming the problem, exit 2, like every other bad option.
    usage_error: type[Exception] = typer.BadParameter.__mro__[1]  # click's UsageError, vendored or not
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        message = _usage_message(exc)
        if message:
            output.error(message)
        return ExitStatus.USAGE, ErrorKind.USAGE, message or "a command is required (see `dispatchctl --help`)"
    except typer.Abort:  # click's Ctrl-D (and an older typer's Ctrl-C): the line is ended already
        return _aborted(newline=False)
    except KeyboardInterrupt:
        return _aborted()
    except Exception as exc:  # a bug: one line (the traceback with -v), and the JSON document
        return ExitStatus.FAILED, ErrorKind.INTERNAL, _internal(exc)
    code = code if isinstance(code, int) else 0
    if code == ExitStatus.ABORTED:  # typer's own answer to Ctrl-C (a KeyboardInterrupt in a command)
        return _aborted()
    if code == ExitStatus.USAGE and not output.json_printed():  # a usage error found by the command itself
        return code, ErrorKind.USAGE, output.last_error()
    return code, "", ""


def _aborted(newline: bool = True) -> tuple[int, str, str]:
    """Ctrl-C (or Ctrl-D at the password prompt): a new line on a terminal (the cursor is after
    the prompt or the ^C), "aborted", exit 130."""
    from ..errors import ErrorKind, ExitStatus

    lead = "\n" if newline and sys.stderr.isatty() else ""
    print(f"{lead}dispatchctl: aborted", file=sys.stderr)
    return ExitStatus.ABORTED, ErrorKind.ABORTED, "interrupted"


def _internal(exc: Exception) -> str:
    import traceback

    from .common import INVOCATION
    from .output import NO_SECRETS

    message = NO_SECRETS.text(f"{type(exc).__name__}: {exc}")
    if INVOCATION.verbosity or "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"dispatchctl: internal error: {message} (a bug in dispatchctl: -v shows the traceback; "
          "please report it)", file=sys.stderr)
    return f"internal error: {message}"
