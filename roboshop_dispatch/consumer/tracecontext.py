"""The trace context a publisher put in a message's headers: pure parsing, no OpenTelemetry.

RoboShop's payment service runs with Instana's ``instana`` package, which patches pika's
``basic_publish`` and adds ``X-INSTANA-T`` (trace id, 16 hex digits), ``X-INSTANA-S`` (the
publishing span's id, 16 hex digits) and ``X-INSTANA-L`` (``1``; a value starting with ``0`` means
"not sampled"). An OpenTelemetry publisher sends W3C ``traceparent``/``tracestate`` instead; those
are OpenTelemetry's own propagator's to parse (:mod:`.tracing`), this module only finds them.

Header values may be ``str`` or ``bytes`` (an AMQP long string that is not UTF-8, or a byte array);
names are matched without regard to case. Anything else, junk, wrong lengths, non-hex digits or an
all-zero id gives ``None``: the order gets a root span. Nothing here raises.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

INSTANA_TRACE = "x-instana-t"
INSTANA_SPAN = "x-instana-s"
INSTANA_LEVEL = "x-instana-l"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# the headers that carry trace context: a str or bytes value of these is never a reason to quarantine
TRACE_HEADERS = frozenset({INSTANA_TRACE, INSTANA_SPAN, INSTANA_LEVEL, TRACEPARENT, TRACESTATE})
MAX_VALUE = 512  # longer values are junk (a W3C tracestate is at most 512 characters)
_HEX = frozenset("0123456789abcdefABCDEF")


class Parent(NamedTuple):
    """A remote parent: 128-bit trace id, 64-bit span id, sampled or not."""

    trace_id: int
    span_id: int
    sampled: bool


def text(value: Any) -> Optional[str]:
    """A header value as text: str as it is, bytes as ASCII; anything else (or too long) None."""
    if isinstance(value, bytes):
        if len(value) > MAX_VALUE:
            return None
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str) and len(value) <= MAX_VALUE:
        return value
    return None


def header(headers: Optional[Mapping[Any, Any]], name: str) -> Optional[str]:
    """The text of header ``name`` (lower case), matched without regard to case, or None."""
    if not headers:
        return None
    try:
        value = headers.get(name)
        if value is None:
            for key, candidate in headers.items():
                if isinstance(key, str) and key.lower() == name:
                    value = candidate
                    break
    except Exception:  # a mapping that misbehaves is no trace context
        return None
    return text(value)


def _hex_id(value: Optional[str], lengths: tuple) -> Optional[int]:
    if value is None:
        return None
    value = value.strip(" \t")
    if len(value) not in lengths or not _HEX.issuperset(value):
        return None
    number = int(value, 16)
    return number or None  # all zeros is no id


def instana_parent(headers: Optional[Mapping[Any, Any]]) -> Optional[Parent]:
    """The parent Instana's headers name: T of 16 or 32 hex digits (a 64-bit id is left-padded with
    zeros to 128 bits), S of 16, L starting with ``0``: not sampled. None when T or S is unusable."""
    trace_id = _hex_id(header(headers, INSTANA_TRACE), (16, 32))
    span_id = _hex_id(header(headers, INSTANA_SPAN), (16,))
    if trace_id is None or span_id is None:
        return None
    level = header(headers, INSTANA_LEVEL)
    sampled = not (level is not None and level.strip(" \t").startswith("0"))
    return Parent(trace_id, span_id, sampled)
