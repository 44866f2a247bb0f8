"""Signals and the clean stop.

SIGTERM/SIGINT only wake the I/O loop (``signal.set_wakeup_fd``); the stop itself runs in the
loop: cancel the consumer, let the orders in flight finish and get acked, requeue what waits for
a retry, then close the connection. After :data:`STOP_GRACE` seconds whatever is still in flight
goes back to the queue; after :data:`STOP_DEADLINE` the process ends whatever the broker does. A
second signal closes at once.
"""

from __future__ import annotations

import signal
import socket
from typing import Any, Callable, Optional

from pika.adapters.select_connection import IOLoop

STOP_GRACE = 8.0  # after SIGTERM, orders in flight get this long to finish
STOP_DEADLINE = 9.5  # and the process ends by then whatever the broker does


def _note_signal(_signum: int, _frame: Any) -> None:
    """The real work happens in the I/O loop, woken by signal.set_wakeup_fd."""


class SignalWakeup:
    """Routes SIGTERM/SIGINT into the I/O loop as ``on_signal(name)`` calls."""

    def __init__(self, ioloop: IOLoop, on_signal: Callable[[str], None]) -> None:
        self.ioloop = ioloop
        self.on_signal = on_signal
        self._r: Optional[socket.socket] = None
        self._w: Optional[socket.socket] = None

    def install(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._r, self._w = r, w
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _note_signal)
        self.ioloop.add_handler(r.fileno(), self._on_readable, IOLoop.READ)

    def restore(self) -> None:
        signal.set_wakeup_fd(-1)
        for sock in (self._r, self._w):
            if sock is not None:
                sock.close()

    def _on_readable(self, _fd: int, _events: int) -> None:
        assert self._r is not None
        try:
            data = self._r.recv(512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.on_signal(signal.Signals(signum).name)


class Shutdown:
    """The stop sequence of the service (``service`` is the Dispatcher)."""

    def __init__(self, service: Any) -> None:
        self.svc = service
        self.stopping = False

    def stop(self, why: str) -> None:
        svc = self.svc
        sess = svc.session
        if self.stopping:
            svc.log.warning(f"{why} again: closing now (unacked orders go back to the queue)")
            if sess is not None and sess.alive:
                sess.close()
            else:
                svc.ioloop.stop()
            return
        self.stopping = True
        svc.ioloop.call_later(STOP_GRACE, self._grace_over)
        svc.ioloop.call_later(STOP_DEADLINE, self._deadline)
        busy = sess.tracker.in_flight + len(sess.unconfirmed) if sess is not None and sess.alive else 0
        svc.log.info(f"{why} received: stopping ({busy} orders in flight)")
        svc.notifier.stopping(f"stopping: finishing {busy} orders in flight")
        svc.cancel_retry()
        if sess is None or not sess.alive:
            svc.ioloop.stop()
            return
        svc.quarantine.requeue_now(sess)
        if sess.consuming and sess.channel is not None and sess.channel.is_open:
            svc.connector.cancel(sess, lambda: self._on_cancelled(sess))
        else:
            sess.close()

    def _on_cancelled(self, sess: Any) -> None:
        sess.consuming = False
        self.maybe_done(sess)

    def maybe_done(self, sess: Any) -> None:
        """Close once nothing is in flight any more (called after each handled delivery)."""
        if not self.stopping or sess.consuming or sess.busy or not sess.usable:
            return
        self.svc.acks.final(sess)
        sess.close()

    def _grace_over(self) -> None:
        sess = self.svc.session
        if sess is None or not sess.alive:
            self.svc.ioloop.stop()
            return
        self.svc.log.warning(f"orders still in flight after {STOP_GRACE:g}s: closing "
                             f"({sess.tracker.in_flight + len(sess.unconfirmed)} go back to the queue)")
        self.svc.acks.final(sess)
        sess.close()

    def _deadline(self) -> None:
        self.svc.log.warning("the broker did not confirm the close in time: exiting anyway")
        self.svc.ioloop.stop()
