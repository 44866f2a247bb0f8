"""Prometheus metrics on ``/metrics``: imported only when ``DISPATCH_METRICS_LISTEN`` is set.

prometheus_client serves them from its own thread (its ``start_http_server``) with the client's
process and platform metrics beside the consumer's own:

- ``dispatch_orders_total{outcome}``: ``dispatched``, ``failed`` (DISPATCH_ERROR_PERCENT) and
  ``quarantined`` (copied to ``orders.invalid`` and confirmed), each present from the start at 0;
- ``dispatch_orders_redelivered_total``: deliveries the broker flagged as redelivered;
- ``dispatch_order_processing_seconds``: delivery to log line, per order (histogram);
- ``dispatch_amqp_connected`` (1 while consuming), ``dispatch_amqp_reconnects_total``;
- ``dispatch_last_order_timestamp_seconds``, ``dispatch_trace_spans_dropped_total``.

Instance N of the template unit (``DISPATCH_INSTANCE=N``, set by dispatch@.service) listens on
the port given + N - 1, so ``--instances 3`` with ``HOST:9100`` serves 9100, 9101 and 9102.

A malformed value or an address that cannot be bound is one ERROR line at start-up and the
consumer runs on without metrics: never a crash loop. A port in use is tried again for a minute
(one WARNING line, then "metrics on" or the ERROR line): ``--instances`` 1 <-> N starts the new
units before it stops the old ones, so an instance may start while the one it replaces still
holds the port.
"""

from __future__ import annotations

import errno
import time
from typing import Any, Optional

from .logs import LineLog
from .telemetry_settings import address, instance_port, parse_listen

OUTCOMES = ("dispatched", "failed", "quarantined")
RETRY_S = 60.0  # a port in use is tried again this long (the instance this one replaces stops within it)
RETRY_EVERY_S = 1.0
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    server: Any = None  # the HTTP server (its thread serves /metrics)

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            PlatformCollector,
            ProcessCollector,
            disable_created_metrics,
        )

        disable_created_metrics()
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.orders = Counter("dispatch_orders", "Orders handled, by outcome", ["outcome"], registry=registry)
        self.outcome = {name: self.orders.labels(name) for name in OUTCOMES}  # each present from the start
        self.redelivered = Counter("dispatch_orders_redelivered", "Deliveries the broker flagged as redelivered",
                                   registry=registry)
        self.processing = Histogram("dispatch_order_processing_seconds", "From delivery to the order's log line",
                                    buckets=BUCKETS, registry=registry)
        self.connected = Gauge("dispatch_amqp_connected", "1 while consuming from the broker, else 0",
                               registry=registry)
        self.reconnects = Counter("dispatch_amqp_reconnects", "Connections made again after the first",
                                  registry=registry)
        self.last_order = Gauge("dispatch_last_order_timestamp_seconds", "When the last order was handled (Unix time)",
                                registry=registry)
        self.dropped = Counter("dispatch_trace_spans_dropped", "Spans the collector did not take or the export "
                               "queue had no room for", registry=registry)

    def listen(self, host: str, port: int) -> Optional[OSError]:
        """Serve /metrics on host:port (the client's own thread); the error when it cannot."""
        from prometheus_client import start_http_server

        try:
            self.server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            return exc
        return None

    def order_done(self, failed: bool, seconds: float) -> None:
        self.outcome["failed" if failed else "dispatched"].inc()
        self.processing.observe(seconds)
        self.last_order.set(time.time())

    def quarantined(self) -> None:
        self.outcome["quarantined"].inc()

    def spans_dropped(self, count: int) -> None:
        self.dropped.inc(count)


def start(raw: str, log: LineLog, instance: Optional[str] = None, ioloop: Any = None) -> Optional[Metrics]:
    """Metrics served on ``raw`` (HOST:PORT; instance N of a template unit on PORT + N - 1), or
    None after one ERROR line saying why not. A port in use is tried again on ``ioloop`` for
    RETRY_S (the instance this one replaces may still hold it: ``--instances`` 1 <-> N starts the
    new units before it stops the old ones); the orders are counted meanwhile."""
    try:
        host, port = parse_listen(raw)
    except ValueError as exc:
        log.error(f"metrics off: DISPATCH_METRICS_LISTEN={raw[:80]!r} {exc}; the consumer runs without them")
        return None
    try:
        port = instance_port(port, instance)
    except ValueError as exc:
        log.error(f"metrics off: {exc} (DISPATCH_METRICS_LISTEN={raw[:80]!r}); the consumer runs without them")
        return None
    where = address(host, port)
    try:
        metrics = Metrics()
        failed = metrics.listen(host, port)
    except Exception as exc:  # an unexpected failure of the client: no metrics, orders all the same
        log.error(f"metrics off: {type(exc).__name__}: {exc}")
        return None
    if failed is None:
        log.info(f"metrics on http://{where}/metrics")
        return metrics
    if ioloop is None or failed.errno != errno.EADDRINUSE:
        log.error(f"metrics off: cannot listen on {where}: {failed.strerror or failed} (DISPATCH_METRICS_LISTEN); "
                  "the consumer runs without them")
        return None
    log.warning(f"metrics: cannot listen on {where} yet: {failed.strerror or failed} (another process, or the "
                f"instance this one replaces, holds it): trying again for {RETRY_S:g}s; orders go on")
    _retry(metrics, host, port, log, ioloop, time.monotonic() + RETRY_S)
    return metrics


def _retry(metrics: Metrics, host: str, port: int, log: LineLog, ioloop: Any, deadline: float) -> None:
    """Try to listen again every RETRY_EVERY_S until ``deadline`` (on the I/O loop: one log)."""
    where = address(host, port)

    def again() -> None:
        failed = metrics.listen(host, port)
        if failed is None:
            log.info(f"metrics on http://{where}/metrics")
        elif time.monotonic() >= deadline:
            log.error(f"metrics off: cannot listen on {where}: {failed.strerror or failed} after {RETRY_S:g}s "
                      "(DISPATCH_METRICS_LISTEN); the consumer runs without them")
        else:
            ioloop.call_later(RETRY_EVERY_S, again)

    ioloop.call_later(RETRY_EVERY_S, again)
