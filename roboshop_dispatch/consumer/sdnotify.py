"""systemd's notify protocol (sd_notify(3)) over a plain AF_UNIX datagram socket.

With ``NOTIFY_SOCKET`` set (``Type=notify`` units), the consumer sends ``READY=1`` once consuming,
``STATUS=...`` on connect and reconnect, ``STOPPING=1`` on shutdown and, when ``WATCHDOG_USEC`` is
set for this process, ``WATCHDOG=1`` every half interval. Without ``NOTIFY_SOCKET`` every call is a
no-op. Sending never raises: a lost notification must not stop the consumer.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping, Optional, Union

Address = Union[str, bytes]


def socket_address(value: Optional[str]) -> Optional[Address]:
    """The address to send to, from ``NOTIFY_SOCKET``: a path, or ``@name`` for an abstract socket."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not supported


def watchdog_interval(env: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for (sd_watchdog_enabled).
    """
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    target = env.get("WATCHDOG_PID")
    if target:
        try:
            if int(target) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000.0


class Notifier:
    def __init__(self, env: Mapping[str, str]) -> None:
        raw = env.get("NOTIFY_SOCKET")
        self.address = socket_address(raw)
        self.unsupported = bool(raw) and self.address is None
        self.failed: Optional[str] = None  # the first send error, for one log line
        self._sock: Optional[socket.socket] = None
        if self.address is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            self._sock = sock

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when sent."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if self.failed is None:
                self.failed = f"{type(exc).__name__}: {exc}"
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
