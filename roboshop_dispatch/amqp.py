"""The RoboShop AMQP contract: connection parameters and topology.

Shared by the consumer (which runs on target hosts: standard library and pika only, Python 3.9)
and by dispatchctl's diagnostics. Keep it that way: no import of the CLI or of other packages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Dict, List, Optional, Tuple, Union

from .pikaload import load

load()  # pika without its asyncio adapter: neither the consumer nor the checks use it
import pika  # noqa: E402

EXCHANGE = "robot-shop"
EXCHANGE_TYPE = "direct"
QUEUE = "orders"
ROUTING_KEY = "orders"
QUARANTINE_QUEUE = "orders.invalid"
DEFAULT_PORT = 5672
DEFAULT_VHOST = "/"
CLASSIC = "classic"  # the contract: ``orders`` with no arguments (a Go dispatch and payment expect it)
QUORUM = "quorum"  # ``x-queue-type: quorum``: replicated over the cluster, survives a node's loss
QUEUE_TYPES = (CLASSIC, QUORUM)
QUEUE_TYPE_ARG = "x-queue-type"


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


def queue_arguments(queue_type: str = CLASSIC) -> Optional[Dict[str, str]]:
    """The arguments ``orders`` (and ``orders.invalid``) are declared with: None for the contract's
    classic queue (NO arguments: adding any breaks every existing deployment with 406
    PRECONDITION_FAILED), ``{"x-queue-type": "quorum"}`` for a quorum queue."""
    if queue_type == CLASSIC:
        return None
    if queue_type == QUORUM:
        return {QUEUE_TYPE_ARG: QUORUM}
    raise ValueError(f"unknown queue type {queue_type!r}: one of {', '.join(QUEUE_TYPES)}")


def declare_queue(channel, *, passive: bool = False, callback=None, queue_type: str = CLASSIC,
                  queue: str = QUEUE) -> None:
    """``orders``: durable, not exclusive, not auto-delete; no arguments (classic, the contract)
    or ``x-queue-type: quorum``. ``passive``: only check that it exists, whatever its type."""
    kwargs = dict(
        queue=queue, passive=passive, durable=True, exclusive=False, auto_delete=False,
        arguments=None if passive else queue_arguments(queue_type),
    )
    if callback is not None:
        kwargs["callback"] = callback
    channel.queue_declare(**kwargs)


def declare_quarantine(channel, *, callback=None, queue_type: str = CLASSIC, passive: bool = False) -> None:
    """``orders.invalid``: durable, where bad messages go with their reason in a header; of the same
    type as ``orders`` (a classic queue is gone while its node is down)."""
    declare_queue(channel, passive=passive, callback=callback, queue_type=queue_type, queue=QUARANTINE_QUEUE)


# "inequivalent arg 'x-queue-type' for queue 'orders' in vhost '/': received none but current is
# the value 'quorum' of type 'longstr'" (RabbitMQ 3.10; 3.12 words it "received 'classic' but current
# is 'quorum'"): the queue exists with another type than the one asked for.
_TYPE_CONFLICT = re.compile(r"inequivalent arg '" + QUEUE_TYPE_ARG + r"' for queue '([^']*)'")
_CURRENT = re.compile(r"but current is (?:the value )?(none|'([^']*)')")


def queue_type_conflict(error: Union[BaseException, str]) -> Optional[Tuple[str, str]]:
    """``(queue, its current type)`` when ``error`` is the broker refusing a declare because the
    queue exists with another ``x-queue-type`` (406 PRECONDITION_FAILED); else None. A queue
    declared with no argument is ``classic``; an unreadable type is ``unknown``. ``error`` may be
    the reply text itself."""
    text = " ".join(str(error).split())
    if "PRECONDITION_FAILED" not in text:
        return None
    match = _TYPE_CONFLICT.search(text)
    if match is None:
        return None
    current = _CURRENT.search(text, match.end())
    kind = "unknown" if current is None else (current.group(2) if current.group(2) is not None else CLASSIC)
    kind = kind if kind and kind.isalnum() and len(kind) <= 20 else "unknown"
    return match.group(1), kind


def bind_queue(channel, *, callback=None) -> None:
    kwargs = dict(queue=QUEUE, exchange=EXCHANGE, routing_key=ROUTING_KEY)
    if callback is not None:
        kwargs["callback"] = callback
    channel.queue_bind(**kwargs)


def declare_topology(channel, queue_type: str = CLASSIC, quarantine_type: Optional[str] = None) -> None:
    """Exchange, queue, binding and quarantine queue (of ``queue_type`` unless told), on a
    BlockingChannel. Idempotent."""
    declare_exchange(channel)
    declare_queue(channel, queue_type=queue_type)
    bind_queue(channel)
    declare_quarantine(channel, queue_type=quarantine_type or queue_type)


# -- connection errors: one line each, and the fix ---------------------------------------------
AUTH = "auth"
VHOST = "vhost"
NETWORK = "network"
OTHER = "other"


def root_cause(exc: BaseException) -> BaseException:
    """Unwrap pika's connection-workflow wrappers down to the error that says what went wrong."""
    from pika.adapters.utils import connection_workflow as workflow

    for _ in range(8):
        if isinstance(exc, workflow.AMQPConnectionWorkflowFailed) and exc.exceptions:
            exc = exc.exceptions[-1]
        elif isinstance(exc, workflow.AMQPConnectorPhaseErrorBase) and exc.exception is not None:
            exc = exc.exception
        elif (type(exc) is pika.exceptions.AMQPConnectionError and exc.args
              and isinstance(exc.args[0], BaseException)):
            exc = exc.args[0]
        else:
            break
    return exc


def describe_error(exc: BaseException) -> str:
    """A short, one-line description of a pika or socket error (it never contains credentials)."""
    cause = root_cause(exc)
    if isinstance(cause, pika.exceptions.ConnectionClosed):
        text = f"({cause.reply_code}) {cause.reply_text}"
    elif isinstance(cause, (pika.exceptions.ProbableAuthenticationError,
                            pika.exceptions.ProbableAccessDeniedError)) and cause.args:
        # pika wraps the broker's Connection.Close as text: "ConnectionClosedByBroker: (403) '...'"
        text = str(cause.args[0])
        for prefix in ("ConnectionClosedByBroker: ", "ConnectionClosedByClient: "):
            if text.startswith(prefix):
                # "(530) 'text'", or "(530) \"text\"" when the text itself holds a single quote
                code, _, reply = text[len(prefix):].partition(" ")
                if len(reply) >= 2 and reply[0] == reply[-1] and reply[0] in "'\"":
                    reply = reply[1:-1]
                return f"{code} {reply}".strip()
    elif isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror
    else:
        text = str(cause) or type(cause).__name__
        if text.startswith(type(cause).__name__ + ":"):
            text = text[len(type(cause).__name__) + 1:].strip()
    text = " ".join(text.split())
    name = type(cause).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def classify_error(exc: BaseException) -> str:
    """``auth`` (bad user/password), ``vhost`` (no access to the vhost), ``network`` or ``other``."""
    cause = root_cause(exc)
    text = describe_error(exc)
    if isinstance(cause, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError)):
        return AUTH
    if "ACCESS_REFUSED" in text and "Login was refused" in text:
        return AUTH
    if isinstance(cause, pika.exceptions.ProbableAccessDeniedError) or (
        "NOT_ALLOWED" in text and "vhost" in text
    ):
        return VHOST
    if isinstance(cause, (OSError, pika.exceptions.StreamLostError, pika.exceptions.AMQPHeartbeatTimeout)):
        return NETWORK
    from pika.adapters.utils import connection_workflow as workflow

    if isinstance(cause, workflow.AMQPConnectorException):
        return NETWORK
    return OTHER


def fix_hint(kind: str, user: str, vhost: str) -> str:
    """What to do about an error of ``classify_error`` kind (with the password left out)."""
    from shlex import quote

    perms = f"rabbitmqctl set_permissions -p {quote(vhost)} {quote(user)} '.*' '.*' '.*'"
    if kind == AUTH:
        return (f"check AMQP_USER/AMQP_PASS; on the broker: rabbitmqctl add_user {quote(user)} '<password>' "
                f"(or rabbitmqctl change_password) and {perms}")
    if kind == VHOST:
        return f"check AMQP_VHOST; on the broker: rabbitmqctl add_vhost {quote(vhost)} and {perms}"
    if kind == NETWORK:
        return "check AMQP_HOST/AMQP_PORT and that RabbitMQ is running and reachable"
    return "see the broker's log"
