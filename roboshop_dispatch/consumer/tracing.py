"""OpenTelemetry tracing of orders: imported only when an OTLP endpoint is set (:mod:`.telemetry`).

What the original Go dispatch emitted through Instana, as OpenTelemetry spans sent with the SDK's
OTLP/HTTP (protobuf) exporter: per order a ``getOrder`` CONSUMER span whose parent is the
publisher's (W3C ``traceparent`` first, else payment's Instana headers through
:class:`InstanaPropagator`, else none: a root span) with a ``processSale`` INTERNAL child. A failed
order (DISPATCH_ERROR_PERCENT) ends with status ERROR; a quarantined message gets an ERROR span
with the reason, never the body.

Export never holds up an order: spans go through the SDK's BatchSpanProcessor (bounded queue,
``OTEL_BSP_*`` honoured) on its own thread, the exporter's timeout is short
(:data:`EXPORT_TIMEOUT_S` unless ``OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`` says otherwise, in
milliseconds as the specification has it), spans the queue had no room for or the collector did
not take are counted (``dispatch_trace_spans_dropped_total``) and logged at most once a minute,
and the flush at exit takes :data:`FLUSH_S` seconds at most. The exporter's headers
(``OTEL_EXPORTER_OTLP_HEADERS``, or the systemd credential ``otlp-headers``) are a secret: parsed
here, handed to the exporter, never logged; OpenTelemetry's own log records never reach the
journal (one of them would print a malformed header value).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Getter, Setter, TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import __version__, amqp
from . import tracecontext
from .config import HEADERS_CREDENTIAL, ConfigError, read_credential
from .export import CountingExporter, DropMeterProvider, Drops, Shedding, Tally, quiet_opentelemetry
from .logs import LineLog

SERVICE_NAME = "dispatch"  # the original's Instana service name; OTEL_SERVICE_NAME overrides it
EXPORT_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 10.0
FLUSH_S = 2.0
QUEUE_SIZE = 1024  # spans waiting for export at most (OTEL_BSP_MAX_QUEUE_SIZE overrides)
BATCH_SIZE = 256  # spans per export request (OTEL_BSP_MAX_EXPORT_BATCH_SIZE overrides)
DROP_LOG_S = 60.0  # at most one dropped-spans line a minute
DROP_CHECK_S = 5.0  # the first one within this long of the first drop
FAILED = "Failed to dispatch to SOP"  # the original's message for a failed order
# the original's tags (Instana/OpenTracing) and the messaging semantic conventions
ORDER_ATTRIBUTES = {
    "messaging.system": "rabbitmq",
    "messaging.destination.name": amqp.EXCHANGE,
    "messaging.rabbitmq.destination.routing_key": amqp.ROUTING_KEY,
    "messaging.operation.type": "process",
    "message_bus.destination": amqp.EXCHANGE,
    "exchange": amqp.EXCHANGE,
    "sort": "consume",
    "address": "rabbitmq",
    "key": amqp.ROUTING_KEY,
}


class _HeaderGetter(Getter):
    """Reads AMQP headers: str or bytes values, names without regard to case."""

    def get(self, carrier: Any, key: str) -> Optional[list]:
        value = tracecontext.header(carrier, key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Any) -> list:
        return [k for k in carrier if isinstance(k, str)] if isinstance(carrier, Mapping) else []


GETTER = _HeaderGetter()


class InstanaPropagator(TextMapPropagator):
    """Extracts the parent from Instana's ``X-INSTANA-T/S/L`` (see :mod:`.tracecontext`)."""

    def extract(self, carrier: CarrierT, context: Optional[Context] = None,
                getter: Getter = GETTER) -> Context:
        parent = tracecontext.instana_parent(carrier if isinstance(carrier, Mapping) else None)
        ctx = context if context is not None else Context()
        if parent is None:
            return ctx
        flags = TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT)
        remote = SpanContext(parent.trace_id, parent.span_id, is_remote=True, trace_flags=flags)
        return trace.set_span_in_context(NonRecordingSpan(remote), ctx)

    def inject(self, carrier: CarrierT, context: Optional[Context] = None, setter: Any = None) -> None:
        """dispatch publishes no orders: nothing to inject."""

    @property
    def fields(self) -> set:
        return {"X-INSTANA-T", "X-INSTANA-S", "X-INSTANA-L"}


W3C = TraceContextTextMapPropagator()
INSTANA = InstanaPropagator()


def parent_context(headers: Any) -> Optional[Context]:
    """The publisher's span as the parent: W3C first, else Instana, else None (a root span)."""
    if not isinstance(headers, Mapping) or not headers:
        return None
    try:
        ctx = W3C.extract(headers, getter=GETTER)
        if trace.get_current_span(ctx).get_span_context().is_valid:
            return ctx
        ctx = INSTANA.extract(headers)
        return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None
    except Exception:  # whatever a header holds, an order is never lost over its trace context
        return None


# == settings =====================================================================================
def traces_endpoint(env: Mapping[str, str]) -> str:
    """Where spans go: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else the base URL + /v1/traces."""
    url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    name = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    if not url:
        name = "OTEL_EXPORTER_OTLP_ENDPOINT"
        url = env.get(name, "").strip()
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is no number
        valid = False
    if not valid or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ConfigError(name, f"is not an http:// or https:// URL ({shown(url)})")
    if name == "OTEL_EXPORTER_OTLP_ENDPOINT":
        url += "v1/traces" if url.endswith("/") else "/v1/traces"
    return url


def shown(url: str) -> str:
    """A URL fit for a log line: no user info, query or fragment (they may hold a token)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))[:200]
    except ValueError:
        return "(unparsable URL)"


def _valid_header(name: str, value: str) -> bool:
    token = name and all(33 <= ord(ch) < 127 and ch not in '()<>@,;:\\"/[]?={}' for ch in name)
    return bool(token) and all(ch == "\t" or 32 <= ord(ch) < 127 or ord(ch) > 159 for ch in value)


HEADER_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")


def exporter_headers(env: Mapping[str, str]) -> tuple:
    """(headers, where from, how many were malformed and left out, every value given: secrets):
    the systemd credential ``otlp-headers``, else OTEL_EXPORTER_OTLP_TRACES_HEADERS, else
    OTEL_EXPORTER_OTLP_HEADERS; ``key=value`` pairs, comma-separated, values URL-encoded (the
    specification's format)."""
    from opentelemetry.util.re import parse_env_headers

    raw = read_credential(env, None, HEADERS_CREDENTIAL)
    source = f"credential {HEADERS_CREDENTIAL}"
    for name in HEADER_VARIABLES:
        if raw is None and env.get(name, "").strip():
            raw, source = env[name], name
    if raw is None:
        return {}, "", 0, []
    parsed = parse_env_headers(raw, liberal=True)
    headers = {k: v for k, v in parsed.items() if _valid_header(k, v)}
    parts = [part for part in raw.split(",") if part.strip()]
    values = [part.partition("=")[2].strip() for part in parts] + list(parsed.values())
    values += [urllib.parse.unquote(v) for v in values]
    return headers, source, max(0, len(parts) - len(headers)), values


def timeout_s(env: Mapping[str, str]) -> float:
    """The exporter's timeout: OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT in milliseconds (the
    specification's unit), capped at MAX_TIMEOUT_S; EXPORT_TIMEOUT_S when unset."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        raw = env.get(name, "").strip()
        if raw:
            try:
                ms = float(raw)
            except ValueError:
                raise ConfigError(name, f"={raw[:20]!r} is not a number of milliseconds") from None
            if not ms > 0:
                raise ConfigError(name, f"={raw[:20]!r} must be above 0 milliseconds")
            return min(ms / 1000.0, MAX_TIMEOUT_S)
    return EXPORT_TIMEOUT_S


def batch_sizes(env: Mapping[str, str]) -> tuple:
    """(the BatchSpanProcessor's sizes, the queue's room): smaller than the SDK's defaults (2,048
    and 512), a batch of pure-Python protobuf messages is memory too. OTEL_BSP_MAX_QUEUE_SIZE and
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE override them."""
    sizes = {}
    queue = env.get("OTEL_BSP_MAX_QUEUE_SIZE", "").strip()
    room = int(queue) if queue.isdigit() and int(queue) > 0 else QUEUE_SIZE
    if not queue:
        sizes["max_queue_size"] = QUEUE_SIZE
    if not env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "").strip():
        sizes["max_export_batch_size"] = min(BATCH_SIZE, room)
    return sizes, room


def resource() -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, with service.name ``dispatch`` and
    service.version this package's when they do not say."""
    res = Resource.create({})
    missing: Dict[str, Any] = {}
    if str(res.attributes.get("service.name", "")).startswith("unknown_service"):
        missing["service.name"] = SERVICE_NAME
    if "service.version" not in res.attributes:
        missing["service.version"] = __version__
    return res.merge(Resource(missing)) if missing else res


# == spans ========================================================================================
def _message_id(delivery: Any) -> Optional[str]:
    props = delivery.properties
    value = getattr(props, "message_id", None) if props is not None else None
    return value if isinstance(value, str) and value else None


class Tracing:
    """The tracer, its processor and the dropped-spans report."""

    def __init__(self, provider: TracerProvider, drops: Drops, log: LineLog, ioloop: Any, endpoint: str) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("roboshop_dispatch.consumer", __version__)
        self.drops = drops
        self.log = log
        self.ioloop = ioloop
        self.endpoint = shown(endpoint)
        self.redact: Callable[[str], str] = lambda text: text
        self.last_line = -DROP_LOG_S  # monotonic time of the last dropped-spans line
        self.exporter: Optional[CountingExporter] = None
        ioloop.call_later(DROP_CHECK_S, self._report)

    @property
    def on_drop(self) -> Optional[Callable[[int], None]]:
        return self.drops.on_drop

    @on_drop.setter
    def on_drop(self, hook: Optional[Callable[[int], None]]) -> None:
        self.drops.on_drop = hook

    def _span(self, headers: Any, attributes: Dict[str, Any]) -> Any:
        return self.tracer.start_span("getOrder", context=parent_context(headers), kind=SpanKind.CONSUMER,
                                      attributes=attributes)

    def order_span(self, delivery: Any, orderid: str) -> Any:
        attributes = dict(ORDER_ATTRIBUTES, orderid=orderid)
        message_id = _message_id(delivery)
        if message_id is not None:
            attributes["messaging.message.id"] = message_id
        return self._span(delivery.headers, attributes)

    def sale_span(self, span: Any) -> Any:
        child = self.tracer.start_span("processSale", context=trace.set_span_in_context(span),
                                       kind=SpanKind.INTERNAL)
        child.add_event("Order sent for processing")
        return child

    def finish(self, span: Any, child: Any, failed: bool) -> str:
        """End an order's spans; returns its log line's `` trace_id=...``."""
        child.end()
        if failed:
            span.set_attribute("error.type", "Exception")
            span.add_event("error", {"error.kind": "Exception", "message": FAILED})
            span.set_status(Status(StatusCode.ERROR, FAILED))
        span.end()
        ctx = span.get_span_context()
        return f" trace_id={ctx.trace_id:032x}" if ctx.trace_id else ""

    def quarantine_span(self, delivery: Any, reason: str) -> None:
        attributes = dict(ORDER_ATTRIBUTES)
        attributes.update({"messaging.message.body.size": delivery.body_size, "dispatch.outcome": "quarantined",
                           "dispatch.quarantine.reason": reason[:300], "error.type": "InvalidMessage"})
        span = self._span(delivery.headers, attributes)
        span.set_status(Status(StatusCode.ERROR, reason[:300]))
        span.end()

    # == the dropped-spans line, the flush ========================================================
    def _report(self, final: bool = False) -> None:
        """The dropped-spans line: at most once a minute (and at exit), only when spans were lost."""
        now = time.monotonic()
        if final or now - self.last_line >= DROP_LOG_S:
            with self.drops.lock:
                total, new = self.drops.total, self.drops.total - self.drops.logged
                self.drops.logged = total
            if new:
                self.last_line = now
                why = self.redact(self.drops.error or "no room left in the export queue")
                self.log.warning(f"tracing: {new} spans dropped {'at exit' if final else 'since the last report'} "
                                 f"({total} in all): the collector at {self.endpoint} did not take them ({why}); "
                                 "orders are dispatched all the same")
        if not final:
            self.ioloop.call_later(DROP_CHECK_S, self._report)

    def close(self) -> None:
        """Flush what is queued, for FLUSH_S seconds at most whatever the collector does."""
        if self.exporter is not None:
            self.exporter.closing.set()
        flush = threading.Thread(target=self.provider.shutdown, name="dispatch-trace-flush", daemon=True)
        started = time.monotonic()
        flush.start()
        flush.join(FLUSH_S)
        if flush.is_alive():
            self.log.warning(f"tracing: the last spans were not exported within {FLUSH_S:g}s: exiting without them")
        elif time.monotonic() - started > 0.5:
            self.log.info(f"tracing: flushed in {time.monotonic() - started:.1f}s")
        self.drops.add(self.drops.unaccounted())  # still queued or on their way: dropped too
        self._report(final=True)


def start(env: Mapping[str, str], log: LineLog, ioloop: Any) -> Optional[Tracing]:
    """Tracing as OTEL_* says, or None (one ERROR line saying why) when it cannot be set up."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    drops = Drops()
    quiet_opentelemetry(drops)
    given: list = []
    try:
        endpoint = traces_endpoint(env)
        headers, source, bad, given = exporter_headers(env)
        for name in HEADER_VARIABLES:  # the exporter would parse them again, malformed ones included
            os.environ.pop(name, None)
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout_s(env))
        counting = CountingExporter(exporter, drops)
        sizes, room = batch_sizes(env)
        processor = BatchSpanProcessor(counting, meter_provider=DropMeterProvider(drops), **sizes)
        configured = TracerProvider(shutdown_on_exit=False).sampler  # OTEL_TRACES_SAMPLER(_ARG), as the SDK reads them
        provider = TracerProvider(resource=resource(), shutdown_on_exit=False,
                                  sampler=Shedding(configured, drops, room))
        provider.add_span_processor(Tally(drops))
        provider.add_span_processor(processor)
    except Exception as exc:
        what = str(exc) if isinstance(exc, ConfigError) else f"OpenTelemetry cannot start: {type(exc).__name__}: {exc}"
        log.error(f"tracing off: {_redactor(given)(what)[:300]}")
        return None
    tracing = Tracing(provider, drops, log, ioloop, endpoint)
    tracing.redact = _redactor(given)
    tracing.exporter = counting
    service = provider.resource.attributes.get("service.name")
    said = f", {len(headers)} exporter headers from {source}" if headers else ""
    if bad:
        said += f" ({bad} malformed and left out: values not shown)"
    log.info(f"tracing on: spans to {tracing.endpoint} as service {service!r} (sampler "
             f"{provider.sampler.get_description()}, export timeout {timeout_s(env):g}s{said})")
    return tracing


def _redactor(values: Sequence[str]) -> Callable[[str], str]:
    """Replaces every header value given (valid or not) in a text that will be logged."""
    secrets = sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return redact


__all__ = ["GETTER", "INSTANA", "W3C", "InstanaPropagator", "Setter", "Tracing", "parent_context", "start"]
