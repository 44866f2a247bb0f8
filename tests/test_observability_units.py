"""Pure logic of tracing and metrics: the trace-context headers (hypothesis), the exporter's
settings and their secrets, the metrics address, the coalesced warnings."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from roboshop_dispatch.consumer import config, tracecontext
from roboshop_dispatch.consumer.logs import OTHER_KINDS, Coalescer, reason_kind
from roboshop_dispatch.consumer.metrics import parse_listen

HEX = "0123456789abcdef"
hex_ids = st.text(HEX, min_size=16, max_size=16).filter(lambda s: int(s, 16) != 0)
header_values = st.one_of(st.text(max_size=80), st.binary(max_size=80), st.integers(), st.none(), st.booleans(),
                          st.lists(st.text(max_size=5), max_size=3), st.floats(allow_nan=True))
header_names = st.sampled_from(["X-INSTANA-T", "X-INSTANA-S", "X-INSTANA-L", "x-instana-t", "traceparent",
                                "TraceParent", "tracestate", "Server-Timing", "other"])


@given(trace_id=hex_ids, span_id=hex_ids, level=st.sampled_from(["1", "0", "0,correlationType=web", None]),
       as_bytes=st.booleans(), upper=st.booleans())
def test_payments_instana_headers_name_the_parent(trace_id, span_id, level, as_bytes, upper):
    def enc(v: str):
        v = v.upper() if upper else v
        return v.encode() if as_bytes else v

    headers = {"X-INSTANA-T": enc(trace_id), "X-INSTANA-S": enc(span_id)}
    if level is not None:
        headers["X-INSTANA-L"] = enc(level)
    parent = tracecontext.instana_parent(headers)
    assert parent == (int(trace_id, 16), int(span_id, 16), not (level or "").startswith("0"))


@given(trace_id=st.text(HEX, min_size=32, max_size=32).filter(lambda s: int(s, 16) != 0), span_id=hex_ids)
def test_a_128_bit_instana_trace_id(trace_id, span_id):
    parent = tracecontext.instana_parent({"x-instana-t": trace_id, "x-instana-s": span_id})
    assert parent is not None and parent.trace_id == int(trace_id, 16) and parent.sampled


@pytest.mark.parametrize("t, s", [
    ("0" * 16, "1" * 16), ("1" * 16, "0" * 16),  # all-zero ids
    ("1" * 15, "1" * 16), ("1" * 17, "1" * 16), ("1" * 31, "1" * 16), ("1" * 16, "1" * 8),  # wrong lengths
    ("g" * 16, "1" * 16), ("0x" + "1" * 14, "1" * 16), ("1" * 16, " " * 16),  # not hex
    (b"\xff" * 16, "1" * 16), (16, "1" * 16), (None, "1" * 16), ("1" * 16, None),  # not text
])
def test_junk_instana_headers_give_no_parent(t, s):
    assert tracecontext.instana_parent({"X-INSTANA-T": t, "X-INSTANA-S": s}) is None


@given(st.dictionaries(header_names, header_values, max_size=6))
@example({"X-INSTANA-T": "1" * 16, "X-INSTANA-S": b"\x00" * 16})
@example({"traceparent": b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"})
def test_any_headers_give_a_parent_or_a_root_never_an_error(headers):
    """Whatever the headers hold: the Instana parser and OpenTelemetry's extraction (W3C first)
    return a valid parent or None (a root span); nothing raises."""
    from opentelemetry import trace

    from roboshop_dispatch.consumer import tracing

    parent = tracecontext.instana_parent(headers)
    assert parent is None or (0 < parent.trace_id < 2 ** 128 and 0 < parent.span_id < 2 ** 64)
    ctx = tracing.parent_context(headers)
    if ctx is not None:
        span_context = trace.get_current_span(ctx).get_span_context()
        assert span_context.is_valid and span_context.is_remote


def test_w3c_wins_over_instana_and_bytes_work():
    from opentelemetry import trace

    from roboshop_dispatch.consumer import tracing

    headers = {"traceparent": b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01", "X-INSTANA-T": "1" * 16,
               "X-INSTANA-S": "2" * 16}
    span_context = trace.get_current_span(tracing.parent_context(headers)).get_span_context()
    assert (span_context.trace_id, span_context.span_id) == (int("a" * 32, 16), int("b" * 16, 16))
    headers["traceparent"] = "00-junk"
    span_context = trace.get_current_span(tracing.parent_context(headers)).get_span_context()
    assert (span_context.trace_id, span_context.span_id) == (int("1" * 16, 16), int("2" * 16, 16))


def test_trace_headers_may_be_bytes_without_quarantine():
    from roboshop_dispatch.consumer.orders import InvalidMessage, check_headers

    check_headers({"traceparent": b"\xff junk", "X-INSTANA-T": b"0" * 16, "tracestate": "x=y"})
    with pytest.raises(InvalidMessage):
        check_headers({"other": b"bytes"})  # any other header must still be a string
    with pytest.raises(InvalidMessage):
        check_headers({"X-INSTANA-L": 1})  # and a trace header of another type is still refused


# == the exporter's settings ======================================================================
def test_tracing_switch():
    assert config.tracing({}) == "off"
    assert config.tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "on"
    assert config.tracing({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == "on"
    assert config.tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_SDK_DISABLED": "TRUE"}).startswith("off")
    assert config.tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}).startswith("off")
    assert config.tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}) == "off"


def test_endpoint_timeout_and_what_is_shown():
    from roboshop_dispatch.consumer import tracing

    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c/"}) == "https://c/v1/traces"
    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/x", "OTEL_EXPORTER_OTLP_ENDPOINT":
                                    "http://d"}) == "http://c/x"
    for bad in ("ftp://c", "c:4318", "http://", "http://c d"):
        with pytest.raises(config.ConfigError):
            tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": bad})
    assert tracing.shown("https://user:pw@c.example:4318/v1/traces?token=t#f") == "https://c.example:4318/v1/traces"
    assert tracing.timeout_s({}) == tracing.EXPORT_TIMEOUT_S
    assert tracing.timeout_s({"OTEL_EXPORTER_OTLP_TIMEOUT": "500"}) == 0.5  # milliseconds, as specified
    assert tracing.timeout_s({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "100000"}) == tracing.MAX_TIMEOUT_S
    with pytest.raises(config.ConfigError):
        tracing.timeout_s({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})


def test_exporter_headers_credential_first_and_malformed_left_out(tmp_path):
    from roboshop_dispatch.consumer import tracing

    env = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cret,broken,x-bad=a%0Ab"}
    headers, source, bad, given = tracing.exporter_headers(env)
    assert headers == {"authorization": "Bearer s3cret"} and source == "OTEL_EXPORTER_OTLP_HEADERS" and bad == 2
    redact = tracing._redactor(given)  # every value given is a secret, the malformed ones too
    assert redact("value 'Bearer s3cret' or 'a\nb' refused") == "value '***' or '***' refused"
    (tmp_path / config.HEADERS_CREDENTIAL).write_text("x-api-key=from-credential\n")
    headers, source, bad, _given = tracing.exporter_headers({**env, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert headers == {"x-api-key": "from-credential"} and source == "credential otlp-headers" and bad == 0


# == metrics ======================================================================================
@pytest.mark.parametrize("raw, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:1", ("::1", 1)), ("localhost:65535", ("localhost", 65535)),
    (" 0.0.0.0:80 ", ("0.0.0.0", 80))])
def test_metrics_listen(raw, expected):
    assert parse_listen(raw) == expected


@given(st.text(alphabet=string.printable + "é\u2028", max_size=30))
@example("::1:9464")
@example("127.0.0.1:0")
@example("[::1]9464")
def test_metrics_listen_junk_is_a_value_error(raw):
    try:
        host, port = parse_listen(raw)
    except ValueError:
        return
    assert host and 1 <= port <= 65535
    assert ":" not in host or raw.strip().startswith("[")


# == coalesced warnings ===========================================================================
class Loop:
    """Timers run when the test says (``fire``)."""

    def __init__(self) -> None:
        self.timers: list = []

    def call_later(self, delay: float, callback) -> object:
        self.timers.append(callback)
        return callback

    def remove_timeout(self, timer) -> None:
        self.timers.remove(timer)

    def fire(self) -> None:
        timers, self.timers = self.timers, []
        for callback in timers:
            callback()


class Lines:
    def __init__(self) -> None:
        self.lines: list = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


def test_the_first_of_each_kind_then_one_count_per_interval():
    log, loop = Lines(), Loop()
    notes = Coalescer(log, loop, 60, "bad messages quarantined")  # type: ignore[arg-type]
    for n in range(1000):
        notes.warning("invalid JSON", f"invalid JSON #{n}")
        if n % 100 == 0:
            notes.warning("no orderid", f"no orderid #{n}")
    assert log.lines == ["invalid JSON #0", "no orderid #0"]
    loop.fire()
    assert log.lines[2:] == ["999 more bad messages quarantined in the last 60s: invalid JSON",
                             "9 more bad messages quarantined in the last 60s: no orderid"]
    loop.fire()  # a quiet interval: forgotten, the next one is written in full again
    assert len(log.lines) == 4 and loop.timers == []
    notes.warning("invalid JSON", "invalid JSON again")
    notes.warning("invalid JSON", "counted")
    notes.close()
    assert log.lines[4:] == ["invalid JSON again",
                             "1 more bad messages quarantined since the last summary: invalid JSON"]


def test_invented_kinds_are_bounded():
    log, loop = Lines(), Loop()
    notes = Coalescer(log, loop, 60, "bad messages quarantined", max_kinds=3)  # type: ignore[arg-type]
    for n in range(100):
        notes.warning(f"header 'h{n}' is not a string", f"line {n}")
    assert len(log.lines) == 3
    loop.fire()
    assert log.lines[3:] == [f"97 more bad messages quarantined in the last 60s: {OTHER_KINDS}"]


@pytest.mark.parametrize("reason, kind", [
    ("invalid JSON: Expecting value: line 1 column 1 (char 0)", "invalid JSON"),
    ("body too large (2000000 bytes, limit 1048576)", "body too large"),
    ("header 'x' is not a string (number)", "header 'x' is not a string"),
    ("no orderid", "no orderid"),
])
def test_reason_kind(reason, kind):
    assert reason_kind(reason) == kind


def test_spans_are_shed_while_the_export_queue_is_full_and_every_span_is_accounted():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from opentelemetry.trace import set_span_in_context

    from roboshop_dispatch.consumer.export import CountingExporter, Drops, Shedding, Tally

    drops = Drops()
    provider = TracerProvider(sampler=Shedding(ALWAYS_ON, drops, room=4), shutdown_on_exit=False)
    provider.add_span_processor(Tally(drops))
    tracer = provider.get_tracer("test")
    ended = []

    def order() -> bool:
        span = tracer.start_span("getOrder")
        child = tracer.start_span("processSale", context=set_span_in_context(span))
        child.end()
        span.end()
        ended.extend(s for s in (child, span) if s.get_span_context().trace_flags.sampled)
        return span.get_span_context().trace_flags.sampled

    assert order() and order()  # 4 spans queued: the queue is full
    assert not order() and not order()  # not made: 2 spans each, counted as dropped
    assert (drops.total, drops.shed, drops.unaccounted()) == (4, 4, 4)
    exporter = CountingExporter(InMemorySpanExporter(), drops, share=1.0)
    assert exporter.export(ended[:4]) is SpanExportResult.SUCCESS  # the queue drains
    assert drops.unaccounted() == 0 and order()  # room again: recorded
    assert (drops.ended, drops.exported, drops.total) == (6, 4, 4)
