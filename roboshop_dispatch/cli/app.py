"""The typer application: each command module registers its commands on ``app``."""

from __future__ import annotations

from typing import Optional

import typer

from .. import __version__

app = typer.Typer(
    name="dispatchctl",
    help="Provision and operate the RoboShop dispatch service, safely and idempotently.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    import importlib

    for module in ("provision", "operate"):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"{__package__}.{module}":
                raise


_register()
