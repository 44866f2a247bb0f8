"""The export of spans, bounded: what is lost is counted and nothing waits for the collector.

Part of tracing (imported only when it is on, by :mod:`.tracing`). Built on the SDK's public
extension points: a sampler in front of the configured one (:class:`Shedding`: while the export
queue is full, an order's spans are not made), a span processor that counts what goes to the
queue (:class:`Tally`), the batch processor's ``meter_provider`` (its queue-full drops), and an
exporter around the OTLP one (:class:`CountingExporter`: failed batches, and a share of the
interpreter). OpenTelemetry's own log records are kept out of the journal.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpCounter, NoOpMeter, NoOpMeterProvider
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

EXPORT_SHARE = 0.2  # of one CPU, at most, for encoding and sending spans (CountingExporter)
MAX_PAUSE_S = 5.0


class Drops:
    """Spans lost on the way out: no room in the queue, or the collector did not take them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.logged = 0  # the total when last logged
        self.error: Optional[str] = None  # the exporter's last complaint (no header values in it)
        self.on_drop: Optional[Callable[[int], None]] = None
        self.ended = 0  # sampled spans handed to the export queue
        self.exported = 0  # spans the collector took
        self.shed = 0  # spans never made (Shedding): in total, never in ended

    def unaccounted(self) -> int:
        """Spans made and neither exported nor dropped: still queued (or being sent)."""
        with self.lock:
            return self.ended - self.exported - (self.total - self.shed)

    def add(self, count: int, shed: bool = False) -> None:
        if count <= 0:
            return
        with self.lock:
            self.total += count
            if shed:
                self.shed += count
        hook = self.on_drop
        if hook is not None:
            hook(count)


class _QueueFullCounter(NoOpCounter):
    """The SDK's ``otel.sdk.processor.span.processed`` counter: counts what it marks ``queue_full``."""

    def __init__(self, name: str, drops: Drops, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.drops = drops

    def add(self, amount: Any, attributes: Any = None, context: Any = None) -> None:
        if attributes and attributes.get("error.type") == "queue_full":
            self.drops.add(int(amount))


class _DropMeter(NoOpMeter):
    def __init__(self, drops: Drops) -> None:
        super().__init__("dispatch")
        self.drops = drops

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        if name == "otel.sdk.processor.span.processed":
            return _QueueFullCounter(name, self.drops, unit=unit, description=description)
        return super().create_counter(name, unit=unit, description=description)


class DropMeterProvider(NoOpMeterProvider):
    """Gives the BatchSpanProcessor a meter (its public ``meter_provider``) that counts its drops."""

    def __init__(self, drops: Drops) -> None:
        self.drops = drops

    def get_meter(self, name: str, version: Optional[str] = None, schema_url: Optional[str] = None,
                  attributes: Any = None) -> Any:
        return _DropMeter(self.drops)


class Tally(SpanProcessor):
    """Counts the sampled spans that go to the export queue (runs before the batch processor)."""

    def __init__(self, drops: Drops) -> None:
        self.drops = drops

    def on_end(self, span: Any) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            with self.drops.lock:
                self.drops.ended += 1


class Shedding(Sampler):
    """Admission control in front of the configured sampler: while the export queue is full, an
    order's spans are not made at all (they would only be dropped, after costing the I/O loop the
    most of their price) and count as dropped: 2 for an order, 1 for a quarantined message. Its
    log line still names its trace id."""

    def __init__(self, inner: Sampler, drops: Drops, room: int) -> None:
        self.inner = inner
        self.drops = drops
        self.room = room

    def should_sample(self, parent_context: Optional[Context], trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if name == "getOrder" and self.drops.unaccounted() >= self.room:
            quarantined = bool(attributes) and attributes.get("dispatch.outcome") == "quarantined"
            self.drops.add(1 if quarantined else 2, shed=True)
            return SamplingResult(Decision.DROP, None, parent.trace_state if parent.is_valid else None)
        if parent.is_valid and not parent.is_remote and not parent.trace_flags.sampled:
            return SamplingResult(Decision.DROP, None, parent.trace_state)  # processSale of a span not made
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return self.inner.get_description()


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans of every batch it could not deliver, and held to a
    share of the interpreter: encoding spans in pure-Python protobuf costs about as much CPU as
    handling the order, and the export thread would otherwise take the GIL from the I/O loop.
    After each batch it sleeps for its CPU time x (1 / EXPORT_SHARE - 1); spans that come faster
    than that overflow the bounded queue and are counted as dropped: orders never wait."""

    def __init__(self, inner: SpanExporter, drops: Drops, share: float = EXPORT_SHARE) -> None:
        self.inner = inner
        self.drops = drops
        self.pause = 1.0 / share - 1.0
        self.closing = threading.Event()  # set at exit: flush at full speed, within FLUSH_S

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        cpu = time.thread_time()
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            self.drops.error = type(exc).__name__
            result = SpanExportResult.FAILURE
        finally:
            self.closing.wait(min(MAX_PAUSE_S, (time.thread_time() - cpu) * self.pause))
        if result is SpanExportResult.SUCCESS:
            with self.drops.lock:
                self.drops.exported += len(spans)
        else:
            self.drops.add(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _LastError(logging.Handler):
    """Keeps the exporter's last complaint (status code and reason, or the connection error) for
    the once-a-minute line, instead of letting OpenTelemetry's records reach the journal."""

    def __init__(self, drops: Drops) -> None:
        super().__init__(logging.WARNING)
        self.drops = drops

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.drops.error = record.getMessage()[:300]
        except Exception:
            self.drops.error = str(record.msg)[:300]


def quiet_opentelemetry(drops: Drops) -> None:
    """OpenTelemetry's log records stay out of the journal (one prints malformed header values);
    the exporter's are kept for the dropped-spans line."""
    root = logging.getLogger("opentelemetry")
    root.propagate = False
    root.handlers[:] = [logging.NullHandler()]
    exporter = logging.getLogger("opentelemetry.exporter")
    exporter.handlers[:] = [_LastError(drops)]
    exporter.propagate = False
