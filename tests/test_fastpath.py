"""The fast delivery path: its frame reader (pure), its start-up self-test and fallback, and the
real thing on a real connection to the real broker (pika's real connection state, no fake)."""

from __future__ import annotations

import struct
import threading
import uuid
from typing import List

import pika
import pika.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika import frame as pika_frame
from pika import spec
from pika.adapters.utils import io_services_utils

from roboshop_dispatch.consumer import config, fastpath, service
from roboshop_dispatch.consumer.delivery import MAX_BODY, TRUNCATED_PREFIX, Delivery
from roboshop_dispatch.consumer.logs import LineLog
from tests.support import hostile
from tests.support.payment import EXCHANGE, ROUTING_KEY, parameters

GOOD = b'{"orderid": "3f2a", "user": "u1", "cart": {"total": 12.5, "tax": 2.1, "items": [{"qty": 1}]}}'


def frames(channel: int, tag: int, props_raw: bytes, body: bytes, frame_max: int = 4096,
           ctag: str = "ctag1.x") -> bytes:
    """A delivery as the broker sends it; ``props_raw`` are property bytes (flags + list)."""
    out = [pika_frame.Method(channel, spec.Basic.Deliver(ctag, tag, tag % 2 == 0, "robot-shop",
                                                         "orders")).marshal()]
    payload = struct.pack(">HHQ", 60, 0, len(body)) + props_raw
    out.append(struct.pack(">BHL", spec.FRAME_HEADER, channel, len(payload)) + payload + b"\xce")
    for i in range(0, len(body), frame_max - 8):
        out.append(pika_frame.Body(channel, body[i:i + frame_max - 8]).marshal())
    return b"".join(out)


def encoded(props: pika.BasicProperties) -> bytes:
    return b"".join(props.encode())


class Reader:
    def __init__(self) -> None:
        self.seen: List[Delivery] = []
        self.slow: List[bytes] = []
        self.reader = fastpath.FrameReader(self.slow.append)
        self.reader.route(1, self.seen.append)

    def feed(self, data: bytes, chunk: int) -> int:
        consumed = 0
        for i in range(0, len(data), chunk):
            consumed += self.reader.feed(data[i:i + chunk])[0]
        return consumed


# == the frame reader (pure) ======================================================================
@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 1 << 20])
def test_deliveries_decode_in_any_chunking(chunk):
    msgs = [
        (1, pika.BasicProperties(headers={}), GOOD),
        (2, pika.BasicProperties(), b""),
        (3, pika.BasicProperties(headers={"trace": "abc", "n": 5}, content_type="application/json",
                                 delivery_mode=2, message_id="m"), b"x" * 10_000),
        (4, pika.BasicProperties(headers={}), b"\xff" * 5000),
    ]
    data = pika_frame.Heartbeat().marshal() + b"".join(frames(1, t, encoded(p), b) for t, p, b in msgs) + \
        pika_frame.Method(2, spec.Basic.Ack(1, False)).marshal()
    r = Reader()
    assert r.feed(data, chunk) == len(data)
    assert [d.tag for d in r.seen] == [1, 2, 3, 4]
    for (tag, props, body), got in zip(msgs, r.seen):
        assert got.body == body and got.body_size == len(body) and not got.truncated
        assert got.redelivered == (tag % 2 == 0) and got.consumer_tag == "ctag1.x"
        assert vars(got.properties) == vars(props) and got.raw_properties == encoded(props)
    assert len(r.slow) == 2  # the heartbeat and the other channel's frame: pika's


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_a_body_over_the_limit_is_kept_as_a_bounded_prefix(chunk):
    body = bytes(range(256)) * ((3 * MAX_BODY) // 256)
    r = Reader()
    r.feed(frames(1, 1, encoded(pika.BasicProperties(headers={})), body, frame_max=131072) +
           frames(1, 2, encoded(pika.BasicProperties(headers={})), GOOD), chunk)
    big, good = r.seen
    assert big.body_size == len(body) and big.truncated and big.body == body[:TRUNCATED_PREFIX]
    assert good.body == GOOD and not good.truncated


@pytest.mark.parametrize("raw_headers, error", [
    (hostile.table({b"sent": ("T", 2 ** 40)}), "ValueError"),  # year 36812
    (hostile.nested_table(600), "RecursionError"),
])
def test_properties_pika_cannot_decode_are_kept_raw_and_the_stream_goes_on(raw_headers, error):
    raw = hostile.properties({"message_id": b"m1"}, raw_headers)
    r = Reader()
    r.feed(frames(1, 1, raw, b"{}") + frames(1, 2, encoded(pika.BasicProperties(headers={})), GOOD), 4096)
    bad, good = r.seen
    assert bad.properties is None and bad.decode_error.startswith(error)
    assert bad.raw_properties == raw and bad.encoded_properties() == raw and bad.body == b"{}"
    assert good.body == GOOD and good.properties.headers == {}


def test_a_corrupt_frame_end_is_a_protocol_error():
    data = bytearray(frames(1, 1, encoded(pika.BasicProperties(headers={})), GOOD))
    data[struct.unpack_from(">L", data, 3)[0] + 7] = 0  # the first frame's end marker
    with pytest.raises(pika.exceptions.InvalidFrameError):
        Reader().feed(bytes(data), 1 << 20)


# three deliveries, and between them a method without arguments on the same channel (pika's)
_STREAM = b"".join(frames(1, tag, encoded(pika.BasicProperties(headers={})), body)
                   for tag, body in ((1, GOOD), (2, b"{}"))) + pika_frame.Method(1, spec.Basic.QosOk()).marshal() + \
    frames(1, 3, encoded(pika.BasicProperties(headers={})), GOOD * 3)


def _outcome(data: bytes, chunk: int):
    """What the reader makes of ``data`` fed ``chunk`` bytes at a time: each delivery's fields, the
    frames handed to pika, and the error's type if it raised."""
    r = Reader()
    try:
        r.feed(data, chunk)
        error = None
    except Exception as exc:  # the reader's verdict on a corrupt stream, compared below
        error = type(exc).__name__
    seen = [(d.tag, d.redelivered, d.consumer_tag, d.raw_properties, d.body, d.body_size, d.truncated)
            for d in r.seen]
    return seen, r.slow, error


@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_a_whole_delivery_at_once_and_frame_by_frame_agree_on_any_corrupted_byte(data):
    """A delivery whose three frames are in one read is decoded at once (issue 22); any byte of the
    stream changed, that shortcut decides exactly as the frame-by-frame reader does (one byte per
    read never gives it a whole delivery): the same deliveries, the same frames for pika, the same
    error."""
    assert [d[0] for d in _outcome(_STREAM, 1 << 20)[0]] == [1, 2, 3] and len(_outcome(_STREAM, 1)[1]) == 1
    stream = bytearray(_STREAM)
    index = data.draw(st.integers(0, len(stream) - 1))
    stream[index] = data.draw(st.integers(0, 255).filter(lambda b: b != stream[index]))
    assert _outcome(bytes(stream), 1 << 20) == _outcome(bytes(stream), 1)


# == the start-up self-test and the fallback ======================================================
class _WrongTag(fastpath.FrameReader):
    def _deliver(self) -> None:
        if self._delivery is not None:
            self._delivery.tag += 1
        super()._deliver()


def test_the_self_test_passes_with_the_installed_pika_and_fails_on_any_difference():
    assert fastpath.self_test() is None
    assert "decodes differently" in (fastpath.self_test(_WrongTag) or "")


def test_a_failed_self_test_falls_back_to_pika_loudly(tmp_path):
    out = tmp_path / "log"
    with open(out, "w") as handle:
        log = LineLog(handle.fileno(), env={})
        cfg = config.load({"AMQP_PASS": "p"})
        assert service.choose_path(cfg, log, lambda: "a hook is gone") == service.PIKA
        assert service.choose_path(cfg, log) == service.FAST
        assert service.choose_path(config.load({"AMQP_PASS": "p", "DISPATCH_FASTPATH": "0"}), log) == service.PIKA
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING the fast delivery path failed its self-test")
    assert "a hook is gone" in lines[0] and "pika's own delivery path" in lines[0]


# == the real connection ==========================================================================
@pytest.mark.broker
def test_fast_deliveries_on_a_real_connection(broker, vhost):
    """DispatchConnection against the real broker: pika's real connection state does the
    handshake, heartbeats and every non-delivery frame; our reader the deliveries."""
    params = parameters(broker.host, broker.port, vhost, broker.user, broker.password)
    bodies = [GOOD, b"", b"z" * 200_000, b"{}"]  # 200 kB: two frames, under the body limit
    raws = [encoded(pika.BasicProperties(headers={})), encoded(pika.BasicProperties(content_type="t")),
            encoded(pika.BasicProperties(headers={"a": "b"})),
            hostile.properties({"message_id": b"m"}, hostile.table({b"sent": ("T", 2 ** 40)}))]
    pub = pika.BlockingConnection(params)
    ch = pub.channel()
    ch.exchange_declare(EXCHANGE, "direct", durable=True)
    ch.queue_declare("orders", durable=True)
    ch.queue_bind("orders", EXCHANGE, ROUTING_KEY)
    for raw, body in zip(raws, bodies):
        ch.basic_publish(EXCHANGE, ROUTING_KEY, body, hostile.RawProperties(raw))
    pub.close()

    got: List[Delivery] = []
    state = {}
    tag = f"t.{uuid.uuid4().hex[:6]}"

    def on_delivery(d: Delivery) -> None:
        got.append(d)
        if len(got) == len(bodies):
            conn.ioloop.call_later(0, lambda: finish(d.tag))

    def finish(last: int) -> None:
        state["counters"] = (conn.bytes_received, conn.frames_received)  # zeroed once closed
        state["channel"].basic_ack(last, multiple=True)
        conn.close()

    def on_channel(channel) -> None:
        state["channel"] = channel
        conn.fast_deliveries(channel.channel_number, on_delivery)
        channel.basic_consume("orders", lambda *a: state.setdefault("pika", []).append(a), consumer_tag=tag)

    conn = fastpath.DispatchConnection(
        params, on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, e: c.ioloop.stop())
    reads: List[int] = []
    feed = conn._on_data_available
    conn._on_data_available = lambda data: (reads.append(len(data)), feed(data))  # type: ignore[method-assign]
    timer = threading.Timer(20, lambda: conn.ioloop.add_callback_threadsafe(conn.ioloop.stop))
    timer.start()
    conn.ioloop.start()
    timer.cancel()
    # the 200 kB body came in reads wider than pika's 4 KiB; pika's own transports keep theirs
    assert 4096 < max(reads) <= fastpath.READ_SIZE, reads
    assert io_services_utils._AsyncTransportBase._MAX_RECV_BYTES == 4096
    assert "pika" not in state  # every delivery went through the fast path
    assert [d.body for d in got] == bodies and [d.raw_properties for d in got] == raws
    assert all(d.consumer_tag == tag for d in got)
    assert got[3].properties is None and "year" in got[3].decode_error
    received, frame_count = state["counters"]  # the heartbeat checker reads these
    assert received > sum(map(len, bodies)) and frame_count > 10


@pytest.mark.broker
@pytest.mark.parametrize("case", ["cancelled", "unknown"])
def test_deliveries_for_a_cancelled_or_unknown_consumer_are_handled_as_pika_does(broker, vhost, tmp_path, case):
    """pika 1.x Channel._on_deliver: a delivery for a cancelled consumer is rejected with requeue;
    one for an unknown consumer tag is logged as an error and left alone. The fast path's handler
    does the same, on a real connection."""
    import random

    from roboshop_dispatch.consumer.acks import Acker
    from roboshop_dispatch.consumer.handler import OrderHandler
    from roboshop_dispatch.consumer.quarantine import Quarantine
    from roboshop_dispatch.consumer.session import FAST, Session

    params = parameters(broker.host, broker.port, vhost, broker.user, broker.password)
    pub = pika.BlockingConnection(params)
    ch = pub.channel()
    ch.queue_declare("orders", durable=True)
    for _ in range(5):
        ch.basic_publish("", "orders", GOOD, pika.BasicProperties(headers={}))
    pub.close()

    out = tmp_path / "log"
    handle = open(out, "w")  # noqa: SIM115 - closed below, after the loop ran
    log = LineLog(handle.fileno(), env={})
    sess = Session(1, "test", FAST)
    stats = {"dispatched": 0, "failed": 0, "quarantined": 0}
    cfg = config.load({"AMQP_PASS": "p", "DISPATCH_PROCESSING_MS": "0"})
    seen: List[Delivery] = []

    def on_delivery(d: Delivery) -> None:
        seen.append(d)
        handler.handle(sess, d)

    def on_channel(channel) -> None:
        sess.channel = channel
        conn.fast_deliveries(channel.channel_number, on_delivery)
        tag = sess.consumer_tag if case == "cancelled" else "someone-else"
        if case == "cancelled":
            sess.cancelled.add(sess.consumer_tag)  # as Connector.cancel does before basic.cancel
        channel.basic_consume("orders", lambda *a: None, consumer_tag=tag)
        conn.ioloop.call_later(1.0, conn.close)

    conn = fastpath.DispatchConnection(
        params, on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, e: c.ioloop.stop())
    sess.conn = conn
    acks = Acker(conn.ioloop, log, 10)
    handler = OrderHandler(cfg, conn.ioloop, log, random.Random(1), acks,
                           Quarantine(conn.ioloop, log, acks, stats), stats)
    conn.ioloop.start()
    handle.close()
    text = out.read_text()
    assert stats["dispatched"] == 0 and stats["quarantined"] == 0
    if case == "cancelled":  # rejected with requeue: the broker delivers them again, redelivered
        assert len(seen) > 5 and any(d.redelivered for d in seen) and text == ""
    else:  # logged, left unacked: only 5 deliveries, one error line each
        assert len(seen) == 5 and text.count("ERROR unexpected delivery") == 5
    check = pika.BlockingConnection(params)
    assert check.channel().queue_declare("orders", passive=True).method.message_count == 5
    check.close()
