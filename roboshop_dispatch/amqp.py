"""The RoboShop AMQP contract: connection parameters and topology.

Shared by the consumer (which runs on target hosts: standard library and pika only, Python 3.9)
and by dispatchctl's diagnostics. Keep it that way: no import of the CLI or of other packages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import pika

EXCHANGE = "robot-shop"
EXCHANGE_TYPE = "direct"
QUEUE = "orders"
ROUTING_KEY = "orders"
QUARANTINE_QUEUE = "orders.invalid"
DEFAULT_PORT = 5672
DEFAULT_VHOST = "/"


def parameters(
    hosts: Sequence[str],
    port: int,
    vhost: str,
    user: str,
    password: str,
    *,
    heartbeat: int = 30,
    connection_attempts: int = 1,
    socket_timeout: float = 5.0,
    blocked_connection_timeout: Optional[float] = 60.0,
    client_name: str = "dispatch",
) -> List[pika.ConnectionParameters]:
    """One ConnectionParameters per broker of a cluster, in the order given.

    Credentials go through PlainCredentials, never through a URI, so no character of the user
    name or password needs escaping and nothing ever formats them into a string.
    """
    creds = pika.PlainCredentials(user, password, erase_on_connect=False)
    return [
        pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=vhost,
            credentials=creds,
            heartbeat=heartbeat,
            connection_attempts=connection_attempts,
            retry_delay=0.5,
            socket_timeout=socket_timeout,
            stack_timeout=socket_timeout * 2,
            blocked_connection_timeout=blocked_connection_timeout,
            client_properties={"connection_name": client_name, "product": "roboshop-dispatch"},
        )
        for host in hosts
    ]


def declare_exchange(channel, *, passive: bool = False, callback=None) -> None:
    """The exchange exactly as payment declares it (durable direct, not auto-delete, no args)."""
    kwargs = dict(
        exchange=EXCHANGE, exchange_type=EXCHANGE_TYPE, passive=passive, durable=True,
        auto_delete=False, internal=False, arguments=None,
    )
    if callback is not None:
        kwargs["callback"] = callback
    channel.exchange_declare(**kwargs)


def declare_queue(channel, *, passive: bool = False, callback=None) -> None:
    """``orders``: durable, not exclusive, not auto-delete and NO arguments (adding any breaks
    every existing deployment with 406 PRECONDITION_FAILED)."""
    kwargs = dict(
        queue=QUEUE, passive=passive, durable=True, exclusive=False, auto_delete=False, arguments=None,
    )
    if callback is not None:
        kwargs["callback"] = callback
    channel.queue_declare(**kwargs)


def declare_quarantine(channel, *, callback=None) -> None:
    """``orders.invalid``: durable, where bad messages go with their reason in a header."""
    kwargs = dict(queue=QUARANTINE_QUEUE, durable=True, exclusive=False, auto_delete=False, arguments=None)
    if callback is not None:
        kwargs["callback"] = callback
    channel.queue_declare(**kwargs)


def bind_queue(channel, *, callback=None) -> None:
    kwargs = dict(queue=QUEUE, exchange=EXCHANGE, routing_key=ROUTING_KEY)
    if callback is not None:
        kwargs["callback"] = callback
    channel.queue_bind(**kwargs)


def declare_topology(channel) -> None:
    """Exchange, queue, binding and quarantine queue, on a BlockingChannel. Idempotent."""
    declare_exchange(channel)
    declare_queue(channel)
    bind_queue(channel)
    declare_quarantine(channel)
