"""Compact line logging to stdout: ``LEVEL message``, one line per event, no timestamps.

systemd's journal adds the timestamps; when stdout *is* the journal (``JOURNAL_STREAM`` names it)
each line also starts with the ``<N>`` syslog priority prefix, which journald turns into the
entry's priority and strips. Every line is one line of printable text: any other character
(C0 and C1 controls, escape sequences, U+2028/2029, lone surrogates...) is written as an escape.
Per-order lines are buffered and written in batches (one write per ack batch, always *before* the
ack goes out); every other event is written at once.

The standard ``logging`` module is bridged here too, so pika's own records (kept to errors
only) come out in the same format.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import traceback
from typing import List, Mapping, Optional

from .orders import escape

PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _is_journal(env: Mapping[str, str], fd: int) -> bool:
    stream = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = stream.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return int(dev) == st.st_dev and int(ino) == st.st_ino
    except (OSError, ValueError):
        return False


class LineLog:
    def __init__(self, fd: int = 1, env: Optional[Mapping[str, str]] = None) -> None:
        self.fd: Optional[int] = fd
        self.journal = _is_journal(env if env is not None else os.environ, fd)
        self._buf: List[str] = []
        self._prefixes = {level: f"<{priority}>{level} " if self.journal else f"{level} "
                          for level, priority in PRIORITY.items()}

    def _prefix(self, level: str) -> str:
        return self._prefixes[level]

    # -- per-order lines: buffered --------------------------------------------------------------
    def order_line(self, level: str, text: str) -> None:
        self._buf.append(self._prefixes[level] + (text if text.isprintable() else escape(text)) + "\n")

    # -- events: written at once ------------------------------------------------------------------
    def event(self, level: str, text: str) -> None:
        self._buf.append(self._prefix(level) + escape(text) + "\n")
        self.flush()

    def exception(self, level: str, text: str, exc: BaseException) -> None:
        """``text``, then the traceback of ``exc``, one escaped line per traceback line."""
        prefix = self._prefix(level)
        self._buf.append(prefix + escape(text) + "\n")
        for block in traceback.format_exception(type(exc), exc, exc.__traceback__):
            for line in block.rstrip("\n").split("\n"):
                self._buf.append(prefix + "  " + escape(line) + "\n")
        self.flush()

    def info(self, text: str) -> None:
        self.event("INFO", text)

    def warning(self, text: str) -> None:
        self.event("WARNING", text)

    def error(self, text: str) -> None:
        self.event("ERROR", text)

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "backslashreplace")
        self._buf.clear()
        if self.fd is None:
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.EBADF, errno.EIO):
                    self.fd = None  # nobody reads our output any more: keep working without it
                    return
                raise
            view = view[written:]


class _Bridge(logging.Handler):
    def __init__(self, log: LineLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string must not take the consumer down
            text = str(record.msg)
        level = record.levelname if record.levelname in PRIORITY else "ERROR"
        self.log.event(level, f"{record.name}: {text}")


def bridge_logging(log: LineLog) -> None:
    """Route the logging module (pika) through ``log``; pika is chatty, keep only its errors."""
    root = logging.getLogger()
    root.handlers[:] = [_Bridge(log)]
    root.setLevel(logging.WARNING)
    # pika logs every connection failure as ERROR, with tracebacks, from several modules; the
    # consumer reports each of those events itself, on one line, with its fix.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


OTHER_KINDS = "other reasons"


def reason_kind(reason: str) -> str:
    """The kind of a quarantine reason: its text up to the first detail (``invalid JSON``,
    ``body too large``, ``header 'x' is not a string``), so variants count together."""
    cut = len(reason)
    for mark in (":", " ("):
        at = reason.find(mark)
        if 0 < at < cut:
            cut = at
    return reason[: min(cut, 80)]


class Coalescer:
    """Warnings that a publisher can make by the thousand (bad messages): the first of each kind is
    written at once; the rest are counted and summed up in one line per kind per ``interval``
    seconds. A kind quiet for a whole interval is written in full again next time. At most
    ``max_kinds`` kinds are told apart per interval (a publisher can invent kinds): the rest count
    as :data:`OTHER_KINDS`."""

    def __init__(self, log: LineLog, ioloop: object, interval: float, what: str, max_kinds: int = 32) -> None:
        self.log = log
        self.ioloop = ioloop
        self.interval = interval
        self.what = what  # "bad messages quarantined": the summary line's words
        self.max_kinds = max_kinds
        self.seen: set = set()  # kinds written in full (or counted) in this interval
        self.counts: dict = {}  # kind -> occurrences not written, this interval
        self.timer: object = None

    def warning(self, kind: str, text: str) -> None:
        if kind not in self.seen and len(self.seen) < self.max_kinds:
            self.seen.add(kind)
            self.log.warning(text)
        else:
            key = kind if kind in self.seen else OTHER_KINDS
            self.counts[key] = self.counts.get(key, 0) + 1
        if self.timer is None:
            self.timer = self.ioloop.call_later(self.interval, self.flush)  # type: ignore[attr-defined]

    def flush(self) -> None:
        """The summary lines of this interval; kinds that were quiet are forgotten."""
        self.timer = None
        counts, self.counts = self.counts, {}
        for kind, count in counts.items():
            self.log.warning(f"{count} more {self.what} in the last {self.interval:g}s: {kind}")
        self.seen = {kind for kind in self.seen if kind in counts}
        if self.seen:
            self.timer = self.ioloop.call_later(self.interval, self.flush)  # type: ignore[attr-defined]

    def close(self) -> None:
        """At exit: what was counted and not yet written."""
        if self.timer is not None:
            self.ioloop.remove_timeout(self.timer)  # type: ignore[attr-defined]
            self.timer = None
        for kind, count in self.counts.items():
            self.log.warning(f"{count} more {self.what} since the last summary: {kind}")
        self.counts = {}
