"""The ``dispatchctl`` command. Imports are lazy so ``dispatchctl --version`` starts fast."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from .. import __version__

        print(f"dispatchctl {__version__}")
        return
    import typer

    from .app import app

    # click's standalone mode prints a multi-line box for a usage error; ours is one line
    # naming the problem, exit 2, like every other bad option.
    usage_error: type[Exception] = typer.BadParameter.__mro__[1]  # click's UsageError, vendored or not
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        format_message = getattr(exc, "format_message", None)
        message = format_message() if callable(format_message) else str(exc)
        if message:  # empty for `no_args_is_help`, which has printed the help already
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"dispatchctl: error: {message}{hint}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("dispatchctl: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
