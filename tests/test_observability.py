"""Tracing and metrics of the consumer, end to end: a real RabbitMQ, the consumer as a real
subprocess, a real OTLP/HTTP receiver decoding the protobuf (tests/support/otlp.py) and /metrics
scraped over HTTP and parsed with prometheus_client's own parser (and ``promtool check metrics``).

Orders are published exactly as RoboShop's payment publishes them, with the headers Instana's
instrumentation of payment adds (``X-INSTANA-T/S`` of 16 hex digits, ``X-INSTANA-L``,
``Server-Timing``), or with W3C ``traceparent``/``tracestate`` as an OpenTelemetry publisher does.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
import urllib.request
from typing import Dict, List, Optional

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.consumer import Consumer, consumer_env
from tests.support.otlp import Receiver, Span, free_port
from tests.support.payment import PaymentPublisher, make_order
from tests.test_consumer import params, queue_state

pytestmark = pytest.mark.broker
FAST = {"DISPATCH_PROCESSING_MS": "0-5", "OTEL_BSP_SCHEDULE_DELAY": "100"}
TRACE_LINE = re.compile(r" trace_id=([0-9a-f]{32})$")


def instana_headers(sampled: bool = True) -> Dict[str, str]:
    """What Instana's pika instrumentation puts on payment's publish (16 hex digits each)."""
    trace_id, span_id = secrets.token_hex(8), secrets.token_hex(8)
    return {"X-INSTANA-T": trace_id, "X-INSTANA-S": span_id, "X-INSTANA-L": "1" if sampled else "0",
            "Server-Timing": f"intid;desc={trace_id}"}


def w3c_headers() -> Dict[str, str]:
    return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01", "tracestate": "vendor=x"}


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture
def consumers(broker, vhost):
    started: List[Consumer] = []

    def start(**overrides: Optional[str]) -> Consumer:
        import sys

        c = Consumer(consumer_env(broker, vhost, **{**FAST, **overrides}),
                     [sys.executable, "-m", "roboshop_dispatch.consumer"])
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def publish_traced(broker, vhost: str, consumer: Consumer, count: int) -> list:
    """``count`` orders with payment's Instana headers, dispatched: the orders."""
    sent = [make_order(n) for n in range(count)]
    with PaymentPublisher(params(broker, vhost)) as payment:
        for order in sent:
            payment.publish(order, instana_headers())
    consumer.wait_orders([o["orderid"] for o in sent])
    return sent


def trace_ids(consumer: Consumer) -> Dict[str, str]:
    """order id -> the trace id its log line carries."""
    out = {}
    for line in consumer.output.splitlines():
        m = TRACE_LINE.search(line)
        parts = line.split()
        if m and len(parts) > 2 and parts[1] == "order":
            out[parts[2]] = m.group(1)
    return out


def order_spans(spans: List[Span], orderid: str) -> tuple:
    """(getOrder, processSale) of one order, each exactly once."""
    get = [s for s in spans if s.name == "getOrder" and s.attributes.get("orderid") == orderid]
    assert len(get) == 1, f"{len(get)} getOrder spans for {orderid}"
    sale = [s for s in spans if s.name == "processSale" and s.parent_span_id == get[0].span_id]
    assert len(sale) == 1, f"{len(sale)} processSale spans under {orderid}'s getOrder"
    return get[0], sale[0]


def assert_order_span(get: Span, sale: Span, orderid: str) -> None:
    assert get.kind == "CONSUMER" and sale.kind == "INTERNAL"
    assert sale.trace_id == get.trace_id and sale.parent_span_id == get.span_id
    expected = {"messaging.system": "rabbitmq", "messaging.destination.name": "robot-shop",
                "messaging.rabbitmq.destination.routing_key": "orders", "messaging.operation.type": "process",
                "message_bus.destination": "robot-shop", "exchange": "robot-shop", "sort": "consume",
                "address": "rabbitmq", "key": "orders", "orderid": orderid}
    assert expected.items() <= get.attributes.items()
    assert [name for name, _attrs in sale.events] == ["Order sent for processing"]
    assert get.resource["service.name"] == "dispatch"


def test_payment_orders_are_traced_under_their_publishers_spans(broker, vhost, consumers, receiver):
    consumer = consumers(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    consumer.wait_consuming()
    assert consumer.count("tracing on: spans to " + receiver.endpoint + "/v1/traces") == 1
    instana, w3c = make_order(1), make_order(2)
    plain, unsampled = make_order(3), make_order(4)
    junk = [make_order(5 + n) for n in range(4)]
    instana_h, w3c_h, unsampled_h = instana_headers(), w3c_headers(), instana_headers(sampled=False)
    junk_h = [{"X-INSTANA-T": "0" * 16, "X-INSTANA-S": secrets.token_hex(8)},  # all-zero trace id
              {"X-INSTANA-T": secrets.token_hex(8)[:15], "X-INSTANA-S": secrets.token_hex(8)},  # 15 digits
              {"X-INSTANA-T": "xyz" + secrets.token_hex(8)[3:], "X-INSTANA-S": secrets.token_hex(8)},  # not hex
              {"traceparent": b"00-zz-junk", "X-INSTANA-T": b"\xff" * 16}]  # bytes, junk
    with PaymentPublisher(params(broker, vhost)) as payment:
        payment.publish(instana, instana_h)
        payment.publish(w3c, w3c_h)
        payment.publish(plain)
        payment.publish(unsampled, unsampled_h)
        for order, headers in zip(junk, junk_h):
            payment.publish(order, headers)
    ids = [o["orderid"] for o in (instana, w3c, plain, unsampled, *junk)]
    consumer.wait_orders(ids)
    spans = receiver.wait_spans(2 * 7)
    time.sleep(0.5)  # nothing more may come: the unsampled order's spans are never exported
    spans = receiver.spans
    assert len(spans) == 14, [(s.name, s.attributes.get("orderid")) for s in spans]
    logged = trace_ids(consumer)

    get, sale = order_spans(spans, instana["orderid"])
    assert_order_span(get, sale, instana["orderid"])
    assert get.trace_id == "0" * 16 + instana_h["X-INSTANA-T"] and get.parent_span_id == instana_h["X-INSTANA-S"]
    get, sale = order_spans(spans, w3c["orderid"])
    assert_order_span(get, sale, w3c["orderid"])
    _version, trace_id, parent, _flags = w3c_h["traceparent"].split("-")
    assert (get.trace_id, get.parent_span_id) == (trace_id, parent)
    for order in (plain, *junk):  # no usable parent: a root span, and the order dispatched all the same
        get, sale = order_spans(spans, order["orderid"])
        assert_order_span(get, sale, order["orderid"])
        assert get.parent_span_id == "" and get.trace_id != "0" * 32
    assert not [s for s in spans if s.attributes.get("orderid") == unsampled["orderid"]]
    assert logged[unsampled["orderid"]] == "0" * 16 + unsampled_h["X-INSTANA-T"]  # logged, not exported
    for order in (instana, w3c, plain, *junk):
        get, _sale = order_spans(spans, order["orderid"])
        assert logged[order["orderid"]] == get.trace_id, "the log line names the order's trace"
        assert get.status == "UNSET"
    assert consumer.count("quarantined") == 0
    assert consumer.stop()[0] == 0
    assert queue_state(broker, vhost) == (0, 0)


def test_every_failed_order_is_an_error_span(broker, vhost, consumers, receiver):
    consumer = consumers(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, DISPATCH_ERROR_PERCENT="100")
    consumer.wait_consuming()
    sent = publish_traced(broker, vhost, consumer, 20)
    spans = receiver.wait_spans(40)
    for order in sent:
        get, sale = order_spans(spans, order["orderid"])
        assert_order_span(get, sale, order["orderid"])
        assert (get.status, get.status_message) == ("ERROR", "Failed to dispatch to SOP")
        assert get.attributes["error.type"] == "Exception"
        assert sale.status == "UNSET"
    assert consumer.count(" failed ") == 20
    assert consumer.stop()[0] == 0


def test_a_quarantined_message_is_an_error_span_without_its_body(broker, vhost, consumers, receiver):
    consumer = consumers(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    consumer.wait_consuming()
    headers = instana_headers()
    secret_body = b'{"orderid": 42, "card": "4111-1111-1111-1111"}'
    with PaymentPublisher(params(broker, vhost)) as payment:
        payment.publish_raw(secret_body, pika.BasicProperties(headers=headers, message_id="m-7"))
    spans = receiver.wait_spans(1)
    [span] = spans
    assert span.name == "getOrder" and span.kind == "CONSUMER"
    assert (span.status, span.status_message) == ("ERROR", "orderid is not a string (number)")
    assert span.attributes["dispatch.quarantine.reason"] == "orderid is not a string (number)"
    assert span.trace_id == "0" * 16 + headers["X-INSTANA-T"] and span.parent_span_id == headers["X-INSTANA-S"]
    assert "4111" not in repr(span)
    consumer.wait_line("bad message quarantined")
    assert consumer.stop()[0] == 0


def scrape(port: int) -> Dict[str, float]:
    """/metrics parsed by prometheus_client's parser: 'name{label="v"}' -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_collector_down_orders_still_dispatched_and_drops_counted(broker, vhost, consumers, receiver):
    port = free_port()
    receiver.stop()  # the collector is gone before the consumer starts
    consumer = consumers(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, DISPATCH_METRICS_LISTEN=f"127.0.0.1:{port}",
                         OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20s3cr3t-t0ken")
    consumer.wait_consuming()
    sent = [make_order(n) for n in range(300)]
    with PaymentPublisher(params(broker, vhost)) as payment:
        for order in sent:
            payment.publish(order, instana_headers())
    consumer.wait_orders([o["orderid"] for o in sent], timeout=30)
    assert queue_state(broker, vhost)[0] == 0
    consumer.wait_line("tracing: ", timeout=30)
    assert consumer.count(" spans dropped since the last report") == 1
    deadline = time.monotonic() + 20
    while scrape(port)["dispatch_trace_spans_dropped_total"] < 600 and time.monotonic() < deadline:
        time.sleep(0.5)
    metrics = scrape(port)
    assert metrics["dispatch_trace_spans_dropped_total"] == 600  # every span of every order, counted
    assert metrics['dispatch_orders_total{outcome="dispatched"}'] == 300
    code, took = consumer.stop()
    assert code == 0 and took < 10 + 2.5, f"stopped in {took:.1f}s"
    assert "s3cr3t" not in consumer.output


def test_tracing_misconfigured_is_one_line_and_orders_go_on(broker, vhost, consumers):
    consumer = consumers(OTEL_EXPORTER_OTLP_ENDPOINT="ftp://collector:4318",
                         OTEL_EXPORTER_OTLP_HEADERS="api-key=t0psecret")
    consumer.wait_consuming()
    order = make_order(1)
    with PaymentPublisher(params(broker, vhost)) as payment:
        payment.publish(order, w3c_headers())
    consumer.wait_orders([order["orderid"]])
    assert consumer.count("tracing off: OTEL_EXPORTER_OTLP_ENDPOINT is not an http:// or https:// URL") == 1
    assert "trace_id=" not in consumer.output and "t0psecret" not in consumer.output
    assert consumer.stop()[0] == 0


def promtool_check(port: int) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup-dev installs Debian's prometheus package", pytrace=False)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_metrics_count_what_was_sent_across_a_broker_restart(broker, vhost, consumers):
    port = free_port()
    consumer = consumers(DISPATCH_METRICS_LISTEN=f"127.0.0.1:{port}", DISPATCH_ERROR_PERCENT="0")
    consumer.wait_consuming()
    first = scrape(port)
    for outcome in ("dispatched", "failed", "quarantined"):
        assert first[f'dispatch_orders_total{{outcome="{outcome}"}}'] == 0  # present from the start
    assert first["dispatch_amqp_connected"] == 1 and first["dispatch_amqp_reconnects_total"] == 0
    assert first["process_resident_memory_bytes"] > 0 and "dispatch_trace_spans_dropped_total" in first
    promtool_check(port)

    sent = [make_order(n) for n in range(50)]
    with PaymentPublisher(params(broker, vhost)) as payment:
        for order in sent:
            payment.publish(order)
        payment.publish_raw(b"not an order")
    consumer.wait_orders([o["orderid"] for o in sent])
    consumer.wait_line("bad message quarantined")
    time.sleep(0.5)  # the quarantine copy's confirm
    metrics = scrape(port)
    assert metrics['dispatch_orders_total{outcome="dispatched"}'] == 50
    assert metrics['dispatch_orders_total{outcome="quarantined"}'] == 1
    assert metrics['dispatch_orders_total{outcome="failed"}'] == 0
    assert metrics["dispatch_order_processing_seconds_count"] == 50
    assert metrics["dispatch_last_order_timestamp_seconds"] > time.time() - 60

    broker.outage()
    deadline = time.monotonic() + 20
    while scrape(port)["dispatch_amqp_connected"] != 0:
        assert time.monotonic() < deadline, "dispatch_amqp_connected stayed 1 with the broker down"
        time.sleep(0.2)
    broker.recover()
    consumer.wait_consuming(count=2, timeout=60)
    metrics = scrape(port)
    assert metrics["dispatch_amqp_connected"] == 1 and metrics["dispatch_amqp_reconnects_total"] >= 1
    promtool_check(port)
    assert consumer.stop()[0] == 0


def test_a_redelivered_order_is_counted(broker, vhost, consumers):
    """An order in flight when its connection is closed comes back flagged redelivered."""
    port = free_port()
    slow = consumers(DISPATCH_METRICS_LISTEN=f"127.0.0.1:{port}", DISPATCH_PROCESSING_MS="2000")
    slow.wait_consuming()
    order = make_order(1)
    with PaymentPublisher(params(broker, vhost)) as payment:
        payment.publish(order)
    time.sleep(0.5)  # delivered, and being worked on for 4 s
    broker.ctl("close_all_connections", "-p", vhost, "test: make an order come back redelivered")
    slow.wait_consuming(count=2, timeout=60)
    slow.wait_orders([order["orderid"]], timeout=30)
    metrics = scrape(port)
    assert metrics["dispatch_orders_redelivered_total"] == 1
    assert metrics['dispatch_orders_total{outcome="dispatched"}'] == 1
    assert slow.stop()[0] == 0


@pytest.mark.parametrize("listen, why", [("127.0.0.1", "is not HOST:PORT"), ("127.0.0.1:99999", "no valid port"),
                                         ("in use", "cannot listen on 127.0.0.1:")])
def test_bad_metrics_address_is_one_line_and_orders_go_on(broker, vhost, consumers, listen, why):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if listen == "in use":
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
        consumer = consumers(DISPATCH_METRICS_LISTEN=listen)
        consumer.wait_consuming()
        order = make_order(1)
        with PaymentPublisher(params(broker, vhost)) as payment:
            payment.publish(order)
        consumer.wait_orders([order["orderid"]])
        assert consumer.count("metrics off: ") == 1 and consumer.count(why) == 1
        assert consumer.proc.poll() is None
        assert consumer.stop()[0] == 0


@pytest.mark.parametrize("on", [False, True])
def test_off_means_not_imported(broker, vhost, consumers, receiver, on):
    """With neither switched on, OpenTelemetry and prometheus_client are never imported by the
    running consumer (Python's own import log, PYTHONPROFILEIMPORTTIME, lists every import)."""
    extra = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "DISPATCH_METRICS_LISTEN": f"127.0.0.1:{free_port()}"}
    consumer = consumers(PYTHONPROFILEIMPORTTIME="1", **(extra if on else {}))
    consumer.wait_consuming()
    order = make_order(1)
    with PaymentPublisher(params(broker, vhost)) as payment:
        payment.publish(order, instana_headers())
    consumer.wait_orders([order["orderid"]])
    assert consumer.stop()[0] == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in consumer.lines if line.startswith("import time:")}
    assert "pika" in imported
    observability = {m for m in imported if m.split(".")[0] in ("opentelemetry", "prometheus_client", "google",
                                                                  "requests", "urllib3")}
    if on:
        assert {"opentelemetry.sdk.trace", "prometheus_client", "google.protobuf", "requests"} <= observability
    else:
        assert observability == set()


def test_sigterm_flushes_for_two_seconds_at_most_whatever_the_collector(broker, vhost, consumers, receiver):
    receiver.delay = 30.0  # a collector that takes the request and never answers in time
    consumer = consumers(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="10000")
    consumer.wait_consuming()
    publish_traced(broker, vhost, consumer, 50)
    time.sleep(0.5)  # an export is under way and hangs
    code, took = consumer.stop()
    assert code == 0 and took < 3.5, f"SIGTERM took {took:.1f}s"
    assert consumer.count("tracing: the last spans were not exported within 2s") == 1
    assert consumer.count(" spans dropped at exit (100 in all)") == 1  # every span, counted
    assert queue_state(broker, vhost) == (0, 0)
