"""``--instances N`` on a real systemd host (systemd-nspawn, PID 1 systemd) against the real broker:
1 -> 3 (a migration from dispatch.service to dispatch@1..3), 3 -> 2 (only @3 stops, the others
keep their processes), a re-run changes nothing, ``status`` lists the instances and the broker
counts their consumers, ``check`` names an instance that was killed, ``start`` brings it back,
``uninstall`` removes every unit; then 2 -> 1 migrates back to dispatch.service. One booted host
for the whole story (each boot and install costs seconds on a 2-core machine)."""

from __future__ import annotations

import json
from typing import Dict, List

import pytest

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

PASS_FILE = "/root/amqp.pass"
UNIT_DIR = "/etc/systemd/system"


def install(host, broker, vhost: str, *args: str) -> Dict:
    res = host.dispatchctl("install", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                           "--amqp-vhost", vhost, "--amqp-pass-file", PASS_FILE, *args, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def changed(doc: Dict) -> List[str]:
    return [s["name"] for s in doc["steps"] if s["changed"]]


def timing(label: str, doc: Dict) -> None:
    """The figures the README quotes (shown with -s)."""
    service = next(s for s in doc["steps"] if s["name"] == "service")
    print(f"\n{label}: install {doc.get('duration_s', '?')} s, service step {service['duration_s']} s")


def service_message(doc: Dict) -> str:
    return next(s["message"] for s in doc["steps"] if s["name"] == "service")


def states(host, *units: str) -> Dict[str, str]:
    return {u: host.show(u, ["ActiveState"]).get("ActiveState", "") for u in units}


def pids(host, *units: str) -> Dict[str, int]:
    return {u: host.main_pid(u) for u in units}


def dispatch_units(host) -> List[str]:
    """``systemctl list-units 'dispatch*'``: every dispatch unit active, failed or with a job (with
    --all, a unit merely looked up by ``systemctl show`` is listed as not-found until collected)."""
    out = host.run(["systemctl", "list-units", "--plain", "--no-legend", "dispatch*"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def unit_files(host) -> List[str]:
    return sorted(host.run(["sh", "-c", f"find {UNIT_DIR} -name 'dispatch*' | sort"]).stdout.split())


def instances(n: int) -> List[str]:
    return [f"dispatch@{i}.service" for i in range(1, n + 1)]


def test_instances_up_down_status_check_uninstall(systemd_host, broker, vhost):
    host = systemd_host
    host.write(PASS_FILE, broker.password + "\n")

    # N = 1: today's dispatch.service, the manual's name
    install(host, broker, vhost)
    assert states(host, "dispatch.service") == {"dispatch.service": "active"}
    assert not host.path(f"{UNIT_DIR}/dispatch@.service").exists()

    # 1 -> 3: the instances start, then the old unit stops and its file goes
    doc = install(host, broker, vhost, "--instances", "3")
    timing("1 -> 3", doc)
    assert changed(doc) == ["config", "service"], doc
    assert states(host, *instances(3)) == {u: "active" for u in instances(3)}
    assert host.show("dispatch.service", ["LoadState", "ActiveState"]) == {
        "LoadState": "not-found", "ActiveState": "inactive"}
    assert not host.path(f"{UNIT_DIR}/dispatch.service").exists()
    assert "dispatch.service" not in dispatch_units(host)
    before = pids(host, *instances(3))
    assert all(before.values()) and len(set(before.values())) == 3

    # 3 -> 2: only @3 stops; @1 and @2 keep their processes
    doc = install(host, broker, vhost, "--instances", "2")
    timing("3 -> 2", doc)
    assert changed(doc) == ["config", "service"], doc
    assert "stop" in service_message(doc) and "dispatch@3.service" in service_message(doc)
    assert pids(host, *instances(2)) == {u: before[u] for u in instances(2)}
    assert states(host, "dispatch@3.service")["dispatch@3.service"] == "inactive"

    # the same N again (and no --instances: as installed) changes nothing
    doc = install(host, broker, vhost, "--instances", "2")
    timing("2 -> 2", doc)
    assert changed(doc) == []
    assert changed(install(host, broker, vhost)) == []
    assert pids(host, *instances(2)) == {u: before[u] for u in instances(2)}

    # status: two running instances, and the broker counts two consumers on orders
    def two_consumers():
        res = host.dispatchctl("status", "--json")
        doc = json.loads(res.stdout)
        return doc if res.returncode == 0 and (doc.get("queue") or {}).get("consumers") == 2 else None

    status = host.wait_for(two_consumers, timeout=20, what="status with 2 consumers")
    rows = {r["unit"]: r for r in status["instances"]}
    assert sorted(rows) == instances(2) and status["configured_instances"] == 2
    for unit in instances(2):
        assert rows[unit]["active_state"] == "active" and rows[unit]["main_pid"] == before[unit]
        assert rows[unit]["rss_bytes"] and rows[unit]["rss_bytes"] > 1_000_000

    # the queue type: in the environment file and in status; a change would restart both, one by one
    assert status["config"]["queue_type"] == "classic"
    assert 'DISPATCH_QUEUE_TYPE="classic"' in host.run(["cat", "/etc/roboshop/dispatch.env"]).stdout.splitlines()
    res = host.dispatchctl("configure", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                           "--amqp-vhost", vhost, "--amqp-pass-file", PASS_FILE, "--queue-type", "quorum",
                           "--dry-run", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    predicted = json.loads(res.stdout)
    assert changed(predicted) == ["config", "service"]
    assert "restart dispatch@1.service, dispatch@2.service one by one" in service_message(predicted)
    assert next(s for s in predicted["steps"] if s["name"] == "config")["data"]["queue_type"] == "quorum"
    assert pids(host, *instances(2)) == {u: before[u] for u in instances(2)}

    # one instance killed hard and left stopped: check fails naming it, with the fix
    host.run(["kill", "-KILL", str(before["dispatch@2.service"])])
    host.run(["systemctl", "stop", "dispatch@2.service"])
    res = host.dispatchctl("check", "--json")
    assert res.returncode == 1, res.stdout
    finding = {f["name"]: f for f in json.loads(res.stdout)["findings"]}["instances"]
    assert finding["status"] == "fail" and "dispatch@2.service" in finding["summary"], finding
    assert "dispatchctl start" in finding["fix"]
    assert host.dispatchctl("start").returncode == 0
    assert states(host, *instances(2)) == {u: "active" for u in instances(2)}
    assert host.main_pid("dispatch@1.service") == before["dispatch@1.service"]
    # healthy again: every check passes with the template (its credential, its verify), and the log
    # shows both instances
    res = host.dispatchctl("check", "--json")
    assert res.returncode == 0, res.stdout
    logs = host.dispatchctl("logs", "-n", "200").stdout
    assert f"dispatch[{before['dispatch@1.service']}]" in logs
    assert f"dispatch[{host.main_pid('dispatch@2.service')}]" in logs

    # uninstall removes every unit: the template, the instances, their links
    res = host.dispatchctl("uninstall")
    assert res.returncode == 0, res.stdout + res.stderr
    assert unit_files(host) == []
    assert dispatch_units(host) == []
    assert not host.path("/etc/roboshop/dispatch.instances").exists()

    # and back: 2 -> 1 migrates to dispatch.service (started before the instances stop)
    install(host, broker, vhost, "--instances", "2")
    doc = install(host, broker, vhost, "--instances", "1")
    timing("2 -> 1", doc)
    assert "dispatch@1.service" in service_message(doc), doc
    assert states(host, "dispatch.service") == {"dispatch.service": "active"}
    assert dispatch_units(host) == ["dispatch.service"]
    assert unit_files(host) == [f"{UNIT_DIR}/dispatch.service", f"{UNIT_DIR}/multi-user.target.wants/dispatch.service"]
    assert changed(install(host, broker, vhost)) == []

