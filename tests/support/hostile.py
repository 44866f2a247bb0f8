"""Hostile messages: AMQP content properties encoded by hand, byte for byte.

pika cannot encode many values a publisher may send (a ``timestamp`` in the year 36812, a table
nested 600 deep, field types pika does not know), so the tests encode the property list here and
publish it through pika with :class:`RawProperties`, whose ``encode()`` returns those bytes: what
reaches the broker, and then the consumer, is exactly what a hostile publisher would send.

Field values are ``(type code, value)`` pairs with the type codes RabbitMQ uses (``t b B s u I i
l f d D S x A T F V``): RabbitMQ's 16-bit ``s`` is pika's short string, so an ``s`` value already
decodes differently in pika.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pika

Field = Tuple[str, Any]

# property name -> (flag bit, kind), in the order of the property list (AMQP 0-9-1 basic class)
PROPERTIES: Sequence[Tuple[str, int, str]] = (
    ("content_type", 15, "shortstr"), ("content_encoding", 14, "shortstr"), ("headers", 13, "table"),
    ("delivery_mode", 12, "octet"), ("priority", 11, "octet"), ("correlation_id", 10, "shortstr"),
    ("reply_to", 9, "shortstr"), ("expiration", 8, "shortstr"), ("message_id", 7, "shortstr"),
    ("timestamp", 6, "u64"), ("type", 5, "shortstr"), ("user_id", 4, "shortstr"),
    ("app_id", 3, "shortstr"), ("cluster_id", 2, "shortstr"),
)


def shortstr(data: bytes) -> bytes:
    assert len(data) < 256
    return bytes([len(data)]) + data


def longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def value(field: Field) -> bytes:
    """One typed field value: its type code and encoding."""
    kind, v = field
    code = kind.encode()
    if kind == "t":
        return code + bytes([1 if v else 0])
    fixed = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I", "l": ">q",
             "f": ">f", "d": ">d", "T": ">Q"}
    if kind in fixed:
        return code + struct.pack(fixed[kind], v)
    if kind == "D":
        scale, unscaled = v
        return code + struct.pack(">Bi", scale, unscaled)
    if kind in ("S", "x"):
        return code + longstr(v)
    if kind == "A":
        return code + longstr(b"".join(value(item) for item in v))
    if kind == "F":
        return code + table(v)
    if kind == "V":
        return code
    raise ValueError(f"unknown field type {kind!r}")


def table(fields: Dict[bytes, Field]) -> bytes:
    return longstr(b"".join(shortstr(key) + value(f) for key, f in fields.items()))


def nested_table(depth: int) -> bytes:
    """A header table nested ``depth`` deep (built from the inside out: no recursion here)."""
    inner = table({})
    for _ in range(depth):
        inner = longstr(shortstr(b"n") + b"F" + inner)
    return inner


def properties(props: Dict[str, Any], raw_headers: Optional[bytes] = None) -> bytes:
    """The encoded property list (flags, then each present property). ``props`` values are bytes
    for short strings, ints for octets and the timestamp, a ``{key: Field}`` dict for headers;
    ``raw_headers`` replaces the headers table with bytes encoded by the caller."""
    flags = 0
    out: List[bytes] = []
    for name, bit, kind in PROPERTIES:
        if name == "headers" and raw_headers is not None:
            flags |= 1 << bit
            out.append(raw_headers)
            continue
        if name not in props:
            continue
        flags |= 1 << bit
        v = props[name]
        if kind == "shortstr":
            out.append(shortstr(v))
        elif kind == "octet":
            out.append(bytes([v]))
        elif kind == "u64":
            out.append(struct.pack(">Q", v))
        else:
            out.append(table(v))
    return struct.pack(">H", flags) + b"".join(out)


class RawProperties(pika.BasicProperties):
    """Properties that pika sends as the given bytes, exactly."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw

    def encode(self) -> List[bytes]:
        return [self.raw]


def pika_decodes(raw: bytes) -> bool:
    """Whether pika's own decoder gets through these property bytes."""
    try:
        pika.BasicProperties().decode(raw)
    except Exception:
        return False
    return True
