"""The run log: every run that changes the host appends what it did to ``layout.LOG_FILE``
(``/var/log/dispatchctl/dispatchctl.log``, root 0600, in a directory of root's alone), masked:
the command line, each step's result, and the full output of every command a failed step ran
(the screen shows only its last lines).

Masked by field, as on the screen (redact.py): the command line argument by argument before it
is joined, the value of a secret option (``--amqp-pass VALUE``, ``--amqp-pass=VALUE``) becoming
``********`` whatever it holds (a quote in it would otherwise be shell-quoted into a form no text
search finds) and an ``--artifact`` URL's credentials and query ``***`` (artifact.shown); a
step's result as it is (it holds no secret); what the commands printed with every secret value
masked (a command's output can echo anything). A log is appended to, so it is not written by temp +
rename; it is opened without following a link and without blocking (a FIFO planted there would
hang every run while it holds the host lock), refused unless it is a regular file of its own, and
set to root 0600 on the open file. The log written by 0.4 and earlier, ``/var/log/
dispatchctl.log``, is moved into the directory by the first run. Failing to log never fails a
run: :meth:`RunLog.open` returns None with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import stat
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from .layout import LEGACY_LOG_FILE, LOG_FILE
from .redact import MASK, Redactor

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


URL_OPTIONS = ("--artifact",)  # a URL that may carry credentials or a signature: shown by artifact.shown


def masked_argv(argv: Sequence[str], secret_options: Sequence[str]) -> List[str]:
    """``argv`` with the value of every secret option replaced by the mask, as an argument (never
    by searching the joined text), and an ``--artifact`` URL's secrets masked."""
    from .artifact import shown

    def value_shown(option: str, value: str) -> str:
        return MASK if option in secret_options else shown(value)

    out: List[str] = []
    pending: Optional[str] = None  # an option whose value is the next argument
    for arg in argv:
        if pending is not None:
            out.append(value_shown(pending, arg))
            pending = None
            continue
        option, eq, value = arg.partition("=")
        if option not in secret_options and option not in URL_OPTIONS:
            out.append(arg)
        elif eq:
            out.append(f"{option}={value_shown(option, value)}")
        else:
            out.append(arg)
            pending = option
    return out


def _root_only_dir(directory: Path) -> str:
    """'' when ``directory`` is (or has just been made) a directory only root may write in; else why not."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot make {directory}: {exc.strerror or exc}"
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return (f"{directory} is not a directory of root's alone (uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}): remove it after checking who made it")
    return ""


def _migrate(legacy: Path, path: Path) -> None:
    """The log of 0.4 and earlier into the new place, when it is root's own regular file."""
    try:
        st = os.lstat(legacy)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1 and not os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.rename(legacy, path)


class RunLog:
    """One run's entries in the log (see the module's docstring)."""

    def __init__(self, fd: int, path: Path, redactor: Redactor) -> None:
        self.fd = fd
        self.path = path
        self.redactor = redactor
        self._commands: List[Any] = []  # host.Result of the step running now

    @classmethod
    def open(cls, redactor: Redactor, path: Path = LOG_FILE,
             legacy: Optional[Path] = None) -> Tuple[Optional[RunLog], str]:
        """(the log, "") or (None, why it cannot be written). ``legacy``: an older log to move to
        ``path`` (for the default path: the log of 0.4 and earlier)."""
        why = _root_only_dir(path.parent)
        if why:
            return None, f"cannot write {path}: {why}"
        legacy = legacy or (LEGACY_LOG_FILE if path == LOG_FILE else None)
        if legacy is not None:
            _migrate(legacy, path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | _NONBLOCK,
                         0o600)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO nobody reads: opening it without O_NONBLOCK hangs
                return None, f"cannot write {path}: a FIFO, not a regular file of its own"
            return None, f"cannot write {path}: {exc.strerror or exc}"
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                raise OSError(0, "not a regular file of its own")
            os.set_blocking(fd, True)
            if st.st_uid != 0 or st.st_gid != 0:
                os.fchown(fd, 0, 0)
            if stat.S_IMODE(st.st_mode) != 0o600:
                os.fchmod(fd, 0o600)
        except OSError as exc:
            os.close(fd)
            return None, f"cannot write {path}: {exc.strerror or exc}"
        return cls(fd, path, redactor), ""

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:  # a full disk must not fail the run
            pass

    def start(self, command: str, argv: Sequence[str], secret_options: Optional[Sequence[str]] = None) -> None:
        """The run's first line: the command line, masked argument by argument (see the module
        text); ``secret_options``: those whose value is masked (default: every secret option)."""
        from .knobs import OPTIONS

        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        secret = [k.option for k in OPTIONS if k.secret] if secret_options is None else secret_options
        shown = shlex.join(masked_argv(argv, secret))
        self.write(f"\n=== {stamp} dispatchctl {command} (pid {os.getpid()}): {shown}\n")

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
        for cmd in self._commands:  # a command line holds no secret (it would show in `ps`); its output may
            self.write(f"  $ {shlex.join(cmd.argv)}  (exit {cmd.returncode})\n")
            for name, text in (("stdout", cmd.stdout), ("stderr", cmd.stderr)):
                self.write("".join(f"  {name}| {self.redactor.text(line)}\n" for line in text.splitlines()))

    def finish(self, summary: str) -> None:
        self.write(f"=== {summary}\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
