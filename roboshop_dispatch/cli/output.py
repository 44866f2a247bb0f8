"""The CLI's one output layer: one console, one JSON printer, one way to print an error, and the
redaction every printed text and document goes through (:class:`roboshop_dispatch.redact.Redactor`).

rich is imported only when something is drawn on a terminal, and never for ``--json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

from ..redact import Redactor

NO_SECRETS = Redactor(())


def console(stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr): colours on a terminal, plain 120 columns otherwise."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    con = Console(file=stream, highlight=False, soft_wrap=False)
    if not con.is_terminal:
        con = Console(file=stream, highlight=False, width=120, color_system=None)
    return con


def print_json(document: Any, redactor: Optional[Redactor] = None) -> None:
    """One JSON document on stdout, every string redacted."""
    shown = (redactor or NO_SECRETS).document(document)
    sys.stdout.write(json.dumps(shown, indent=2, default=str) + "\n")
    sys.stdout.flush()


def write(text: str, redactor: Optional[Redactor] = None, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write((redactor or NO_SECRETS).text(text))
    stream.flush()


def error(message: str, redactor: Optional[Redactor] = None) -> None:
    write(f"dispatchctl: error: {message}\n", redactor, err=True)


def warning(message: str) -> None:
    write(f"dispatchctl: warning: {message}\n", err=True)
