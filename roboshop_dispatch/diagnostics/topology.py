"""The contract's topology on the broker: --declare, the exchange, the queue, the binding, the
counts, the latency. Each check is a probe (a :class:`Reply` or two) and a pure function from
the probe's result to a :class:`Finding`. Nothing is created or changed unless --declare."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .. import amqp as contract
from ..settings import AmqpSettings
from .broker import INEQUIVALENT, Broker, Reply
from .catalog import SLOW_RTT_MS, finding, permissions_fix, scrub
from .report import FAIL, OK, SKIP, WARN, Finding

MISSING_QUEUE_FIX = ("start dispatch (it declares and binds the queue on connect), or: "
                     "dispatchctl check-rabbitmq --declare")


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


# -- --declare -------------------------------------------------------------------------------------


def declare_finding(reply: Reply, elapsed_ms: float, types: Optional[Dict[str, str]] = None) -> Finding:
    """``types``: the type each queue was declared with (classic when not said)."""
    types = types or {}
    kinds = {q: types.get(q, contract.CLASSIC) for q in (contract.QUEUE, contract.QUARANTINE_QUEUE)}
    if reply.code == 0:
        return finding("declare", OK, f"declared exchange {contract.EXCHANGE} (durable direct), queues "
                       f"{contract.QUEUE} ({kinds[contract.QUEUE]}) and {contract.QUARANTINE_QUEUE} "
                       f"({kinds[contract.QUARANTINE_QUEUE]}), durable, binding "
                       f"{contract.EXCHANGE} --{contract.ROUTING_KEY}--> {contract.QUEUE}",
                       data={"queue_types": kinds}, elapsed_ms=elapsed_ms)
    return finding(
        "declare", FAIL, f"the broker refused: {reply.code} {scrub(reply.text)}",
        diagnosis="Cannot declare the topology",
        cause=("an existing exchange or queue has other properties than the contract (406), or the user "
               "lacks permissions (403); nothing was deleted or changed"),
        fix="see the checks below for which resource differs and how to fix it",
        data={"reply_code": reply.code}, elapsed_ms=elapsed_ms)


def declare(broker: Broker, queue_type: str = contract.CLASSIC) -> Finding:
    """Declare the topology; a queue that exists is declared with the type it has (the broker's
    406 says which: a quorum ``orders`` stays quorum), one that does not with ``queue_type``
    (--queue-type), ``orders.invalid`` like ``orders`` (as the consumer declares it)."""
    started = time.monotonic()
    types = {contract.QUEUE: queue_type, contract.QUARANTINE_QUEUE: queue_type}
    found = set()  # the queues whose type the broker told
    for _ in range(3):  # at most one correction per queue
        reply = broker.attempt(lambda ch: contract.declare_topology(ch, types[contract.QUEUE],
                                                                    types[contract.QUARANTINE_QUEUE]))
        conflict = contract.queue_type_conflict(reply.text) if reply.code == 406 else None
        if conflict is None or conflict[0] not in types or conflict[1] not in contract.QUEUE_TYPES \
                or conflict[0] in found:
            break
        queue, kind = conflict
        found.add(queue)
        types[queue] = kind
        if queue == contract.QUEUE and contract.QUARANTINE_QUEUE not in found:
            types[contract.QUARANTINE_QUEUE] = kind
    return declare_finding(reply, _ms(started), types)


def _refused(name: str, what: str, code: int, text: str, amqp: AmqpSettings) -> Finding:
    """A passive declare the broker refused (not 404): the permissions are the fix."""
    return finding(name, FAIL, f"passive declare refused: {code} {scrub(text)}",
                   diagnosis=f"{what} cannot be inspected", cause=scrub(text), fix=permissions_fix(amqp))


def _unverified(name: str, what: str, summary: str, amqp: AmqpSettings, elapsed_ms: float) -> Finding:
    """It exists, but comparing it with the contract needs the configure permission."""
    return finding(name, WARN, summary, diagnosis=f"{what} not verified",
                   cause="comparing needs a declare, which needs the configure permission", fix=permissions_fix(amqp),
                   elapsed_ms=elapsed_ms)


# -- the exchange ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeProbe:
    passive: Reply  # exists? (404: absent)
    active: Optional[Reply] = None  # the contract's exact declare, when it exists and may be configured


def exchange_finding(amqp: AmqpSettings, probe: ExchangeProbe, elapsed_ms: float) -> Finding:
    code, text = probe.passive.code, probe.passive.text
    if code == 404:
        return finding(
            "exchange", WARN, f"exchange '{contract.EXCHANGE}' does not exist", diagnosis="Exchange robot-shop missing",
            cause="nothing has declared it yet: payment declares it when it first publishes, dispatch when it starts",
            fix="start dispatch (systemctl start dispatch), or: dispatchctl check-rabbitmq --declare",
            elapsed_ms=elapsed_ms)
    if code != 0:
        return _refused("exchange", "Exchange robot-shop", code, text, amqp)
    if probe.active is None:
        return _unverified("exchange", "Exchange robot-shop", f"exchange '{contract.EXCHANGE}' exists; its type and "
                           "durability cannot be compared without configure permission on it", amqp, elapsed_ms)
    return _exchange_compared(amqp, probe.active, elapsed_ms)


def _exchange_compared(amqp: AmqpSettings, reply: Reply, elapsed_ms: float) -> Finding:
    if reply.code == 0:
        return finding("exchange", OK, f"'{contract.EXCHANGE}' exists: durable {contract.EXCHANGE_TYPE}, "
                       "not auto-delete, not internal, no arguments", elapsed_ms=elapsed_ms)
    if reply.code != 406:
        return finding("exchange", FAIL, f"declare refused: {reply.code} {scrub(reply.text)}",
                       diagnosis="Exchange robot-shop cannot be verified", cause=scrub(reply.text),
                       fix=permissions_fix(amqp), elapsed_ms=elapsed_ms)
    m = INEQUIVALENT.search(reply.text)
    what = f"its {m.group(1)} is '{m.group(3)}', the contract needs '{m.group(2)}'" if m else scrub(reply.text)
    found = {"arg": m.group(1), "current": m.group(3), "expected": m.group(2)} if m else {}
    return finding(
        "exchange", FAIL, f"'{contract.EXCHANGE}' exists but {what} (406 PRECONDITION_FAILED; nothing changed)",
        diagnosis="Exchange robot-shop has the wrong type or properties",
        cause=(f"'{contract.EXCHANGE}' was declared by hand or by another tool as {what}; every declare by "
               "dispatch and by payment now fails with 406 PRECONDITION_FAILED, so no order flows"),
        fix=(f"stop payment and dispatch, delete the exchange (rabbitmqadmin -V {shlex.quote(amqp.vhost)} delete "
             f"exchange name={contract.EXCHANGE}, or the management UI), then: dispatchctl check-rabbitmq --declare "
             "(a durable direct exchange, per the contract) and start them again"),
        data=found, elapsed_ms=elapsed_ms)


def probe_exchange(broker: Broker, may_configure: bool) -> ExchangeProbe:
    passive = broker.attempt(lambda ch: ch.exchange_declare(exchange=contract.EXCHANGE, passive=True))
    if passive.code != 0 or not may_configure:
        return ExchangeProbe(passive)
    return ExchangeProbe(passive, broker.attempt(contract.declare_exchange))


# -- the queue -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueProbe:
    passive: Reply  # its counts (value: the Queue.DeclareOk frame's method), or 404
    active: Optional[Reply] = None  # the contract's exact declare, then a passive one for the counts
    queue_type: Optional[str] = None  # classic or quorum, as the declare that matched it says


def queue_counts(probe: QueueProbe) -> Optional[Tuple[int, int]]:
    """(messages, consumers) when the queue could be read."""
    for reply in (probe.active, probe.passive):
        if reply is not None and reply.code == 0:
            method = reply.value.method
            return method.message_count, method.consumer_count
    return None


def queue_finding(amqp: AmqpSettings, probe: QueueProbe, elapsed_ms: float) -> Finding:
    code, text = probe.passive.code, probe.passive.text
    if code == 404:
        return finding(
            "queue", FAIL, f"queue '{contract.QUEUE}' does not exist: orders published now are dropped",
            diagnosis="Queue orders missing: orders published now are dropped",
            cause=("payment declares only the exchange; until dispatch (or --declare) declares and binds "
                   f"'{contract.QUEUE}', every order payment publishes is unroutable and silently dropped"),
            fix=MISSING_QUEUE_FIX, elapsed_ms=elapsed_ms)
    if code != 0:
        return _refused("queue", "Queue orders", code, text, amqp)
    if probe.active is None:
        return _unverified("queue", "Queue orders", f"'{contract.QUEUE}' exists; its properties cannot be compared "
                           "without configure permission on it", amqp, elapsed_ms)
    return _queue_compared(amqp, probe, elapsed_ms)


def _queue_compared(amqp: AmqpSettings, probe: QueueProbe, elapsed_ms: float) -> Finding:
    reply = probe.active
    assert reply is not None
    if reply.code == 0 and probe.queue_type == contract.QUORUM:
        return finding("queue", OK, f"'{contract.QUEUE}' exists: a quorum queue (x-queue-type), durable, not "
                       "exclusive, not auto-delete (DISPATCH_QUEUE_TYPE=quorum; a classic consumer uses it as it is)",
                       data={"queue_type": contract.QUORUM}, elapsed_ms=elapsed_ms)
    if reply.code == 0:
        return finding("queue", OK, f"'{contract.QUEUE}' exists: durable, not exclusive, not auto-delete, "
                       "no arguments", data={"queue_type": contract.CLASSIC}, elapsed_ms=elapsed_ms)
    if reply.code == 406:
        return finding(
            "queue", FAIL, f"'{contract.QUEUE}' exists with other properties: {scrub(reply.text)} (nothing changed)",
            diagnosis="Queue orders declared differently from the contract",
            cause=(f"'{contract.QUEUE}' has arguments or flags the contract does not have (it must be durable, "
                   "with no x-arguments): dispatch's declare fails with 406 PRECONDITION_FAILED"),
            fix=(f"drain it, delete it (rabbitmqctl delete_queue -p {shlex.quote(amqp.vhost)} {contract.QUEUE}), "
                 "then dispatchctl check-rabbitmq --declare"), elapsed_ms=elapsed_ms)
    if reply.code == 405:
        return finding(
            "queue", FAIL, f"'{contract.QUEUE}' is an exclusive queue of another connection (405 RESOURCE_LOCKED)",
            diagnosis="Queue orders locked by another connection",
            cause="another client declared it exclusive: dispatch cannot use it",
            fix="stop that client (rabbitmqctl list_queues -p VHOST name owner_pid exclusive)", elapsed_ms=elapsed_ms)
    return finding("queue", FAIL, f"declare refused: {reply.code} {scrub(reply.text)}",
                   diagnosis="Queue orders cannot be verified", cause=scrub(reply.text),
                   fix=permissions_fix(amqp), elapsed_ms=elapsed_ms)


def probe_queue(broker: Broker, may_configure: bool) -> QueueProbe:
    passive = broker.attempt(lambda ch: ch.queue_declare(queue=contract.QUEUE, passive=True))
    if passive.code != 0 or not may_configure:
        return QueueProbe(passive)

    def compare(queue_type: str) -> Any:
        def declare(ch: Any) -> Any:
            contract.declare_queue(ch, queue_type=queue_type)  # the exact declare: a no-op when it matches
            return ch.queue_declare(queue=contract.QUEUE, passive=True)

        return declare

    active = broker.attempt(compare(contract.CLASSIC))
    conflict = contract.queue_type_conflict(active.text) if active.code == 406 else None
    if conflict is not None and conflict[1] in contract.QUEUE_TYPES and conflict[1] != contract.CLASSIC:
        # another type than the contract's (DISPATCH_QUEUE_TYPE=quorum): compared as that type
        return QueueProbe(passive, broker.attempt(compare(conflict[1])), conflict[1])
    return QueueProbe(passive, active, contract.CLASSIC if active.code == 0 else None)


# -- the binding -----------------------------------------------------------------------------------


def binding_precheck(counts: Optional[Tuple[int, int]], exchange_exists: bool,
                     exchange_ok: bool) -> Optional[Finding]:
    """The binding's finding when no probe may be sent, else None (send it)."""
    if counts is None:
        return finding("binding", SKIP, f"not checked: queue '{contract.QUEUE}' is missing or not readable")
    if not exchange_exists:
        return finding(
            "binding", FAIL, f"'{contract.EXCHANGE}' does not exist, so '{contract.QUEUE}' is not bound to it",
            diagnosis="Queue orders not bound: orders published now are dropped",
            cause="without the exchange and the binding, payment's orders cannot reach the queue",
            fix="start dispatch (it declares and binds on connect), or: dispatchctl check-rabbitmq --declare")
    if counts[1] > 0:
        return finding(
            "binding", OK, f"not probed: '{contract.QUEUE}' has {counts[1]} consumer(s), which a probe message "
            "would reach (dispatch binds the queue every time it connects)", data={"probed": False})
    if not exchange_ok:
        return finding("binding", SKIP, f"not probed: exchange '{contract.EXCHANGE}' is not verified as a "
                       "direct exchange, so routing by key cannot be tested")
    return None


def binding_finding(amqp: AmqpSettings, reply: Reply, elapsed_ms: float) -> Finding:
    if reply.code == 403:
        return finding(
            "binding", WARN, f"not probed: no write permission on '{contract.EXCHANGE}' for the probe "
            "(payment needs it to publish orders)", diagnosis="Binding not verified",
            cause=scrub(reply.text), fix=permissions_fix(amqp), elapsed_ms=elapsed_ms)
    if reply.code != 0:
        return finding("binding", FAIL, f"probe refused: {reply.code} {scrub(reply.text)}",
                       diagnosis="Binding not verified", cause=scrub(reply.text), fix="", elapsed_ms=elapsed_ms)
    if reply.value == "unroutable":
        return finding(
            "binding", FAIL, f"'{contract.EXCHANGE}' does not route key '{contract.ROUTING_KEY}' to any queue: "
            "orders published now are dropped",
            diagnosis="Queue orders not bound: orders published now are dropped",
            cause=(f"'{contract.QUEUE}' exists but is not bound to '{contract.EXCHANGE}' with key "
                   f"'{contract.ROUTING_KEY}': payment's orders are unroutable and silently dropped"),
            fix="start dispatch (it binds on connect), or: dispatchctl check-rabbitmq --declare",
            data={"probed": True}, elapsed_ms=elapsed_ms)
    return finding("binding", OK, f"'{contract.EXCHANGE}' routes key '{contract.ROUTING_KEY}' "
                   "(probe with expiration 0 and no consumer: discarded by the broker)",
                   data={"probed": True}, elapsed_ms=elapsed_ms)


def probe_binding(broker: Broker) -> Reply:
    """A mandatory, expiration-0 message to robot-shop with key orders, with publisher confirms:
    returned when unroutable; else it reaches orders, which has no consumer, and expires there."""
    import pika
    import pika.exceptions as pe

    def publish(ch: Any) -> str:
        ch.confirm_delivery()
        try:
            ch.basic_publish(
                exchange=contract.EXCHANGE, routing_key=contract.ROUTING_KEY, body=b"",
                properties=pika.BasicProperties(expiration="0", type="dispatchctl.probe",
                                                headers={"x-dispatchctl-probe": "binding"}),
                mandatory=True)
        except pe.UnroutableError:
            return "unroutable"
        return "routed"

    return broker.attempt(publish)


# -- counts and latency ----------------------------------------------------------------------------


def counts_finding(counts: Optional[Tuple[int, int]]) -> Finding:
    if counts is None:
        return finding("counts", SKIP, f"not checked: queue '{contract.QUEUE}' is missing")
    messages, consumers = counts
    data: Dict[str, Any] = {"messages": messages, "consumers": consumers}
    if consumers == 0:
        return finding(
            "counts", WARN, f"{messages} message(s) waiting, no consumer",
            diagnosis="No consumer on orders: dispatch is not connected",
            cause=("dispatch is not running or cannot reach this broker/vhost: orders accumulate "
                   f"({messages} waiting)"),
            fix="dispatchctl status; dispatchctl check (on the dispatch host)", data=data)
    return finding("counts", OK, f"{messages} message(s) waiting, {consumers} consumer(s)", data=data)


def latency_finding(samples_ms: List[float]) -> Finding:
    samples = sorted(samples_ms)
    median = samples[len(samples) // 2]
    data = {"median_ms": round(median, 2), "samples_ms": [round(s, 2) for s in samples]}
    if median > SLOW_RTT_MS:
        return finding("latency", WARN, f"{median:.1f} ms per round trip", diagnosis="Slow broker",
                       cause="the broker or the network is slow: dispatch's acks lag",
                       fix="check the broker's load (rabbitmq-diagnostics status) and the network path", data=data)
    return finding("latency", OK, f"{median:.2f} ms per round trip (median of 3)", data=data)


def probe_latency(broker: Broker) -> List[float]:
    """Three synchronous round trips on one channel, in ms."""
    samples: List[float] = []
    ch = broker.conn.channel()
    try:
        for _ in range(3):
            t0 = time.monotonic()
            ch.basic_qos(prefetch_count=0)
            samples.append(_ms(t0))
    finally:
        if ch.is_open:
            ch.close()
    return samples
