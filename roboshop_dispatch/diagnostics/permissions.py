"""The permissions dispatch needs, probed with requests RabbitMQ refuses *after* its permission
check and *before* it changes anything (see the package docstring). :func:`probe` sends them and
records each reply; :func:`interpret` and :func:`permissions_finding` are pure, unit-tested from
recorded replies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

from .. import amqp as contract
from ..errors import DispatchctlError
from ..settings import AmqpSettings
from .broker import Broker, Reply
from .catalog import finding, permissions_fix, scrub
from .report import FAIL, OK, WARN, Finding

GRANTED = "granted"
DENIED = "denied"
UNKNOWN = "unknown"
READ_EXCHANGE_UNKNOWN = "not determined: the user may not write to any made-up queue name used to test it"


@dataclass(frozen=True)
class Probe:
    """One permission probe and how to read its reply. ``expect``: the reply codes that mean the
    permission was granted (the request got past the permission check). ``checked_first``:
    RabbitMQ checks this permission before any other the request needs, so a 403 about another
    resource means this one was granted."""

    permission: str
    resource: str
    kind: str
    expect: Tuple[int, ...]
    checked_first: bool = False


PROBES: Tuple[Probe, ...] = (
    Probe("configure", contract.EXCHANGE, "exchange", (406,)),
    Probe("configure", contract.QUEUE, "queue", (406,)),
    Probe("configure", contract.QUARANTINE_QUEUE, "queue", (406,)),
    Probe("write", contract.QUEUE, "queue", (404,), checked_first=True),
    Probe("read", contract.EXCHANGE, "exchange", (404,)),
    Probe("read", contract.QUEUE, "queue", (404, 406)),
    Probe("write", "amq.default", "exchange", (0,)),
)


def interpret(probe: Probe, reply: Reply) -> Dict[str, str]:
    """The permission a reply proves: granted, denied, unknown, or an unexpected reply code."""
    if reply.code == 403 and f"{probe.kind} '{probe.resource}'" in reply.text:
        result = DENIED
    elif reply.code in probe.expect or (reply.code == 403 and probe.checked_first):
        result = GRANTED
    elif reply.code == 403:
        result = UNKNOWN
    else:
        result = f"unexpected {reply.code}"
    return {"permission": probe.permission, "resource": probe.resource, "kind": probe.kind, "result": result,
            "reply": "" if result == GRANTED else scrub(reply.text)}


def permissions_finding(amqp: AmqpSettings, perms: Sequence[Dict[str, str]], elapsed_ms: float) -> Finding:
    denied = [p for p in perms if p["result"] == DENIED]
    unknown = [p for p in perms if p["result"] not in (DENIED, GRANTED)]

    def listed(ps: Sequence[Dict[str, str]]) -> str:
        return ", ".join(f"{p['permission']} on {p['kind']} '{p['resource']}'" for p in ps)

    data = {"permissions": list(perms)}
    if denied:
        return finding(
            "permissions", FAIL, f"user '{amqp.user}' lacks {listed(denied)}",
            diagnosis="RabbitMQ permissions missing",
            cause=(f"the user '{amqp.user}' lacks {listed(denied)} in vhost '{amqp.vhost}': dispatch's declare, "
                   "bind, consume or quarantine publish fails with 403 ACCESS_REFUSED"),
            fix=permissions_fix(amqp), data=data, elapsed_ms=elapsed_ms)
    if unknown:
        return finding(
            "permissions", WARN, f"granted except not determined: {listed(unknown)}",
            diagnosis="Some permissions could not be verified", cause="; ".join(p["reply"] for p in unknown),
            fix=permissions_fix(amqp), data=data, elapsed_ms=elapsed_ms)
    return finding("permissions", OK, "configure robot-shop, orders, orders.invalid; write orders, "
                   "amq.default; read orders, robot-shop", data=data, elapsed_ms=elapsed_ms)


def configurable(perms: Sequence[Dict[str, str]]) -> set:
    """The resources the user may configure (so an active declare can compare them)."""
    return {p["resource"] for p in perms if p["permission"] == "configure" and p["result"] == GRANTED}


# -- the requests ----------------------------------------------------------------------------------


class BrokerAcceptedInvalidArgument(DispatchctlError):
    """A probe that must be refused was accepted: the probe's premise does not hold (a bug to report)."""


def _must_refuse(reply: Reply, what: str) -> Reply:
    if reply.code == 0:
        raise BrokerAcceptedInvalidArgument(f"the broker accepted an invalid {what} argument")
    return reply


def _configure_exchange(broker: Broker) -> Reply:
    return _must_refuse(broker.attempt(lambda ch: ch.exchange_declare(
        exchange=contract.EXCHANGE, exchange_type=contract.EXCHANGE_TYPE, durable=True,
        arguments={"alternate-exchange": 0})), "alternate-exchange")


def _configure_queue(broker: Broker, queue: str) -> Reply:
    return _must_refuse(broker.attempt(lambda ch: ch.queue_declare(
        queue=queue, durable=True, arguments={"x-max-length": "invalid"})), "x-max-length")


def _write_queue(broker: Broker) -> Reply:
    return broker.attempt(lambda ch: ch.queue_bind(
        queue=contract.QUEUE, exchange=f"dispatchctl.no-such-exchange.{uuid.uuid4().hex}",
        routing_key=contract.ROUTING_KEY))


def _read_exchange(broker: Broker) -> Reply:
    """A bind checks write on the destination first, then read on the source. First an
    exchange-to-exchange bind to "amq.default" (dispatch needs write on that name, and no exchange
    can be called so: the bind ends in 404), then binds of made-up queues a restrictive regex may match."""
    reply = broker.attempt(lambda ch: ch.exchange_bind(
        destination="amq.default", source=contract.EXCHANGE, routing_key=contract.ROUTING_KEY))
    if not (reply.code == 403 and "exchange 'amq.default'" in reply.text):
        return reply
    def bind(queue: str) -> Callable[[Any], Any]:
        return lambda ch: ch.queue_bind(queue=queue, exchange=contract.EXCHANGE, routing_key=contract.ROUTING_KEY)

    for fake in (f"dispatchctl.probe.{uuid.uuid4().hex}", f"{contract.QUEUE}.dispatchctl-probe-{uuid.uuid4().hex}"):
        reply = broker.attempt(bind(fake))
        if not (reply.code == 403 and f"queue '{fake}'" in reply.text):
            break
    return reply


def _read_queue(broker: Broker) -> Reply:
    return _must_refuse(broker.attempt(lambda ch: ch.basic_consume(
        queue=contract.QUEUE, on_message_callback=lambda *a: None, arguments={"x-priority": "invalid"})),
        "x-priority")


def _write_default(broker: Broker) -> Reply:
    def publish(ch: Any) -> None:
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=f"dispatchctl.no-such-queue.{uuid.uuid4().hex}", body=b"")

    return broker.attempt(publish)


def probe(broker: Broker) -> List[Dict[str, str]]:
    """Every permission of :data:`PROBES`, interpreted, in order."""
    replies = [
        _configure_exchange(broker), _configure_queue(broker, contract.QUEUE),
        _configure_queue(broker, contract.QUARANTINE_QUEUE), _write_queue(broker), _read_exchange(broker),
        _read_queue(broker), _write_default(broker),
    ]
    perms = [interpret(p, r) for p, r in zip(PROBES, replies)]
    read_exchange = perms[4]
    if read_exchange["result"] == UNKNOWN:
        read_exchange["reply"] = READ_EXCHANGE_UNKNOWN
    return perms
