"""Payment-shaped orders, published the way RoboShop's payment service does (payment/rabbitmq.py in
instana/robot-shop): it declares only the ``robot-shop`` exchange (durable direct), never the
queue, and publishes ``json.dumps(order)`` with ``BasicProperties(headers={})``: transient, no
content type, routing key ``orders``, no confirms. One implementation for the lab (``lab up``
publishes a handful) and the tests (tests/support/payment.py re-exports it).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Dict, List, Optional

import pika

EXCHANGE = "robot-shop"
ROUTING_KEY = "orders"

_CATALOGUE = [
    ("HAL-1", "HAL", 2001.0), ("PB-1", "Positronic Brain", 42.0), ("RED", "Red Dwarf", 12.5),
    ("STAN-1", "Stan", 67.0), ("EMM", "Emma", 1000.0), ("SHCE", "Strategic Hosting Computer", 9.99),
]

# the consumer's line for each order it handled: "INFO order <id> dispatched ..." (or failed)
ORDER_LINE = re.compile(r"^(?:INFO|ERROR) order (\S+) (dispatched|failed) (.*)$")


def make_order(index: int = 0, orderid: Optional[str] = None) -> Dict[str, object]:
    """A payment-shaped order: ``{"orderid", "user", "cart": {"total", "tax", "items": [...]}}``."""
    items: List[Dict[str, Any]] = []
    for n in range(1 + index % 3):
        sku, name, price = _CATALOGUE[(index + n) % len(_CATALOGUE)]
        qty = 1 + (index + n) % 2
        items.append({"qty": qty, "sku": sku, "name": name, "price": price, "subtotal": qty * price})
    total = round(sum(float(i["subtotal"]) for i in items), 2)
    return {
        "orderid": orderid or str(uuid.uuid4()),
        "user": f"user-{index % 97}",
        "cart": {"total": total, "tax": round(total / 6, 2), "items": items},
    }


def handled_order_id(line: str) -> Optional[str]:
    """The order id a consumer's dispatched/failed line reports (JSON-quoted when it is not plain)."""
    m = ORDER_LINE.match(line)
    if m is None:
        return None
    return str(json.loads(m.group(1))) if m.group(1).startswith('"') else m.group(1)


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
        self.channel: Any = None

    def connect(self) -> PaymentPublisher:
        self.conn = pika.BlockingConnection(self.params)
        channel = self.conn.channel()
        # payment: exchange_declare(exchange='robot-shop', exchange_type='direct', durable=True)
        channel.exchange_declare(exchange=EXCHANGE, exchange_type="direct", durable=True)
        self.channel = channel
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
