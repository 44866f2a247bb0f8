"""The command runner (secrets stripped from every child's environment) and the host's change lock.
What the host *is* (OS family, root, systemd) is a fact: :mod:`roboshop_dispatch.facts.host`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .errors import DispatchctlError, ErrorKind
from .layout import CHANGE_LOCK

# never handed to a child process (dnf, apt-get, useradd, go, systemctl...): a child's environment
# is readable in /proc/PID/environ by its user, and some tools log their environment
SECRET_ENV_VARS = ("DISPATCHCTL_AMQP_PASS", "AMQP_PASS")


class CommandError(DispatchctlError):
    """A command that failed: carries the argv, exit code and the tail of its output (as the
    Runner shows it: secrets masked)."""

    kind = ErrorKind.STEP

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-5:])
        super().__init__(f"`{shlex.join(self.argv)}` exited {returncode}" + (f": {tail}" if tail else ""))


@dataclass(frozen=True)
class Result:
    argv: Tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class Trace:
    """Who hears of every command a :class:`Runner` runs, whichever part of dispatchctl runs it:
    ``command(argv)`` as it starts, ``done(result)`` when it ended (the CLI's ``-vv`` echoes
    each command line, ``-vvv`` its exit status and time). None: nobody. A command line never
    holds a secret (it would show in ``ps``); what a command prints may, and is masked by who shows it."""

    command: Optional[Callable[[Sequence[str]], None]] = None
    done: Optional[Callable[[Result], None]] = None


TRACE = Trace()


def traced_start(argv: Sequence[str]) -> float:
    """Tell :data:`TRACE` a command starts (for a command run outside a Runner); its start time."""
    if TRACE.command is not None:
        TRACE.command(argv)
    return time.monotonic()


def traced_end(argv: Sequence[str], returncode: int, started: float) -> None:
    """Tell :data:`TRACE` a command run outside a Runner ended (its output is not kept)."""
    if TRACE.done is not None:
        TRACE.done(Result(tuple(argv), returncode, "", "", time.monotonic() - started))


def _as_is(text: str) -> str:
    return text


def child_environment(base: Optional[Mapping[str, str]] = None,
                      extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment every child process gets: ``base`` (default: ours) and ``extra``, without
    any secret variable."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in SECRET_ENV_VARS}
    env.update({k: v for k, v in (extra or {}).items() if k not in SECRET_ENV_VARS})
    return env


class Runner:
    """Runs commands with a timeout, never through a shell, never with a secret in their
    environment (:func:`child_environment`). Output is captured as text.

    ``on_line`` (``-vv``) receives each line of a command's output (stdout and stderr) as it
    comes; ``on_result`` receives every finished command, also a failed one (the run log);
    ``on_notice`` receives a step's word to the operator while it waits (another dnf holds the
    lock): stderr when none is given. Steps never see these: they call ``run`` and ``notice``.

    ``mask`` (the run's :meth:`~roboshop_dispatch.redact.Redactor.text`) masks the secrets in a
    command's output wherever it is shown: a :class:`CommandError`'s tail, and :meth:`shown` for
    a step that quotes the output itself. The Result keeps the output as it is, for parsing."""

    def __init__(self, timeout: float = 300.0, env: Optional[Mapping[str, str]] = None, *,
                 on_line: Optional[Callable[[str], None]] = None,
                 on_result: Optional[Callable[[Result], None]] = None,
                 on_notice: Optional[Callable[[str], None]] = None,
                 mask: Optional[Callable[[str], str]] = None) -> None:
        self.timeout = timeout
        self.env = dict(env) if env is not None else None
        self.calls: List[Tuple[str, ...]] = []  # every argv run, in order (reports and tests)
        self.on_line = on_line
        self.on_result = on_result
        self.on_notice = on_notice
        self.mask: Callable[[str], str] = mask or _as_is

    def shown(self, output: str) -> str:
        """A command's output fit to show: every secret this run knows masked (output can echo anything)."""
        return self.mask(output)

    def notice(self, message: str) -> None:
        """Tell the operator something while a command waits (one line, no secret in it)."""
        if self.on_notice is not None:
            self.on_notice(message)
        else:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: Optional[float] = None,
        input: Optional[str] = None,
        cwd: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> Result:
        self.calls.append(tuple(argv))
        started = traced_start(argv)
        merged = child_environment(self.env, env)
        limit = timeout or self.timeout
        try:
            if self.on_line is not None and input is None:
                result = stream_command(argv, self.on_line, timeout=limit, cwd=cwd, env=merged)
            else:
                proc = subprocess.run(
                    list(argv), capture_output=True, text=True, timeout=limit,
                    input=input, cwd=cwd, env=merged, stdin=None if input is not None else subprocess.DEVNULL,
                )
                result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        except FileNotFoundError:
            result = Result(tuple(argv), 127, "", f"{argv[0]}: command not found", time.monotonic() - started)
            self._report(result)
            if check:
                raise CommandError(argv, 127, f"{argv[0]}: command not found") from None
            return result
        except subprocess.TimeoutExpired as exc:
            self._report(Result(tuple(argv), -1, _text(exc.stdout), _text(exc.stderr)
                                + f"\ntimed out after {exc.timeout:.0f}s", time.monotonic() - started))
            raise CommandError(argv, -1, f"timed out after {exc.timeout:.0f}s") from None
        result = replace(result, duration_s=time.monotonic() - started)
        self._report(result)
        if check and result.returncode != 0:
            raise CommandError(argv, result.returncode, self.mask(result.stderr or result.stdout))
        return result

    def _report(self, result: Result) -> None:
        if self.on_result is not None:
            self.on_result(result)
        if TRACE.done is not None:
            TRACE.done(result)

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen:
        """Start a command in the background (stdout and stderr piped, as text), recorded like run()."""
        self.calls.append(tuple(argv))
        traced_start(argv)
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=child_environment(self.env))


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data if isinstance(data, str) else ""


def stream_command(argv: Sequence[str], on_line: Callable[[str], None], *, timeout: float,
                   cwd: Optional[Path] = None, env: Optional[Mapping[str, str]] = None) -> Result:
    """Run ``argv`` (stdin closed), handing each line of its stdout and stderr to ``on_line`` as
    it comes; the whole of both is in the Result. Killed after ``timeout`` seconds
    (``subprocess.TimeoutExpired``, with the output so far)."""
    import selectors
    import time

    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    data: Dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
    pending: Dict[int, bytearray] = {fd: bytearray() for fd in data}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for fd in data:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(list(argv), timeout, bytes(data[out_fd]), bytes(data[err_fd]))
            for key, _ in sel.select(min(left, 1.0)):
                fd = int(key.fd)
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    if pending[fd]:
                        on_line(pending[fd].decode("utf-8", "replace"))
                    continue
                data[fd] += chunk
                pending[fd] += chunk
                *lines, rest = pending[fd].split(b"\n")
                pending[fd] = bytearray(rest)
                for line in lines:
                    on_line(line.decode("utf-8", "replace"))
    proc.stdout.close()
    proc.stderr.close()
    code = proc.wait()
    return Result(tuple(argv), code, data[out_fd].decode("utf-8", "replace"),
                  data[err_fd].decode("utf-8", "replace"))


def change_lock(path: Path = CHANGE_LOCK, on_wait: Optional[Callable[[], None]] = None):
    """Hold the host's dispatchctl lock: one run that changes the host at a time (install,
    build, configure, start, uninstall); a second one waits for the first. Returns the open file,
    which holds the lock until it is closed."""
    import fcntl

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # never through a link planted at the lock's path; never truncating a file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fh = os.fdopen(fd, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait()
        fcntl.flock(fh, fcntl.LOCK_EX)
    return fh
