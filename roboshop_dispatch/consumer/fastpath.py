"""A lean inbound path for the deliveries of the consuming channel.

pika turns every inbound frame into objects and routes it through its callback manager: about
three quarters of the consumer's CPU time per order. For the frames that make up a delivery on
the consuming channel (``basic.deliver`` method, content header, body frames) this connection
decodes just what the consumer needs (delivery tag, redelivered flag, properties, body) straight
from the receive buffer and calls the consumer's handler. Every other frame, on any channel,
goes through pika exactly as before.

It relies on pika's ``Connection._on_data_available`` / ``_process_frame`` / ``_frame_buffer`` /
``bytes_received``, stable across pika 1.x. When any of those is missing (a future pika) the
subclass is not used and pika's own delivery path runs: slower, equally correct.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, List, Optional

import pika
import pika.exceptions
from pika import frame as pika_frame
from pika import spec
from pika.adapters.select_connection import SelectConnection

Handler = Callable[[int, bool, Any, bytes], None]

_FRAME_HEAD = struct.Struct(">BHL").unpack_from  # type, channel, size
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_CONTENT_HEAD = struct.Struct(">HHQH").unpack_from  # class, weight, body size, property flags
_DELIVER = spec.Basic.Deliver.INDEX
_METHOD, _HEADER, _BODY = spec.FRAME_METHOD, spec.FRAME_HEADER, spec.FRAME_BODY
_FRAME_END = spec.FRAME_END
_HEADERS_ONLY = spec.BasicProperties.FLAG_HEADERS

SUPPORTED = all(
    hasattr(SelectConnection, name) for name in ("_on_data_available", "_process_frame")
) and hasattr(pika_frame, "decode_frame") and hasattr(spec, "has_content")


# what payment sends (headers {} and nothing else), decoded once; handlers must not modify it
_EMPTY_HEADERS = spec.BasicProperties(headers={})


class DispatchConnection(SelectConnection):
    """SelectConnection that hands deliveries of one channel straight to a handler."""

    _fast_channel = -1
    _fast_handler: Optional[Handler] = None

    def fast_deliveries(self, channel_number: int, handler: Handler) -> None:
        """Route ``basic.deliver`` content on ``channel_number`` to ``handler(tag, redelivered,
        properties, body)`` from now on (call it right before ``basic_consume``)."""
        self._fast_channel = channel_number
        self._fast_handler = handler
        self._fd_tag = -1  # the delivery being assembled, -1 when none
        self._fd_redelivered = False
        self._fd_props: Any = None
        self._fd_left = 0  # body bytes still expected
        self._fd_parts: List[bytes] = []
        self._fd_slow_left = -1  # >= 0: content of another method on our channel, for pika

    def _on_data_available(self, data_in: bytes) -> None:
        handler = self._fast_handler
        if handler is None:
            super()._on_data_available(data_in)
            return
        pending: bytes = self._frame_buffer  # type: ignore[has-type]
        buf = pending + data_in if pending else data_in
        size = len(buf)
        pos = 0
        ours = self._fast_channel
        try:
            while size - pos >= 8:
                ftype, channel, length = _FRAME_HEAD(buf, pos)
                end = pos + 8 + length
                if end > size:
                    break
                if buf[end - 1] != _FRAME_END:
                    raise pika.exceptions.InvalidFrameError("Invalid FRAME_END marker")
                if channel != ours or self._fd_slow_left >= 0 or not self._fast_frame(buf, pos, end, ftype):
                    self._slow_frame(buf, pos, end, ftype, channel == ours)
                pos = end
        finally:
            self.bytes_received += pos
            self._frame_buffer = buf[pos:]

    def _fast_frame(self, buf: bytes, pos: int, end: int, ftype: int) -> bool:
        """Handle one frame of our channel; False when it is not a delivery's (pika takes it)."""
        if ftype == _METHOD:
            if _U32(buf, pos + 7)[0] != _DELIVER or self._fd_tag >= 0:
                return False
            p = pos + 11
            p += 1 + buf[p]  # consumer tag
            self._fd_tag = _U64(buf, p)[0]
            self._fd_redelivered = bool(buf[p + 8] & 1)
            self._fd_props = None
            self.frames_received += 1
            return True
        if self._fd_tag < 0:
            return False
        self.frames_received += 1
        if ftype == _HEADER and self._fd_props is None:
            _cls, _weight, body_size, flags = _CONTENT_HEAD(buf, pos + 7)
            if flags == _HEADERS_ONLY and _U32(buf, pos + 21)[0] == 0:
                props = _EMPTY_HEADERS
            else:
                props = spec.BasicProperties()
                props.decode(buf, pos + 19)
            self._fd_props = props
            self._fd_left = body_size
            self._fd_parts = []
            if body_size == 0:
                self._deliver(b"")
            return True
        if ftype == _BODY and self._fd_props is not None:
            fragment = buf[pos + 7:end - 1]
            self._fd_left -= len(fragment)
            if self._fd_left > 0:
                self._fd_parts.append(fragment)
            elif self._fd_left == 0:
                if self._fd_parts:
                    self._fd_parts.append(fragment)
                    fragment = b"".join(self._fd_parts)
                    self._fd_parts = []
                self._deliver(fragment)
            else:
                raise pika.exceptions.BodyTooLongError(-self._fd_left, len(fragment))
            return True
        raise pika.exceptions.UnexpectedFrameError(f"frame type {ftype} in a delivery")

    def _deliver(self, body: bytes) -> None:
        tag, redelivered, props = self._fd_tag, self._fd_redelivered, self._fd_props
        self._fd_tag = -1
        self._fd_props = None
        handler = self._fast_handler
        if handler is not None:
            handler(tag, redelivered, props, body)

    def _slow_frame(self, buf: bytes, pos: int, end: int, ftype: int, ours: bool) -> None:
        if ours:  # keep track of content that pika assembles on our channel (basic.get-ok, return)
            if ftype == _METHOD and spec.has_content(_U32(buf, pos + 7)[0]):
                self._fd_slow_left = 0
            elif ftype == _HEADER and self._fd_slow_left >= 0:
                self._fd_slow_left = _CONTENT_HEAD(buf, pos + 7)[2]
                if self._fd_slow_left == 0:
                    self._fd_slow_left = -1
            elif ftype == _BODY and self._fd_slow_left >= 0:
                self._fd_slow_left -= end - pos - 8
                if self._fd_slow_left <= 0:
                    self._fd_slow_left = -1
        _consumed, value = pika_frame.decode_frame(buf[pos:end])
        if value is not None:
            self._process_frame(value)
