"""One delivery as the consumer sees it, whichever path decoded it.

A :class:`Delivery` holds what the order handler and the quarantine need and nothing more: the
body is at most a bounded prefix when the publisher sent more than the consumer will ever parse
(``body_size`` is what the broker announced), the properties are ``None`` when they could not be
decoded (``decode_error`` says why) and ``raw_properties`` are the property bytes exactly as they
came off the wire (or pika's re-encoding of them on pika's own path).
"""

from __future__ import annotations

from typing import Any, Optional

# bodies over the limit are quarantined, never parsed (payment sends a few KiB): the default of
# DISPATCH_MAX_BODY (config.py), which may set it between MIN_BODY_LIMIT and MAX_BODY_LIMIT
MAX_BODY = 256 * 1024
MIN_BODY_LIMIT = 1024
MAX_BODY_LIMIT = 64 * 1024 * 1024
TRUNCATED_PREFIX = 64 * 1024  # what is kept of a body over the limit: quarantined with a marker


class Delivery:
    __slots__ = ("body", "body_size", "consumer_tag", "decode_error", "limit", "properties", "raw_properties",
                 "redelivered", "tag")

    def __init__(self, tag: int, redelivered: bool, consumer_tag: str, properties: Any, body: bytes,
                 *, body_size: Optional[int] = None, raw_properties: Optional[bytes] = None,
                 decode_error: Optional[str] = None, limit: int = MAX_BODY) -> None:
        self.tag = tag
        self.redelivered = redelivered
        self.consumer_tag = consumer_tag
        self.properties = properties  # pika.spec.BasicProperties, or None when undecodable
        self.body = body
        self.body_size = len(body) if body_size is None else body_size
        self.raw_properties = raw_properties
        self.decode_error = decode_error
        self.limit = limit  # the body limit of the path that decoded it: a larger body is no order

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


def keep_limit(body_size: int, limit: int = MAX_BODY) -> int:
    """How many body bytes to keep of a body announced as ``body_size`` bytes."""
    return body_size if body_size <= limit else min(TRUNCATED_PREFIX, limit)


def from_pika(method: Any, properties: Any, body: bytes, limit: int = MAX_BODY) -> Delivery:
    """A delivery from pika's own path: the body pika assembled, or the prefix the bounded
    assembler kept (:mod:`.bounded`: its ``announced`` size is what the broker said)."""
    size = getattr(body, "announced", len(body))
    kept = body if size <= limit else body[:keep_limit(size, limit)]
    return Delivery(method.delivery_tag, bool(method.redelivered), method.consumer_tag, properties, bytes(kept),
                    body_size=size, limit=limit)
