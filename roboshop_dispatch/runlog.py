"""The run log: every run that changes the host appends what it did to ``layout.LOG_FILE``
(``/var/log/dispatchctl.log``, root 0600), masked: the command line, each step's result, and
the full output of every command a failed step ran (the screen shows only its last lines).

A log is appended to, so it is not written by temp + rename; it is opened without following a
link, refused unless it is a regular file, and set to root 0600 on the open file. Failing to
log never fails a run: :meth:`RunLog.open` returns None with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from .layout import LOG_FILE
from .redact import Redactor


class RunLog:
    """One run's entries in the log (see the module's docstring)."""

    def __init__(self, fd: int, path: Path, redactor: Redactor) -> None:
        self.fd = fd
        self.path = path
        self.redactor = redactor
        self._commands: List[Any] = []  # host.Result of the step running now

    @classmethod
    def open(cls, redactor: Redactor, path: Path = LOG_FILE) -> Tuple[Optional[RunLog], str]:
        """(the log, "") or (None, why it cannot be written)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            return None, f"cannot write {path}: {exc.strerror or exc}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                raise OSError(0, "not a regular file of its own")
            if st.st_uid != 0 or st.st_gid != 0:
                os.fchown(fd, 0, 0)
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
        except OSError as exc:
            os.close(fd)
            return None, f"cannot write {path}: {exc.strerror or exc}"
        return cls(fd, path, redactor), ""

    def write(self, text: str) -> None:
        data = self.redactor.text(text).encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # a full disk must not fail the run
            pass

    def start(self, command: str, argv: Sequence[str]) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.write(f"\n=== {stamp} dispatchctl {command} (pid {os.getpid()}): {shlex.join(argv)}\n")

    def command_done(self, result: Any) -> None:
        """A command a step ran (host.Runner's on_result)."""
        self._commands.append(result)

    def step_started(self, name: str) -> None:
        self._commands = []

    def step_done(self, result: Any) -> None:
        """A step's line; a failed step's full reason and the full output of its commands."""
        first = (result.message.splitlines() or [""])[0]
        self.write(f"step {result.name}: {result.status} in {result.duration_s:.2f}s: {first}\n")
        if not result.failed:
            return
        self.write("".join(f"  | {line}\n" for line in result.message.splitlines()[1:]))
        if result.next_action:
            self.write(f"  next: {result.next_action}\n")
        for cmd in self._commands:
            self.write(f"  $ {shlex.join(cmd.argv)}  (exit {cmd.returncode})\n")
            for name, text in (("stdout", cmd.stdout), ("stderr", cmd.stderr)):
                self.write("".join(f"  {name}| {line}\n" for line in text.splitlines()))

    def finish(self, summary: str) -> None:
        self.write(f"=== {summary}\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
