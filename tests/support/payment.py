"""Publishers for the tests and the benchmark.

:class:`PaymentPublisher` behaves exactly like RoboShop's payment service (payment/rabbitmq.py in
instana/robot-shop): it declares only the ``robot-shop`` exchange (durable direct), never the
queue, and publishes ``json.dumps(order)`` with ``BasicProperties(headers={})``: transient, no
content type, routing key ``orders``, no confirms.

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
import uuid
from typing import Dict, List, Optional

import pika
import pika.exceptions

EXCHANGE = "robot-shop"
ROUTING_KEY = "orders"

_CATALOGUE = [
    ("HAL-1", "HAL", 2001.0), ("PB-1", "Positronic Brain", 42.0), ("RED", "Red Dwarf", 12.5),
    ("STAN-1", "Stan", 67.0), ("EMM", "Emma", 1000.0), ("SHCE", "Strategic Hosting Computer", 9.99),
]


def make_order(index: int = 0, orderid: Optional[str] = None) -> Dict[str, object]:
    """A payment-shaped order: ``{"orderid", "user", "cart": {"total", "tax", "items": [...]}}``."""
    items = []
    for n in range(1 + index % 3):
        sku, name, price = _CATALOGUE[(index + n) % len(_CATALOGUE)]
        qty = 1 + (index + n) % 2
        items.append({"qty": qty, "sku": sku, "name": name, "price": price, "subtotal": qty * price})
    total = round(sum(float(i["subtotal"]) for i in items), 2)  # type: ignore[arg-type]
    return {
        "orderid": orderid or str(uuid.uuid4()),
        "user": f"user-{index % 97}",
        "cart": {"total": total, "tax": round(total / 6, 2), "items": items},
    }


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


def parameters(host: str, port: int, vhost: str, user: str, password: str) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=host, port=port, virtual_host=vhost, credentials=pika.PlainCredentials(user, password),
        connection_attempts=1, socket_timeout=5, heartbeat=30,
    )


class PaymentPublisher:
    """RoboShop payment's publisher, byte for byte in what it sends."""

    def __init__(self, params: pika.ConnectionParameters) -> None:
        self.params = params
        self.conn: Optional[pika.BlockingConnection] = None
        self.channel = None

    def connect(self) -> PaymentPublisher:
        self.conn = pika.BlockingConnection(self.params)
        self.channel = self.conn.channel()
        # payment: exchange_declare(exchange='robot-shop', exchange_type='direct', durable=True)
        self.channel.exchange_declare(exchange=EXCHANGE, exchange_type="direct", durable=True)
        return self

    def publish(self, order: object, headers: Optional[dict] = None) -> None:
        if self.channel is None:
            self.connect()
        assert self.channel is not None
        self.channel.basic_publish(
            exchange=EXCHANGE, routing_key=ROUTING_KEY,
            properties=pika.BasicProperties(headers={} if headers is None else headers),
            body=json.dumps(order).encode(),
        )

    def publish_raw(self, body: bytes, properties: Optional[pika.BasicProperties] = None) -> None:
        """Anything at all, for the bad-message tests (same exchange and routing key)."""
        if self.channel is None:
            self.connect()
        assert self.channel is not None
        self.channel.basic_publish(exchange=EXCHANGE, routing_key=ROUTING_KEY,
                                   properties=properties or pika.BasicProperties(headers={}), body=body)

    def close(self) -> None:
        if self.conn is not None and self.conn.is_open:
            self.conn.close()
        self.conn = self.channel = None

    def __enter__(self) -> PaymentPublisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


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
