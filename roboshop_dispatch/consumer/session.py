"""One connection to one broker node and the callback chain that gets it to consuming.

Modelled on pika's ``asynchronous_consumer_example.py``: connect -> open the consuming channel ->
declare the contract's topology (exchange, ``orders`` with no arguments, the binding, the
``orders.invalid`` quarantine queue) -> ``basic.qos(prefetch)`` -> open a confirm-mode channel for
quarantine copies -> ``basic.consume``. Each step's callback starts the next; every outcome is
reported to the :class:`Events` the service implements (consuming, open failed, closed, a
delivery, a confirm, a returned copy, blocked/unblocked).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop

from .. import amqp
from . import bounded
from . import delivery as deliveries
from .acks import AckTracker
from .fastpath import DispatchConnection
from .logs import LineLog
from .quarantine import Unconfirmed

FAST = "fast"
PIKA = "pika"


class Session:
    """One connection, its two channels, its delivery tags and its quarantine copies."""

    def __init__(self, number: int, host: str, path: str) -> None:
        self.number = number
        self.host = host
        self.path = path  # the delivery path: FAST or PIKA
        self.conn: Any = None  # the pika connection, set right after this object exists
        self.consuming_since = 0.0
        self.channel: Any = None  # consuming channel
        self.qchannel: Any = None  # quarantine publishing channel, confirm mode
        self.consumer_tag = f"dispatch.{os.getpid()}.{number}"
        self.cancelled: Set[str] = set()  # our consumer tags cancelled on this channel
        self.consuming = False
        self.alive = True  # False once the connection is gone: late timers do nothing
        self.closing = False  # we asked for the close
        self.blocked = False  # the broker blocked our publishing (a resource alarm)
        self.trouble: Optional[str] = None  # why we closed it ourselves, if for an error
        self.tracker = AckTracker()
        self.ack_timer: Any = None
        self.since_ack = 0
        self.unconfirmed = Unconfirmed()
        self.deferred: Dict[int, Any] = {}  # delivery tag -> timer that requeues it
        self.declaring: Optional[str] = None  # the queue whose (active) declare is in flight
        self.passive: Set[str] = set()  # queues of another type than configured: declared passively

    @property
    def busy(self) -> bool:
        return bool(self.tracker.in_flight or self.unconfirmed or self.deferred)

    @property
    def usable(self) -> bool:
        return self.alive and not self.closing

    @property
    def frame_max(self) -> int:
        try:
            return int(self.conn.params.frame_max)
        except (AttributeError, TypeError, ValueError):
            return 131072

    def close(self, trouble: Optional[str] = None) -> None:
        """Close the connection (once); ``trouble``: we close it because of this error."""
        if trouble is not None and self.trouble is None:
            self.trouble = trouble
        if self.closing or not self.alive:
            return
        self.closing = True
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            self.conn.close()


class Events:
    """What the service does when the session gets somewhere (implemented by the Dispatcher)."""

    def on_consuming(self, sess: Session) -> None: ...
    def on_open_failed(self, sess: Session, error: BaseException) -> None: ...
    def on_closed(self, sess: Session, error: BaseException) -> None: ...
    def on_delivery(self, sess: Session, delivery: deliveries.Delivery) -> None: ...
    def on_confirm(self, sess: Session, frame: Any) -> None: ...
    def on_return(self, sess: Session) -> None: ...
    def on_channel_closed(self, sess: Session, which: str, error: BaseException) -> None: ...


class Connector:
    """Opens sessions and walks each through the callback chain up to consuming."""

    def __init__(self, ioloop: IOLoop, log: LineLog, prefetch: int, events: Events,
                 queue_type: str = amqp.CLASSIC, body_limit: int = deliveries.MAX_BODY) -> None:
        self.ioloop = ioloop
        self.log = log
        self.prefetch = prefetch
        self.events = events
        self.queue_type = queue_type
        self.body_limit = body_limit  # of a larger body only a prefix is kept, on either path
        self.unbounded: Optional[str] = None  # why pika's path assembles whole bodies (said once)
        self.noted: Set[Tuple[str, str]] = set()  # (queue, its type) already logged as differing

    def open(self, sess: Session, params: pika.ConnectionParameters) -> None:
        ev = self.events
        callbacks: Dict[str, Any] = dict(
            on_open_callback=lambda _conn: self._on_open(sess),
            on_open_error_callback=lambda _conn, error: ev.on_open_failed(sess, error),
            on_close_callback=lambda _conn, error: ev.on_closed(sess, error),
            custom_ioloop=self.ioloop,
        )
        if sess.path == FAST:
            sess.conn = DispatchConnection(params, body_limit=self.body_limit, **callbacks)
        else:
            sess.conn = pika.SelectConnection(params, **callbacks)

    def _steps(self, sess: Session, steps: Sequence[Callable[[Callable[..., None]], None]],
               done: Callable[[], None]) -> None:
        def run(index: int, *_frame: Any) -> None:
            if not sess.usable:
                return
            if index == len(steps):
                done()
            else:
                steps[index](functools.partial(run, index + 1))

        run(0)

    def _on_open(self, sess: Session) -> None:
        sess.conn.add_on_connection_blocked_callback(lambda _conn, _frame: self._blocked(sess, True))
        sess.conn.add_on_connection_unblocked_callback(lambda _conn, _frame: self._blocked(sess, False))
        sess.conn.channel(on_open_callback=functools.partial(self._on_channel, sess))

    def _blocked(self, sess: Session, blocked: bool) -> None:
        sess.blocked = blocked
        if blocked:
            self.log.warning(f"the broker blocked publishing on {sess.host} (a resource alarm): bad "
                             "messages go back to the queue until it is lifted")
        else:
            self.log.info(f"the broker unblocked publishing on {sess.host}")

    def _on_channel(self, sess: Session, channel: Any) -> None:
        if not sess.usable:
            return
        sess.channel = channel
        if sess.path == PIKA:
            self._bound(channel)
        channel.add_on_close_callback(lambda ch, error: self._on_channel_closed(sess, ch, error))
        channel.add_on_cancel_callback(lambda _frame: self._on_broker_cancel(sess))
        self._steps(sess, [
            lambda cb: amqp.declare_exchange(channel, callback=cb),
            lambda cb: self._declare(sess, channel, amqp.QUEUE, cb),
            lambda cb: amqp.bind_queue(channel, callback=cb),
            lambda cb: self._declare(sess, channel, amqp.QUARANTINE_QUEUE, cb),
            lambda cb: channel.basic_qos(prefetch_count=self.prefetch, callback=cb),
        ], lambda: sess.conn.channel(on_open_callback=functools.partial(self._on_qchannel, sess)))

    def _bound(self, channel: Any) -> None:
        """pika's path keeps at most a prefix of a body over the limit too (:mod:`.bounded`)."""
        why = bounded.install(channel, self.body_limit)
        if why is not None and self.unbounded is None:
            self.unbounded = why
            self.log.warning(f"pika {pika.__version__}'s delivery path cannot be bounded ({why}): bodies over "
                             f"{self.body_limit} bytes are assembled whole before they are quarantined")

    def _declare(self, sess: Session, channel: Any, queue: str, then: Callable[..., None]) -> None:
        """Declare ``queue`` with the configured type, or passively once it proved to be of another."""
        passive = queue in sess.passive
        sess.declaring = None if passive else queue

        def declared(frame: Any) -> None:
            sess.declaring = None
            then(frame)

        amqp.declare_queue(channel, queue=queue, queue_type=self.queue_type, passive=passive, callback=declared)

    def _on_channel_closed(self, sess: Session, channel: Any, error: BaseException) -> None:
        """A queue of another type than configured (406 on our declare): never crash-loop on it, never
        delete it; a new channel uses it as it is (passive declare). Anything else: the service's."""
        if channel is not sess.channel:
            return  # a channel we already replaced
        conflict = amqp.queue_type_conflict(error) if sess.declaring is not None and sess.usable else None
        if conflict is None or conflict[0] != sess.declaring:
            self.events.on_channel_closed(sess, "consuming", error)
            return
        queue, current = conflict
        sess.passive.add(queue)
        sess.declaring = None
        if (queue, current) not in self.noted:
            self.noted.add((queue, current))
            self.log.warning(
                f"queue {queue!r} exists as a {current} queue but DISPATCH_QUEUE_TYPE={self.queue_type}: using it as "
                f"it is (passive declare); set DISPATCH_QUEUE_TYPE={current} to match, or move it (docs/howto/"
                "scaling.md)")
        sess.conn.channel(on_open_callback=functools.partial(self._on_channel, sess))

    def _on_qchannel(self, sess: Session, qchannel: Any) -> None:
        if not sess.usable:
            return
        sess.qchannel = qchannel
        ev = self.events
        qchannel.add_on_close_callback(lambda _ch, error: ev.on_channel_closed(sess, "quarantine", error))
        qchannel.add_on_return_callback(lambda *_returned: ev.on_return(sess))
        qchannel.confirm_delivery(ack_nack_callback=functools.partial(ev.on_confirm, sess),
                                  callback=lambda _frame: self.consume(sess))

    def consume(self, sess: Session) -> None:
        if not sess.usable:
            return
        ev = self.events
        if isinstance(sess.conn, DispatchConnection):
            sess.conn.fast_deliveries(sess.channel.channel_number, functools.partial(ev.on_delivery, sess))
        sess.channel.basic_consume(
            amqp.QUEUE, functools.partial(self._on_message, sess), consumer_tag=sess.consumer_tag,
            callback=lambda _frame: ev.on_consuming(sess),
        )

    def _on_message(self, sess: Session, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """pika's delivery callback (the pika delivery path)."""
        self.events.on_delivery(sess, deliveries.from_pika(method, properties, body, self.body_limit))

    def cancel(self, sess: Session, done: Callable[[], None]) -> None:
        """Stop consuming; ``done()`` once the broker confirmed."""
        sess.cancelled.add(sess.consumer_tag)
        sess.channel.basic_cancel(sess.consumer_tag, callback=lambda _frame: done())

    def _on_broker_cancel(self, sess: Session) -> None:
        if sess.usable:
            self.log.warning(f"the broker cancelled our consumer (was {amqp.QUEUE!r} deleted?): reconnecting")
            sess.close("consumer cancelled by the broker")
