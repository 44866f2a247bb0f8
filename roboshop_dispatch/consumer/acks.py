"""Which deliveries may be acknowledged, when orders complete out of order.

The broker numbers the deliveries of a channel 1, 2, 3, ...; ``basic.ack(tag, multiple=True)``
acknowledges every outstanding delivery up to ``tag``. An order may only be acked once handled,
and orders finish out of order (each sleeps a random time), so the tracker keeps the highest
*contiguous* completed tag: everything at or below it is done and may be acked in one frame.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Set, Tuple


class AckTracker:
    __slots__ = ("_acked", "_ahead", "_done_upto", "_in_flight", "_settled")

    def __init__(self) -> None:
        self._done_upto = 0  # every tag <= this is completed
        self._acked = 0  # every tag <= this has been acked
        self._ahead: Set[int] = set()  # completed tags above _done_upto + 1 (a gap below them)
        self._in_flight = 0
        self._settled: Set[int] = set()  # completed by a reject/nack already: never acked again

    def delivered(self) -> None:
        """A delivery arrived and is being handled."""
        self._in_flight += 1

    def complete(self, tag: int, settled: bool = False) -> None:
        """The delivery ``tag`` was handled (each tag exactly once); ``settled``: it was rejected
        or nacked already, so no ack may name it (acking a settled tag is a channel error)."""
        self._in_flight -= 1
        if settled:
            self._settled.add(tag)
        if tag == self._done_upto + 1:
            upto = tag
            ahead = self._ahead
            if ahead:
                while upto + 1 in ahead:
                    upto += 1
                    ahead.discard(upto)
            self._done_upto = upto
        elif tag > self._done_upto:
            self._ahead.add(tag)

    @property
    def in_flight(self) -> int:
        """Deliveries received and not yet handled."""
        return self._in_flight

    @property
    def unacked_done(self) -> int:
        """Handled deliveries not yet acknowledged."""
        return self._done_upto - self._acked + len(self._ahead)

    def take(self) -> Optional[int]:
        """The tag to ack with ``multiple=True`` now, or None when nothing new is ackable."""
        previous, done = self._acked, self._done_upto
        if done <= previous:
            return None
        upto = done
        settled = self._settled
        if settled:
            while upto > previous and upto in settled:
                upto -= 1  # the broker forgot the settled ones: ack the highest one it still holds
            settled.difference_update(range(previous + 1, done + 1))
        self._acked = done
        return upto if upto > previous else None

    def take_all(self) -> Tuple[Optional[int], List[int]]:
        """For a final flush: ``(tag to ack with multiple=True or None, tags to ack one by one)``.

        Gaps exist when tags were never handled by us (pika rejects deliveries that arrive after
        basic.cancel), so completed tags above a gap are acked one by one (``multiple=False``).
        """
        singles = sorted(self._ahead - self._settled)
        self._ahead.clear()
        return self.take(), singles


ACK_DELAY = 0.01  # seconds: handled deliveries are acked together at most this late...
ACK_BATCH_DIVISOR = 4  # ...or as soon as prefetch/4 of them are waiting


class Acker:
    """Batches the acks of one session's handled deliveries (``multiple=True`` over the highest
    contiguous prefix), always after the log lines of those deliveries were written.

    ``sess`` is a :class:`~.session.Session`; ``after_done(sess)`` runs after each completion
    (the shutdown uses it to notice when the last delivery in flight was handled)."""

    def __init__(self, ioloop: Any, log: Any, prefetch: int,
                 after_done: Optional[Callable[[Any], None]] = None) -> None:
        self.ioloop = ioloop
        self.log = log
        self.batch = max(1, prefetch // ACK_BATCH_DIVISOR)
        self.after_done = after_done

    def done(self, sess: Any, tag: int, settled: bool = False) -> None:
        """Delivery ``tag`` is handled (``settled``: it was nacked/rejected already)."""
        sess.tracker.complete(tag, settled)
        sess.since_ack += 1
        if sess.since_ack >= self.batch:
            self.flush(sess)
        elif sess.ack_timer is None:
            sess.ack_timer = self.ioloop.call_later(ACK_DELAY, lambda: self._on_timer(sess))
        if self.after_done is not None:
            self.after_done(sess)

    def _on_timer(self, sess: Any) -> None:
        sess.ack_timer = None
        self.flush(sess)

    def stop_timer(self, sess: Any) -> None:
        if sess.ack_timer is not None:
            self.ioloop.remove_timeout(sess.ack_timer)
            sess.ack_timer = None

    def flush(self, sess: Any) -> None:
        self.stop_timer(sess)
        sess.since_ack = 0
        self.log.flush()  # the order lines are out before their acks
        if not sess.alive or sess.channel is None or not sess.channel.is_open:
            return
        upto = sess.tracker.take()
        if upto is not None:
            sess.channel.basic_ack(upto, multiple=True)

    def final(self, sess: Any) -> None:
        """Ack everything handled, including tags above a gap (one by one)."""
        self.log.flush()
        self.stop_timer(sess)
        if not sess.alive or sess.channel is None or not sess.channel.is_open:
            return
        upto, singles = sess.tracker.take_all()
        if upto is not None:
            sess.channel.basic_ack(upto, multiple=True)
        for tag in singles:
            sess.channel.basic_ack(tag, multiple=False)
