"""Run a command on a real terminal: a pty that is its controlling terminal (stdin, stdout and
stderr; ``getpass`` reads /dev/tty), with a window of ``columns`` columns set before it starts.
One helper for every test of what a person at a terminal sees."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import termios
import time
from typing import Dict, List, Optional, Tuple


def on_terminal(argv: List[str], env: Dict[str, str], *, columns: int = 80, prompt: Optional[bytes] = None,
                answer: Optional[str] = None, keys: Optional[bytes] = None,
                timeout: float = 30.0) -> Tuple[int, bytes]:
    """Run ``argv``; type ``answer`` (and Enter), or press ``keys`` as they are (``b"\\x03"``:
    Ctrl-C), once ``prompt`` shows. Returns the exit code and everything the terminal showed. A
    child still running at ``timeout`` is killed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    shown = b""
    answered = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if (answer is not None or keys is not None) and prompt is not None and not answered and prompt in shown:
                os.write(fd, keys if keys is not None else (answer or "").encode() + b"\n")
                answered = True
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown
