"""The fast delivery path: the consumer reads the AMQP frame stream itself.

pika turns every inbound frame into objects and routes it through its callback manager (about
three quarters of the consumer's CPU time per order), assembles every body in full whatever its
size, and decodes the content properties inside its receive path, where a value it cannot decode
(a ``timestamp`` in the year 36812, a table nested 600 deep) raises and drops the connection, and
the message comes back first on the next one. :class:`FrameReader` splits the byte stream into
frames itself: the frames of a delivery on the consuming channel (``basic.deliver``, content
header, body) are decoded here into a :class:`~.delivery.Delivery`, with the properties decoded
under ``try`` (raw bytes kept) and at most a bounded prefix of the body kept; every other frame,
on any channel, is decoded and processed by pika exactly as pika would.

pika internals relied on (pika 1.3-1.4, the pinned range): the connection's
``_on_data_available(data)`` is what the transport calls with inbound bytes, ``_process_frame``
processes one decoded frame, ``bytes_received``/``frames_received`` feed the heartbeat checker.
pika's own ``_frame_buffer`` is never used. The transport reads at most its ``_MAX_RECV_BYTES``
(4 KiB) per ``recv``: pika's own path re-slices its frame buffer after every frame (quadratic in
the read size), this reader walks offsets, so the fast path's transport reads :data:`READ_SIZE`
(about 11 payment orders per read become about 180: a sixteenth of the reads, and of the deliveries
split across two; 20-30 % more orders a second on a busy machine). :func:`self_test`
checks these hooks and decodes a known frame sequence through both this reader and pika's decoder
at start-up; when anything differs the consumer logs a WARNING and takes pika's own path.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, List, Optional, Tuple

import pika
import pika.connection
import pika.exceptions
from pika import frame as pika_frame
from pika import spec
from pika.adapters import base_connection
from pika.adapters.select_connection import SelectConnection
from pika.channel import ContentFrameAssembler

from .delivery import MAX_BODY, Delivery, keep_limit

Handler = Callable[[Delivery], None]
Other = Callable[[bytes], None]

_FRAME_HEAD = struct.Struct(">BHL").unpack_from  # type, channel, size
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_CONTENT_HEAD = struct.Struct(">HHQH").unpack_from  # class, weight, body size, property flags
_DELIVER = spec.Basic.Deliver.INDEX
_METHOD, _HEADER, _BODY = spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY
_FRAME_END = spec.FRAME_END
_HEADERS_ONLY = spec.BasicProperties.FLAG_HEADERS
MAX_ERROR = 200

READ_SIZE = 64 * 1024  # the fast path's transport reads up to this much per recv (pika: 4 KiB)

# what payment sends (headers {} and nothing else), decoded once; handlers must not modify it
_EMPTY_HEADERS = spec.BasicProperties(headers={})


def decode_properties(raw: bytes) -> Tuple[Any, Optional[str]]:
    """``(BasicProperties, None)``, or ``(None, why)`` when pika cannot decode ``raw``."""
    if len(raw) == 6 and _U32(raw, 2)[0] == 0 and raw[0] == _HEADERS_ONLY >> 8 and raw[1] == 0:
        return _EMPTY_HEADERS, None
    props = spec.BasicProperties()
    try:
        props.decode(raw)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
    return props, None


def _method_id(buf: bytes, pos: int, end: int) -> int:
    """The class and method id of the method frame ``buf[pos:end]``; a frame too short to hold
    them is a protocol error (read on, they would be the next frame's bytes)."""
    if end - pos < 12:  # 7 bytes of frame head, 4 of ids (a method may have no arguments), a frame end
        raise pika.exceptions.InvalidFrameError("a method frame too short for its method's id")
    return _U32(buf, pos + 7)[0]


def _body_size(buf: bytes, pos: int, end: int) -> int:
    """The body size the content header frame ``buf[pos:end]`` announces; a frame too short to
    hold it and the property flags is a protocol error."""
    if end - pos < 22:  # 7 bytes of frame head, 14 of class, weight, size and flags, a frame end
        raise pika.exceptions.InvalidFrameError("a content header frame too short for its body size")
    return _CONTENT_HEAD(buf, pos + 7)[2]


def _deliver_fields(buf: bytes, pos: int, end: int) -> Tuple[str, int, bool]:
    """(consumer tag, delivery tag, redelivered) of the ``basic.deliver`` frame ``buf[pos:end]``
    (the one decoder of them, for both ways a delivery is read). Its fields must lie within its
    frame, before the frame end byte: a corrupt length would read the next frame's bytes as a
    delivery tag, and is a protocol error as pika's own decoder would find it."""
    p = pos + 11
    if p + 10 > end - 1 or p + 10 + buf[p] > end - 1:  # the tag's length byte, tag, u64, bit
        raise pika.exceptions.InvalidFrameError("basic.deliver: its fields overrun its frame")
    ctag = buf[p + 1:p + 1 + buf[p]].decode("utf-8", "surrogateescape")
    p += 1 + buf[p]
    return ctag, _U64(buf, p)[0], bool(buf[p + 8] & 1)


class FrameReader:
    """Frames from the inbound byte stream; deliveries of one channel decoded here."""

    def __init__(self, other: Other, limit: int = MAX_BODY) -> None:
        self._other = other
        self._limit = limit  # the body limit: of a larger body only a prefix is kept
        self._pending: List[bytes] = []  # received bytes not yet a whole frame
        self._pending_len = 0
        self._need = 8  # bytes needed before the pending bytes are worth looking at again
        self._channel = -1
        self._handler: Optional[Handler] = None
        self._delivery: Optional[Delivery] = None  # the delivery being assembled
        self._left = 0  # its body bytes still expected
        self._keep = 0  # body bytes to keep of it
        self._parts: List[bytes] = []
        self._other_content = False  # pika assembles content of another method on our channel

    def route(self, channel_number: int, handler: Handler) -> None:
        """Decode the deliveries of ``channel_number`` here and hand each to ``handler``."""
        self._channel = channel_number
        self._handler = handler

    def feed(self, data: bytes) -> Tuple[int, int]:
        """Process ``data``; returns (bytes consumed as whole frames, frames decoded here)."""
        if self._pending:
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return 0, 0
            data = b"".join(self._pending)
            self._pending = []
        size = len(data)
        pos = 0
        fast = 0
        ours = self._channel if self._handler is not None else -1
        try:
            while size - pos >= 8:
                if data[pos] == 65 and data[pos:pos + 4] == b"AMQP":  # protocol header: pika's
                    self._other(data[pos:pos + 8])
                    pos += 8
                    continue
                ftype, channel, length = _FRAME_HEAD(data, pos)
                end = pos + 8 + length
                if end > size:
                    self._need = end - pos
                    break
                if data[end - 1] != _FRAME_END:
                    raise pika.exceptions.InvalidFrameError("Invalid FRAME_END marker")
                if channel == ours and not self._other_content:
                    if ftype == _METHOD and self._delivery is None:
                        whole = self._whole(data, pos, end, size)
                        if whole:
                            fast += 3
                            pos = whole
                            continue
                    if self._frame(data, pos, end, ftype):
                        fast += 1
                    else:
                        self._slow(data, pos, end, ftype, True)
                else:
                    self._slow(data, pos, end, ftype, channel == ours)
                pos = end
            else:
                self._need = 8
        finally:
            if pos < size:
                rest = data[pos:]
                self._pending = [rest]
                self._pending_len = len(rest)
            else:
                self._pending_len = 0
        return pos, fast

    def _whole(self, buf: bytes, pos: int, end: int, size: int) -> int:
        """The common case at once: a ``basic.deliver`` (``buf[pos:end]``) whose content header and
        one body frame, the whole body within the limit, follow it in ``buf``. Decodes and hands
        over that delivery and returns where its frames end; 0 when it is not that case (then the
        frames are taken one by one, by :meth:`_frame`, which also judges bad ones)."""
        if _method_id(buf, pos, end) != _DELIVER or size - end < 8:
            return 0
        htype, channel, hlen = _FRAME_HEAD(buf, end)
        hend = end + 8 + hlen
        if htype != _HEADER or channel != self._channel or hlen < 14 or hend + 8 > size \
                or buf[hend - 1] != _FRAME_END:
            return 0
        body_size = _CONTENT_HEAD(buf, end + 7)[2]
        btype, channel, blen = _FRAME_HEAD(buf, hend)
        bend = hend + 8 + blen
        if btype != _BODY or channel != self._channel or blen != body_size or not 0 < blen <= self._limit \
                or bend > size or buf[bend - 1] != _FRAME_END:
            return 0
        ctag, tag, redelivered = _deliver_fields(buf, pos, end)
        raw = buf[end + 19:hend - 1]
        properties, error = decode_properties(raw)
        delivery = Delivery(tag, redelivered, ctag, properties, buf[hend + 7:bend - 1],
                            raw_properties=raw, decode_error=error, limit=self._limit)
        if self._handler is not None:
            self._handler(delivery)
        return bend

    def _frame(self, buf: bytes, pos: int, end: int, ftype: int) -> bool:
        """One frame of our channel; False when it is not a delivery's (pika takes it)."""
        if ftype == _METHOD:
            if _method_id(buf, pos, end) != _DELIVER:
                return False
            if self._delivery is not None:
                raise pika.exceptions.UnexpectedFrameError("basic.deliver inside a delivery")
            ctag, tag, redelivered = _deliver_fields(buf, pos, end)
            self._delivery = Delivery(tag, redelivered, ctag, None, b"", limit=self._limit)
            self._left = -1
            return True
        delivery = self._delivery
        if delivery is None:
            return False
        if ftype == _HEADER and self._left < 0:
            body_size = _body_size(buf, pos, end)
            raw = buf[pos + 19:end - 1]
            delivery.properties, delivery.decode_error = decode_properties(raw)
            delivery.raw_properties = raw
            delivery.body_size = self._left = body_size
            self._keep = keep_limit(body_size, self._limit)
            self._parts = []
            if body_size == 0:
                self._deliver()
            return True
        if ftype == _BODY and self._left > 0:
            length = end - pos - 8
            self._left -= length
            if self._left < 0:
                raise pika.exceptions.BodyTooLongError(-self._left, length)
            if self._keep == delivery.body_size and not self._parts and self._left == 0:
                delivery.body = buf[pos + 7:end - 1]  # the whole body in one frame
            else:
                room = self._keep - sum(len(p) for p in self._parts) if self._parts else self._keep
                if room > 0:
                    self._parts.append(buf[pos + 7:pos + 7 + min(length, room)])
                if self._left == 0:
                    delivery.body = b"".join(self._parts)
                    self._parts = []
            if self._left == 0:
                self._deliver()
            return True
        raise pika.exceptions.UnexpectedFrameError(f"frame type {ftype} in a delivery")

    def _deliver(self) -> None:
        delivery, self._delivery = self._delivery, None
        handler = self._handler
        if handler is not None and delivery is not None:
            handler(delivery)

    def _slow(self, buf: bytes, pos: int, end: int, ftype: int, ours: bool) -> None:
        if ours:  # track content that pika assembles on our channel (basic.get-ok, basic.return)
            if ftype == _METHOD and spec.has_content(_method_id(buf, pos, end)):
                self._other_content = True
            elif ftype == _HEADER and self._other_content:
                self._left = _body_size(buf, pos, end)
                self._other_content = self._left > 0
            elif ftype == _BODY and self._other_content:
                self._left -= end - pos - 8
                self._other_content = self._left > 0
        self._other(buf[pos:end])


class DispatchConnection(SelectConnection):
    """SelectConnection whose inbound bytes go through a :class:`FrameReader` (``body_limit``:
    the most of a body kept, see :func:`~.delivery.keep_limit`)."""

    def __init__(self, *args: Any, body_limit: int = MAX_BODY, **kwargs: Any) -> None:
        self._reader = FrameReader(self._pika_frame, body_limit)
        super().__init__(*args, **kwargs)

    def fast_deliveries(self, channel_number: int, handler: Handler) -> None:
        """Hand the deliveries of ``channel_number`` to ``handler`` from now on (call it right
        before ``basic_consume``)."""
        self._reader.route(channel_number, handler)

    def _proto_connection_made(self, transport: Any) -> None:
        super()._proto_connection_made(transport)
        if isinstance(getattr(transport, "_MAX_RECV_BYTES", None), int):
            transport._MAX_RECV_BYTES = READ_SIZE  # this connection's transport only

    def _pika_frame(self, data: bytes) -> None:
        _consumed, value = pika_frame.decode_frame(data)
        if value is not None:
            self._process_frame(value)

    def _on_data_available(self, data_in: bytes) -> None:
        consumed, fast = self._reader.feed(data_in)
        self.bytes_received += consumed
        self.frames_received += fast


# == the start-up self-test =========================================================================
def _hooks_missing() -> Optional[str]:
    """What of pika's internals this module relies on is not there any more, or None."""
    import inspect

    method = getattr(SelectConnection, "_on_data_available", None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "data_in"]:
        return "SelectConnection._on_data_available(data_in) is gone"
    caller = getattr(base_connection.BaseConnection, "_proto_data_received", None)
    if caller is None or "_on_data_available" not in caller.__code__.co_names:
        return "pika's transport no longer calls _on_data_available"
    if not callable(getattr(SelectConnection, "_process_frame", None)):
        return "Connection._process_frame is gone"
    made = getattr(base_connection.BaseConnection, "_proto_connection_made", None)
    if made is None or list(inspect.signature(made).parameters) != ["self", "transport"]:
        return "BaseConnection._proto_connection_made(transport) is gone"
    state = getattr(pika.connection.Connection, "_init_connection_state", None)
    names = state.__code__.co_names if state is not None else ()
    if "bytes_received" not in names or "frames_received" not in names:
        return "Connection.bytes_received/frames_received are gone"
    return None


def _sample() -> Tuple[bytes, List[Tuple[Any, Any, bytes]], int]:
    """A known frame sequence: deliveries on channel 1 mixed with frames pika must process."""
    messages = [
        (spec.BasicProperties(headers={}), b'{"orderid": "a"}'),
        (spec.BasicProperties(), b""),
        (spec.BasicProperties(content_type="application/json", delivery_mode=2, message_id="m",
                              timestamp=1700000000, headers={"trace": "abc", "n": 5, "t": {"x": [1, "y"]}}),
         bytes(range(256)) * 40),
    ]
    out = [pika_frame.Heartbeat().marshal()]
    for tag, (props, body) in enumerate(messages, 1):
        out.append(pika_frame.Method(1, spec.Basic.Deliver(f"ctag.{tag}", tag, tag == 2, "robot-shop",
                                                           "orders")).marshal())
        out.append(pika_frame.Header(1, len(body), props).marshal())
        out += [pika_frame.Body(1, body[i:i + 4000]).marshal() for i in range(0, len(body), 4000)]
        out.append(pika_frame.Method(2, spec.Basic.Ack(tag, False)).marshal())
    data = b"".join(out)
    expected = []
    assembler = ContentFrameAssembler()
    others = 0
    pos = 0
    while pos < len(data):
        used, value = pika_frame.decode_frame(data[pos:])
        pos += used
        if getattr(value, "channel_number", 0) == 1:
            done = assembler.process(value)
            if done:
                expected.append(done)
        else:
            others += 1
    return data, expected, others


def self_test(reader_class: type = FrameReader) -> Optional[str]:
    """None when the fast path may be used; otherwise why not (one line)."""
    try:
        missing = _hooks_missing()
        if missing is not None:
            return missing
        data, expected, others = _sample()
        for chunk in (1, 7, 4096, len(data)):
            got: List[Delivery] = []
            slow: List[bytes] = []
            reader = reader_class(slow.append)
            reader.route(1, got.append)
            for i in range(0, len(data), chunk):
                reader.feed(data[i:i + chunk])
            if len(got) != len(expected) or len(slow) != others:
                return f"{len(got)} deliveries and {len(slow)} other frames decoded, expected " \
                       f"{len(expected)} and {others}"
            for mine, (method_frame, header_frame, body) in zip(got, expected):
                method, props = method_frame.method, header_frame.properties
                if (mine.tag, mine.redelivered, mine.consumer_tag, mine.body) != \
                        (method.delivery_tag, method.redelivered, method.consumer_tag, body) \
                        or mine.properties is None or vars(mine.properties) != vars(props):
                    return f"delivery {method.delivery_tag} decodes differently from pika"
    except Exception as exc:
        return f"self-test raised {type(exc).__name__}: {exc}"[:MAX_ERROR]
    return None


def pika_version() -> str:
    return str(getattr(pika, "__version__", "?"))
