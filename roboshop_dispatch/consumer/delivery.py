"""One delivery as the consumer sees it, whichever path decoded it.

A :class:`Delivery` holds what the order handler and the quarantine need and nothing more: the
body is at most a bounded prefix when the publisher sent more than the consumer will ever parse
(``body_size`` is what the broker announced), the properties are ``None`` when they could not be
decoded (``decode_error`` says why) and ``raw_properties`` are the property bytes exactly as they
came off the wire (or pika's re-encoding of them on pika's own path).
"""

from __future__ import annotations

from typing import Any, Optional

MAX_BODY = 1024 * 1024  # bodies over 1 MiB are quarantined, never parsed
TRUNCATED_PREFIX = 64 * 1024  # what is kept of a body over MAX_BODY: quarantined with a marker


class Delivery:
    __slots__ = ("body", "body_size", "consumer_tag", "decode_error", "properties", "raw_properties",
                 "redelivered", "tag")

    def __init__(self, tag: int, redelivered: bool, consumer_tag: str, properties: Any, body: bytes,
                 *, body_size: Optional[int] = None, raw_properties: Optional[bytes] = None,
                 decode_error: Optional[str] = None) -> None:
        self.tag = tag
        self.redelivered = redelivered
        self.consumer_tag = consumer_tag
        self.properties = properties  # pika.spec.BasicProperties, or None when undecodable
        self.body = body
        self.body_size = len(body) if body_size is None else body_size
        self.raw_properties = raw_properties
        self.decode_error = decode_error

    @property
    def truncated(self) -> bool:
        return self.body_size > len(self.body)

    @property
    def headers(self) -> Any:
        return None if self.properties is None else self.properties.headers

    def encoded_properties(self) -> Optional[bytes]:
        """The property bytes (flags + list) as received; re-encoded by pika when not kept."""
        if self.raw_properties is None and self.properties is not None:
            try:
                self.raw_properties = b"".join(self.properties.encode())
            except Exception:
                return None
        return self.raw_properties


def keep_limit(body_size: int) -> int:
    """How many body bytes to keep of a body announced as ``body_size`` bytes."""
    return body_size if body_size <= MAX_BODY else TRUNCATED_PREFIX


def from_pika(method: Any, properties: Any, body: bytes) -> Delivery:
    """A delivery from pika's own path (pika assembled the whole body already)."""
    size = len(body)
    kept = body if size <= MAX_BODY else body[:TRUNCATED_PREFIX]
    return Delivery(method.delivery_tag, bool(method.redelivered), method.consumer_tag, properties, kept,
                    body_size=size)
