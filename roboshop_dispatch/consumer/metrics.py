"""Prometheus metrics on ``/metrics``: imported only when ``DISPATCH_METRICS_LISTEN`` is set.

prometheus_client serves them from its own thread (its ``start_http_server``) with the client's
process and platform metrics beside the consumer's own:

- ``dispatch_orders_total{outcome}``: ``dispatched``, ``failed`` (DISPATCH_ERROR_PERCENT) and
  ``quarantined`` (copied to ``orders.invalid`` and confirmed), each present from the start at 0;
- ``dispatch_orders_redelivered_total``: deliveries the broker flagged as redelivered;
- ``dispatch_order_processing_seconds``: delivery to log line, per order (histogram);
- ``dispatch_amqp_connected`` (1 while consuming), ``dispatch_amqp_reconnects_total``;
- ``dispatch_last_order_timestamp_seconds``, ``dispatch_trace_spans_dropped_total``.

A malformed value or an address that cannot be bound (a port in use) is one ERROR line at
start-up and the consumer runs on without metrics: never a crash loop.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Tuple

from .logs import LineLog

OUTCOMES = ("dispatched", "failed", "quarantined")
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)


def parse_listen(raw: str) -> Tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); ValueError with the reason otherwise."""
    text = raw.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError("is not HOST:PORT or [IPV6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError("is not HOST:PORT or [IPV6]:PORT (an IPv6 address goes in brackets)")
    if any(ch.isspace() or ch in "/@[]" for ch in host) or not host.isascii():
        raise ValueError(f"has no valid host ({host[:60]!r})")
    if not (port.isdigit() and port.isascii() and 1 <= int(port) <= 65535):
        raise ValueError(f"has no valid port ({port[:20]!r}: 1..65535)")
    return host, int(port)


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

    def order_done(self, failed: bool, seconds: float) -> None:
        self.outcome["failed" if failed else "dispatched"].inc()
        self.processing.observe(seconds)
        self.last_order.set(time.time())

    def quarantined(self) -> None:
        self.outcome["quarantined"].inc()

    def spans_dropped(self, count: int) -> None:
        self.dropped.inc(count)


def start(raw: str, log: LineLog) -> Optional[Metrics]:
    """Metrics served on ``raw`` (HOST:PORT), or None after one ERROR line saying why not."""
    try:
        host, port = parse_listen(raw)
    except ValueError as exc:
        log.error(f"metrics off: DISPATCH_METRICS_LISTEN={raw[:80]!r} {exc}; the consumer runs without them")
        return None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        from prometheus_client import start_http_server

        metrics = Metrics()
        metrics.server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.error(f"metrics off: cannot listen on {where}: {exc.strerror or exc} (DISPATCH_METRICS_LISTEN); "
                  "the consumer runs without them")
        return None
    except Exception as exc:  # an unexpected failure of the client: no metrics, orders all the same
        log.error(f"metrics off: {type(exc).__name__}: {exc}")
        return None
    log.info(f"metrics on http://{where}/metrics")
    return metrics
