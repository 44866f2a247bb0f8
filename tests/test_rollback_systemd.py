"""A change never leaves dispatch worse than it found it, on a real systemd host (systemd-nspawn,
PID 1 systemd) against the real broker: a vhost, password and host typo are each rolled back, with
dispatch consuming under the old settings (orders published and dispatched, the environment file
and the credential byte for byte as before); ``--no-rollback`` keeps the new state and
``dispatchctl rollback`` returns from it on demand (idempotently); a rollback whose generation is
unusable says what the host is left with; 2 instances keep every order with no gap over 0.5 s
while a change restarts them one by one, and while a failing one is rolled back (the other never
restarted); the operator's drop-ins follow 1 -> 2 -> 1; stop and restart with systemctl's exit
codes. One booted host for the module (each test starts from ``uninstall``): boots cost seconds."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Dict, List, Set, Tuple

import pytest

from roboshop_dispatch.lab.orders import handled_order_id
from tests.support.hosts import booted
from tests.support.payment import PaymentPublisher, make_order, parameters
from tests.support.schema import schema_errors

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

PASS_FILE = "/root/amqp.pass"
ENV_FILE = "/etc/roboshop/dispatch.env"
CREDENTIAL = "/etc/roboshop/dispatch.amqp-pass"
GENERATIONS = "/var/lib/dispatchctl/generations"
UNIT_DIR = "/etc/systemd/system"


@pytest.fixture(scope="module")
def host(systemd_rootfs):
    with booted(systemd_rootfs) as container:
        yield container


def dispatchctl(host, *args: str) -> Tuple[int, Dict, str]:
    """(exit status, the JSON document, valid against the schema, stderr)."""
    res = host.dispatchctl(*args, "--json")
    doc = json.loads(res.stdout)
    assert not schema_errors(doc), (schema_errors(doc), res.stdout)
    return res.returncode, doc, res.stderr


def fresh(host, broker, vhost: str, *args: str) -> List[str]:
    """Nothing of dispatch on the host, then a working install on ``vhost``; its settings."""
    assert host.dispatchctl("uninstall").returncode == 0
    host.write(PASS_FILE, broker.password + "\n")
    settings = ["--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port), "--amqp-vhost", vhost,
                "--amqp-pass-file", PASS_FILE]
    rc, doc, err = dispatchctl(host, "install", *settings, *args)
    assert rc == 0, (doc, err)
    return settings


def read(host, path: str) -> bytes:
    return host.path(path).read_bytes()


def journal_orders(host) -> Dict[str, List[float]]:
    """Every order id a dispatch unit logged as handled, with the times (s) journald got the lines."""
    out = host.run(["journalctl", "--no-pager", "-o", "json", "--output-fields", "MESSAGE", "-u", "dispatch.service",
                    "-u", "dispatch@*.service"], check=False).stdout
    found: Dict[str, List[float]] = {}
    for line in out.splitlines():
        entry = json.loads(line)
        message = entry.get("MESSAGE")
        order = handled_order_id(message) if isinstance(message, str) else None
        if order:
            found.setdefault(order, []).append(int(entry["__REALTIME_TIMESTAMP"]) / 1e6)
    return found


def publish(broker, vhost: str, count: int) -> Set[str]:
    ids = set()
    with PaymentPublisher(parameters("127.0.0.1", broker.port, vhost, broker.user, broker.password)) as pub:
        for i in range(count):
            order = make_order(i, orderid=str(uuid.uuid4()))
            pub.publish(order)
            ids.add(str(order["orderid"]))
    return ids


def assert_dispatched(host, broker, vhost: str, count: int = 5) -> None:
    """New orders published now are dispatched (by whatever dispatch runs)."""
    ids = publish(broker, vhost, count)
    host.wait_for(lambda: ids <= set(journal_orders(host)), timeout=20, what=f"{count} new orders dispatched")


def active(host, unit: str = "dispatch.service") -> Dict[str, str]:
    return host.show(unit, ["ActiveState", "StatusText", "MainPID"])


# -- typos rolled back -------------------------------------------------------------------------


def test_vhost_password_and_host_typos_are_rolled_back_and_dispatch_keeps_consuming(host, broker, vhost):
    settings = fresh(host, broker, vhost)
    assert_dispatched(host, broker, vhost)
    env, credential = read(host, ENV_FILE), read(host, CREDENTIAL)
    host.write("/root/wrong.pass", "not-" + broker.password + "\n")

    # the dry run predicts the gate: a rollback to what runs now, within the default 30 s
    rc, doc, _ = dispatchctl(host, "install", *settings, "--amqp-vhost", "nope", "--dry-run")
    service = next(s for s in doc["steps"] if s["name"] == "service")
    assert rc == 0 and service["data"]["gate"] == {"ready_timeout_s": 30.0, "rollback": "to the generation running now"}
    assert "rolled back unless ready within 30s" in service["message"]

    typos = {"vhost": ["--amqp-vhost", "nope"], "password": ["--amqp-pass-file", "/root/wrong.pass"],
             "host": ["--amqp-host", "127.0.0.2"]}
    says = {"vhost": "access to vhost 'nope' refused", "password": "authentication failed",
            "host": "cannot connect to 127.0.0.2"}
    for name, typo in typos.items():
        before = host.main_pid()
        started = time.monotonic()
        rc, doc, err = dispatchctl(host, "install", *settings, *typo)
        took = time.monotonic() - started
        print(f"\n{name} typo: exit {rc}, rolled back in {took:.2f} s (dispatchctl's whole run; the rollback "
              f"itself {doc.get('rollback', {}).get('duration_s')} s)")
        assert rc == 1, (name, doc)
        assert doc["rolled_back"] is True and doc["rollback"]["ok"] is True, doc
        assert says[name] in doc["rollback"]["reason"], doc["rollback"]
        assert doc["rollback"]["units"] == ["dispatch.service"] and doc["rollback"]["journal"], doc["rollback"]
        assert doc["error"]["message"].startswith("step 'service' failed: rolled back: "), doc["error"]
        assert "last log lines of the failed start" in doc["error"]["message"]
        assert broker.password not in json.dumps(doc) + err
        # the old settings are back, byte for byte, and dispatch consumes with them
        assert read(host, ENV_FILE) == env and read(host, CREDENTIAL) == credential, name
        state = active(host)
        assert state["ActiveState"] == "active" and f"vhost={vhost}" in state["StatusText"], state
        assert int(state["MainPID"]) != before
        assert_dispatched(host, broker, vhost)

    # the text output says it too (the "done": install --amqp-vhost nope)
    res = host.dispatchctl("install", *settings, "--amqp-vhost", "nope")
    assert res.returncode == 1
    assert "dispatchctl: error: step 'service' failed: rolled back: dispatch.service did not become ready: " \
           "access to vhost 'nope' refused" in res.stderr, res.stderr
    assert b"nope" not in read(host, ENV_FILE)
    assert_dispatched(host, broker, vhost)


# -- --no-rollback, rollback on demand, a rollback that fails ----------------------------------


def test_no_rollback_keeps_the_change_rollback_returns_and_a_failing_rollback_says_what_to_run(host, broker, vhost):
    settings = fresh(host, broker, vhost)
    rc, doc, _ = dispatchctl(host, "rollback")
    assert rc == 0 and doc["changed"] == 0 and "nothing to roll back to" in doc["steps"][0]["message"]

    # a working change keeps the generation it replaces: rollback returns to it
    rc, doc, _ = dispatchctl(host, "install", *settings, "--error-percent", "3")
    assert rc == 0 and doc["rolled_back"] is False, doc
    rc, doc, _ = dispatchctl(host, "install", *settings, "--amqp-vhost", "nope", "--no-rollback")
    assert rc == 1 and doc["rolled_back"] is False and "--no-rollback" in doc["rollback"]["why_not"], doc
    assert b'AMQP_VHOST="nope"' in read(host, ENV_FILE)
    host.wait_for(lambda: "retrying" in active(host)["StatusText"], timeout=10, what="dispatch retrying on nope")
    assert "dispatchctl rollback" in doc["error"]["next_action"]

    rc, doc, _ = dispatchctl(host, "rollback", "--dry-run", "--diff")
    assert rc == 0 and [s["status"] for s in doc["steps"]] == ["changed", "changed"], doc
    assert doc["steps"][0]["data"]["files"] == {ENV_FILE: "replace"}
    assert '-AMQP_VHOST="nope"' in doc["steps"][0]["diff_text"]
    assert "restart dispatch.service" in doc["steps"][1]["message"]
    assert b"nope" in read(host, ENV_FILE)  # a dry run changes nothing

    started = time.monotonic()
    rc, doc, err = dispatchctl(host, "rollback")
    print(f"\nrollback on demand: {time.monotonic() - started:.2f} s")
    assert rc == 0, (doc, err)
    env = read(host, ENV_FILE)
    assert b'AMQP_VHOST="' + vhost.encode() + b'"' in env and b'DISPATCH_ERROR_PERCENT="3"' in env
    assert active(host)["ActiveState"] == "active"
    assert_dispatched(host, broker, vhost)
    rc, doc, _ = dispatchctl(host, "rollback")  # idempotent
    assert rc == 0 and doc["changed"] == 0 and "already runs" in doc["steps"][0]["message"], doc

    # the generation a rollback would put back cannot start (its binary is damaged while the
    # process that runs from it goes on): the rollback fails and says what the host is left with
    host.sh("printf 'not a zip' > /app/.garbage && chmod 755 /app/.garbage && mv /app/.garbage /app/dispatch")
    rc, doc, err = dispatchctl(host, "install", *settings, "--amqp-vhost", "nope", "--flavour", "bundled")
    assert rc == 1 and doc["rolled_back"] is False and doc["rollback"]["ok"] is False, doc
    message = doc["error"]["message"]
    assert "rollback failed: " in message and "the host now: the last good generation's files are back in place, " \
           "but it does not start either: dispatch.service" in message, message
    assert "dispatchctl install" in doc["error"]["next_action"] and "dispatchctl check" in doc["error"]["next_action"]
    assert read(host, ENV_FILE) == env and read(host, "/app/dispatch") == b"not a zip"
    # what it says to run repairs it
    rc, doc, _ = dispatchctl(host, "install", *settings, "--flavour", "bundled")
    assert rc == 0, doc
    assert_dispatched(host, broker, vhost)

    assert host.path(GENERATIONS).is_dir()
    assert host.dispatchctl("uninstall").returncode == 0
    assert not host.path(GENERATIONS).exists()  # the kept copies (the password's too) go with it


# -- two instances: rolling restarts, the gap, drop-ins ------------------------------------------


class Publisher(threading.Thread):
    """Payment-shaped orders at ``rate`` per second until stopped; the ids published."""

    def __init__(self, broker, vhost: str, rate: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.params = parameters("127.0.0.1", broker.port, vhost, broker.user, broker.password)
        self.rate = rate
        self.ids: List[str] = []
        self.done = threading.Event()
        self.error: BaseException = None  # type: ignore[assignment]

    def run(self) -> None:
        try:
            with PaymentPublisher(self.params) as pub:
                start = time.monotonic()
                while not self.done.is_set():
                    order = make_order(len(self.ids), orderid=str(uuid.uuid4()))
                    pub.publish(order)
                    self.ids.append(str(order["orderid"]))
                    pause = start + len(self.ids) / self.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
        except BaseException as exc:  # reported by the test
            self.error = exc


def under_load(host, broker, vhost: str, change) -> Tuple[float, int, object]:
    """Run ``change()`` while 40 orders/s are published: (the longest gap in s between handled
    orders over the whole publication, how many were published, what change returned); every
    order published must be handled."""
    publisher = Publisher(broker, vhost)
    publisher.start()
    time.sleep(1.0)
    result = change()
    time.sleep(1.0)
    publisher.done.set()
    publisher.join(10)
    assert publisher.error is None, publisher.error
    published = set(publisher.ids)
    host.wait_for(lambda: published <= set(journal_orders(host)), timeout=30, what="every published order handled")
    handled = journal_orders(host)
    times = sorted(min(handled[i]) for i in published)
    gap = max(b - a for a, b in zip(times, times[1:]))
    return gap, len(published), result


def test_two_instances_restart_one_by_one_without_a_gap_and_stop_at_the_first_failure(host, broker, vhost):
    settings = fresh(host, broker, vhost)
    # the operator's drop-in on dispatch.service goes along to the instances (and back)
    host.write(f"{UNIT_DIR}/dispatch.service.d/50-nice.conf", "[Service]\nNice=7\n", mode=0o644)
    host.run(["systemctl", "daemon-reload"])
    rc, doc, _ = dispatchctl(host, "install", *settings, "--instances", "2")
    assert rc == 0, doc
    assert "carried " in next(s for s in doc["steps"] if s["name"] == "service")["message"]
    assert not host.path(f"{UNIT_DIR}/dispatch.service.d").exists()
    assert host.path(f"{UNIT_DIR}/dispatch@.service.d/50-nice.conf").read_text() == "[Service]\nNice=7\n"
    units = ["dispatch@1.service", "dispatch@2.service"]
    assert [host.show(u, ["Nice"])["Nice"] for u in units] == ["7", "7"]
    host.wait_for(lambda: broker.queue_counts(vhost).get("orders", (0, 0))[1] == 2, timeout=20,
                  what="2 consumers")

    # a change restarts them one at a time, each ready before the next: no order lost, no gap
    gap, count, doc = under_load(host, broker, vhost,
                                 lambda: dispatchctl(host, "configure", *settings, "--error-percent", "2")[1])
    print(f"\n2 instances, a change restarting both under 40 orders/s: {count} orders, all handled, "
          f"longest gap {gap:.3f} s")
    assert doc["ok"] and "restarted dispatch@1.service, dispatch@2.service one by one" in doc["steps"][-1]["message"]
    assert gap < 0.5

    # a change the first instance does not survive: it is rolled back, the second never restarted
    second = host.main_pid(units[1])
    gap, count, doc = under_load(host, broker, vhost,
                                 lambda: dispatchctl(host, "configure", *settings, "--amqp-vhost", "nope")[1])
    print(f"2 instances, a failing change rolled back under 40 orders/s: {count} orders, all handled, "
          f"longest gap {gap:.3f} s, rollback {doc['rollback'].get('duration_s')} s")
    assert doc["rolled_back"] is True and doc["rollback"]["units"] == [units[0]], doc
    assert host.main_pid(units[1]) == second
    assert all(host.show(u, ["ActiveState"])["ActiveState"] == "active" for u in units)
    assert b"nope" not in read(host, ENV_FILE)
    assert gap < 0.5

    # and back to one: the drop-in with it
    rc, doc, _ = dispatchctl(host, "install", *settings, "--instances", "1")
    assert rc == 0, doc
    assert host.path(f"{UNIT_DIR}/dispatch.service.d/50-nice.conf").read_text() == "[Service]\nNice=7\n"
    assert not host.path(f"{UNIT_DIR}/dispatch@.service.d").exists()
    assert host.show("dispatch.service", ["Nice", "ActiveState"]) == {"Nice": "7", "ActiveState": "active"}
    assert_dispatched(host, broker, vhost)


# -- stop and restart ----------------------------------------------------------------------------


def test_stop_and_restart_all_or_named_with_systemctls_exit_codes(host, broker, vhost):
    fresh(host, broker, vhost, "--instances", "2")
    units = ["dispatch@1.service", "dispatch@2.service"]
    rc, doc, _ = dispatchctl(host, "stop", "2")
    assert rc == 0 and doc["changed"] == 1
    assert [host.show(u, ["ActiveState"])["ActiveState"] for u in units] == ["active", "inactive"]
    rc, doc, _ = dispatchctl(host, "stop", "dispatch@2")
    assert rc == 0 and doc["changed"] == 0  # already stopped: nothing to do
    rc, doc, _ = dispatchctl(host, "stop", "3")
    assert rc == 5 and "dispatch@3.service not installed" in doc["error"]["message"]  # systemctl's 5

    first = host.main_pid(units[0])
    rc, doc, _ = dispatchctl(host, "restart", "--dry-run")
    assert rc == 0 and host.main_pid(units[0]) == first and "one at a time" in doc["steps"][0]["message"]
    rc, doc, _ = dispatchctl(host, "restart")
    assert rc == 0, doc
    assert all(host.show(u, ["ActiveState"])["ActiveState"] == "active" for u in units)
    assert host.main_pid(units[0]) != first
    rc, doc, _ = dispatchctl(host, "restart", "dispatch")
    assert rc == 5  # dispatch.service is not what this host runs
    res = host.dispatchctl("restart", "nonsense")
    assert res.returncode == 2 and "not a dispatch unit" in res.stderr

    rc, doc, _ = dispatchctl(host, "stop")
    assert rc == 0 and all(host.show(u, ["ActiveState"])["ActiveState"] == "inactive" for u in units)
    assert all(host.show(u, ["UnitFileState"])["UnitFileState"] == "enabled" for u in units)  # stop is not disable
    rc, doc, _ = dispatchctl(host, "restart", "1", "2")  # restart starts what is stopped, as systemctl's does
    assert rc == 0, doc
    assert_dispatched(host, broker, vhost)
