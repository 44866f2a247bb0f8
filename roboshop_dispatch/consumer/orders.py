"""Order messages: validation (what goes to quarantine, and why) and the per-order log line.

Pure functions, no I/O: the hot path of the consumer and the unit tests both use them. Whatever
the body holds, :func:`parse_order` returns an order or raises :class:`InvalidMessage`: numbers
that do not fit a float (``1e400``, a 400-digit integer), ``NaN``/``Infinity``, nesting deeper than
Python's recursion limit and bodies over the limit (:data:`MAX_BODY` by default) are all reasons,
never crashes. The work per message is bounded before it is parsed: a body holds at most the
limit, and a run of more than :data:`MAX_DIGITS` digits (no number an order needs has that many)
is refused by a linear scan, so no number is long enough for ``int()`` (quadratic on Python 3.9)
or the JSON scanner to cost more than microseconds: a body of a thousand 999-digit numbers cost
1.2 s of CPU before.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Mapping, NamedTuple, Optional

from .delivery import MAX_BODY
from .errors import ConsumerError
from .tracecontext import TRACE_HEADERS

MAX_FIELD = 120  # longest value quoted in a log line
MAX_DIGITS = 40  # a body with a longer run of digits is refused before it is parsed

__all__ = ["MAX_BODY", "InvalidMessage", "Summary", "details", "field", "parse_order", "summarize"]


class InvalidMessage(ConsumerError):
    """A message that must be quarantined; ``reason`` is short, one line, for a header and a log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse_constant(name: str) -> float:
    raise InvalidMessage(f"{name} is not a number JSON allows")


# Numbers are parsed by the C scanner (per-number Python hooks cost a fifth of the consumer's CPU);
# what would make that slow or unsafe is refused before (a run of over MAX_DIGITS digits: int() is
# quadratic on Python 3.9) or checked after (the numbers the log line formats must be finite).
# The run is found by mapping every digit to "0" (one C pass) and searching that copy for
# MAX_DIGITS + 1 zeros: 0.7 us for a payment order where the look-behind regex
# (?<![0-9])[0-9]{41} took 5.5 us, and at most a few ms per MiB of the worst input (digit runs
# just short of the limit), where the regex took 20 ms.
_decoder = json.JSONDecoder(parse_constant=_parse_constant)
_decode_json = _decoder.decode
_scan_json = _decoder.scan_once  # type: ignore[attr-defined]  # JSONDecoder.__init__ sets it
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * (MAX_DIGITS + 1)


def long_digit_run(body: bytes) -> bool:
    """Whether ``body`` holds a run of more than :data:`MAX_DIGITS` digits (at most
    ``MAX_DIGITS + 1`` comparisons per byte, a few ms per MiB)."""
    return _LONG_RUN in body.translate(_DIGITS_TO_ZERO)


def _json(text: str) -> Any:
    """``json.loads(text)`` with the constants refused: the C scanner called directly when the
    text is one object with nothing around it (an order), else the decoder's own way (the same
    value, or the same error)."""
    if text[:1] == "{":
        try:
            value, end = _scan_json(text, 0)
        except StopIteration:
            pass  # not JSON at 0: let decode() say why
        else:
            if end == len(text):
                return value
    return _decode_json(text)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", bytes: "bytes"}.get(type(value), type(value).__name__)


# headers RabbitMQ itself adds to a message, with the type it gives them: a quorum queue counts
# redeliveries in x-delivery-count (a number), dead-lettering records x-death (an array of tables).
# An order redelivered from a quorum queue is still an order.
BROKER_HEADERS = {"x-delivery-count": (int,), "x-death": (list,)}


def check_headers(headers: Optional[Mapping[str, Any]]) -> None:
    """Every header value must be a string (the original crashed on anything else), except the
    headers the broker adds (:data:`BROKER_HEADERS`), with their own type, and the trace-context
    headers (``traceparent``, ``X-INSTANA-T``...), which may be bytes too: whatever they hold, a
    trace context is never a reason to quarantine an order."""
    if not headers:
        return
    for key, value in headers.items():
        allowed = BROKER_HEADERS.get(key, ())
        if not allowed and isinstance(value, bytes) and isinstance(key, str) and key.lower() in TRACE_HEADERS:
            continue
        if not isinstance(value, (str, *allowed)) or isinstance(value, bool):
            raise InvalidMessage(f"header {field(str(key))} is not a string ({_type_name(value)})")


def parse_order(body: bytes, headers: Optional[Mapping[str, Any]] = None, limit: int = MAX_BODY) -> Dict[str, Any]:
    """The order as a dict, or InvalidMessage with the reason it cannot be dispatched (a body
    over ``limit`` bytes is one)."""
    size = len(body)
    if size > limit:
        raise InvalidMessage(f"body too large ({size} bytes, limit {limit})")
    if headers:
        check_headers(headers)
    if long_digit_run(body):
        raise InvalidMessage(f"number too long (a run of over {MAX_DIGITS} digits)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"body is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    try:
        order = _json(text)
    except InvalidMessage:
        raise
    except ValueError as exc:  # json.JSONDecodeError
        raise InvalidMessage(f"invalid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise InvalidMessage("invalid JSON: nested too deeply") from None
    if type(order) is not dict:
        raise InvalidMessage(f"body is not a JSON object ({_type_name(order)})")
    orderid = order.get("orderid")
    if type(orderid) is not str:
        if "orderid" not in order:
            raise InvalidMessage("no orderid")
        raise InvalidMessage(f"orderid is not a string ({_type_name(orderid)})")
    if not orderid.strip():
        raise InvalidMessage("orderid is empty")
    cart = order.get("cart")
    if isinstance(cart, dict):
        for name in ("total", "tax"):
            if not _finite(cart.get(name)):
                raise InvalidMessage(f"cart.{name} is not a finite number")
    return order


def _finite(value: Any) -> bool:
    """False for a number that is infinite or does not fit a float (anything else is no number)."""
    if type(value) is float:
        return math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


class Summary(NamedTuple):
    """What is kept of an order while it is worked on: two short strings for its log line."""

    orderid: str  # already a log field
    details: str


def summarize(body: bytes, headers: Optional[Mapping[str, Any]] = None, limit: int = MAX_BODY) -> Summary:
    """Parse, validate and reduce an order to its log line parts (the body is not kept)."""
    order = parse_order(body, headers, limit)
    return Summary(field(order["orderid"]), details(order))


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with every non-printable character (C0, DEL, C1, U+2028/2029, format characters,
    lone surrogates...) written as a ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN`` escape."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
    return "".join(out)


def field(value: str) -> str:
    """A value for a ``key=value`` log field: bare when plain, else JSON-quoted with every
    non-printable character escaped (``\\uNNNN``); always one line of at most a few hundred bytes."""
    if len(value) > MAX_FIELD:
        value = value[:MAX_FIELD] + "…"
    if value and value.isprintable() and " " not in value and '"' not in value and "=" not in value:
        return value
    quoted = json.dumps(value, ensure_ascii=False)
    if quoted.isprintable():
        return quoted
    return "".join(ch if ch.isprintable() else _json_escape(ord(ch)) for ch in quoted)


def _json_escape(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?" if value is None else field(_short_json(value))
    return f"{float(value):.2f}"


def _short_json(value: Any) -> str:
    """A JSON rendering of a parsed value for a log field, never deep or long."""
    if isinstance(value, (dict, list)):
        return f"<{_type_name(value)}>"
    return json.dumps(value, ensure_ascii=False)


def details(order: Mapping[str, Any]) -> str:
    """``user=<user> items=<n> total=<total>`` for the per-order log line.

    ``items`` is the number of cart lines, ``total`` the cart total; missing parts show as ``?``.
    """
    user = order.get("user")
    cart = order.get("cart")
    if type(user) is str and type(cart) is dict:  # what payment sends: the same line, built at once
        total = cart.get("total")
        lines = cart.get("items")
        if type(total) is float and type(lines) is list:
            return f"user={field(user)} items={len(lines)} total={total:.2f}"
    if not isinstance(user, str):
        user = "?" if user is None else _short_json(user)
    items: Any = "?"
    total = "?"
    if isinstance(cart, dict):
        lines = cart.get("items")
        if isinstance(lines, list):
            items = len(lines)
        total = _number(cart.get("total"))
    return f"user={field(user)} items={items} total={total}"
