"""One AMQP connection for the checks, and the small reply every probe returns. Each refused
request closes its channel, so every probe gets a fresh one."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Tuple


@dataclass(frozen=True)
class Reply:
    """What the broker answered one probe: ``code`` 0 when the request succeeded (``value`` is its
    result), else the AMQP reply code and text of the channel it closed."""

    code: int = 0
    text: str = ""
    value: Any = None


def reply_of(exc: BaseException) -> Tuple[int, str]:
    """(reply code, reply text) of a pika channel/connection close."""
    code = getattr(exc, "reply_code", None)
    text = getattr(exc, "reply_text", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        text = exc.args[1] if len(exc.args) > 1 else ""
    return int(code or 0), str(text or exc)


INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'.*?received '([^']*)' but current is '([^']*)'")


class Broker:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def attempt(self, fn: Callable[[Any], Any]) -> Reply:
        """``fn(channel)`` on a fresh channel; a refusal by the broker is a Reply, not an error."""
        import pika.exceptions as pe

        channel = self.conn.channel()
        try:
            result = fn(channel)
        except pe.ChannelClosedByBroker as exc:
            return Reply(*reply_of(exc))
        if channel.is_open:
            channel.close()
        return Reply(0, "", result)
