"""Tracing and metrics switched on by ``dispatchctl`` itself (issue 18, "Done when"), on a real
systemd host (a booted systemd-nspawn container) with the real broker and a real OTLP receiver on
this machine (the container shares its network): ``install --otlp-endpoint --metrics-listen
--otlp-header`` gives spans parented on the publisher's headers, ERROR spans after
``--error-percent 100``, ``/metrics`` counting the orders, orders dispatched while the receiver
is gone, ``status`` and ``check`` saying so, two instances on two metrics ports, the header never
shown, and a second identical install that changes nothing.

One booted host, one vhost and one receiver serve the whole module (booting costs seconds); each
test first runs the ``install`` it needs (idempotent), so none depends on another having run.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.request
from typing import Dict, List

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.otlp import Receiver, Span, free_port
from tests.support.payment import PaymentPublisher, make_order, parameters
from tests.support.schema import validator
from tests.test_provision_systemd import PASS_FILE, amqp_args, changed, wait_consumer

pytestmark = [pytest.mark.systemd, pytest.mark.broker]
TOKEN = "tok-" + secrets.token_hex(12)  # the exporter's header: a secret
HEADER = f"authorization=Bearer {TOKEN}"
HEADERS_FILE = "/etc/roboshop/dispatch.otlp-headers"


class Lab:
    """The module's host, broker vhost, receiver and metrics port, and every output dispatchctl printed."""

    def __init__(self, host, broker, vhost: str, receiver: Receiver, port: int) -> None:
        self.host, self.broker, self.vhost, self.receiver, self.port = host, broker, vhost, receiver, port
        self.outputs: List[str] = []
        self.sent = 0

    def dispatchctl(self, *args: str, expect: int = 0) -> str:
        res = self.host.dispatchctl(*args)
        self.outputs.append(res.stdout + res.stderr)
        assert res.returncode == expect, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
        return res.stdout

    def install(self, *extra: str, instances: int = 1) -> Dict:
        """install with tracing and metrics on (the header on the command line, as a user types it)."""
        self.host.write(PASS_FILE, self.broker.password + "\n")
        args = [*amqp_args(self.broker, self.vhost), "--otlp-endpoint", self.receiver.endpoint,
                "--metrics-listen", f"127.0.0.1:{self.port}", "--otlp-header", HEADER,
                "--instances", str(instances), *extra, "--json"]
        return json.loads(self.dispatchctl("install", *args))

    def publish(self, headers: List[Dict[str, str]]) -> List[str]:
        """One order per entry of ``headers`` ({} : none), published as payment does; their ids."""
        wait_consumer(self.broker, self.vhost)
        ids = []
        params = parameters(self.broker.host, self.broker.port, self.vhost, self.broker.user, self.broker.password)
        with PaymentPublisher(params) as payment:
            for extra in headers:
                self.sent += 1
                order = make_order(self.sent)
                payment.publish(order, extra)
                ids.append(str(order["orderid"]))
        return ids

    def spans_of(self, ids: List[str], timeout: float = 60) -> Dict[str, Dict[str, Span]]:
        """order id -> {"getOrder": span, "processSale": its child}, once every one arrived."""
        def complete(spans: List[Span]) -> bool:
            return len(_by_order(spans, ids)) == len(ids)

        return _by_order(self.receiver.wait(complete, timeout, f"the spans of {len(ids)} orders"), ids)

    def journal(self) -> str:
        return self.host.run(["journalctl", "--no-pager", "-o", "cat"], check=False).stdout


def _by_order(spans: List[Span], ids: List[str]) -> Dict[str, Dict[str, Span]]:
    orders = {s.attributes.get("orderid"): s for s in spans if s.name == "getOrder"}
    out = {}
    for orderid in ids:
        parent = orders.get(orderid)
        child = next((s for s in spans if parent and s.name == "processSale" and s.parent_span_id == parent.span_id),
                     None)
        if parent is not None and child is not None:
            out[orderid] = {"getOrder": parent, "processSale": child}
    return out


def metrics(port: int) -> Dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(s.name, s.labels.get("outcome", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def answers(port: int) -> bool:
    try:
        return ("dispatch_amqp_connected", "") in metrics(port)
    except OSError:
        return False


def instana() -> Dict[str, str]:
    """The headers Instana's instrumentation of payment adds (16 hex digits each)."""
    return {"X-INSTANA-T": secrets.token_hex(8), "X-INSTANA-S": secrets.token_hex(8), "X-INSTANA-L": "1"}


def w3c() -> Dict[str, str]:
    return {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}


@pytest.fixture(scope="module")
def lab(systemd_rootfs, broker):
    from tests.support.hosts import booted

    vhost = f"test-{secrets.token_hex(5)}"
    broker.ctl("add_vhost", vhost)
    broker.ctl("set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*")
    try:
        with Receiver() as receiver, booted(systemd_rootfs) as host:
            yield Lab(host, broker, vhost, receiver, free_port())
    finally:
        broker.ctl("delete_vhost", vhost, check=False)


# -- the tests ------------------------------------------------------------------------------------


def test_spans_are_parented_on_payments_headers_and_metrics_count_the_orders(lab):
    doc = lab.install()
    assert "config" in changed(doc) or changed(doc) == []  # (a re-run of the module keeps what it has)
    before = metrics(lab.port)[("dispatch_orders_total", "dispatched")]
    kinds = [instana(), instana(), w3c(), w3c(), {}, {}]
    ids = lab.publish(kinds)
    spans = lab.spans_of(ids)
    for orderid, headers in zip(ids, kinds):
        order, sale = spans[orderid]["getOrder"], spans[orderid]["processSale"]
        assert order.kind == "CONSUMER" and sale.kind == "INTERNAL" and order.status == "UNSET"
        assert order.attributes["orderid"] == orderid and order.attributes["messaging.system"] == "rabbitmq"
        assert sale.trace_id == order.trace_id and ("Order sent for processing", {}) in sale.events
        if "X-INSTANA-T" in headers:  # payment's own: 64-bit trace id, left-padded
            assert (order.trace_id, order.parent_span_id) == ("0" * 16 + headers["X-INSTANA-T"],
                                                              headers["X-INSTANA-S"])
        elif "traceparent" in headers:
            _, trace_id, parent, _ = headers["traceparent"].split("-")
            assert (order.trace_id, order.parent_span_id) == (trace_id, parent)
        else:
            assert order.parent_span_id == ""  # a root span
        print(f"\n{orderid}: {'instana' if 'X-INSTANA-T' in headers else 'w3c' if headers else 'none'} -> "
              f"getOrder trace {order.trace_id} parent {order.parent_span_id or '(root)'} span {order.span_id}, "
              f"processSale {sale.span_id}", end="")
    assert all(r.get("authorization") == f"Bearer {TOKEN}" for r in lab.receiver.requests)
    lab.host.wait_for(lambda: metrics(lab.port)[("dispatch_orders_total", "dispatched")] == before + len(ids),
                      timeout=30, what="the orders counted on /metrics")
    assert metrics(lab.port)[("dispatch_amqp_connected", "")] == 1
    # the installed unit, metrics on and the headers' credential, keeps its hardening
    unit = "/etc/systemd/system/dispatch.service"
    assert f"LoadCredential=otlp-headers:{HEADERS_FILE}" in lab.host.path(unit).read_text()
    security = lab.host.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit], check=False)
    score = float(security.stdout.strip().splitlines()[-1].split(":", 1)[1].split()[0])
    print(f"\nexposure score with tracing and metrics on: {score}")
    assert score <= 2.0, security.stdout


def test_error_percent_100_makes_every_span_an_error_and_the_settings_are_remembered(lab):
    lab.install()
    doc = json.loads(lab.dispatchctl("install", "--error-percent", "100", "--json"))  # nothing else given
    assert changed(doc) == ["config", "service"], doc
    env = lab.host.path("/etc/roboshop/dispatch.env").read_text()
    assert f'OTEL_EXPORTER_OTLP_ENDPOINT="{lab.receiver.endpoint}"' in env
    assert f'DISPATCH_METRICS_LISTEN="127.0.0.1:{lab.port}"' in env
    assert lab.host.path(HEADERS_FILE).read_text() == f"authorization=Bearer%20{TOKEN}\n"
    try:
        before = metrics(lab.port)[("dispatch_orders_total", "failed")]
        ids = lab.publish([instana(), w3c(), {}])
        spans = lab.spans_of(ids)
        for orderid in ids:
            order = spans[orderid]["getOrder"]
            assert (order.status, order.status_message) == ("ERROR", "Failed to dispatch to SOP")
            assert order.attributes["error.type"] == "Exception"
        lab.host.wait_for(lambda: metrics(lab.port)[("dispatch_orders_total", "failed")] == before + 3,
                          timeout=30, what="3 failed orders on /metrics")
    finally:
        lab.dispatchctl("install", "--error-percent", "0", "--json")


def test_orders_are_dispatched_while_the_receiver_is_gone_and_check_says_so(lab):
    lab.install()
    before = metrics(lab.port)[("dispatch_orders_total", "dispatched")]
    lab.receiver.stop()
    try:
        ids = lab.publish([instana() for _ in range(5)])
        lab.host.wait_for(lambda: all(f"order {i} dispatched" in lab.host.journal() for i in ids), timeout=30,
                          what="5 orders dispatched with the collector gone")
        assert metrics(lab.port)[("dispatch_orders_total", "dispatched")] == before + 5
        report = json.loads(lab.dispatchctl("check", "--json", expect=0))  # a warning, not a failure
        otlp = next(f for f in report["findings"] if f["name"] == "otlp")
        assert otlp["status"] == "warn" and "cannot connect" in otlp["summary"], otlp
        assert "dispatchctl configure --otlp-endpoint" in otlp["fix"]
    finally:
        lab.receiver.start()


def test_status_and_check_show_tracing_and_metrics(lab):
    lab.install()
    lab.host.run(["systemctl", "restart", "dispatch.service"])  # its counters from 0: no spans dropped before
    lab.publish([instana()])
    status = json.loads(lab.dispatchctl("status", "--json"))
    validator().validate(status)
    assert status["tracing"] == {"on": True, "state": "on", "endpoint": lab.receiver.endpoint, "headers": "set"}
    assert status["metrics"]["instances"] == [{"unit": "dispatch.service",
                                               "url": f"http://127.0.0.1:{lab.port}/metrics"}]
    text = lab.dispatchctl("status")
    assert re.search(rf"^tracing: +on: spans to {lab.receiver.endpoint}, exporter headers set$", text, re.M), text
    assert re.search(rf"^metrics: +http://127.0.0.1:{lab.port}/metrics$", text, re.M), text
    report = json.loads(lab.dispatchctl("check", "--json"))
    validator().validate(report)
    found = {f["name"]: f for f in report["findings"]}
    assert found["metrics"]["status"] == "ok" and "dispatch.service: connected, " in found["metrics"]["summary"]
    assert found["otlp"]["status"] == "ok" and "accepts connections" in found["otlp"]["summary"]
    print(f"\ncheck: {found['metrics']['summary']} | {found['otlp']['summary']}")


def test_two_instances_serve_two_metrics_ports(lab):
    doc = lab.install(instances=2)
    assert "service" in changed(doc)
    try:
        urls = [f"http://127.0.0.1:{lab.port + i}/metrics" for i in (0, 1)]
        status = json.loads(lab.dispatchctl("status", "--json"))
        assert status["metrics"]["instances"] == [{"unit": f"dispatch@{i + 1}.service", "url": urls[i]}
                                                  for i in (0, 1)]
        # dispatch@1 may start while dispatch.service still holds the port (the new units start
        # first): it listens once that one stopped
        lab.host.wait_for(lambda: all(answers(lab.port + i) for i in (0, 1)), timeout=60,
                          what="both instances serving /metrics")
        before = [metrics(lab.port + i)[("dispatch_orders_total", "dispatched")] for i in (0, 1)]
        ids = lab.publish([instana() for _ in range(20)])
        lab.host.wait_for(lambda: sum(metrics(lab.port + i)[("dispatch_orders_total", "dispatched")] for i in (0, 1))
                          == sum(before) + 20, timeout=30, what="20 orders counted over both instances")
        assert all(metrics(lab.port + i)[("dispatch_amqp_connected", "")] == 1 for i in (0, 1))
        assert len(lab.spans_of(ids)) == 20
        report = json.loads(lab.dispatchctl("check", "--json"))
        found = next(f for f in report["findings"] if f["name"] == "metrics")
        assert found["status"] == "ok" and [r["url"] for r in found["data"]["instances"]] == urls, found
    finally:
        lab.install(instances=1)
    lab.host.wait_for(lambda: answers(lab.port), timeout=60, what="dispatch.service serving /metrics again")


def test_the_header_is_never_shown_and_a_second_identical_install_changes_nothing(lab):
    lab.install()
    again = lab.install()
    assert changed(again) == [], again
    assert lab.host.run(["stat", "-c", "%a %U", HEADERS_FILE]).stdout.strip() == "600 root"
    lab.dispatchctl("configure", "--otlp-header", HEADER, "--dry-run", "--diff")
    shown = "\n".join(lab.outputs)
    shown += lab.host.run(["journalctl", "--no-pager", "-o", "verbose"], check=False).stdout
    shown += lab.host.run(["sh", "-c", "systemctl show 'dispatch*' ; systemctl status --no-pager dispatch"],
                          check=False).stdout
    assert TOKEN not in shown
    # every file holding it is root's alone (the credential; systemd's copy for the service)
    holders = lab.host.run(["sh", "-c", f"grep -rlF -e '{TOKEN}' /etc /var /run /app /tmp /root /home 2>/dev/null; "
                                        "true"]).stdout.split()
    assert HEADERS_FILE in holders, holders
    for path in holders:
        mode, owner = lab.host.run(["stat", "-c", "%a %U", path]).stdout.split()
        assert int(mode, 8) & 0o077 == 0 and owner in ("root", "roboshop"), (path, mode, owner)
    log = lab.host.path("/var/log/dispatchctl/dispatchctl.log").read_text()
    assert "--otlp-header" in log and TOKEN not in log
    # uninstall removes the credential with the rest
    lab.dispatchctl("uninstall", "--json")
    assert not lab.host.path(HEADERS_FILE).exists()
