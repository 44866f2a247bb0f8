"""The CLI's options: those of the settings generated from their one declaration
(:mod:`roboshop_dispatch.knobs`, by :func:`with_settings`), the few every command shares, and how
the options given become validated settings (:func:`resolved_settings`)."""

from __future__ import annotations

import inspect
import os
import sys
import typing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

import typer

from ..errors import ExitStatus
from ..knobs import PASS_FILE_ENV, PASSWORD_ENV, Knob, options_of
from ..layout import ENV_FILE
from ..validate import SettingsError

if TYPE_CHECKING:
    from ..sources import Remembered, Resolved

# -- the settings' options ------------------------------------------------------------------------
# A remembered setting's option defaults to None (not given): its value is then taken from its
# DISPATCHCTL_* variable, the installed files, or its default (sources.resolve), and --help says so.


def help_of(knob: Knob, command: str) -> str:
    """The option's help on ``command``: the knob's, and where the value comes from when not given."""
    if command in knob.plain:
        return knob.help
    if knob.name == "amqp_pass_file":
        return (f"{knob.help} Else --amqp-pass, ${PASS_FILE_ENV}, ${PASSWORD_ENV}, the installed password, "
                "a hidden prompt on a terminal.")
    if knob.join is not None:
        return (f"{knob.help} Else ${knob.envvar} (OTEL_EXPORTER_OTLP_HEADERS's form: KEY=VALUE,... values "
                "URL-encoded), else the installed ones, else none.")
    if knob.secret:
        return knob.help
    if knob.flag:
        return f"{knob.help} Else ${knob.envvar}=1" + (", else the installed value." if knob.installed else ".")
    if knob.default is None and knob.optional and not knob.installed:
        return f"{knob.help} Else ${knob.envvar}."
    default = "none" if knob.default in (None, "") else knob.default
    remembered = "the installed value, else " if knob.installed else ""
    return f"{knob.help} Else ${knob.envvar}, else {remembered}{default}."


def completer(choices: Sequence[str]) -> Callable[[str], List[str]]:
    """Shell completion (``dispatchctl completion SHELL``) of a value among ``choices``."""
    def complete(incomplete: str) -> List[str]:
        return [choice for choice in choices if choice.startswith(incomplete)]
    return complete


def option(knob: Knob, command: str) -> Tuple[Any, Any]:
    """(the typer option, its annotation) of ``knob`` on ``command``."""
    if knob.flag:
        return typer.Option(False, knob.option, help=help_of(knob, command)), bool
    if knob.join is not None:
        return typer.Option(None, knob.option, metavar=knob.metavar, help=help_of(knob, command)), \
            Optional[List[str]]
    complete = completer(knob.choices) if knob.choices else None
    if command in knob.plain:
        return typer.Option(knob.default, knob.option, metavar=knob.metavar, help=help_of(knob, command),
                            autocompletion=complete), str
    return typer.Option(None, knob.option, metavar=knob.metavar, help=help_of(knob, command),
                        autocompletion=complete), Optional[str]


def with_settings(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The decorated function gets one option per setting ``command`` takes (knobs.options_of),
    before its own parameters, and receives their values as its first argument: a dict by setting
    name, each as text (a flag: "1"), None when not given."""
    knobs = options_of(command)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in list(inspect.signature(fn).parameters.values())[1:]]
        params: List[inspect.Parameter] = []
        for knob in knobs:
            default, annotation = option(knob, command)
            params.append(inspect.Parameter(knob.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))

        def callback(**kwargs: Any) -> Any:
            given = {k.name: _text(kwargs.pop(k.name), k) for k in knobs}
            return fn(given, **kwargs)

        callback.__name__, callback.__qualname__, callback.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        callback.__signature__ = inspect.Signature(params + own)  # type: ignore[attr-defined]
        callback.__annotations__ = {p.name: p.annotation for p in params + own}
        return callback

    return decorate


def _text(value: Any, knob: Knob) -> Optional[str]:
    if isinstance(value, bool):
        return "1" if value else None
    if isinstance(value, (list, tuple)):  # a repeatable option: not given when none was
        return knob.join(value) if value and knob.join is not None else None
    return value


# -- every command --------------------------------------------------------------------------------
JsonOutput = typer.Option(False, "--json", help="Print one JSON document instead of tables.")
Verbose = typer.Option(False, "--verbose", "-v", help="Also show the traceback of an internal error.")
DryRun = typer.Option(False, "--dry-run", "--check", help="Report what would change; change nothing.")
Diff = typer.Option(False, "--diff", help="Show unified diffs of the changes (passwords masked).")
Yes = typer.Option(False, "--yes", "-y", help="Do not ask before deleting (uninstall --purge).")
EnvFile = typer.Option(str(ENV_FILE), "--env-file", hidden=True, help="The installed environment file (for tests).")
EnvFileOfUnit = typer.Option(None, "--env-file", hidden=True,
                             help="The installed environment file (default: the unit's).")


def finish(code: int) -> NoReturn:
    """End the command with ``code`` (after flushing what it printed)."""
    sys.stdout.flush()
    raise typer.Exit(code)


def change_lock():
    """The host's lock for runs that change it (see host.change_lock), telling the user if it waits."""
    from ..host import change_lock as lock

    return lock(on_wait=lambda: typer.echo(
        "dispatchctl: waiting for another dispatchctl run on this host to finish…", err=True))


def usage_error(message: str) -> typer.Exit:
    """Print one line naming the bad option and return the exit (code 2) to raise."""
    from .output import error

    error(message)
    return typer.Exit(ExitStatus.USAGE)


def prompt() -> Optional[str]:
    """The password from a hidden prompt on a terminal (None without one). Enter alone is an
    empty password ("": validated as every password is, and refused); Ctrl-C or Ctrl-D ends the run (KeyboardInterrupt,
    which no ``except Exception`` of a check catches: ``main`` ends the line, says "aborted",
    exit 130)."""
    if not sys.stdin.isatty():
        return None
    import getpass

    try:
        return getpass.getpass("RabbitMQ password: ")
    except (KeyboardInterrupt, EOFError):
        raise KeyboardInterrupt from None


def warn_if_pass_on_command_line(pass_value: Optional[str]) -> None:
    if pass_value is not None:
        from .output import warning

        warning("--amqp-pass is visible to every user in `ps`; use --amqp-pass-file or $DISPATCHCTL_AMQP_PASS")


def warn_if_secret_headers_on_command_line(headers: Optional[str]) -> None:
    from ..knobs import KNOB
    from ..validate import OFF_WORDS

    if headers is not None and headers.strip().lower() not in OFF_WORDS:
        from .output import warning

        warning(f"--otlp-header is visible to every user in `ps` while dispatchctl runs; prefer "
                f"${KNOB['otlp_headers'].envvar}")


def installed_settings(env_file: Path = ENV_FILE) -> Tuple[Mapping[str, Remembered], str]:
    """What is installed (sources.remembered, from the one reader of the installed state), and why
    nothing could be read ('' when it could, or when nothing is installed)."""
    from ..facts.installed import read_settings
    from ..sources import remembered

    state = read_settings(env_file, interpret=False)
    why = state.env_unreadable() if state.env_error and state.env_file.kind != "missing" else ""
    return remembered(state), why


def resolved_settings(
    command: str, given: Dict[str, Optional[str]], *, environ: Optional[Mapping[str, str]] = None,
    installed: Optional[Tuple[Mapping[str, Remembered], str]] = None,
) -> Resolved:
    """Each setting of ``command`` from the option given, else DISPATCHCTL_*, else what is installed,
    else its default, all validated before the password is asked for (a typo never costs a
    prompt); then the password (for install and configure: sources.password). ``given`` holds the
    password's options too (``amqp_pass_file``, ``amqp_pass``). Raises SettingsError naming the
    source of a bad value."""
    from ..knobs import COMMAND_KNOBS, PASSWORD_REQUIRED_BY
    from ..sources import password, resolve

    env = os.environ if environ is None else environ
    found, why = installed if installed is not None else installed_settings()
    resolved = resolve(COMMAND_KNOBS[command], given, env, found, installed_missing=why)
    warn_if_secret_headers_on_command_line(given.get("otlp_headers"))
    if command not in PASSWORD_REQUIRED_BY:
        return resolved
    warn_if_pass_on_command_line(given.get("amqp_pass"))
    secret = password(given.get("amqp_pass_file"), given.get("amqp_pass"), env, found,
                      prompt if sys.stdin.isatty() else None, why)
    return replace(resolved, password=secret(), password_source=secret.source)


__all__ = ["SettingsError", "resolved_settings", "usage_error", "with_settings"]
