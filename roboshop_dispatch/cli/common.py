"""What every ``dispatchctl`` command has, declared once: ``-h/--help``, ``-v/-vv``, ``-q``,
``--exit-code`` next to a ``--dry-run``, metavars that say what a value is, and a one-line summary
in the command list.

:class:`DispatchCommand` adds them to each command typer builds (``app.command()`` uses it), so
no command's signature spells them. Their values land in :data:`INVOCATION` (one invocation per
process) and in ``ctx.meta``; the output layer reads them from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from typer.core import TyperCommand, TyperOption

from ..errors import ExitStatus

HELP_OPTION_NAMES = ["-h", "--help"]

# the command list's one-line summaries (at most ~50 characters: one line at 80 columns)
SUMMARIES: Dict[str, str] = {
    "install": "Provision the host: every step of the manual.",
    "configure": "Write the unit and the settings; restart if changed.",
    "build": "Put /app/dispatch in place (zipapp or go build).",
    "start": "Reload, enable and start the service.",
    "stop": "Stop dispatch (all, or the instances named).",
    "restart": "Restart dispatch, one unit at a time, each ready.",
    "rollback": "Return to the last good generation.",
    "check-rabbitmq": "Can dispatch reach RabbitMQ and use its queue?",
    "check": "Host health and the broker, each with its fix.",
    "status": "The service at a glance (exit 0 running).",
    "logs": "The service's journal, password masked.",
    "uninstall": "Remove the service (--purge: what we created).",
    "completion": "The completion script of bash, zsh or fish.",
    "help": "The help of a command (COMMAND --help).",
    "version": "dispatchctl's version (also --version).",
}

# what a value is, for options declared without a metavar (typer would show <str>)
METAVARS: Dict[str, str] = {
    "--amqp-pass-file": "FILE", "--env-file": "FILE", "--app-dir": "DIR", "--user": "USER",
    "--amqp-user": "USER", "--amqp-host": "HOST[,HOST...]", "--amqp-vhost": "VHOST",
    "--amqp-pass": "PASSWORD", "--lines": "N", "--timeout": "SECONDS", "--amqp-port": "PORT",
}
# a default longer than this is shown in the help text as "(default: ...)" on its own words, so
# that it wraps at 80 columns instead of being cut off
LONG_DEFAULT = 24


@dataclass
class Invocation:
    """The common options of this process's one command."""

    verbosity: int = 0
    quiet: bool = False
    exit_code: bool = False

    @property
    def streaming(self) -> bool:
        """-vv: stream the output of the commands steps run (dnf, apt-get, go build)."""
        return self.verbosity >= 2


INVOCATION = Invocation()


def _echo_command(argv: Any) -> None:
    """-vv: each command dispatchctl runs, on stderr as it starts (a command line holds no secret:
    it would show in ``ps``). A run of steps shows them in its progress instead (runplan.traced)."""
    import shlex
    import sys

    if not INVOCATION.quiet:
        sys.stderr.write(f"$ {shlex.join(argv)}\n")
        sys.stderr.flush()


def _echo_done(result: Any) -> None:
    """-vvv: each command's exit status and time, once it ended."""
    import sys

    if not INVOCATION.quiet:
        sys.stderr.write(f"= exit {result.returncode} in {result.duration_s:.3f}s\n")
        sys.stderr.flush()


def _store_verbosity(ctx: Any, param: Any, value: Any) -> Any:
    _store("verbosity")(ctx, param, value)
    if value and value >= 2:
        from ..host import TRACE

        TRACE.command = _echo_command
        TRACE.done = _echo_done if value >= 3 else None
    return value


def _store(field_name: str):
    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if value is not None:
            setattr(INVOCATION, field_name, value)
            ctx.meta[f"dispatchctl.{field_name}"] = value
        return value
    return callback


def _verbose(expose: bool) -> TyperOption:
    return TyperOption(param_decls=["--verbose", "-v", "verbose"], type=int, count=True, default=0, expose_value=expose,
                       metavar="",
                       callback=_store_verbosity,
                       help="More detail: -v tracebacks of internal errors; -vv each command dispatchctl "
                            "runs ($ dpkg-query ...) and the output of those a step runs (dnf, apt-get, go "
                            "build) as it comes, secrets masked; -vvv each command's exit status and time too.")


def _quiet() -> TyperOption:
    return TyperOption(param_decls=["--quiet", "-q", "quiet"], is_flag=True, default=False, expose_value=False,
                       callback=_store("quiet"), help="Print only errors (and the JSON document with --json).")


def _exit_code() -> TyperOption:
    return TyperOption(param_decls=["--exit-code", "exit_code"], is_flag=True, default=False, expose_value=False,
                       callback=_store("exit_code"),
                       help=f"Exit {int(ExitStatus.CHANGES)} when something would change (with --dry-run) or changed, "
                            "0 when nothing did (drift detection in CI).")


OUTPUTS = ("text", "json")


def _output_format(ctx: Any, param: Any, value: Any) -> Any:
    if value is not None:
        if value not in OUTPUTS:
            import typer

            raise typer.BadParameter(f"{value!r} is not one of {', '.join(OUTPUTS)}")
        ctx.meta["dispatchctl.output"] = value
    return value


def _output() -> TyperOption:
    """``-o json`` (kubectl's habit): the same as ``--json``, on every command that takes it."""
    return TyperOption(param_decls=["--output", "-o", "output"], default=None, expose_value=False,
                       metavar="text|json", callback=_output_format,
                       help="-o json is --json (one JSON document); text: tables (the default).")


def summary(name: str, help_text: Optional[str]) -> str:
    """The command list's line: ours, else the docstring's first sentence."""
    if name in SUMMARIES:
        return SUMMARIES[name]
    first = " ".join((help_text or "").split())
    end = first.find(". ")
    return first[: end + 1] if end > 0 else first


def common_params(params: List[Any]) -> List[Any]:
    """``params`` with metavars named, long defaults wrapped, and the common options added (a
    command's own ``--verbose`` becomes the counting one)."""
    names = {p.name for p in params}
    out: List[Any] = []
    for param in params:
        if param.name == "verbose":
            out.append(_verbose(expose=True))
            continue
        long_names = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if getattr(param, "metavar", "x") is None and not getattr(param, "is_flag", False):
            for opt in long_names:
                if opt in METAVARS:
                    param.metavar = METAVARS[opt]
                    break
        default = getattr(param, "default", None)
        if isinstance(default, str) and len(default) > LONG_DEFAULT and getattr(param, "show_default", False):
            param.show_default = False
            param.help = f"{param.help or ''} (default: {default})".strip()
        out.append(param)
    if "verbose" not in names:
        out.append(_verbose(expose=False))
    out.append(_quiet())
    if "dry_run" in names:
        out.append(_exit_code())
    if "json_output" in names:
        out.append(_output())
    return out


class DispatchCommand(TyperCommand):
    """A typer command with dispatchctl's common options and help conventions."""

    def __init__(self, name: Optional[str], **kwargs: Any) -> None:
        kwargs["params"] = common_params(list(kwargs.get("params") or []))
        kwargs["short_help"] = kwargs.get("short_help") or summary(name or "", kwargs.get("help"))
        settings = dict(kwargs.get("context_settings") or {})
        settings.setdefault("help_option_names", HELP_OPTION_NAMES)
        kwargs["context_settings"] = settings
        super().__init__(name, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        if ctx.meta.get("dispatchctl.output") == "json" and "json_output" in ctx.params:
            ctx.params["json_output"] = True  # -o json
        return super().invoke(ctx)
