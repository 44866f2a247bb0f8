"""Tracing and metrics as installed, for ``status`` and ``check``.

What is switched on is derived from the installed environment file (read as the consumer reads it:
:mod:`roboshop_dispatch.consumer.telemetry_settings`) and the instances: :func:`tracing_doc` and
:func:`metrics_doc` are pure. ``check`` also reads, once, what the running instances report
(:func:`read`): each instance's ``/metrics`` over HTTP, parsed with prometheus_client's parser, and
a TCP connection to the collector; the result is a plain, recordable dict the checks
(diagnostics/telemetry_checks.py) judge.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Dict, List, Mapping, Optional

from ..consumer.telemetry_settings import (
    TRACING_ON,
    address,
    endpoint_address,
    instance_port,
    parse_listen,
    shown,
    traces_url,
    tracing_state,
)

TIMEOUT_S = 2.0  # each scrape and the collector's TCP connect (side by side)
# the samples check reads: (metric, its outcome label or "") -> the name the facts keep
SAMPLES = {
    ("dispatch_amqp_connected", ""): "connected",
    ("dispatch_orders_total", "dispatched"): "dispatched",
    ("dispatch_orders_total", "failed"): "failed",
    ("dispatch_orders_total", "quarantined"): "quarantined",
    ("dispatch_orders_redelivered_total", ""): "redelivered",
    ("dispatch_amqp_reconnects_total", ""): "reconnects",
    ("dispatch_trace_spans_dropped_total", ""): "spans_dropped",
}
LOCAL = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # a wildcard address is scraped on loopback


def tracing_doc(environment: Mapping[str, str], headers: bool) -> Dict[str, Any]:
    """``{"on", "state", "endpoint", "headers"}``: the collector's URL without user info or query,
    and whether exporter headers are set (never what they are)."""
    url = traces_url(environment)
    state = tracing_state(environment)
    return {"on": state == TRACING_ON, "state": state, "endpoint": shown(url) if url else None,
            "headers": "set" if headers else None}


def metrics_doc(environment: Mapping[str, str], configured: int) -> Dict[str, Any]:
    """``{"on", "listen", "instances": [{"unit", "url"}], "error"}``: the URL each configured
    instance serves /metrics on (instance i of N > 1 on PORT + i - 1)."""
    from .instances import instance_unit

    raw = environment.get("DISPATCH_METRICS_LISTEN", "")
    if not raw:
        return {"on": False, "listen": None, "instances": []}
    try:
        host, port = parse_listen(raw)
    except ValueError as exc:
        return {"on": False, "listen": raw, "instances": [], "error": f"DISPATCH_METRICS_LISTEN {exc}"}
    count = max(1, configured)
    rows: List[Dict[str, str]] = []
    for number in range(1, count + 1):
        try:
            where = address(LOCAL.get(host, host), instance_port(port, str(number) if count > 1 else None))
        except ValueError as exc:
            return {"on": False, "listen": address(host, port), "instances": rows, "error": str(exc)}
        unit = instance_unit(number) if count > 1 else "dispatch.service"
        rows.append({"unit": unit, "url": f"http://{where}/metrics"})
    return {"on": True, "listen": address(host, port), "instances": rows}


# == what the running instances report (check) ====================================================
def scrape(url: str, timeout: float = TIMEOUT_S) -> Dict[str, Any]:
    """``{"samples": {name: value}}`` of the dispatch metrics at ``url``, or ``{"error": reason}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read(4 * 1024 * 1024).decode("utf-8", "replace")
        samples: Dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = SAMPLES.get((sample.name, sample.labels.get("outcome", "")))
                if key is not None:
                    samples[key] = sample.value
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        return {"error": f"{getattr(reason, 'strerror', None) or reason}"}
    except ValueError as exc:  # not the Prometheus text format
        return {"error": f"not Prometheus metrics ({exc})"[:200]}
    if "connected" not in samples:
        return {"error": "no dispatch_amqp_connected: not dispatch's metrics"}
    return {"samples": samples}


def reach(url: str, timeout: float = TIMEOUT_S) -> Dict[str, Any]:
    """A TCP connection to the collector: ``{"address", "ms"}`` or ``{"address", "error"}``."""
    host, port = endpoint_address(url)
    where = address(host, port)
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return {"address": where, "error": exc.strerror or str(exc) or type(exc).__name__}
    return {"address": where, "ms": round((time.monotonic() - started) * 1000, 1)}


def read(environment: Mapping[str, str], configured: int, running: List[str]) -> Dict[str, Any]:
    """What check judges: each running instance's scrape (by unit) and the collector's connect,
    side by side, each bounded by TIMEOUT_S."""
    from concurrent.futures import ThreadPoolExecutor

    metrics = metrics_doc(environment, configured)
    tracing = tracing_doc(environment, headers=False)
    targets = [row for row in metrics["instances"] if row["unit"] in running]
    url = traces_url(environment)
    with ThreadPoolExecutor(max_workers=min(8, len(targets) + 1)) as pool:
        scrapes = [pool.submit(scrape, row["url"]) for row in targets]
        collector: Optional[Any] = pool.submit(reach, url) if tracing["on"] else None
        out: Dict[str, Any] = {"metrics": [{**row, **future.result()} for row, future in zip(targets, scrapes)]}
        if collector is not None:
            out["otlp"] = {"endpoint": tracing["endpoint"], **collector.result()}
    return out
