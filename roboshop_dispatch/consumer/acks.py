"""Which deliveries may be acknowledged, when orders complete out of order.

The broker numbers the deliveries of a channel 1, 2, 3, ...; ``basic.ack(tag, multiple=True)``
acknowledges every outstanding delivery up to ``tag``. An order may only be acked once handled,
and orders finish out of order (each sleeps a random time), so the tracker keeps the highest
*contiguous* completed tag: everything at or below it is done and may be acked in one frame.
"""

from __future__ import annotations

from typing import List, Optional, Set, Tuple


class AckTracker:
    __slots__ = ("_acked", "_ahead", "_done_upto", "_in_flight")

    def __init__(self) -> None:
        self._done_upto = 0  # every tag <= this is completed
        self._acked = 0  # every tag <= this has been acked
        self._ahead: Set[int] = set()  # completed tags above _done_upto + 1 (a gap below them)
        self._in_flight = 0

    def delivered(self) -> None:
        """A delivery arrived and is being handled."""
        self._in_flight += 1

    def complete(self, tag: int) -> None:
        """The delivery ``tag`` was handled (each tag exactly once)."""
        self._in_flight -= 1
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
        if self._done_upto > self._acked:
            self._acked = self._done_upto
            return self._done_upto
        return None

    def take_all(self) -> Tuple[Optional[int], List[int]]:
        """For a final flush: ``(tag to ack with multiple=True or None, tags to ack one by one)``.

        Gaps exist when tags were never handled by us (pika rejects deliveries that arrive after
        basic.cancel), so completed tags above a gap are acked one by one (``multiple=False``).
        """
        singles = sorted(self._ahead)
        self._ahead.clear()
        return self.take(), singles
