"""The bundled dispatch consumer against a real RabbitMQ node (fixtures in conftest.py).

Each test runs ``python -m roboshop_dispatch.consumer`` as a real subprocess in its own vhost and
reads its output to learn what was dispatched (each order's line names its id). Nothing here
mocks pika or the broker: outages are the broker's application really stopping and starting.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import List, Optional

import pika
import pytest

from roboshop_dispatch import amqp
from roboshop_dispatch.consumer import config
from roboshop_dispatch.consumer import orders as orders_mod
from roboshop_dispatch.consumer.delivery import MAX_BODY
from tests.support.consumer import ORDER_LINE, Consumer, consumer_env
from tests.support.consumer import PYTHONPATH_ROOT as PYTHONPATH
from tests.support.payment import ConfirmingPublisher, PaymentPublisher, drain, make_order, parameters

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
SPECIAL_PASSWORD = "p@ss:w/rd %2F#?&= \"dq\" 'sq' ünï€ode end"
SPECIAL_USER = "dïspatch user@x:y/z%#?&"
# The interpreter that runs the consumer: this one, unless DISPATCH_TEST_PYTHON names another (e.g. a
# Python 3.9 to try the target hosts' floor; DISPATCH_TEST_PYTHONPATH then says where its pika is).
CONSUMER_PYTHON = os.environ.get("DISPATCH_TEST_PYTHON", sys.executable).split()


def consumer_argv(args: Optional[List[str]] = None) -> List[str]:
    return [*CONSUMER_PYTHON, "-m", "roboshop_dispatch.consumer", *(args or [])]



@pytest.fixture
def consumers(broker, vhost):
    """Start consumers with ``consumers(**env)``; killed at the end, their output checked for the
    password (it must never appear)."""
    started: List[Consumer] = []

    def start(args: Optional[List[str]] = None, **overrides: Optional[str]) -> Consumer:
        c = Consumer(consumer_env(broker, vhost, **overrides), consumer_argv(args))
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()
        c.assert_no_password()


def params(broker, vhost: str) -> pika.ConnectionParameters:
    return parameters(broker.host, broker.port, vhost, broker.user, broker.password)


def queue_state(broker, vhost: str, queue: str = amqp.QUEUE) -> tuple:
    """(messages ready, consumers) from a passive declare: fast, no rabbitmqctl."""
    conn = pika.BlockingConnection(params(broker, vhost))
    try:
        ok = conn.channel().queue_declare(queue, passive=True).method
        return ok.message_count, ok.consumer_count
    finally:
        conn.close()


def assert_contract_topology(broker, vhost: str) -> None:
    queues = broker.ctl("list_queues", "-p", vhost, "name", "durable", "auto_delete", "exclusive",
                        "arguments", "--no-table-headers").stdout
    rows = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in queues.splitlines() if ln.strip()}
    assert rows[amqp.QUEUE] == ["true", "false", "false", "[]"], rows  # durable, no arguments
    assert rows[amqp.QUARANTINE_QUEUE][:3] == ["true", "false", "false"], rows
    exchanges = broker.ctl("list_exchanges", "-p", vhost, "name", "type", "durable", "auto_delete",
                           "internal", "arguments", "--no-table-headers").stdout
    ex = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in exchanges.splitlines() if ln.strip()}
    assert ex[amqp.EXCHANGE] == ["direct", "true", "false", "false", "[]"], ex
    bindings = broker.ctl("list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key",
                          "--no-table-headers").stdout
    assert f"{amqp.EXCHANGE}\t{amqp.QUEUE}\t{amqp.ROUTING_KEY}" in bindings


# == every order exactly once =====================================================================
@pytest.mark.parametrize(
    "payment_first, fast_path",
    [(False, "1"), (True, "1"), (False, "0")],
    ids=["consumer-first", "payment-first", "pika-delivery-path"],
)
def test_payment_orders_are_dispatched_exactly_once(broker, vhost, consumers, payment_first, fast_path):
    payment = PaymentPublisher(params(broker, vhost))
    if payment_first:
        payment.connect()  # payment declared the exchange and published before any dispatch existed:
        payment.publish(make_order(0, "lost-before-any-queue"))  # unroutable, dropped by the broker
    # default simulated processing: 42-83 ms twice, concurrently; DISPATCH_FASTPATH=0 proves pika's
    # own delivery path (the fallback when pika's internals change) as well
    consumer = consumers(DISPATCH_FASTPATH=fast_path)
    consumer.wait_consuming()
    assert f"fastpath={'on' if fast_path == '1' else 'off'}" in consumer.output
    sent = [make_order(i) for i in range(400)]
    with payment:
        for order in sent:
            payment.publish(order)
    ids = [str(o["orderid"]) for o in sent]
    consumer.wait_orders(ids, timeout=60)
    code, took = consumer.stop()
    assert code == 0 and took < 10  # the README's promise: exit 0 within 10 s of SIGTERM (here: < 1 s)
    assert all(consumer.orders[i] == 1 for i in ids), "an order was dispatched twice"
    assert set(consumer.orders) == set(ids)
    # the line names the order, user, item count and total
    first = sent[0]
    cart: dict = first["cart"]  # type: ignore[assignment]
    line = next(ln for ln in consumer.lines if str(first["orderid"]) in ln)
    assert line == (f"INFO order {first['orderid']} dispatched user={first['user']} "
                    f"items={len(cart['items'])} total={cart['total']:.2f}")
    assert queue_state(broker, vhost) == (0, 0)
    assert_contract_topology(broker, vhost)


def test_error_percent_logs_that_share_as_failed(broker, vhost, consumers):
    consumer = consumers(DISPATCH_ERROR_PERCENT="100", DISPATCH_PROCESSING_MS="0")
    consumer.wait_consuming()
    sent = [make_order(i) for i in range(20)]
    with PaymentPublisher(params(broker, vhost)) as payment:
        for order in sent:
            payment.publish(order)
    consumer.wait_orders([o["orderid"] for o in sent])
    failed = [ln for ln in consumer.lines if ORDER_LINE.match(ln) and " failed " in ln]
    assert len(failed) == 20 and all(ln.startswith("ERROR order ") for ln in failed)
    assert consumer.stop()[0] == 0
    assert queue_state(broker, vhost) == (0, 0)  # failed (simulated) orders are handled and acked too


# == bad messages =================================================================================
def _big_body() -> bytes:
    return b'{"orderid": "big", "pad": "' + b"a" * orders_mod.MAX_BODY + b'"}'


BAD = [
    ("invalid JSON", b'{"orderid": "x", oops', {}),
    ("not a JSON object", b'["orderid", "x"]', {}),
    ("no orderid", b'{"user": "u1", "cart": {}}', {}),
    ("orderid is not a string", b'{"orderid": 1234, "user": "u1"}', {}),
    ("header x-trace is not a string", json.dumps(make_order(1)).encode(), {"x-trace": 7, "keep": "me"}),
    ("body is not UTF-8", b'{"orderid": "caf\xe9"}', {}),
    ("body too large", _big_body(), {}),
]


def test_each_bad_message_is_quarantined_and_the_next_order_handled(broker, vhost, consumers):
    consumer = consumers(DISPATCH_PROCESSING_MS="0-5")
    consumer.wait_consuming()
    with PaymentPublisher(params(broker, vhost)) as payment:
        for n, (reason, body, headers) in enumerate(BAD, start=1):
            props = pika.BasicProperties(headers=headers)
            if headers:
                props = pika.BasicProperties(headers=headers, content_type="application/json", message_id="m-1")
            payment.publish_raw(body, props)
            good = make_order(n)
            payment.publish(good)
            consumer.wait_orders([good["orderid"]], timeout=30)  # alive, and on to the next order
            assert consumer.proc.poll() is None
            assert consumer.count("bad message quarantined") == n
            assert consumer.count(reason) == 1, f"{reason!r} not logged exactly once"
    assert consumer.stop()[0] == 0
    assert queue_state(broker, vhost) == (0, 0)

    quarantined = drain(params(broker, vhost), amqp.QUARANTINE_QUEUE)
    assert len(quarantined) == len(BAD)
    for (reason, body, headers), (props, q_body) in zip(BAD, quarantined):
        assert props.headers["x-dispatch-body-size"] == len(body)
        if len(body) > orders_mod.MAX_BODY:  # a bounded prefix, marked as such
            assert props.headers["x-dispatch-body-truncated"] is True
            assert q_body == body[:len(q_body)] and len(q_body) < len(body)
        else:
            assert q_body == body  # unchanged
        assert reason in props.headers["x-dispatch-error"]
        # the original properties, as received, in forms that cannot route the copy anywhere
        original = pika.BasicProperties()
        original.decode(props.headers["x-dispatch-original-properties"])
        assert original.headers == headers
        for key, value in headers.items():
            assert props.headers["x-dispatch-original-headers"][key] == value
            assert key not in props.headers
        if headers:
            assert (props.content_type, props.message_id) == ("application/json", "m-1")
        assert props.delivery_mode == 2  # the quarantine survives a broker restart


def test_a_burst_of_bad_messages_among_good_ones(broker, vhost, consumers):
    """Quarantine and dispatch interleaved under load: every good order once, every bad one kept."""
    consumer = consumers(DISPATCH_PROCESSING_MS="0-20")
    consumer.wait_consuming()
    good_ids = []
    with PaymentPublisher(params(broker, vhost)) as payment:
        for i in range(600):
            if i % 10 == 0:
                payment.publish_raw(b"not json %d" % i)
            else:
                order = make_order(i)
                good_ids.append(order["orderid"])
                payment.publish(order)
    consumer.wait_orders(good_ids)
    deadline = time.monotonic() + 30
    while queue_state(broker, vhost, amqp.QUARANTINE_QUEUE)[0] < 60:
        assert time.monotonic() < deadline, "the 60 bad messages did not all reach the quarantine"
        time.sleep(0.2)
    assert consumer.stop()[0] == 0
    assert all(consumer.orders[i] == 1 for i in good_ids)
    assert queue_state(broker, vhost) == (0, 0)
    assert queue_state(broker, vhost, amqp.QUARANTINE_QUEUE)[0] == 60
    # one reason: its first message is logged in full, the other 59 in one count (at exit here)
    assert consumer.count("bad message quarantined") == 1
    assert consumer.count("59 more bad messages quarantined since the last summary: invalid JSON") == 1


# == broker outages ===============================================================================
def _notifications(path: str) -> tuple:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got: List[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                got.append(sock.recv(65536).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    t = threading.Thread(target=listen, daemon=True)
    t.start()

    def finish() -> List[str]:
        stop.set()
        t.join(2)
        sock.close()
        return got

    return got, finish


@pytest.fixture
def quiet_pika():
    """The test's own publisher reconnects through outages: pika logs each failed attempt as an
    error with a traceback, which would bury a real failure's report."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def test_orders_survive_three_broker_outages(broker, vhost, consumers, tmp_path, quiet_pika, record_property):
    notify_path = str(tmp_path / "notify")
    _notes, finish_notes = _notifications(notify_path)
    consumer = consumers(DISPATCH_PROCESSING_MS="0-3", NOTIFY_SOCKET=notify_path)
    consumer.wait_consuming()

    total = 5000
    sent = [make_order(i) for i in range(total)]
    publisher = ConfirmingPublisher(params(broker, vhost))
    failure: List[BaseException] = []

    def publish_all() -> None:
        try:
            for order in sent:
                publisher.publish(order)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=publish_all, daemon=True)
    thread.start()
    try:
        for k in range(1, 4):
            deadline = time.monotonic() + 120
            while len(publisher.confirmed) < k * 1200 and thread.is_alive():
                assert time.monotonic() < deadline, "the publisher stalled"
                time.sleep(0.05)
            consumer.wait_consuming(count=k, timeout=60)  # each outage hits a live consumer connection
            broker.outage()
            # the broker stays down until the consumer has found it down and backed off (its k-th
            # "retrying in" line): a signal, not a guess at how long that takes
            consumer.wait_line("retrying in", count=k, timeout=60)
            broker.recover()
    finally:
        thread.join(180)
    assert not failure, f"the publisher gave up: {failure[0]!r}"
    assert len(publisher.confirmed) == total

    confirmed = set(publisher.confirmed)
    consumer.wait_orders(confirmed, timeout=120)
    assert consumer.proc.poll() is None
    dispatched = sum(consumer.orders.values())
    duplicates = dispatched - len(consumer.orders)
    assert set(consumer.orders) <= {o["orderid"] for o in sent}
    print(f"outage test: {total} confirmed, {dispatched} dispatched, {duplicates} duplicates "
          f"(redeliveries after an outage), {publisher.reconnects} publisher reconnects, 0 lost")
    record_property("duplicates", duplicates)
    assert consumer.count("connection to ") >= 3 and consumer.count(" lost: ") >= 3
    consumer.wait_consuming(count=4)
    code, _ = consumer.stop()
    assert code == 0
    assert queue_state(broker, vhost) == (0, 0)

    got = finish_notes()
    assert sum("READY=1" in n for n in got) == 1
    statuses = [n for n in got if n.startswith("STATUS=")]
    assert sum("consuming orders" in n for n in statuses) >= 3  # READY carries the first one
    assert any(n.startswith("STATUS=connecting to") for n in statuses)
    assert any("STOPPING=1" in n for n in got)


# == SIGTERM ======================================================================================
def test_sigterm_mid_stream_loses_nothing_and_handles_nothing_twice(broker, vhost, consumers):
    conn = pika.BlockingConnection(params(broker, vhost))
    amqp.declare_topology(conn.channel())  # as a consumer that ran before would have left it
    conn.close()
    sent = [make_order(i) for i in range(6000)]
    ids = {o["orderid"] for o in sent}
    with PaymentPublisher(params(broker, vhost)) as payment:  # a backlog
        for order in sent:
            payment.publish(order)
    consumer = consumers()  # the default processing time: orders are in flight when SIGTERM comes
    consumer.wait(lambda: len(consumer.orders) >= 300, 30, "300 orders")
    code, took = consumer.stop(signal.SIGTERM)
    assert code == 0 and took < 10  # the README's promise: in-flight orders finished, exit 0 within 10 s
    first = collections.Counter(consumer.orders)
    assert len(first) < len(ids), "the stop came too late to be mid-stream"
    assert max(first.values()) == 1
    expected = len(ids) - len(first)  # everything not dispatched is back in the queue, nothing more
    deadline = time.monotonic() + 10
    while True:
        ready, consumers_left = queue_state(broker, vhost)
        if ready >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # the broker may still be requeueing what the closed channel had
    assert consumers_left == 0
    assert ready == expected, "orders in flight were dispatched but not acked, or some were lost"

    second = consumers(DISPATCH_PROCESSING_MS="0")
    second.wait_orders(ids - set(first), timeout=60)
    assert second.stop(signal.SIGINT)[0] == 0
    assert not set(first) & set(second.orders), "an order was handled twice across a clean stop"
    assert set(first) | set(second.orders) == ids
    assert queue_state(broker, vhost) == (0, 0)


def test_sigterm_while_the_broker_is_unreachable(broker):
    consumer = Consumer(consumer_env(broker, "/", AMQP_PORT=str(_closed_port())), consumer_argv())
    try:
        # the 4th failed round: a backoff of 4 s +-20 % has just begun (0.5, 1, 2, then 4)
        consumer.wait_line("retrying in", count=4, timeout=60)
        backoff_s = float(re.findall(r"retrying in ([0-9.]+)s", consumer.output)[-1])
        code, took = consumer.stop()
        # an ordering, not a bound: SIGTERM ends the backoff rather than waiting it out
        assert backoff_s >= 3.2 and code == 0 and took < backoff_s, (backoff_s, took)
        assert "cannot connect to 127.0.0.1:" in consumer.output and "check AMQP_HOST/AMQP_PORT" in consumer.output
    finally:
        consumer.kill()
        consumer.assert_no_password()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


# == credentials ==================================================================================
def test_special_character_credentials_authenticate(broker, vhost, consumers):
    broker.add_user(SPECIAL_USER, SPECIAL_PASSWORD, vhost=vhost)
    try:
        consumer = consumers(AMQP_USER=SPECIAL_USER, AMQP_PASS=SPECIAL_PASSWORD, DISPATCH_PROCESSING_MS="0")
        consumer.wait_consuming()
        order = make_order(3)
        with PaymentPublisher(params(broker, vhost)) as payment:
            payment.publish(order)
        consumer.wait_orders([order["orderid"]])
        assert consumer.stop()[0] == 0
        consumer.assert_no_password()
        assert SPECIAL_USER in consumer.output  # the user name is fine to show
    finally:
        broker.delete_user(SPECIAL_USER)


def test_auth_failure_is_explained_backed_off_and_recovers(broker, vhost, consumers):
    user = f"late-{uuid.uuid4().hex[:6]}"
    password = "not yet created: s3cr3t!"
    consumer = consumers(AMQP_USER=user, AMQP_PASS=password, DISPATCH_PROCESSING_MS="0")
    consumer.wait_line("authentication failed", count=3, timeout=30)
    consumer.wait_line("retrying in", count=3, timeout=10)
    fails = [ln for ln in consumer.lines if "authentication failed" in ln]
    assert all(ln.startswith("ERROR ") and "check AMQP_USER/AMQP_PASS" in ln and "rabbitmqctl add_user" in ln
               for ln in fails)
    delays = [float(m.group(1)) for m in re.finditer(r"retrying in ([0-9.]+)s", consumer.output)]
    assert len(delays) >= 3 and delays[2] > delays[0], f"no backoff: {delays}"
    assert consumer.proc.poll() is None
    broker.add_user(user, password, vhost=vhost)  # the operator applies the fix
    try:
        consumer.wait_consuming(timeout=40)
        order = make_order(1)
        with PaymentPublisher(params(broker, vhost)) as payment:
            payment.publish(order)
        consumer.wait_orders([order["orderid"]])
        assert consumer.stop()[0] == 0
    finally:
        broker.delete_user(user)


# == configuration ================================================================================
INVALID = [
    ({"AMQP_PASS": None}, "AMQP_PASS"),
    ({"AMQP_HOST": ""}, "AMQP_HOST"),
    ({"AMQP_PORT": "0"}, "AMQP_PORT"),
    ({"AMQP_PORT": "65536"}, "AMQP_PORT"),
    ({"AMQP_PORT": "5672x"}, "AMQP_PORT"),
    ({"DISPATCH_ERROR_PERCENT": "101"}, "DISPATCH_ERROR_PERCENT"),
    ({"DISPATCH_ERROR_PERCENT": "-5"}, "DISPATCH_ERROR_PERCENT"),
    ({"DISPATCH_PREFETCH": "0"}, "DISPATCH_PREFETCH"),
    ({"DISPATCH_PROCESSING_MS": "soon"}, "DISPATCH_PROCESSING_MS"),
    ({"AMQP_USER": ""}, "AMQP_USER"),
]


@pytest.mark.parametrize("change, variable", INVALID, ids=[f"{v}={c[v]!r}" for c, v in INVALID])
def test_invalid_configuration_exits_2_with_one_line(change, variable):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMQP_", "DISPATCH_"))}
    env.update(AMQP_HOST="127.0.0.1", AMQP_USER="roboshop", AMQP_PASS="hunter2-secret", PYTHONPATH=PYTHONPATH)
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    start = time.monotonic()
    proc = subprocess.run([*CONSUMER_PYTHON, "-m", "roboshop_dispatch.consumer"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert time.monotonic() - start < 10  # at once: no connection attempt
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0] and lines[0].startswith("dispatch: invalid configuration: ")
    assert "hunter2-secret" not in proc.stderr


def test_an_unset_variable_keeps_its_own_default_only():
    """The original reused another value when AMQP_PASS was unset; here each one stands alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMQP_", "DISPATCH_", "OTEL_"))}
    env.update(AMQP_HOST="h1,h2", AMQP_PASS="pw-not-shown", PYTHONPATH=PYTHONPATH)
    proc = subprocess.run([*CONSUMER_PYTHON, "-m", "roboshop_dispatch.consumer", "--check-config"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("configuration OK: hosts=h1,h2 port=5672 vhost=/ user='guest' prefetch="
                                   f"{config.DEFAULT_PREFETCH} processing=42-83ms x2 error_percent=0 fastpath=on "
                                   f"queue_type=classic max_body={MAX_BODY} password=environment tracing=off "
                                   "metrics=off")
    assert "pw-not-shown" not in proc.stdout + proc.stderr


def test_the_password_credential_wins_over_the_environment(broker, vhost, consumers, tmp_path):
    """LoadCredential=amqp-pass:...: systemd hands the password over as a file in
    $CREDENTIALS_DIRECTORY; AMQP_PASS (the Go-compatible route) is only the fallback."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / config.CREDENTIAL_NAME).write_text(broker.password + "\n")  # one newline is stripped
    check = subprocess.run(consumer_argv(["--check-config"]), cwd=ROOT, capture_output=True, text=True,
                           timeout=20, env=consumer_env(broker, vhost, AMQP_PASS="wrong-env-secret",
                                                        CREDENTIALS_DIRECTORY=str(creds)))
    assert check.returncode == 0 and "password=credential" in check.stdout
    assert broker.password not in check.stdout + check.stderr
    consumer = consumers(AMQP_PASS="wrong-env-secret", CREDENTIALS_DIRECTORY=str(creds))
    consumer.wait_consuming()
    assert "password=credential" in consumer.output
    assert broker.password not in consumer.output and "wrong-env-secret" not in consumer.output
    assert consumer.stop()[0] == 0
    (creds / config.CREDENTIAL_NAME).unlink()  # no credential file: the environment's password
    env_only = subprocess.run(consumer_argv(["--check-config"]), cwd=ROOT, capture_output=True, text=True,
                              timeout=20, env=consumer_env(broker, vhost, CREDENTIALS_DIRECTORY=str(creds)))
    assert "password=environment" in env_only.stdout


# == clusters, topology conflicts, systemd ========================================================
def test_hosts_are_tried_in_turn(broker, vhost, consumers):
    consumer = consumers(AMQP_HOST="127.0.0.2," + broker.host, DISPATCH_PROCESSING_MS="0")
    consumer.wait_consuming()
    assert consumer.count("cannot connect to 127.0.0.2:") >= 1
    assert f"consuming orders on {broker.host}:{broker.port}" in consumer.output
    order = make_order(2)
    with PaymentPublisher(params(broker, vhost)) as payment:
        payment.publish(order)
    consumer.wait_orders([order["orderid"]])
    assert consumer.stop()[0] == 0


def test_a_conflicting_orders_queue_is_reported_and_survived(broker, vhost, consumers):
    conn = pika.BlockingConnection(params(broker, vhost))
    conn.channel().queue_declare(amqp.QUEUE, durable=True, arguments={"x-max-length": 10})
    conn.close()
    consumer = consumers(DISPATCH_PROCESSING_MS="0")
    consumer.wait_line("PRECONDITION_FAILED", count=2)
    assert "with no arguments" in consumer.output and consumer.proc.poll() is None
    conn = pika.BlockingConnection(params(broker, vhost))
    conn.channel().queue_delete(amqp.QUEUE)  # the operator removes the wrong queue
    conn.close()
    consumer.wait_consuming(timeout=40)
    assert_contract_topology(broker, vhost)  # declared the contract's way: no arguments
    assert consumer.stop()[0] == 0


def queue_type_of(broker, vhost: str, queue: str = amqp.QUEUE) -> tuple:
    """(type, arguments) of ``queue`` as the broker reports them."""
    out = broker.ctl("list_queues", "-p", vhost, "name", "type", "arguments", "--formatter", "json").stdout
    row = next(r for r in json.loads(out) if r["name"] == queue)
    return row["type"], row["arguments"]


@pytest.mark.parametrize(
    "setting, existing, fast_path",
    [("quorum", None, "1"), ("classic", "quorum", "1"), ("classic", "quorum", "0"), ("quorum", "classic", "1"),
     ("quorum", "classic", "0")],
    ids=["quorum-declared", "classic-meets-quorum", "classic-meets-quorum-pika", "quorum-meets-classic",
         "quorum-meets-classic-pika"],
)
def test_queue_type_setting_and_an_existing_queue_of_the_other_type(broker, vhost, consumers, setting,
                                                                     existing, fast_path):
    """DISPATCH_QUEUE_TYPE declares orders so; an existing orders of the other type (406 on redeclare,
    which closes the channel) is used as it is: one log line, no reconnect loop, never deleted."""
    if existing is not None:
        conn = pika.BlockingConnection(params(broker, vhost))
        amqp.declare_queue(conn.channel(), queue_type=existing)
        conn.close()
    consumer = consumers(DISPATCH_QUEUE_TYPE=setting, DISPATCH_FASTPATH=fast_path, DISPATCH_PROCESSING_MS="0")
    consumer.wait_consuming()
    assert f"queue_type={setting}" in consumer.output
    sent = [make_order(i) for i in range(50)]
    # payment stays connected: a quorum queue's channel may still hold orders over its command
    # buffer (quorum_commands_soft_limit, 32) when a publisher without confirms closes at once
    with PaymentPublisher(params(broker, vhost)) as payment:
        for order in sent:
            payment.publish(order)
        consumer.wait_orders([str(o["orderid"]) for o in sent], timeout=30,
                             state=lambda: f"queues (messages, consumers): {broker.queue_counts(vhost)}")
    broker.ctl("close_all_connections", "-p", vhost, "test: reconnect")  # a reconnect must not log it again
    consumer.wait_consuming(count=2)
    kind = existing or setting
    assert queue_type_of(broker, vhost)[0] == kind  # never deleted nor recreated
    if setting == "quorum" and existing is None:
        assert queue_type_of(broker, vhost)[1] == [["x-queue-type", "longstr", "quorum"]]
        assert queue_type_of(broker, vhost, amqp.QUARANTINE_QUEUE)[0] == "quorum"
    differs = f"queue 'orders' exists as a {existing} queue but DISPATCH_QUEUE_TYPE={setting}"
    assert consumer.count(differs) == (0 if existing is None else 1), consumer.output
    assert consumer.count("PRECONDITION_FAILED") == 0 and consumer.count("retrying in") == 0, consumer.output
    assert consumer.stop()[0] == 0
    assert all(consumer.orders[str(o["orderid"])] == 1 for o in sent)


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "pika"])
def test_an_order_redelivered_by_a_quorum_queue_is_dispatched(broker, vhost, consumers, fast_path):
    """A quorum queue adds x-delivery-count (a number) to a redelivered message: the broker's own
    header, not a bad message (found by bench/failover.py: such orders went to quarantine)."""
    conn = pika.BlockingConnection(params(broker, vhost))
    ch = conn.channel()
    amqp.declare_topology(ch, queue_type=amqp.QUORUM)
    order = make_order(7)
    ch.basic_publish(amqp.EXCHANGE, amqp.ROUTING_KEY, json.dumps(order).encode(), pika.BasicProperties(headers={}))
    method, _props, _body = None, None, None
    for _ in range(50):
        method, _props, _body = ch.basic_get(amqp.QUEUE)
        if method is not None:
            break
        time.sleep(0.05)
    assert method is not None
    ch.basic_reject(method.delivery_tag, requeue=True)  # delivered once: redelivered with x-delivery-count 1
    conn.close()
    consumer = consumers(DISPATCH_QUEUE_TYPE="quorum", DISPATCH_FASTPATH=fast_path, DISPATCH_PROCESSING_MS="0")
    consumer.wait_orders([str(order["orderid"])], timeout=30)
    assert consumer.count("quarantined") == 0, consumer.output
    assert consumer.stop()[0] == 0


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_notify_and_watchdog(broker, vhost, consumers, tmp_path, abstract):
    name = f"@dispatch-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify")
    notes, finish = _notifications("\0" + name[1:] if abstract else name)
    consumer = consumers(NOTIFY_SOCKET=name, WATCHDOG_USEC="200000", DISPATCH_PROCESSING_MS="0")
    consumer.wait_consuming()
    deadline = time.monotonic() + 10
    while sum(n == "WATCHDOG=1" for n in notes) < 3:
        assert time.monotonic() < deadline, f"no watchdog pings: {notes}"
        time.sleep(0.05)
    assert consumer.stop()[0] == 0
    got = finish()
    ready = [n for n in got if "READY=1" in n]
    assert len(ready) == 1 and "STATUS=consuming orders" in ready[0]
    assert any("STOPPING=1" in n for n in got)
    assert any(n.startswith("STATUS=connecting to") for n in got)


def test_status_tells_systemd_the_orders_handled(broker, vhost, consumers, tmp_path):
    """STATUS= carries "N orders handled" (what `dispatchctl status` shows per instance), updated
    while consuming, only when the count changed."""
    from roboshop_dispatch.consumer.service import STATUS_EVERY_S
    from roboshop_dispatch.status import orders_handled

    path = str(tmp_path / "notify")
    notes, finish = _notifications(path)
    consumer = consumers(NOTIFY_SOCKET=path, DISPATCH_PROCESSING_MS="0")
    consumer.wait_consuming()
    orders = [make_order(i) for i in range(3)]
    publisher = ConfirmingPublisher(params(broker, vhost))
    for order in orders:
        publisher.publish(order)
    consumer.wait_orders(set(publisher.confirmed), timeout=30)
    deadline = time.monotonic() + STATUS_EVERY_S * 3
    while not any(orders_handled(n) == 3 for n in notes):
        assert time.monotonic() < deadline, f"no STATUS with 3 orders handled: {notes}"
        time.sleep(0.1)
    # nothing new handled: no new STATUS. A fixed wait, long enough because the consumer decides
    # every STATUS_EVERY_S whether to send one: 1.5 periods hold at least one such decision
    time.sleep(STATUS_EVERY_S * 1.5)
    assert consumer.stop()[0] == 0
    got = finish()
    counts = [orders_handled(n) for n in got if "STATUS=consuming" in n]
    assert counts[0] == 0 and counts.count(3) == 1, got
    ready = next(n for n in got if "READY=1" in n)
    assert "STATUS=consuming orders" in ready and "(delivery path: fast)" in ready


def test_watchdog_for_another_pid_is_ignored(broker, vhost, consumers, tmp_path):
    path = str(tmp_path / "notify")
    _notes, finish = _notifications(path)
    consumer = consumers(NOTIFY_SOCKET=path, WATCHDOG_USEC="100000", WATCHDOG_PID="1",
                         DISPATCH_PROCESSING_MS="0")
    consumer.wait_consuming()
    # a fixed wait for nothing to happen: WATCHDOG_USEC is 0.1 s, so a consumer that pinged would
    # have pinged about 10 times (every half period) in 0.5 s
    time.sleep(0.5)
    assert consumer.stop()[0] == 0
    got = finish()
    assert any("READY=1" in n for n in got)
    assert not any("WATCHDOG=1" in n for n in got)
