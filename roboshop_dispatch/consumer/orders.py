"""Order messages: validation (what goes to quarantine, and why) and the per-order log line.

Pure functions, no I/O: the hot path of the consumer and the unit tests both use them.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional

MAX_BODY = 1024 * 1024  # bodies over 1 MiB are quarantined, never parsed
MAX_FIELD = 120  # longest value quoted in a log line

_decode_json = json.JSONDecoder().decode


class InvalidMessage(ValueError):
    """A message that must be quarantined; ``reason`` is short, one line, for a header and a log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", bytes: "bytes"}.get(type(value), type(value).__name__)


def check_headers(headers: Optional[Mapping[str, Any]]) -> None:
    """Every header value must be a string (the original crashed on anything else)."""
    if not headers:
        return
    for key, value in headers.items():
        if not isinstance(value, str):
            raise InvalidMessage(f"header {field(str(key))} is not a string ({_type_name(value)})")


def parse_order(body: bytes, headers: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The order as a dict, or InvalidMessage with the reason it cannot be dispatched."""
    size = len(body)
    if size > MAX_BODY:
        raise InvalidMessage(f"body too large ({size} bytes, limit {MAX_BODY})")
    check_headers(headers)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"body is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    try:
        order = _decode_json(text)
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
    return order


def field(value: str) -> str:
    """A value for a ``key=value`` log field: bare when plain, else JSON-quoted; always one line."""
    if len(value) > MAX_FIELD:
        value = value[:MAX_FIELD] + "…"
    if value and value.isprintable() and " " not in value and '"' not in value and "=" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "?" if value is None else field(json.dumps(value, ensure_ascii=False))
    return f"{value:.2f}"


def details(order: Mapping[str, Any]) -> str:
    """``user=<user> items=<n> total=<total>`` for the per-order log line.

    ``items`` is the number of cart lines, ``total`` the cart total; missing parts show as ``?``.
    """
    user = order.get("user")
    if not isinstance(user, str):
        user = "?" if user is None else json.dumps(user, ensure_ascii=False)
    cart = order.get("cart")
    items: Any = "?"
    total = "?"
    if isinstance(cart, dict):
        lines = cart.get("items")
        if isinstance(lines, list):
            items = len(lines)
        total = _number(cart.get("total"))
    return f"user={field(user)} items={items} total={total}"
