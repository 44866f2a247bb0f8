"""How dispatchctl ends: one exit status (:class:`ExitStatus`), one set of error kinds (the JSON
envelope's ``error.kind``, :class:`ErrorKind`) and one base for its errors
(:class:`DispatchctlError`: a message, a kind and what to run or fix next).

Standard library only and nothing else imported: every part of the package may use it (the
consumer excepted: it is bundled alone and keeps its own errors).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Optional, Tuple


class ExitStatus(IntEnum):
    """Every exit code of ``dispatchctl``. ``status`` follows ``systemctl is-active`` (3, 4), so
    two names share a value with another: NOT_RUNNING is CHANGES' 3, NO_SYSTEMD NOT_INSTALLED's 4."""

    OK = 0
    FAILED = 1  # a check or a step failed, the host cannot run the command, an internal error
    USAGE = 2  # a bad option, argument or value: nothing was touched
    CHANGES = 3  # --exit-code: something would change (--dry-run) or changed
    NOT_RUNNING = 3  # status: installed, not running
    NOT_INSTALLED = 4  # status: the unit is not installed
    NO_SYSTEMD = 4  # status: PID 1 is not systemd (LSB's "status unknown")
    NOT_LOADED = 5  # stop, restart: the unit named is not installed (systemctl's own 5)
    ABORTED = 130  # interrupted (SIGINT)


class ErrorKind:
    """The kinds of the JSON envelope's ``error`` member (schema/dispatchctl.schema.json)."""

    USAGE = "usage"  # a bad option or argument (exit 2)
    PREFLIGHT = "preflight"  # the host cannot run the command: not root, no systemd, unsupported OS (exit 1)
    STEP = "step"  # a step failed (exit 1)
    INTERNAL = "internal"  # a bug in dispatchctl (exit 1)
    ABORTED = "aborted"  # interrupted (exit 130)
    NO_SYSTEMD = "no-systemd"  # status or logs on a host whose PID 1 is not systemd
    JOURNAL = "journal"  # journalctl failed (logs --json)
    ALL: Tuple[str, ...] = (USAGE, PREFLIGHT, STEP, INTERNAL, ABORTED, NO_SYSTEMD, JOURNAL)

    @classmethod
    def exit_status(cls, kind: str) -> ExitStatus:
        """usage: 2, aborted: 130, any other kind: 1."""
        return {cls.USAGE: ExitStatus.USAGE, cls.ABORTED: ExitStatus.ABORTED}.get(kind, ExitStatus.FAILED)


class DispatchctlError(Exception):
    """The one base of dispatchctl's errors: the message, its ``kind`` (an :class:`ErrorKind`:
    how it is reported and with which exit status) and ``next_action`` (what to run or fix next;
    '' when the message says it)."""

    kind: str = ErrorKind.INTERNAL

    def __init__(self, message: str = "", next_action: str = "", *, kind: Optional[str] = None) -> None:
        super().__init__(message)
        self.next_action = next_action
        if kind is not None:
            self.kind = kind
