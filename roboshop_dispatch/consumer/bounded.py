"""pika's own delivery path, bounded: a body over the limit is never assembled in full.

pika's channel hands every content frame to its ``ContentFrameAssembler``, which keeps every
body fragment and joins them at the end: a 100 MB body costs 200 MB of memory on that path (the
fast path keeps a bounded prefix, :mod:`.fastpath`). :class:`BoundedAssembler` does what that
assembler does with the one difference that of a body announced larger than the limit it keeps
only the prefix :func:`~.delivery.keep_limit` names, and returns it as :class:`Prefix` (bytes
that remember the announced size; :func:`~.delivery.from_pika` reads it).

pika internals relied on (pika 1.3-1.4, the pinned range): a channel keeps its assembler in
``_content_assembler`` and calls its ``process(frame)`` for every content frame (method, header,
body), which returns ``(method frame, header frame, body)`` once a message is complete.
:func:`install` checks that before it replaces the assembler and says why when it cannot.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from pika import exceptions, spec
from pika import frame as pika_frame
from pika.channel import Channel

from .delivery import MAX_BODY, keep_limit

Content = Tuple[Any, Any, bytes]


class Prefix(bytes):
    """The kept start of a body larger than the limit; ``announced``: its size on the wire."""

    announced: int = 0


def _prefix(data: bytes, announced: int) -> Prefix:
    prefix = Prefix(data)
    prefix.announced = announced
    return prefix


class BoundedAssembler:
    """pika's ContentFrameAssembler with a bound on what it keeps of a body."""

    def __init__(self, limit: int = MAX_BODY) -> None:
        self.limit = limit
        self._method: Any = None
        self._header: Any = None
        self._size = 0  # the body size the header announced
        self._seen = 0
        self._keep = 0
        self._kept = 0
        self._parts: List[bytes] = []

    def process(self, value: Any) -> Optional[Content]:
        if isinstance(value, pika_frame.Method) and spec.has_content(value.method.INDEX):
            self._method = value
            return None
        if isinstance(value, pika_frame.Header):
            self._header, self._size, self._seen, self._kept, self._parts = value, value.body_size, 0, 0, []
            self._keep = keep_limit(self._size, self.limit)
            return self._finish() if self._size == 0 else None
        if isinstance(value, pika_frame.Body):
            return self._body(value.fragment)
        raise exceptions.UnexpectedFrameError(value)

    def _body(self, fragment: bytes) -> Optional[Content]:
        self._seen += len(fragment)
        if self._seen > self._size:
            raise exceptions.BodyTooLongError(self._seen, self._size)
        room = self._keep - self._kept
        if room > 0:
            part = fragment if len(fragment) <= room else fragment[:room]
            self._parts.append(part)
            self._kept += len(part)
        return self._finish() if self._seen == self._size else None

    def _finish(self) -> Content:
        body = b"".join(self._parts)
        if self._size > len(body):
            body = _prefix(body, self._size)
        content = (self._method, self._header, body)
        self._method = self._header = None
        self._parts = []
        return content


def hooks_missing() -> Optional[str]:
    """What of pika's internals :func:`install` relies on is not there any more, or None."""
    handle = getattr(Channel, "_handle_content_frame", None)
    init = getattr(Channel, "__init__", None)
    for what, fn in (("Channel._handle_content_frame", handle), ("Channel.__init__", init)):
        code = getattr(fn, "__code__", None)
        if code is None or "_content_assembler" not in code.co_names:
            return f"{what} no longer uses _content_assembler"
    if "process" not in handle.__code__.co_names:  # type: ignore[union-attr]
        return "Channel._handle_content_frame no longer calls the assembler's process()"
    return None


def install(channel: Any, limit: int) -> Optional[str]:
    """Bound what ``channel`` keeps of a body to ``limit`` (see the module text); returns None,
    or why it cannot (then pika assembles every body in full)."""
    missing = hooks_missing()
    if missing is not None:
        return missing
    if not hasattr(channel, "_content_assembler"):
        return "the channel has no _content_assembler"
    channel._content_assembler = BoundedAssembler(limit)
    return None
