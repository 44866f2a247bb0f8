"""Nothing a publisher sends stops dispatch (issue 7), against a real RabbitMQ and a real consumer.

Every message a publisher can put on ``orders`` ends as exactly one of: dispatched (its order line)
and acked, or quarantined once in ``orders.invalid`` (the copy routed nowhere else, the original
property bytes preserved, the reason in ``x-dispatch-error``) and acked. The consumer never exits
and never reconnects because of a message. Hostile property bytes are encoded by hand
(tests/support/hostile.py) where pika cannot encode them.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Dict, List, Optional, Tuple

import pika
import pika.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roboshop_dispatch import amqp
from roboshop_dispatch.consumer import quarantine
from tests.support import hostile
from tests.support.consumer import Consumer, start_consumer
from tests.support.payment import EXCHANGE, ROUTING_KEY, drain, make_order, parameters

pytestmark = pytest.mark.broker

# == strategies: any AMQP field value, any property set, any body ================================
_LEAVES = st.one_of(
    st.tuples(st.just("t"), st.booleans()),
    st.tuples(st.just("b"), st.integers(-128, 127)),
    st.tuples(st.just("B"), st.integers(0, 255)),
    st.tuples(st.just("s"), st.integers(-(2 ** 15), 2 ** 15 - 1)),
    st.tuples(st.just("u"), st.integers(0, 2 ** 16 - 1)),
    st.tuples(st.just("I"), st.integers(-(2 ** 31), 2 ** 31 - 1)),
    st.tuples(st.just("i"), st.integers(0, 2 ** 32 - 1)),
    st.tuples(st.just("l"), st.integers(-(2 ** 63), 2 ** 63 - 1)),
    # NaN/infinite floats are refused by RabbitMQ itself (541 INTERNAL_ERROR): never on ``orders``
    st.tuples(st.just("f"), st.floats(width=32, allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("d"), st.floats(allow_nan=False, allow_infinity=False)),
    st.tuples(st.just("D"), st.tuples(st.integers(0, 255), st.integers(-(2 ** 31), 2 ** 31 - 1))),
    st.tuples(st.just("S"), st.binary(max_size=40)),
    st.tuples(st.just("x"), st.binary(max_size=40)),
    st.tuples(st.just("T"), st.integers(0, 2 ** 64 - 1)),  # pika fails on years past 9999
    st.tuples(st.just("V"), st.none()),
)
_KEYS = st.binary(max_size=12).filter(lambda k: k not in (b"CC", b"BCC"))
FIELDS = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.tuples(st.just("A"), st.lists(inner, max_size=4)),
                            st.tuples(st.just("F"), st.dictionaries(_KEYS, inner, max_size=4))),
    max_leaves=10,
)
# CC/BCC must be arrays of long strings (RabbitMQ refuses the publish otherwise): these are the
# sender-selected destinations that routed quarantine copies back into ``orders``
_ROUTING = st.dictionaries(st.sampled_from([b"CC", b"BCC"]),
                           st.lists(st.sampled_from([b"orders", b"orders.invalid", b"elsewhere"]),
                                    min_size=1, max_size=3).map(lambda r: ("A", [("S", x) for x in r])))
HEADERS = st.one_of(
    st.just({}),
    st.dictionaries(_KEYS, st.tuples(st.just("S"), st.text(max_size=20).map(str.encode)), max_size=3),
    st.builds(lambda a, b: {**a, **b}, st.dictionaries(_KEYS, FIELDS, max_size=4), _ROUTING),
)
_SHORT = st.binary(max_size=30)
PROPERTIES = st.fixed_dictionaries({}, optional={
    # RabbitMQ refuses a delivery_mode other than 1 or 2
    "content_type": _SHORT, "content_encoding": _SHORT, "delivery_mode": st.sampled_from([1, 2]),
    "priority": st.integers(0, 255), "correlation_id": _SHORT, "reply_to": _SHORT,
    "expiration": st.integers(600_000, 10 ** 9).map(lambda n: str(n).encode()),  # long enough to arrive
    "timestamp": st.integers(0, 2 ** 64 - 1), "type": _SHORT, "user_id": st.just(b"roboshop"),
    "app_id": _SHORT, "cluster_id": _SHORT,
})
_NUMBERS = st.one_of(st.integers(), st.just("9" * 400), st.just("1e400"), st.just("-1e400"),
                     st.just("NaN"), st.just("Infinity"), st.floats(allow_nan=False, allow_infinity=False))
ORDER_BODIES = st.builds(
    lambda total, user, items, depth: (
        '{"orderid": "{oid}", "user": ' + json.dumps(user) + ', "cart": {"total": ' + total + ', "items": '
        + json.dumps(items) + '}, "deep": ' + (("[" * depth + "]" * depth) or "null") + "}"),
    _NUMBERS.map(str), st.one_of(st.text(max_size=30), st.integers(), st.none()),
    st.lists(st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), max_size=3),
    st.sampled_from([0, 3, 5000]),
)
# an order is recognised by its orderid (the message id): no other body may carry an orderid
BODIES = st.one_of(st.binary(max_size=200).filter(lambda b: b"orderid" not in b),
                   st.text(max_size=100).map(lambda t: ("{oid}" + t)),
                   ORDER_BODIES)
HEADERS_RAW = st.one_of(st.none(), st.sampled_from(["nested-600", "timestamp-2^40"]))
MESSAGE = st.tuples(PROPERTIES, HEADERS, HEADERS_RAW, BODIES)


def _encode(message, oid: str) -> Tuple[bytes, bytes]:
    """(property bytes, body) of a generated message; ``oid`` makes it recognisable."""
    props, headers, raw_kind, body = message
    props = dict(props, message_id=oid.encode())
    raw_headers: Optional[bytes] = None
    if raw_kind == "nested-600":
        raw_headers = hostile.nested_table(600)
    elif raw_kind == "timestamp-2^40":
        raw_headers = hostile.table({b"sent": ("T", 2 ** 40)})
    elif headers:
        props["headers"] = headers
    text = body.replace("{oid}", oid) if isinstance(body, str) else body
    return hostile.properties(props, raw_headers), text.encode("utf-8", "surrogatepass") \
        if isinstance(text, str) else text


# == the harness ==================================================================================
class Publisher:
    """Publishes with confirms; records what the broker accepted (it refuses a few things, such as
    a ``user_id`` that is not ours: those are not messages a publisher can put on ``orders``)."""

    def __init__(self, params: pika.ConnectionParameters) -> None:
        self.conn = pika.BlockingConnection(params)
        self.params = params
        self.refused: List[str] = []
        self.channel = self._channel()

    def _channel(self):
        if not self.conn.is_open:
            self.conn = pika.BlockingConnection(self.params)
        channel = self.conn.channel()
        channel.confirm_delivery()
        return channel

    def publish(self, raw: bytes, body: bytes) -> bool:
        try:
            self.channel.basic_publish(EXCHANGE, ROUTING_KEY, body, hostile.RawProperties(raw), mandatory=True)
            return True
        except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as exc:
            self.refused.append(str(exc))
            self.channel = self._channel()
            return False

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def _passive_count(params: pika.ConnectionParameters, queue: str) -> int:
    conn = pika.BlockingConnection(params)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def _decoded(raw: bytes) -> dict:
    props = pika.BasicProperties()
    props.decode(raw)
    return vars(props)


def check_copy(props, raw_sent: bytes, body_sent: bytes, body: bytes, exact: bool) -> None:
    """A quarantine copy: reason, the original bytes, nothing that routes or expires."""
    headers = props.headers
    assert headers[quarantine.ERROR_HEADER]
    if quarantine.ORIGINAL_PROPERTIES not in headers:  # pika's path, properties pika cannot re-encode
        assert hostile.pika_decodes(raw_sent) and _oid(raw_sent) in headers[quarantine.ORIGINAL_PROPERTIES_TEXT]
        kept = b""
    else:
        kept = headers[quarantine.ORIGINAL_PROPERTIES]
    if not kept:
        pass
    if quarantine.ORIGINAL_PROPERTIES_TRUNCATED in headers:
        assert raw_sent.startswith(kept)
    elif b"\x03BCCA" in raw_sent:  # RabbitMQ strips BCC before delivery: then it differs
        assert b"BCC" not in kept
    elif exact:  # the fast path keeps the bytes as received
        assert kept == raw_sent
    elif kept:  # pika's path: pika's re-encoding of what it decoded (pika 1.3 reads a signed
        # byte as unsigned, so values may differ: the message and the header names must not)
        copy, sent = _decoded(kept), _decoded(raw_sent)
        assert copy["message_id"] == sent["message_id"]
        assert set(copy["headers"] or {}) == set(sent["headers"] or {})
    assert "CC" not in headers and "BCC" not in headers
    assert props.expiration is None and props.delivery_mode == 2
    assert headers[quarantine.BODY_SIZE] == len(body_sent)
    assert body == body_sent


class Run:
    """A consumer subprocess in its own vhost, shared by the examples of one test."""

    def __init__(self, broker, path: str) -> None:
        self.path = path
        self.vhost = f"hostile-{uuid.uuid4().hex[:8]}"
        broker.ctl("add_vhost", self.vhost)
        broker.ctl("set_permissions", "-p", self.vhost, broker.user, ".*", ".*", ".*")
        self.params = parameters(broker.host, broker.port, self.vhost, broker.user, broker.password)
        self.consumer: Consumer = start_consumer(broker, self.vhost, DISPATCH_FASTPATH=path,
                                                 DISPATCH_PROCESSING_MS="0-3")
        self.consumer.wait_consuming()
        self.publisher = Publisher(self.params)
        self.seen = {"dispatched": 0, "quarantined": 0, "undecodable": 0}

    def round(self, messages: List[Tuple[bytes, bytes]]) -> None:
        """Publish ``messages`` (property bytes, body) among valid orders; check each outcome."""
        sent: Dict[bytes, Tuple[str, bytes, bytes]] = {}
        good = []
        for n, (raw, body) in enumerate(messages):
            order = make_order(n)
            good.append(str(order["orderid"]))
            assert self.publisher.publish(hostile.properties({}, hostile.table({})), json.dumps(order).encode())
            if self.publisher.publish(raw, body):
                sent[raw] = (str(n), raw, body)
        c = self.consumer
        c.wait_orders(good, timeout=15)  # short: a failing example is shrunk, run after run
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ids = {oid for oid in c.orders}
            handled = sum(1 for raw, (_n, _r, body) in sent.items() if _oid(raw) in ids)
            if handled + _passive_count(self.params, amqp.QUARANTINE_QUEUE) >= len(sent):
                break
            time.sleep(0.1)
        # a fixed wait for a duplicate: every message is handled now (a deferred one too: the loop
        # waits for it); a second copy of one handling is published in the same callback as the
        # first and confirmed with it, milliseconds apart on loopback: 0.3 s is ample
        time.sleep(0.3)
        copies = drain(self.params, amqp.QUARANTINE_QUEUE)
        by_id: Dict[str, list] = {}
        for props, body in copies:
            original = props.headers.get(quarantine.ORIGINAL_PROPERTIES)
            oid = _oid(original) if original is not None else \
                _find_oid(props.headers[quarantine.ORIGINAL_PROPERTIES_TEXT].encode())
            by_id.setdefault(oid, []).append((props, body))
        for raw, (_n, _raw, body) in sent.items():
            oid = _oid(raw)
            dispatched = c.orders.get(oid, 0)
            quarantined = by_id.pop(oid, [])
            assert dispatched + len(quarantined) == 1, (dispatched, len(quarantined), raw[:80], body[:80])
            for props, q_body in quarantined:
                check_copy(props, raw, body, q_body, exact=self.path == "1")
            self.seen["dispatched" if dispatched else "quarantined"] += 1
            self.seen["undecodable"] += not hostile.pika_decodes(raw)
        assert not by_id, "quarantine copies of messages never sent"
        assert all(c.orders[oid] == 1 for oid in good)
        assert c.proc.poll() is None, c.output[-2000:]
        assert c.count("connecting to ") == 1, "the consumer reconnected because of a message"
        assert _passive_count(self.params, amqp.QUEUE) == 0

    def close(self, broker) -> None:
        print(f"hostile messages: {self.seen}, refused by the broker: {len(self.publisher.refused)}")
        assert self.seen["quarantined"], self.seen  # the valid orders of each round prove dispatch
        self.publisher.close()
        code, _took = self.consumer.stop()
        assert code == 0
        self.consumer.assert_no_password()
        broker.ctl("delete_vhost", self.vhost, check=False)


def _find_oid(data: bytes) -> str:
    start = data.find(b"hostile-")
    return data[start:start + 44].decode()


def _oid(raw: bytes) -> str:
    props = pika.BasicProperties()
    try:
        props.decode(raw)
    except Exception:
        return _find_oid(raw)
    return str(props.message_id)


@pytest.fixture(scope="module")
def fast_run(broker):
    run = Run(broker, "1")
    yield run
    run.close(broker)


@pytest.fixture(scope="module")
def pika_run(broker):
    run = Run(broker, "0")
    yield run
    run.close(broker)


_SETTINGS = settings(max_examples=25, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(st.lists(MESSAGE, min_size=1, max_size=12))
def test_any_message_is_dispatched_or_quarantined_once_fast_path(fast_run, batch):
    fast_run.round([_encode(m, f"hostile-{uuid.uuid4()}") for m in batch])


@_SETTINGS
@given(st.lists(MESSAGE, min_size=1, max_size=12))
def test_any_message_pika_decodes_is_dispatched_or_quarantined_once_pika_path(pika_run, batch):
    """pika's own path cannot survive property bytes pika cannot decode (its frame decoder raises
    inside its receive path): this path is tested with every message pika can decode."""
    shallow = [m for m in batch if m[2] is None]  # no table nested 600 deep, no year-36812 timestamp
    encoded = [_encode(m, f"hostile-{uuid.uuid4()}") for m in shallow]
    pika_run.round([(raw, body) for raw, body in encoded if hostile.pika_decodes(raw)])
