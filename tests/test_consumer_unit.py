"""Fast tests of the consumer's pure logic: configuration, message validation, ack tracking,
backoff, the log writer and sd_notify (against real datagram sockets this test binds)."""

from __future__ import annotations

import itertools
import os
import random
import socket
import struct
import uuid

import pika
import pika.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pika.adapters.utils import connection_workflow

from roboshop_dispatch import amqp
from roboshop_dispatch.consumer import config, orders, quarantine, reconnect
from roboshop_dispatch.consumer.acks import AckTracker
from roboshop_dispatch.consumer.delivery import MAX_BODY, Delivery
from roboshop_dispatch.consumer.logs import LineLog
from roboshop_dispatch.consumer.sdnotify import Notifier, socket_address, watchdog_interval

BASE = {"AMQP_HOST": "10.0.0.5", "AMQP_USER": "roboshop", "AMQP_PASS": "roboshop123"}
SPECIAL = "p@ss:w/rd %41 #?&= \"dq\" 'sq' ünï€ode\t end "


# == configuration ================================================================================
def test_defaults():
    cfg = config.load({"AMQP_PASS": "x"})
    assert cfg.hosts == ("rabbitmq",)
    assert cfg.port == 5672
    assert cfg.vhost == "/"
    assert cfg.user == "guest"
    assert cfg.password == "x"
    assert cfg.error_percent == 0
    assert cfg.prefetch == config.DEFAULT_PREFETCH
    assert cfg.processing_ms == (42, 83)


def test_all_settings():
    cfg = config.load({**BASE, "AMQP_HOST": " rmq-1 , rmq-2,10.0.0.7 ", "AMQP_PORT": "5673",
                       "AMQP_VHOST": "shop", "DISPATCH_ERROR_PERCENT": "12.5", "DISPATCH_PREFETCH": "64",
                       "DISPATCH_PROCESSING_MS": "5-10"})
    assert cfg.hosts == ("rmq-1", "rmq-2", "10.0.0.7")
    assert (cfg.port, cfg.vhost, cfg.error_percent, cfg.prefetch) == (5673, "shop", 12.5, 64)
    assert cfg.processing_ms == (5, 10)


@pytest.mark.parametrize("value, expected", [("0", None), ("0-0", None), ("7", (7, 7)), ("0-3", (0, 3)),
                                             (" 42 - 83 ", (42, 83))])
def test_processing_time(value, expected):
    assert config.load({**BASE, "DISPATCH_PROCESSING_MS": value}).processing_ms == expected


def test_credentials_are_taken_verbatim():
    cfg = config.load({**BASE, "AMQP_USER": " üser@x:y/z ", "AMQP_PASS": SPECIAL})
    assert cfg.user == " üser@x:y/z "
    assert cfg.password == SPECIAL


def test_password_never_in_repr_or_description():
    cfg = config.load({**BASE, "AMQP_PASS": SPECIAL})
    assert SPECIAL not in repr(cfg)
    assert SPECIAL not in cfg.describe()
    assert "ünï€ode" not in repr(cfg) + cfg.describe()


INVALID = [
    ({"AMQP_HOST": ""}, "AMQP_HOST"),
    ({"AMQP_HOST": "   "}, "AMQP_HOST"),
    ({"AMQP_HOST": "a,,b"}, "AMQP_HOST"),
    ({"AMQP_HOST": "amqp://user:pw@host"}, "AMQP_HOST"),
    ({"AMQP_PORT": "0"}, "AMQP_PORT"),
    ({"AMQP_PORT": "65536"}, "AMQP_PORT"),
    ({"AMQP_PORT": "-1"}, "AMQP_PORT"),
    ({"AMQP_PORT": "amqp"}, "AMQP_PORT"),
    ({"AMQP_PORT": ""}, "AMQP_PORT"),
    ({"AMQP_VHOST": ""}, "AMQP_VHOST"),
    ({"AMQP_USER": ""}, "AMQP_USER"),
    ({"AMQP_PASS": ""}, "AMQP_PASS"),
    ({"DISPATCH_ERROR_PERCENT": "101"}, "DISPATCH_ERROR_PERCENT"),
    ({"DISPATCH_ERROR_PERCENT": "-1"}, "DISPATCH_ERROR_PERCENT"),
    ({"DISPATCH_ERROR_PERCENT": "nan"}, "DISPATCH_ERROR_PERCENT"),
    ({"DISPATCH_ERROR_PERCENT": "lots"}, "DISPATCH_ERROR_PERCENT"),
    ({"DISPATCH_PREFETCH": "0"}, "DISPATCH_PREFETCH"),
    ({"DISPATCH_FASTPATH": "2"}, "DISPATCH_FASTPATH"),
    ({"DISPATCH_FASTPATH": "yes"}, "DISPATCH_FASTPATH"),
    ({"DISPATCH_PREFETCH": "70000"}, "DISPATCH_PREFETCH"),
    ({"DISPATCH_PROCESSING_MS": "83-42"}, "DISPATCH_PROCESSING_MS"),
    ({"DISPATCH_PROCESSING_MS": "fast"}, "DISPATCH_PROCESSING_MS"),
    ({"DISPATCH_PROCESSING_MS": "-5"}, "DISPATCH_PROCESSING_MS"),
    ({"DISPATCH_PROCESSING_MS": "1-999999"}, "DISPATCH_PROCESSING_MS"),
    ({"DISPATCH_QUEUE_TYPE": "stream"}, "DISPATCH_QUEUE_TYPE"),
    ({"DISPATCH_QUEUE_TYPE": ""}, "DISPATCH_QUEUE_TYPE"),
    ({"DISPATCH_QUEUE_TYPE": "quorum\nX"}, "DISPATCH_QUEUE_TYPE"),
]


@pytest.mark.parametrize("change, variable", INVALID, ids=[f"{v}={next(iter(c.values()))!r}" for c, v in INVALID])
def test_invalid_setting_names_its_variable(change, variable):
    with pytest.raises(config.ConfigError) as err:
        config.load({**BASE, **change})
    assert err.value.variable == variable
    message = str(err.value)
    assert message.startswith((variable + " ", variable + "="))
    assert "\n" not in message
    assert "roboshop123" not in message


def test_missing_password_is_an_error_never_a_default():
    for env in ({"AMQP_USER": "roboshop"}, {}, {"AMQP_USER": "guest", "AMQP_HOST": "h"}):
        with pytest.raises(config.ConfigError) as err:
            config.load(env)
        assert err.value.variable == "AMQP_PASS"


def test_password_error_never_shows_the_password():
    bad = "sekrit\udcff"  # what os.environ makes of a non-UTF-8 byte
    with pytest.raises(config.ConfigError) as err:
        config.load({**BASE, "AMQP_PASS": bad})
    assert err.value.variable == "AMQP_PASS"
    assert "sekrit" not in str(err.value)


@pytest.mark.parametrize("name", [name for name, _default, _desc in config.VARIABLES if name != "AMQP_PASS"])
def test_an_unset_variable_never_changes_another(name):
    """Unsetting one variable only gives that one its default: every other setting stays put."""
    full = {"AMQP_HOST": "h1,h2", "AMQP_PORT": "5673", "AMQP_VHOST": "v", "AMQP_USER": "u",
            "AMQP_PASS": "p", "DISPATCH_ERROR_PERCENT": "3", "DISPATCH_PREFETCH": "7",
            "DISPATCH_PROCESSING_MS": "1-2", "DISPATCH_FASTPATH": "0", "DISPATCH_QUEUE_TYPE": "quorum",
            "DISPATCH_METRICS_LISTEN": "127.0.0.1:9", "DISPATCH_QUARANTINE_LOG_S": "5",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "DISPATCH_INSTANCE": "2",
            "DISPATCH_MAX_BODY": "4096"}
    before = config.load(full)
    after = config.load({k: v for k, v in full.items() if k != name})
    attr = {"AMQP_HOST": "hosts", "AMQP_PORT": "port", "AMQP_VHOST": "vhost", "AMQP_USER": "user",
            "DISPATCH_ERROR_PERCENT": "error_percent", "DISPATCH_PREFETCH": "prefetch",
            "DISPATCH_PROCESSING_MS": "processing_ms", "DISPATCH_FASTPATH": "fast_path",
            "DISPATCH_QUEUE_TYPE": "queue_type", "DISPATCH_METRICS_LISTEN": "metrics_listen",
            "DISPATCH_QUARANTINE_LOG_S": "quarantine_log_s", "OTEL_EXPORTER_OTLP_ENDPOINT": "tracing",
            "DISPATCH_INSTANCE": "instance", "DISPATCH_MAX_BODY": "max_body"}
    default = config.load({"AMQP_PASS": "p"})
    for field, value in vars(before).items():
        if field == attr[name]:
            assert getattr(after, field) == getattr(default, field)
        else:
            assert getattr(after, field) == value, f"unsetting {name} changed {field}"
    assert after.password == "p"


@pytest.mark.parametrize("raw, expected", [("classic", "classic"), ("quorum", "quorum"), (" Quorum ", "quorum")])
def test_queue_type(raw, expected):
    assert config.load({**BASE, "DISPATCH_QUEUE_TYPE": raw}).queue_type == expected
    assert config.load(BASE).queue_type == amqp.CLASSIC  # the contract's, by default


@given(st.text(max_size=30))
def test_any_other_queue_type_is_a_one_line_error(raw):
    if raw.strip().lower() in amqp.QUEUE_TYPES:
        return
    with pytest.raises(config.ConfigError) as err:
        config.load({**BASE, "DISPATCH_QUEUE_TYPE": raw})
    assert err.value.variable == "DISPATCH_QUEUE_TYPE" and "\n" not in str(err.value)


def test_queue_arguments_keep_the_contract_for_classic():
    assert amqp.queue_arguments(amqp.CLASSIC) is None  # no arguments at all: the contract
    assert amqp.queue_arguments(amqp.QUORUM) == {"x-queue-type": "quorum"}
    with pytest.raises(ValueError):
        amqp.queue_arguments("stream")


# the broker's words (RabbitMQ 3.10, measured on the test cluster; the last one is 3.12's wording)
CONFLICTS = [
    ("inequivalent arg 'x-queue-type' for queue 'orders' in vhost 'v1': received none but current is the "
     "value 'quorum' of type 'longstr'", ("orders", "quorum")),
    ("inequivalent arg 'x-queue-type' for queue 'orders' in vhost 'v1': received the value 'quorum' of type "
     "'longstr' but current is none", ("orders", "classic")),
    ("inequivalent arg 'x-queue-type' for queue 'orders.invalid' in vhost '/': received 'classic' but "
     "current is 'quorum'", ("orders.invalid", "quorum")),
    ("inequivalent arg 'x-max-length' for queue 'orders' in vhost '/': received none but current is the "
     "value '10' of type 'signedint'", None),
    ("inequivalent arg 'durable' for queue 'orders' in vhost '/': received 'true' but current is 'false'", None),
]


@pytest.mark.parametrize("text, expected", CONFLICTS)
def test_a_queue_type_conflict_is_recognised(text, expected):
    error = pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - " + text)
    assert amqp.queue_type_conflict(error) == expected
    assert amqp.queue_type_conflict(pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - " + text)) is None


@given(st.text(max_size=200))
def test_queue_type_conflict_never_raises_and_names_a_plain_type(text):
    found = amqp.queue_type_conflict(pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - " + text))
    assert found is None or (found[1].isalnum() and len(found[1]) <= 20)


# == message validation ===========================================================================
GOOD = b'{"orderid": "3f2a", "user": "u1", "cart": {"total": 12.5, "tax": 2.1, "items": [{"qty": 1}]}}'


@pytest.mark.parametrize("body, headers, reason", [
    (b"{not json", {}, "invalid JSON"),
    (b"", {}, "invalid JSON"),
    (b'{"orderid": "a"} trailing', {}, "invalid JSON"),
    (b"[" * 100_000, {}, "invalid JSON"),
    (b'["orderid", "x"]', {}, "not a JSON object (array)"),
    (b'"just a string"', {}, "not a JSON object (string)"),
    (b"42", {}, "not a JSON object (number)"),
    (b"null", {}, "not a JSON object (null)"),
    (b'{"user": "u"}', {}, "no orderid"),
    (b'{"orderid": 42}', {}, "orderid is not a string (number)"),
    (b'{"orderid": null}', {}, "orderid is not a string (null)"),
    (b'{"orderid": ["a"]}', {}, "orderid is not a string (array)"),
    (b'{"orderid": "  "}', {}, "orderid is empty"),
    (GOOD, {"trace": 1}, 'header trace is not a string (number)'),
    (GOOD, {"ok": "x", "b": True}, "header b is not a string (boolean)"),
    (GOOD, {"t": {"nested": "x"}}, "header t is not a string (object)"),
    (GOOD, {"raw": b"\xff\xfe"}, "header raw is not a string (bytes)"),
    (GOOD, {"v": None}, "header v is not a string (null)"),
    (GOOD, {"x-delivery-count": "x", "x-death": 1}, "header x-death is not a string (number)"),
    (GOOD, {"x-delivery-count": True}, "header x-delivery-count is not a string (boolean)"),
    (b'{"orderid": "\xff"}', {}, "body is not UTF-8"),
    (b"\xef\xbb\xbf" + GOOD, {}, "invalid JSON"),  # a BOM is not JSON
    (b" " * (orders.MAX_BODY + 1), {}, "body too large"),
])
def test_bad_messages_and_their_reasons(body, headers, reason):
    with pytest.raises(orders.InvalidMessage) as err:
        orders.parse_order(body, headers)
    assert reason in err.value.reason
    assert "\n" not in err.value.reason and len(err.value.reason) < 300


def test_good_orders():
    assert orders.parse_order(GOOD, {})["orderid"] == "3f2a"
    assert orders.parse_order(GOOD, None)["user"] == "u1"
    assert orders.parse_order(GOOD, {"traceid": "abc", "x-b3": ""})["cart"]["total"] == 12.5
    # a quorum queue's redelivery count and dead-lettering's record: set by the broker, not a bad message
    assert orders.parse_order(GOOD, {"x-delivery-count": 1})["orderid"] == "3f2a"
    assert orders.parse_order(GOOD, {"x-death": [{"count": 1, "reason": "rejected"}]})["orderid"] == "3f2a"
    assert orders.parse_order(b' \n{"orderid": "x"}\r\n ')["orderid"] == "x"
    big = b'{"orderid": "x", "pad": "' + b"a" * (orders.MAX_BODY - 40) + b'"}'
    assert len(big) <= orders.MAX_BODY and orders.parse_order(big)["orderid"] == "x"


def test_log_line_details():
    order = orders.parse_order(GOOD)
    assert orders.details(order) == "user=u1 items=1 total=12.50"
    assert orders.details({"orderid": "x"}) == "user=? items=? total=?"
    assert orders.details({"orderid": "x", "user": 7, "cart": {"total": "n/a", "items": "none"}}) == \
        'user=7 items=? total="\\"n/a\\""'


class _Dict(dict):
    """A dict that is not exactly ``dict``: details() takes its general path for it."""


@given(st.one_of(st.text(max_size=40), st.none(), st.integers()), st.floats(allow_nan=True, allow_infinity=True),
       st.lists(st.just({"qty": 1}), max_size=4))
def test_log_line_details_of_payment_shaped_orders_equal_the_general_path(user, total, items):
    """The payment-shaped shortcut (str user, float total, a list of lines) says what the general
    path says."""
    fast = orders.details({"user": user, "cart": {"total": total, "items": items}})
    assert fast == orders.details(_Dict(user=user, cart=_Dict(total=total, items=items)))
    if isinstance(user, str):
        assert fast == f"user={orders.field(user)} items={len(items)} total={total:.2f}"


@pytest.mark.parametrize("value", ["line\nbreak", "with space", 'q"uote', "a=b", "", "y \n" * 500, "\x1b[31m"])
def test_log_fields_stay_on_one_unambiguous_line(value):
    text = orders.field(value)
    assert "\n" not in text and "\x1b" not in text
    assert len(text) <= 6 * orders.MAX_FIELD + 5  # bounded, even when every character needs escaping
    assert text.startswith('"')


def test_plain_fields_stay_bare():
    oid = str(uuid.uuid4())
    assert orders.field(oid) == oid
    assert orders.field("x" * 500) == "x" * orders.MAX_FIELD + "…"
    assert orders.field("ünïcode") == "ünïcode"


# == ack tracking =================================================================================
def test_acks_in_order():
    t = AckTracker()
    for tag in range(1, 6):
        t.delivered()
        t.complete(tag)
    assert t.take() == 5 and t.take() is None and t.in_flight == 0


def test_acks_wait_for_the_gap():
    t = AckTracker()
    for _ in range(5):
        t.delivered()
    for tag in (2, 3, 5):
        t.complete(tag)
    assert t.take() is None
    assert t.in_flight == 2 and t.unacked_done == 3
    t.complete(1)
    assert t.take() == 3
    t.complete(4)
    assert t.take() == 5
    assert t.unacked_done == 0


def test_acks_take_all_covers_tags_beyond_a_gap():
    t = AckTracker()
    for _ in range(6):
        t.delivered()
    for tag in (1, 2, 4, 6):
        t.complete(tag)
    assert t.take_all() == (2, [4, 6])
    assert t.take_all() == (None, [])


def test_acks_never_cover_an_unfinished_tag():
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 60)
        t = AckTracker()
        for _ in range(n):
            t.delivered()
        order = list(range(1, n + 1))
        rng.shuffle(order)
        done = set()
        acked = 0
        for tag in order:
            t.complete(tag)
            done.add(tag)
            upto = t.take()
            if upto is not None:
                assert upto > acked
                assert all(x in done for x in range(1, upto + 1))
                acked = upto
            # the prefix is maximal: the next tag is not done
            assert acked + 1 not in done
        assert acked == n and t.in_flight == 0


# == backoff ======================================================================================
def test_backoff_grows_to_the_cap_with_jitter():
    rng = random.Random(1)
    delays = [reconnect.backoff(n, rng) for n in range(1, 12)]
    assert 0.39 <= delays[0] <= 0.61
    assert all(d <= reconnect.BACKOFF_CAP for d in delays)
    assert delays[-1] >= 0.8 * reconnect.BACKOFF_CAP
    assert all(b >= a * 0.9 for a, b in itertools.pairwise(delays[:6]))
    assert len({round(reconnect.backoff(3, rng), 6) for _ in range(20)}) > 10  # jittered
    assert reconnect.backoff(10_000, rng) <= reconnect.BACKOFF_CAP


# == connection error descriptions (real pika exception objects) ==================================
def test_auth_failure_is_recognised_with_its_fix():
    err = pika.exceptions.ProbableAuthenticationError(
        "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using authentication "
        "mechanism PLAIN. For details see the broker logfile.'")
    assert amqp.classify_error(err) == amqp.AUTH
    assert "ACCESS_REFUSED" in amqp.describe_error(err)
    hint = amqp.fix_hint(amqp.AUTH, "robo shop", "/")
    assert "AMQP_USER/AMQP_PASS" in hint and "rabbitmqctl add_user 'robo shop'" in hint


def test_network_errors_are_unwrapped():
    refused = ConnectionRefusedError(111, "Connection refused")
    err = pika.exceptions.AMQPConnectionError(connection_workflow.AMQPConnectionWorkflowFailed(
        [connection_workflow.AMQPConnectorSocketConnectError(refused)]))
    assert amqp.classify_error(err) == amqp.NETWORK
    assert amqp.describe_error(err) == "ConnectionRefusedError: Connection refused"
    vhost = pika.exceptions.ProbableAccessDeniedError("ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost x'")
    assert amqp.classify_error(vhost) == amqp.VHOST
    forced = pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED - shutdown")
    assert amqp.describe_error(forced) == "ConnectionClosedByBroker: (320) CONNECTION_FORCED - shutdown"


# == the log writer ===============================================================================
def test_log_lines_and_batching():
    r, w = os.pipe()
    try:
        log = LineLog(w, env={})
        log.order_line("INFO", "order a dispatched")
        log.order_line("ERROR", "order b failed")
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 100)  # order lines wait for the next flush (the one before the ack)
        log.warning("two\nlines\x85\u2028\x1b[31m")
        assert os.read(r, 1000).decode() == ("INFO order a dispatched\nERROR order b failed\n"
                                             "WARNING two\\nlines\\x85\\u2028\\x1b[31m\n")
        log.info("surrogate \udcff kept")
        assert os.read(r, 1000) == b"INFO surrogate \\udcff kept\n"
    finally:
        os.close(r)
        os.close(w)


def test_log_uses_journal_priorities_only_when_stdout_is_the_journal(tmp_path):
    path = tmp_path / "out"
    with open(path, "wb") as f:
        st = os.fstat(f.fileno())
        LineLog(f.fileno(), env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}).error("boom")
        LineLog(f.fileno(), env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}).error("plain")
    assert path.read_text() == "<3>ERROR boom\nERROR plain\n"


def test_log_survives_a_closed_reader():
    """EPIPE (Python ignores SIGPIPE): the line is dropped, no exception, and the log stops
    writing to the dead pipe; later lines are dropped too, none kept in memory."""
    r, w = os.pipe()
    os.close(r)
    log = LineLog(w, env={})
    assert log.fd == w
    log.info("nobody listens")  # would raise BrokenPipeError if it were not handled
    assert log.fd is None
    for i in range(1000):
        log.order_line("INFO", f"order {i} dispatched")
    log.info("still fine")
    assert log.fd is None and log._buf == []
    os.close(w)


# == sd_notify ====================================================================================
def _bound(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_notify_to_a_socket_path(tmp_path):
    path = str(tmp_path / "notify")
    with _bound(path) as server:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled
        assert n.ready("consuming orders")
        assert server.recv(4096) == b"READY=1\nSTATUS=consuming orders"
        assert n.status("reconnecting\nnow")
        assert server.recv(4096) == b"STATUS=reconnecting now"
        assert n.stopping("bye") and server.recv(4096) == b"STOPPING=1\nSTATUS=bye"
        assert n.watchdog() and server.recv(4096) == b"WATCHDOG=1"
        n.close()


def test_notify_to_an_abstract_socket():
    name = f"dispatch-test-{uuid.uuid4().hex}"
    with _bound("\0" + name) as server:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready("up")
        assert server.recv(4096) == b"READY=1\nSTATUS=up"
        n.close()


def test_notify_is_a_noop_without_socket_and_never_raises(tmp_path):
    assert not Notifier({}).enabled and not Notifier({}).ready("x")
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert gone.enabled and not gone.ready("x")
    assert gone.failed and "FileNotFoundError" in gone.failed
    assert Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).unsupported
    assert socket_address("@abc") == "\0abc" and socket_address("/run/x") == "/run/x"
    assert socket_address("") is None


def test_watchdog_interval():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "77"}, pid=77) == 0.5


# == reconnect policy =============================================================================
def test_failed_attempts_rotate_hosts_then_back_off():
    policy = reconnect.ReconnectPolicy(3, random.Random(1))
    assert [policy.index, policy.open_failed(), policy.index, policy.open_failed(), policy.index] == [0, 0, 1, 0, 2]
    first = policy.open_failed()  # a whole round failed
    assert 0.39 <= first <= 0.61 and policy.index == 0
    for _ in range(3):
        policy.open_failed()
    assert policy.index == 0 and policy.rounds == 2
    policy.consuming()
    assert policy.rounds == 0 and policy.round_failures == 0


def test_a_lost_session_reconnects_at_once_a_troubled_one_backs_off():
    policy = reconnect.ReconnectPolicy(2, random.Random(2))
    assert policy.session_ended(False, 5.0) == 0.0 and policy.index == 1
    delays = [policy.session_ended(True, 1.0) for _ in range(5)]
    assert all(b > a for a, b in itertools.pairwise(delays))  # growing while it keeps failing
    policy.consuming()
    assert policy.rounds == 5  # still troubled: consuming alone does not reset the backoff
    assert policy.session_ended(True, reconnect.HEALTHY_AFTER + 1) <= 0.61  # it had recovered
    assert policy.session_ended(False, 0.0) == 0.0 and not policy.troubled


@given(st.lists(st.sampled_from(["fail", "lost", "trouble", "consuming"]), max_size=60), st.integers(1, 5))
def test_reconnect_delays_stay_within_the_cap_and_hosts_in_range(events, hosts):
    policy = reconnect.ReconnectPolicy(hosts, random.Random(0))
    for event in events:
        if event == "fail":
            delay = policy.open_failed()
        elif event == "consuming":
            policy.consuming()
            delay = 0.0
        else:
            delay = policy.session_ended(event == "trouble", 0.0)
        assert 0 <= delay <= reconnect.BACKOFF_CAP and 0 <= policy.index < hosts


# == the order parser, against anything ===========================================================
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=20)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=300), _JSON.map(lambda v: repr(v).encode()),
                 st.builds(lambda v, oid: ('{"orderid": ' + oid + ', "cart": {"total": ' + v + "}}").encode(),
                           st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "9" * 400, "1" * 5000, "12.5",
                                            "[" * 3000 + "]" * 3000, "0.1e-999999"]),
                           st.sampled_from(['"a"', "1", "null", '"\u2028\u0085\u001b"']))),
       st.one_of(st.none(), st.dictionaries(st.text(max_size=5), _JSON, max_size=3)))
def test_the_order_parser_returns_a_summary_or_a_reason_for_anything(body, headers):
    try:
        summary = orders.summarize(body, headers)
    except orders.InvalidMessage as exc:
        assert exc.reason and "\n" not in exc.reason and len(exc.reason) < 400
        return
    line = f"order {summary.orderid} dispatched {summary.details}"
    assert line.isprintable() and len(line) < 1200


def test_numbers_that_do_not_fit_are_reasons():
    for total, reason in [("9" * 400, "number too long"), ("9" * 40 + "e300", "cart.total is not a finite number"),
                          ("1e400", "not a finite number"),
                          ("NaN", "NaN is not a number"), ("-Infinity", "-Infinity is not"),
                          ("1" * ((1 << 20) - 64), "number too long")]:
        body = ('{"orderid": "a", "cart": {"total": ' + total + "}}").encode()[:MAX_BODY]
        with pytest.raises(orders.InvalidMessage) as err:
            orders.parse_order(body)
        assert reason in err.value.reason or "invalid JSON" in err.value.reason
    assert orders.summarize(b'{"orderid": "a", "cart": {"total": ' + b"9" * 40 + b"}}").details.endswith("00")
    with pytest.raises(orders.InvalidMessage, match=r"cart\.tax is not a finite"):
        orders.parse_order(b'{"orderid": "a", "cart": {"tax": -' + b"9" * 40 + b"e400}}")


# == log escaping =================================================================================
@given(st.text())
def test_log_lines_escape_every_non_printable_character(text):
    for escaped in (orders.escape(text), orders.field(text)):
        assert escaped.isprintable()
        assert not any(ch in escaped for ch in "\n\r\x1b\x85\u2028\u2029")


@given(st.text(max_size=orders.MAX_FIELD))
def test_quoted_fields_are_json_that_gives_the_value_back(text):
    import json

    shown = orders.field(text)
    assert (json.loads(shown) if shown.startswith('"') else shown) == text


def test_the_crash_handler_logs_a_whole_traceback():
    r, w = os.pipe()
    try:
        log = LineLog(w, env={})
        try:
            {}["missing\x85"]
        except KeyError as exc:
            log.exception("ERROR", "unexpected KeyError", exc)
        lines = os.read(r, 10000).decode().splitlines()
    finally:
        os.close(r)
        os.close(w)
    assert lines[0] == "ERROR unexpected KeyError" and lines[1] == "ERROR   Traceback (most recent call last):"
    assert any("test_the_crash_handler_logs_a_whole_traceback" in ln for ln in lines)
    assert lines[-1] == "ERROR   KeyError: 'missing\\x85'" and all(ln.isprintable() for ln in lines)


# == the password as a systemd credential =========================================================
def test_the_credential_is_read_with_one_newline_stripped(tmp_path):
    (tmp_path / config.CREDENTIAL_NAME).write_bytes(b"s3cret\n\n")
    cfg = config.load({**BASE, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.password == "s3cret\n" and cfg.password_source == config.PASSWORD_FROM_CREDENTIAL
    assert "s3cret" not in cfg.describe() and "password=credential" in cfg.describe()
    assert config.load(BASE, credentials_directory=str(tmp_path)).password == "s3cret\n"


def test_the_consumer_and_dispatchctl_read_a_password_file_alike(tmp_path):
    """One reading of a password file (consumer/secretfile.py): a final CRLF is the file's too, for
    the consumer's credential, dispatchctl's view of the installed credential and --amqp-pass-file."""
    from roboshop_dispatch.facts.installed import _read_credential
    from roboshop_dispatch.validate import read_password_file

    path = tmp_path / config.CREDENTIAL_NAME
    path.write_bytes(b"s3cret\r\n")
    assert config.load(BASE, credentials_directory=str(tmp_path)).password == "s3cret"
    assert _read_credential([("amqp-pass", str(path))])["password"].reveal() == "s3cret"
    assert read_password_file(str(path)).reveal() == "s3cret"


def test_without_the_credential_file_the_environment_is_used(tmp_path):
    cfg = config.load({**BASE, "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.password == "roboshop123" and cfg.password_source == config.PASSWORD_FROM_ENVIRONMENT
    missing = config.load({"AMQP_HOST": "h"}, require_password=False)
    assert missing.password == "" and missing.password_source == config.PASSWORD_MISSING
    with pytest.raises(config.ConfigError):
        config.load({"AMQP_HOST": "h", "CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_a_bad_credential_is_a_config_error_without_its_value(tmp_path):
    for data in (b"", b"\n", b"\xff\xfesecret"):
        (tmp_path / config.CREDENTIAL_NAME).write_bytes(data)
        with pytest.raises(config.ConfigError) as err:
            config.load({**BASE, "CREDENTIALS_DIRECTORY": str(tmp_path)})
        assert err.value.variable == "CREDENTIALS_DIRECTORY" and "secret" not in str(err.value)


# == quarantine copies ============================================================================
def _delivery(props, body=b"{}", size=None, raw=None, error=None):
    return Delivery(7, False, "ctag", props, body, body_size=size, raw_properties=raw, decode_error=error)


def test_a_quarantine_copy_cannot_route_or_expire():
    props = pika.BasicProperties(headers={"CC": ["orders"], "BCC": ["orders"], "x": "y"}, expiration="1",
                                 user_id="someone", content_type="application/json", message_id="m")
    copy = quarantine.copy_properties(_delivery(props), "header CC is not a string (array)")
    assert copy.expiration is None and copy.user_id is None and copy.delivery_mode == 2
    assert "CC" not in copy.headers and "BCC" not in copy.headers
    assert copy.headers[quarantine.ORIGINAL_HEADERS] == props.headers
    original = pika.BasicProperties()
    original.decode(copy.headers[quarantine.ORIGINAL_PROPERTIES])
    assert vars(original) == vars(props)
    assert (copy.content_type, copy.message_id) == ("application/json", "m")


def test_a_quarantine_copy_always_fits_one_frame():
    raw = b"\x20\x00" + struct.pack(">I", 130_000) + b"S" * 130_000  # as large as a frame allows
    copy = quarantine.copy_properties(_delivery(None, raw=raw, error="RecursionError"), "r", frame_max=131072)
    assert len(b"".join(copy.encode())) <= 131072 - quarantine.HEADER_ROOM
    kept = copy.headers[quarantine.ORIGINAL_PROPERTIES]
    assert raw.startswith(kept) and copy.headers[quarantine.ORIGINAL_PROPERTIES_TRUNCATED] == len(raw)
    big = quarantine.copy_properties(_delivery(None, b"x" * 10, size=5 << 20, raw=b"\x00\x00", error="e"), "r")
    assert big.headers[quarantine.BODY_SIZE] == 5 << 20 and big.headers[quarantine.BODY_TRUNCATED] is True


def test_unconfirmed_copies_are_bounded():
    waiting = quarantine.Unconfirmed()
    assert waiting.room_for(quarantine.BUDGET * 4)  # one copy always fits
    waiting.add(1, quarantine.BUDGET - 10)
    assert not waiting.room_for(11) and waiting.room_for(10)
    waiting.add(2, 10)
    assert [p.tag for p in waiting.confirmed(2, multiple=True)] == [1, 2] and waiting.bytes == 0


def test_settled_deliveries_are_never_acked_again():
    t = AckTracker()
    for _ in range(4):
        t.delivered()
    t.complete(1)
    t.complete(2, settled=True)  # requeued with basic.nack: the broker forgot it
    assert t.take() == 1
    t.complete(3, settled=True)
    assert t.take() is None  # nothing the broker still holds
    t.complete(4)
    assert t.take() == 4
