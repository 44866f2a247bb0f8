"""Render the systemd unit and the environment file from the Jinja templates in ``templates/``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

from . import __version__, envfile, pkgfiles
from .layout import CREDENTIAL_NAME, OTLP_HEADERS_CREDENTIAL, PYTHON
from .settings import Settings

WATCHDOG_SEC = 30
# the bundled consumer's memory stays far below this whatever the backlog (prefetch bounds it);
# the Go binary consumes with no prefetch, so a backlog is all in memory: a larger bound
MEMORY_MAX = {"bundled": "256M", "go": "512M"}


def templates_dir() -> Path:
    """Installed wheels (and the single-file dispatchctl, a zip) carry the templates inside the
    package; a source checkout has them at the top level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if pkgfiles.is_file(candidate / "dispatch.service.j2"):
            return candidate
    raise FileNotFoundError("dispatch.service.j2 not found beside the package or in ../templates")


def _template_source(name: str) -> str:
    return pkgfiles.read_bytes(templates_dir() / name).decode()


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),  # from a directory or from inside a zip
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["systemd_quote"] = envfile.quote
    return env


def unit_quote(arg: str) -> str:
    """Quote one ExecStart= argument: systemd splits on spaces and expands % and $."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in arg for c in " \t'\"") else escaped


def exec_start(settings: Settings, python: Optional[str] = None) -> str:
    """The go flavour runs the binary directly; the bundled one is a zipapp run by ``python``
    (isolated mode: no PYTHON* variables, no user site-packages)."""
    binary = unit_quote(str(settings.binary))
    if settings.flavour == "bundled" and python:
        return f"{unit_quote(python)} -I {binary}"
    return binary


def render_unit(settings: Settings, python: Optional[str] = PYTHON, *, credential: bool = False,
                template: bool = False, group: Optional[str] = None) -> str:
    """The unit; ``credential``: the password (and the exporter's headers, when set) come as systemd
    credentials (LoadCredential=); ``template``: dispatch@.service, the instances' template
    (--instances N > 1, each told its number: DISPATCH_INSTANCE=%i), else dispatch.service;
    ``group``: the service user's primary group as the system has it (None: not made yet, so the
    group of its name that useradd --user-group makes)."""
    return _environment().get_template("dispatch.service.j2").render(
        template=template,
        credential=credential,
        credential_name=CREDENTIAL_NAME,
        credential_file=str(settings.credential_file),
        headers=credential and settings.otlp_headers is not None,
        headers_name=OTLP_HEADERS_CREDENTIAL,
        headers_file=str(settings.otlp_headers_file),
        memory_max=MEMORY_MAX[settings.flavour],
        version=__version__,
        flavour=settings.flavour,
        user=settings.service_user,
        group=group or settings.service_user,
        env_file=str(settings.env_file),
        app_dir=str(settings.app_dir),
        exec_start=exec_start(settings, python),
        watchdog_sec=WATCHDOG_SEC,
    )


def render_env(settings: Settings, *, with_password: bool = True) -> str:
    """The environment file; without the password when it is delivered as a credential."""
    reason = "the Go binary reads only AMQP_PASS" if settings.flavour == "go" else \
        "systemd on this host predates credentials"
    return _environment().get_template("dispatch.env.j2").render(
        version=__version__, values=settings.environment(with_password=with_password),
        with_password=with_password, password_reason=reason,
        headers=with_password and settings.otlp_headers is not None,
    )
