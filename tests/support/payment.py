"""Publishers for the tests and the benchmark.

:class:`PaymentPublisher` (RoboShop payment's publisher), :func:`make_order` and
:func:`parameters` are the lab's (roboshop_dispatch/lab/orders.py: one implementation), re-exported.

:class:`ConfirmingPublisher` is the test harness's reliable variant for the outage test: publisher
confirms plus ``mandatory``, persistent messages (a transient message that is confirmed and still
queued when the broker restarts is dropped by the broker itself, which is not what that test is
about), and it retries through connection loss until the broker confirmed each order. It
records which order ids were confirmed.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Dict, List, Optional

import pika
import pika.exceptions

from roboshop_dispatch.lab.orders import EXCHANGE, ROUTING_KEY, PaymentPublisher, make_order, parameters

__all__ = ["EXCHANGE", "ROUTING_KEY", "ConfirmingPublisher", "PaymentPublisher", "drain", "make_order", "parameters"]


def drain(params: pika.ConnectionParameters, queue: str) -> list:
    """Every message of ``queue`` as (properties, body), acked."""
    conn = pika.BlockingConnection(params)
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))
    finally:
        conn.close()


class ConfirmingPublisher:
    """Publishes each order until the broker confirms it, reconnecting through outages."""

    def __init__(self, params: pika.ConnectionParameters, *, give_up_after: float = 120.0) -> None:
        self.params = params
        self.give_up_after = give_up_after
        self.conn: Optional[pika.BlockingConnection] = None
        self.channel = None
        self.confirmed: List[str] = []
        self.attempts = 0  # publishes, including retries
        self.reconnects = 0
        self.errors: List[str] = []

    def _connect(self) -> None:
        self.close()
        self.conn = pika.BlockingConnection(self.params)
        channel = self.conn.channel()
        channel.exchange_declare(exchange=EXCHANGE, exchange_type="direct", durable=True)
        channel.confirm_delivery()
        self.channel = channel

    def publish(self, order: Dict[str, object]) -> None:
        body = json.dumps(order).encode()
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                if self.channel is None or not self.channel.is_open:
                    self._connect()
                assert self.channel is not None
                self.attempts += 1
                self.channel.basic_publish(
                    exchange=EXCHANGE, routing_key=ROUTING_KEY, body=body, mandatory=True,
                    properties=pika.BasicProperties(headers={}, delivery_mode=2),
                )
                self.confirmed.append(str(order["orderid"]))
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                # connection lost, nack, or unroutable: the order is not confirmed, send it again
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if time.monotonic() > deadline:
                    raise
                self.close()
                self.reconnects += 1
                time.sleep(0.2)

    def close(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):  # already broken: nothing to close cleanly
                conn.close()
