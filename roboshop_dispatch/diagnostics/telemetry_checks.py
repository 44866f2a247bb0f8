"""``check``'s tracing and metrics findings: pure functions of the installed state and what the
running instances reported (``InstalledState.telemetry``, read by facts/telemetry.py).

- ``metrics``: each running instance's ``/metrics`` answers, ``dispatch_amqp_connected`` is 1,
  and its counters; an instance that does not answer fails (with the fix), spans dropped warn.
- ``otlp``: the exporter headers' credential file is root's alone, then a TCP connection to the
  collector. A collector that cannot be reached warns: orders are dispatched all the same, only
  their spans are lost (and counted).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ..facts.installed import InstalledState
from ..facts.telemetry import metrics_doc, tracing_doc
from .report import FAIL, OK, SKIP, WARN, Finding

METRICS_TITLE = "Metrics (/metrics)"
OTLP_TITLE = "Tracing collector (OTLP)"
WORST = (OK, SKIP, WARN, FAIL)


def _f(name: str, title: str, status: str, summary: str, **kw: Any) -> Finding:
    return Finding(name=name, title=title, status=status, summary=summary, **kw)


def counters(samples: Mapping[str, float]) -> str:
    """``12 dispatched, 0 failed, 1 quarantined`` (and redeliveries, reconnects when any)."""
    parts = [f"{samples.get(k, 0):g} {k}" for k in ("dispatched", "failed", "quarantined")]
    parts += [f"{samples[k]:g} {k}" for k in ("redelivered", "reconnects") if samples.get(k)]
    return ", ".join(parts)


def _instance(row: Mapping[str, Any]) -> tuple:
    """(status, summary, fix) of one instance's scrape."""
    unit, url = row["unit"], row["url"]
    if "error" in row:
        port = url.rsplit(":", 1)[1].split("/")[0]
        return FAIL, f"{unit}: {url} does not answer ({row['error']})", (
            f"dispatchctl logs -n 50 (a port in use says 'metrics off: cannot listen on ...'); what holds the port: "
            f"ss -ltnp 'sport = :{port}'; another address: dispatchctl configure --metrics-listen HOST:PORT")
    samples = row["samples"]
    if samples.get("connected") != 1:
        return FAIL, f"{unit}: not connected to RabbitMQ (dispatch_amqp_connected {samples.get('connected', 0):g})", \
            "see the RabbitMQ checks below; dispatchctl logs -n 50 says why it is not consuming"
    if samples.get("spans_dropped"):
        return WARN, (f"{unit}: connected, {counters(samples)}; {samples['spans_dropped']:g} spans dropped (the "
                      "collector did not take them)"), \
            "see the tracing collector check; a collector that keeps up, or fewer spans: OTEL_TRACES_SAMPLER"
    return OK, f"{unit}: connected, {counters(samples)}", ""


def check_metrics(s: InstalledState) -> Optional[Finding]:
    """Every running instance's /metrics, as check read it (None: nothing installed or not read)."""
    if s.telemetry is None or not s.installed:
        return None
    facts = s.instance_facts
    doc = metrics_doc(s.environment, facts.configured if facts else 1)
    if "error" in doc:
        return _f("metrics", METRICS_TITLE, FAIL, f"metrics off: {doc['error']}", diagnosis="Metrics address invalid",
                  cause="the consumer logs one line and runs without metrics",
                  fix="dispatchctl configure --metrics-listen HOST:PORT (or none)")
    if not doc["on"]:
        return _f("metrics", METRICS_TITLE, SKIP, "off (dispatchctl configure --metrics-listen 127.0.0.1:PORT "
                  "switches them on)")
    rows: List[Mapping[str, Any]] = list(s.telemetry.get("metrics") or [])
    if not rows:
        return _f("metrics", METRICS_TITLE, SKIP, "not checked: no instance is running", data={"metrics": doc})
    judged = [_instance(row) for row in rows]
    status = max((j[0] for j in judged), key=WORST.index)
    data: Dict[str, Any] = {"instances": [dict(row) for row in rows]}
    summary = "; ".join(j[1] for j in judged)
    if status == OK:
        return _f("metrics", METRICS_TITLE, OK, summary, data=data)
    bad = [j for j in judged if j[0] == status]
    diagnosis = {FAIL: "Metrics: an instance does not answer or is not consuming",
                 WARN: "Spans dropped"}[status]
    return _f("metrics", METRICS_TITLE, status, summary, diagnosis=diagnosis,
              cause="; ".join(j[1] for j in bad), fix="; ".join(dict.fromkeys(j[2] for j in bad)), data=data)


def _headers_file(s: InstalledState) -> Optional[Finding]:
    """The exporter headers' credential file (a secret) must be root's alone, and readable."""
    info = s.otlp_headers_file
    if info is None:
        return None
    if not info.exists:
        return _f("otlp", OTLP_TITLE, FAIL, f"{info.path} does not exist (the unit's LoadCredential= names it)",
                  diagnosis="Configuration missing: the exporter headers' credential",
                  cause="systemd refuses to start the service when a credential file is missing (243/CREDENTIALS)",
                  fix="dispatchctl configure --otlp-header KEY=VALUE (or --otlp-header none)")
    if info.kind != "file" or info.uid != 0 or info.mode != 0o600:
        return _f("otlp", OTLP_TITLE, FAIL, f"{info.path} is mode {info.mode:04o}, owner uid {info.uid}: must be a "
                  "root-owned 0600 file", diagnosis="Secret exposed: the exporter's headers",
                  cause="the file holds the collector's headers (a token)",
                  fix=f"chown root:root {info.path} && chmod 600 {info.path}   (or: dispatchctl configure)")
    if s.otlp_headers_error:
        return _f("otlp", OTLP_TITLE, FAIL, f"cannot read {info.path}: {s.otlp_headers_error}",
                  diagnosis="Configuration unreadable", cause=s.otlp_headers_error,
                  fix="dispatchctl configure --otlp-header KEY=VALUE (or --otlp-header none)")
    return None


def check_otlp(s: InstalledState) -> Optional[Finding]:
    """The exporter headers' file, then the collector, reached over TCP from this host (None:
    nothing installed, or the collector not tried)."""
    if not s.installed:
        return None
    bad_file = _headers_file(s)
    if bad_file is not None or s.telemetry is None:
        return bad_file
    doc = tracing_doc(s.environment, bool(s.otlp_headers))
    if not doc["on"]:
        why = "" if doc["state"] == "off" else f" ({doc['state'][4:-1]})"
        return _f("otlp", OTLP_TITLE, SKIP, f"tracing is off{why} (dispatchctl configure --otlp-endpoint URL "
                  "switches it on)")
    reach = s.telemetry.get("otlp") or {}
    headers = ", exporter headers set" if doc["headers"] else ""
    if "error" in reach:
        return _f("otlp", OTLP_TITLE, WARN, f"{doc['endpoint']}: cannot connect to {reach['address']} "
                  f"({reach['error']})", diagnosis="Tracing collector unreachable",
                  cause="orders are dispatched all the same; their spans are dropped (counted in "
                        "dispatch_trace_spans_dropped_total)",
                  fix=f"start the collector or open the way to {reach['address']}; another one: dispatchctl "
                      "configure --otlp-endpoint URL (none: tracing off)", data=dict(reach))
    return _f("otlp", OTLP_TITLE, OK, f"{doc['endpoint']}: {reach.get('address')} accepts connections "
              f"({reach.get('ms', 0):g} ms{headers})", data=dict(reach))
