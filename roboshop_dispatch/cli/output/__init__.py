"""The CLI's one output layer: one console, one JSON printer, one way to print an error. Secrets
are masked by field where they are formatted (redact.py); ``print_json``, ``write`` and ``error``
take a :class:`roboshop_dispatch.redact.Redactor` only for text quoted from elsewhere.

Every JSON document goes through :func:`print_json`, which gives it the envelope
``{"command", "ok", "version", "error"?, ...}`` (described by ``schema/dispatchctl.schema.json``)
and records that it was printed: ``main()`` prints an error document itself only when a run with
``--json`` ended without one (a usage error, an unexpected exception), so stdout always holds
exactly one document.

rich is imported only when something is drawn on a terminal, and never for ``--json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional

from ...redact import Redactor

NO_SECRETS = Redactor(())


class _State:
    """What this process has printed so far (one invocation per process)."""

    def __init__(self) -> None:
        self.json_documents = 0
        self.errors: List[str] = []


STATE = _State()


def console(stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr): colours on a terminal, plain 120 columns otherwise."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    con = Console(file=stream, highlight=False, soft_wrap=False)
    if not con.is_terminal:
        con = Console(file=stream, highlight=False, width=120, color_system=None)
    return con


def envelope(document: Dict[str, Any]) -> Dict[str, Any]:
    """``document`` with the envelope's members first: command, ok, version (and error)."""
    from ... import __version__

    head: Dict[str, Any] = {"command": document.get("command", "dispatchctl"),
                            "ok": bool(document.get("ok", False)), "version": __version__}
    return {**head, **{k: v for k, v in document.items() if k not in head}}


def error_document(command: str, kind: str, message: str, **extra: Any) -> Dict[str, Any]:
    return envelope({"command": command, "ok": False, "error": {"kind": kind, "message": message}, **extra})


def print_json(document: Any, redactor: Optional[Redactor] = None) -> None:
    """One JSON document on stdout, in the envelope, every string redacted."""
    shown = (redactor or NO_SECRETS).document(envelope(document))
    sys.stdout.write(json.dumps(shown, indent=2, default=str) + "\n")
    sys.stdout.flush()
    STATE.json_documents += 1


def json_printed() -> bool:
    return STATE.json_documents > 0


def last_error() -> str:
    return STATE.errors[-1] if STATE.errors else ""


def write(text: str, redactor: Optional[Redactor] = None, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write((redactor or NO_SECRETS).text(text))
    stream.flush()


def error(message: str, redactor: Optional[Redactor] = None) -> None:
    STATE.errors.append((redactor or NO_SECRETS).text(message))
    write(f"dispatchctl: error: {message}\n", redactor, err=True)


def warning(message: str) -> None:
    write(f"dispatchctl: warning: {message}\n", err=True)
