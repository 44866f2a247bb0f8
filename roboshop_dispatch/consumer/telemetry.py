"""The consumer's hooks for tracing and Prometheus metrics: one object the handler calls.

Both parts are optional and imported only when switched on: :mod:`.tracing` (OpenTelemetry) when
an OTLP endpoint is set, :mod:`.metrics` (prometheus_client) when ``DISPATCH_METRICS_LISTEN`` is.
With both off every hook returns at once and nothing but the standard library and pika is loaded.
Neither part can stop the consumer: a part that fails to start is logged once and stays off.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from .config import TRACING_ON, Config
from .logs import LineLog


class OrderTrace:
    """What one order carries from its delivery to its log line: its start time and its spans."""

    __slots__ = ("child", "span", "started")

    def __init__(self, started: float, span: Any) -> None:
        self.started = started
        self.span = span  # the getOrder span, or None (tracing off)
        self.child: Any = None  # the processSale span


class Telemetry:
    """Tracing (``tracer``) and metrics (``metrics``), each None when off."""

    def __init__(self, tracer: Any = None, metrics: Any = None) -> None:
        self.tracer: Any = None
        self.metrics: Any = None
        self.on = False
        self.attach(tracer, metrics)

    def attach(self, tracer: Any, metrics: Any) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.on = tracer is not None or metrics is not None
        if tracer is not None and metrics is not None:
            tracer.on_drop = metrics.spans_dropped

    def switch_on(self, cfg: Config, env: Any, log: LineLog, ioloop: Any) -> None:
        """Start what the configuration asks for (each part logs why when it cannot)."""
        metrics = tracer = None
        if cfg.metrics_listen is not None:
            from . import metrics as prometheus

            metrics = prometheus.start(cfg.metrics_listen, log)
        if cfg.tracing == TRACING_ON:
            from . import tracing

            tracer = tracing.start(env, log, ioloop)
        self.attach(tracer, metrics)

    # == orders ===================================================================================
    def order_started(self, delivery: Any, orderid: str) -> Optional[OrderTrace]:
        if not self.on:
            return None
        span = self.tracer.order_span(delivery, orderid) if self.tracer is not None else None
        return OrderTrace(time.monotonic(), span)

    def order_halfway(self, trace: Optional[OrderTrace]) -> None:
        if trace is not None and trace.span is not None:
            trace.child = self.tracer.sale_span(trace.span)

    def order_finished(self, trace: Optional[OrderTrace], failed: bool) -> str:
        """Close the order's spans and count it; returns what its log line gets (`` trace_id=...``)."""
        if trace is None:
            return ""
        if self.metrics is not None:
            self.metrics.order_done(failed, time.monotonic() - trace.started)
        if trace.span is None:
            return ""
        if trace.child is None:
            trace.child = self.tracer.sale_span(trace.span)
        return self.tracer.finish(trace.span, trace.child, failed)

    def delivered(self, delivery: Any) -> None:
        if self.metrics is not None and delivery.redelivered:
            self.metrics.redelivered.inc()

    def quarantined(self, delivery: Any, reason: str) -> None:
        """A bad message is being copied to quarantine: its span (the reason, never the body)."""
        if self.tracer is not None:
            self.tracer.quarantine_span(delivery, reason)

    def quarantine_confirmed(self) -> None:
        if self.metrics is not None:
            self.metrics.quarantined()

    # == the connection ===========================================================================
    def connected(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.connected.set(1 if up else 0)

    def reconnecting(self) -> None:
        if self.metrics is not None:
            self.metrics.reconnects.inc()

    def close(self) -> None:
        """Flush the spans still queued (bounded: at most tracing.FLUSH_S seconds)."""
        if self.tracer is not None:
            self.tracer.close()
