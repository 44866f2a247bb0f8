"""The typer application: each command module registers its commands on ``app``.

Every command is a :class:`~.common.DispatchCommand`: ``-h/--help``, ``-v/-vv``, ``-q`` (and
``--exit-code`` beside a ``--dry-run``) come from there, not from each command's signature."""

from __future__ import annotations

from typing import Any, Callable, Optional

import typer
from typer.core import TyperGroup

from .. import __version__
from .common import HELP_OPTION_NAMES, DispatchCommand


class DispatchGroup(TyperGroup):
    """The command list, without typer's --install-completion and --show-completion (they guess
    the shell from the parent process; ``dispatchctl completion SHELL`` is told it): hidden,
    still accepted."""

    def get_params(self, ctx: Any) -> Any:  # typer adds them after the group is made
        params = super().get_params(ctx)
        for param in params:
            if param.name in ("install_completion", "show_completion"):
                param.hidden = True  # type: ignore[attr-defined]
        return params


class DispatchTyper(typer.Typer):
    """``typer.Typer`` whose commands are :class:`DispatchCommand` unless told otherwise."""

    def command(self, name: Optional[str] = None, *, cls: Any = None, **kwargs: Any) -> Callable[..., Any]:
        return super().command(name, cls=cls or DispatchCommand, **kwargs)


app = DispatchTyper(
    name="dispatchctl",
    help="Provision and operate the RoboShop dispatch service, safely and idempotently.",
    no_args_is_help=True,
    add_completion=True,  # typer's completion protocol (dispatchctl completion SHELL prints its scripts)
    cls=DispatchGroup,
    rich_markup_mode=None,  # plain help: wraps at word boundaries, never cuts a default off
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTION_NAMES},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dispatchctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """dispatchctl: the RoboShop dispatch service in one safe, repeatable command."""


def _register() -> None:
    """Each command module adds its commands to ``app``, in the order the command list shows them.
    ``lab`` only where the lab is (a development and demo tool, docs/development.md): the zipapp
    and the RPM, the production artifacts, leave ``roboshop_dispatch/lab/`` out, and with it the
    command. Looked up, not imported: the lab itself is imported only when a lab command runs."""
    import importlib
    import importlib.util

    package = __name__.rpartition(".")[0]  # not __package__: Python 3.9's zipimport sets it only afterwards
    lab = importlib.util.find_spec(f"{package.rsplit('.', 1)[0]}.lab") is not None
    for module in ("provision", "operate", "check", "status", "logs", "uninstall", "about", *(("lab",) if lab else ())):
        importlib.import_module(f"{package}.{module}")


_register()
