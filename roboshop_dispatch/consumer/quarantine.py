"""Quarantine: a bad message is copied once to ``orders.invalid``, and acked once that copy is
confirmed by the broker.

The copy can never route anywhere else and never expires: it is published to the default
exchange with routing key ``orders.invalid`` and ``mandatory``, and of the original's properties
only plain descriptive ones are set at top level. Everything else (``CC``/``BCC``, which RabbitMQ
would use to route the copy back into ``orders``, ``expiration``, ``user_id``, headers of any type)
is preserved in a form that cannot route: the original property bytes exactly as received in the
byte-array header ``x-dispatch-original-properties`` and, when decodable, the original headers
nested in the table header ``x-dispatch-original-headers``. The reason is in ``x-dispatch-error``;
a body over the size limit is quarantined as its first bytes, with ``x-dispatch-body-size`` (the
size the broker announced) and ``x-dispatch-body-truncated``.

Memory: the copies waiting for their confirm hold at most :data:`BUDGET` bytes (plus one copy);
a bad message arriving while over budget, or while the broker blocks our connection (a resource
alarm), is requeued after :data:`REQUEUE_DELAY` seconds instead of being held.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pika
import pika.spec

from ..amqp import QUARANTINE_QUEUE
from .delivery import Delivery
from .logs import Coalescer, reason_kind
from .telemetry import Telemetry

ERROR_HEADER = "x-dispatch-error"
ORIGINAL_PROPERTIES = "x-dispatch-original-properties"
ORIGINAL_PROPERTIES_TRUNCATED = "x-dispatch-original-properties-truncated"
ORIGINAL_HEADERS = "x-dispatch-original-headers"
ORIGINAL_PROPERTIES_TEXT = "x-dispatch-original-properties-text"  # pika path, when pika cannot re-encode
MAX_TEXT = 32 * 1024
BODY_SIZE = "x-dispatch-body-size"
BODY_TRUNCATED = "x-dispatch-body-truncated"
DESCRIPTIVE = ("content_type", "content_encoding", "correlation_id", "message_id", "type", "app_id")
BUDGET = 8 * 1024 * 1024  # bytes of unconfirmed quarantine copies held at most (plus one copy)
REQUEUE_DELAY = 0.5  # seconds before a message that cannot be quarantined now goes back
QUARANTINED = "bad messages quarantined"  # the words of the coalesced summary lines
REQUEUED = "bad messages sent back to the queue for now"
MAX_REASON = 300
HEADER_ROOM = 4096  # what the content header frame needs beside the properties


def _encoded_size(props: pika.spec.BasicProperties) -> int:
    return len(b"".join(props.encode()))


def _build(delivery: Delivery, reason: str, raw: Optional[bytes], with_headers: bool) -> Any:
    headers: Dict[str, Any] = {ERROR_HEADER: reason[:MAX_REASON], BODY_SIZE: delivery.body_size}
    if delivery.truncated:
        headers[BODY_TRUNCATED] = True
    original = delivery.encoded_properties()
    props = delivery.properties
    if raw is not None:
        headers[ORIGINAL_PROPERTIES] = raw
        if original is not None and len(raw) < len(original):
            headers[ORIGINAL_PROPERTIES_TRUNCATED] = len(original)
    elif original is None and props is not None:  # pika decoded them and cannot encode them back
        headers[ORIGINAL_PROPERTIES_TEXT] = repr(props)[:MAX_TEXT]
    fields: Dict[str, Any] = {}
    if props is not None:
        for name in DESCRIPTIVE:
            value = getattr(props, name, None)
            if isinstance(value, str):
                fields[name] = value
        if with_headers and props.headers:
            headers[ORIGINAL_HEADERS] = dict(props.headers)
    return pika.BasicProperties(headers=headers, delivery_mode=2, **fields)


def copy_properties(delivery: Delivery, reason: str, frame_max: int = 131072) -> Any:
    """The quarantine copy's properties: the most of the original that pika can encode and that
    fits one content header frame of ``frame_max`` bytes."""
    limit = max(1024, frame_max - HEADER_ROOM)
    raw = delivery.encoded_properties()
    attempts = [(raw, True), (raw, False)]
    if raw is not None:
        attempts.append((raw[:max(0, limit - 1024)], False))
    attempts.append((None, False))
    for kept, with_headers in attempts:
        try:
            props = _build(delivery, reason, kept, with_headers)
            if _encoded_size(props) <= limit:
                return props
        except Exception:
            continue
    return pika.BasicProperties(headers={ERROR_HEADER: reason[:MAX_REASON]}, delivery_mode=2)


class Pending:
    """A quarantine copy published and not yet confirmed."""

    __slots__ = ("size", "tag")

    def __init__(self, tag: int, size: int) -> None:
        self.tag = tag
        self.size = size


class Unconfirmed:
    """The copies of one session's quarantine channel waiting for their confirm."""

    def __init__(self) -> None:
        self.items: Dict[int, Pending] = {}
        self.bytes = 0
        self.seq = 0

    def __len__(self) -> int:
        return len(self.items)

    def room_for(self, size: int) -> bool:
        return not self.items or self.bytes + size <= BUDGET

    def add(self, tag: int, size: int) -> None:
        self.seq += 1
        self.items[self.seq] = Pending(tag, size)
        self.bytes += size

    def confirmed(self, seq: int, multiple: bool) -> List[Pending]:
        """The copies a confirm (ack or nack) of ``seq`` covers, removed from the waiting set."""
        seqs = sorted(s for s in self.items if s <= seq) if multiple else [seq]
        done = []
        for s in seqs:
            item = self.items.pop(s, None)
            if item is not None:
                self.bytes -= item.size
                done.append(item)
        return done


class Quarantine:
    """Publishes quarantine copies on a session's confirm-mode channel; acks each original once
    its copy is confirmed (``acks.done``); requeues, after a delay, what it cannot hold now. Its
    warnings are coalesced (the first of each reason at once, then a count per interval): a
    publisher of bad messages cannot drown the orders' lines."""

    def __init__(self, ioloop: Any, log: Any, acks: Any, stats: Dict[str, int], *,
                 telemetry: Optional[Telemetry] = None, log_interval: float = 60.0) -> None:
        self.ioloop = ioloop
        self.log = log
        self.acks = acks
        self.stats = stats
        self.telemetry = telemetry or Telemetry()
        self.notes = Coalescer(log, ioloop, log_interval, QUARANTINED)
        self.requeues = Coalescer(log, ioloop, log_interval, REQUEUED)

    def put(self, sess: Any, delivery: Delivery, reason: str) -> None:
        if not sess.usable or sess.qchannel is None or not sess.qchannel.is_open:
            return  # the delivery goes back to the queue with its connection
        raw = delivery.encoded_properties() or b""
        size = len(delivery.body) + len(raw)
        if sess.blocked or not sess.unconfirmed.room_for(size):
            why = "the broker blocks publishing" if sess.blocked else \
                f"{sess.unconfirmed.bytes} bytes of quarantine copies await their confirm"
            kind = "the broker blocks publishing" if sess.blocked else "quarantine copies await their confirm"
            self.defer(sess, delivery.tag, f"bad message ({reason}), cannot quarantine it now: {why}", kind)
            return
        again = " (redelivered)" if delivery.redelivered else ""
        cut = f", {len(delivery.body)} kept" if delivery.truncated else ""
        self.notes.warning(reason_kind(reason), f"bad message quarantined to {QUARANTINE_QUEUE}: {reason} "
                                                f"[delivery {delivery.tag}, {delivery.body_size} bytes{cut}{again}]")
        self.telemetry.quarantined(delivery, reason)
        props = copy_properties(delivery, reason, sess.frame_max)
        sess.qchannel.basic_publish("", QUARANTINE_QUEUE, delivery.body, props, mandatory=True)
        sess.unconfirmed.add(delivery.tag, size)  # numbered like the channel's publishes

    def defer(self, sess: Any, tag: int, why: str, kind: Optional[str] = None) -> None:
        """Requeue delivery ``tag`` in REQUEUE_DELAY seconds (it is not held meanwhile); warnings
        of a ``kind`` (bad messages that cannot be quarantined now) are coalesced."""
        text = f"delivery {tag} goes back to the queue in {REQUEUE_DELAY:g}s: {why}"
        if kind is not None:
            self.requeues.warning(kind, text)
        else:
            self.log.warning(text)
        sess.deferred[tag] = self.ioloop.call_later(REQUEUE_DELAY, lambda: self._requeue(sess, tag))

    def _requeue(self, sess: Any, tag: int) -> None:
        if sess.deferred.pop(tag, None) is None or not sess.alive:
            return
        if sess.channel is not None and sess.channel.is_open:
            sess.channel.basic_nack(tag, multiple=False, requeue=True)
        self.acks.done(sess, tag, settled=True)

    def requeue_now(self, sess: Any) -> None:
        """Requeue every deferred delivery at once (stopping)."""
        for tag, timer in list(sess.deferred.items()):
            self.ioloop.remove_timeout(timer)
            self._requeue(sess, tag)

    def on_confirm(self, sess: Any, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for item in sess.unconfirmed.confirmed(method.delivery_tag, bool(method.multiple)):
            if nacked:
                self.log.error(f"the broker refused the quarantine copy of delivery {item.tag} (nack): "
                               "reconnecting to retry")
                sess.close("quarantine publish nacked")
                return
            self.stats["quarantined"] += 1
            self.telemetry.quarantine_confirmed()
            self.acks.done(sess, item.tag)

    def close(self) -> None:
        """At exit: the counts not yet written."""
        self.notes.close()
        self.requeues.close()

    def on_return(self, sess: Any) -> None:
        self.log.error(f"{QUARANTINE_QUEUE!r} does not exist any more (quarantine copy returned): "
                       "reconnecting to redeclare it")
        sess.close("quarantine queue missing")
