"""The order handler: what happens to each delivery of the consuming channel.

Validate; a bad message goes to quarantine (reason in a header); a good order is reduced to the
two strings of its log line (the body is not kept), "sleeps" twice through ``ioloop.call_later``
(so up to ``prefetch`` orders progress at once without threads), is logged on one line and is
acked after that line was written. An unexpected exception while handling one delivery affects
that delivery only: it is logged with its traceback and quarantined with an internal-error reason.
A delivery for a consumer tag we cancelled is rejected with requeue; one for a tag we never used
is logged as an error and left alone (both exactly as pika's ``Channel._on_deliver`` does).
"""

from __future__ import annotations

import functools
import random
from typing import Any, Dict, Optional

from .acks import Acker
from .config import Config
from .delivery import Delivery
from .logs import LineLog
from .orders import InvalidMessage, Summary, field, summarize
from .quarantine import Quarantine
from .telemetry import OrderTrace, Telemetry


def problem(delivery: Delivery) -> Optional[str]:
    """Why a delivery cannot be an order before its body is even looked at, or None."""
    if delivery.decode_error is not None:
        return f"properties cannot be decoded ({delivery.decode_error})"
    if delivery.body_size > delivery.limit:
        return f"body too large ({delivery.body_size} bytes, limit {delivery.limit})"
    return None


class OrderHandler:
    def __init__(self, cfg: Config, ioloop: Any, log: LineLog, rng: random.Random, acks: Acker,
                 quarantine: Quarantine, stats: Dict[str, int], telemetry: Optional[Telemetry] = None) -> None:
        self.ioloop = ioloop
        self.telemetry = telemetry or Telemetry()
        self.log = log
        self.rng = rng
        self.acks = acks
        self.quarantine = quarantine
        self.stats = stats
        self.processing = cfg.processing_ms
        self.error_percent = cfg.error_percent

    def handle(self, sess: Any, delivery: Delivery) -> None:
        """The delivery callback of both delivery paths; never raises."""
        if delivery.consumer_tag != sess.consumer_tag or delivery.consumer_tag in sess.cancelled:
            self._not_ours(sess, delivery)
            return
        sess.tracker.delivered()
        telemetry = self.telemetry
        if telemetry.on:
            telemetry.delivered(delivery)
        try:
            reason = problem(delivery)
            if reason is None:
                summary = summarize(delivery.body, delivery.headers, delivery.limit)
        except InvalidMessage as exc:
            reason = exc.reason
        except Exception as exc:
            self.log.exception("ERROR", f"internal error handling delivery {delivery.tag}: "
                                        f"{type(exc).__name__}", exc)
            reason = f"internal error: {type(exc).__name__}: {exc}"[:200]
        if reason is not None:
            self._quarantine(sess, delivery, reason)
            return
        tag = delivery.tag
        trace = telemetry.order_started(delivery, summary.orderid) if telemetry.on else None
        del delivery  # only the summary (and the order's spans) live on while the order is worked on
        if self.processing is None:
            self._finish(sess, tag, summary, self.error_percent > 0 and self._fails(), trace)
        else:
            self.ioloop.call_later(self._work(), functools.partial(self._halfway, sess, tag, summary, trace))

    def _not_ours(self, sess: Any, delivery: Delivery) -> None:
        if delivery.consumer_tag in sess.cancelled:
            if sess.channel is not None and sess.channel.is_open:
                sess.channel.basic_reject(delivery.tag, requeue=True)
            return
        self.log.error(f"unexpected delivery {delivery.tag} for consumer tag "
                       f"{field(delivery.consumer_tag)} (ours is {sess.consumer_tag}): left unacked")

    def _quarantine(self, sess: Any, delivery: Delivery, reason: str) -> None:
        try:
            self.quarantine.put(sess, delivery, reason)
        except Exception as exc:
            self.log.exception("ERROR", f"cannot quarantine delivery {delivery.tag}", exc)
            self.quarantine.defer(sess, delivery.tag, "quarantining it failed")

    def _work(self) -> float:
        assert self.processing is not None
        low, high = self.processing
        return self.rng.randint(low, high) / 1000.0

    def _fails(self) -> bool:
        return self.error_percent > 0 and self.rng.random() * 100.0 < self.error_percent

    def _halfway(self, sess: Any, tag: int, summary: Summary, trace: Optional[OrderTrace] = None) -> None:
        if sess.alive:
            failed = self._fails()
            self.telemetry.order_halfway(trace)  # the original: processSale after the first sleep
            self.ioloop.call_later(self._work(), functools.partial(self._finish, sess, tag, summary, failed, trace))

    def _finish(self, sess: Any, tag: int, summary: Summary, failed: bool,
                trace: Optional[OrderTrace] = None) -> None:
        if not sess.alive:
            return  # the delivery went back to the queue with its connection: handled on redelivery
        traced = "" if trace is None else self.telemetry.order_finished(trace, failed)
        if failed:
            self.stats["failed"] += 1
            self.log.order_line("ERROR", f"order {summary.orderid} failed {summary.details} "
                                         f"(simulated: DISPATCH_ERROR_PERCENT={self.error_percent:g}){traced}")
        else:
            self.log.order_line("INFO", f"order {summary.orderid} dispatched {summary.details}{traced}")
        self.stats["dispatched"] += 1
        self.acks.done(sess, tag)
