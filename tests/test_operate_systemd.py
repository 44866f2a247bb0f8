"""``status``, ``check``, ``logs`` and ``uninstall`` on a real systemd host (systemd-nspawn, PID 1
systemd, the host's network and the test's real broker). Each broken state is made for real:
the binary removed, a wrong AMQP_HOST, a wrong password, ``User=root``; ``check`` names the
manual's common issue each time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

from roboshop_dispatch.lab.nspawn import PATH_INSIDE, venv_bin

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

PASS_FILE = "/root/amqp.pass"
ENV_FILE = "/etc/roboshop/dispatch.env"
BOUND_S = 5.0


def child_named(pid: int, comm: str) -> int:
    """The child of ``pid`` running ``comm`` (nsenter's child, inside the host's namespaces)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                return int(child)
    raise AssertionError(f"no child {comm!r} of pid {pid}")


def install(host, broker, vhost: str) -> None:
    host.write(PASS_FILE, broker.password + "\n")
    res = host.dispatchctl("install", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                           "--amqp-vhost", vhost, "--amqp-pass-file", PASS_FILE)
    assert res.returncode == 0, res.stdout + res.stderr
    wait_active(host)


def wait_active(host, timeout: float = 30) -> None:
    host.wait_for(lambda: host.run(["systemctl", "is-active", "dispatch"], check=False).stdout.strip() == "active",
                  timeout=timeout, what="dispatch active")


def status(host, *args: str):
    res = host.dispatchctl("status", "--json", *args)
    return res.returncode, json.loads(res.stdout)


def check(host) -> Dict:
    started = time.monotonic()
    res = host.dispatchctl("check", "--json")
    elapsed = time.monotonic() - started
    doc = json.loads(res.stdout)
    doc["_rc"] = res.returncode
    doc["_elapsed"] = elapsed
    doc["_by_name"] = {f["name"]: f for f in doc["findings"]}
    return doc


def assert_issue(doc: Dict, finding: str, issue: str, diagnosis: str) -> Dict:
    assert doc["_rc"] == 1, json.dumps(doc["findings"], indent=1)
    assert doc["_elapsed"] < 10  # a promise kept as a bound: check-rabbitmq answers within 5 s, the rest is local
    f = doc["_by_name"][finding]
    assert f["status"] == "fail", f
    assert f["issue"] == issue and diagnosis in f["diagnosis"], f
    assert issue in doc["issues"], doc["issues"]
    assert f["fix"], f
    return f


def restart_no_block(host) -> None:
    host.run(["systemctl", "daemon-reload"])
    host.run(["systemctl", "restart", "--no-block", "dispatch"])


CREDENTIAL = "/etc/roboshop/dispatch.amqp-pass"


def set_env(host, key: str, value: str) -> None:
    host.sh(f"sed -i 's|^{key}=.*|{key}=\"{value}\"|' {ENV_FILE}")


# -- status ------------------------------------------------------------------------------------


def test_status_not_installed_running_stopped_and_uninstall_then_install_again(systemd_host, broker, vhost):
    host = systemd_host
    rc, doc = status(host)
    assert rc == 4 and doc["installed"] is False
    table = host.dispatchctl("status")
    assert table.returncode == 4 and "not installed" in table.stdout

    install(host, broker, vhost)
    rc, doc = status(host, "--lines", "3")
    assert rc == 0, doc
    assert doc["active_state"] == "active" and doc["sub_state"] == "running" and doc["enabled"] == "enabled"
    assert doc["main_pid"] == host.main_pid()
    proc = doc["process"]
    assert proc["user"] == "roboshop" and proc["rss_bytes"] > 1_000_000 and proc["cpu_percent"] >= 0
    assert doc["uptime_s"] is not None and doc["restarts"] == 0
    assert doc["binary"] == {"path": "/app/dispatch", "exists": True, "flavour": "bundled"}
    assert doc["config"]["hosts"] == ["127.0.0.1"] and doc["config"]["vhost"] == vhost
    assert doc["config"]["password"] == "********" and doc["config"]["password_source"] == "credential"
    # the path the consumer actually took, from its systemd status text
    assert doc["delivery_path"] == "fast" and "(delivery path: fast)" in doc["status_text"], doc["status_text"]
    host.wait_for(lambda: status(host)[1]["queue"].get("consumers") == 1, timeout=15, what="a consumer")
    assert status(host)[1]["queue"]["messages"] == 0
    assert 0 < len(doc["logs"]) <= 3
    table = host.dispatchctl("status")
    assert table.returncode == 0
    for label in ("active (running)", "main PID", "uptime", "restarts", "runs as", "roboshop", "RSS", "CPU",
                  "/app/dispatch (bundled)", "password ********", "orders queue", "delivery path", "fast"):
        assert label in table.stdout, label
    assert broker.password not in table.stdout + json.dumps(doc)

    host.run(["systemctl", "stop", "dispatch"])
    rc, doc = status(host)
    assert rc == 3 and doc["installed"] is True and doc["active_state"] == "inactive" and doc["process"] is None
    assert host.dispatchctl("status").returncode == 3

    # uninstall: a dry run changes nothing, the real run removes, a second run changes nothing
    before = host.listing("/etc/systemd/system", "/etc/roboshop", "/app")
    dry = host.dispatchctl("uninstall", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = {s["name"]: s["status"] for s in json.loads(dry.stdout)["steps"]}
    assert planned == {"stop": "ok", "disable": "changed", "unit": "changed", "config": "changed",
                       "binary": "changed"}
    assert host.listing("/etc/systemd/system", "/etc/roboshop", "/app") == before
    done = host.dispatchctl("uninstall", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {s["name"]: s["status"] for s in json.loads(done.stdout)["steps"]} == planned
    assert not host.path("/etc/systemd/system/dispatch.service").exists()
    assert not host.path(ENV_FILE).exists() and not host.path("/app/dispatch").exists()
    assert host.path("/app").is_dir()  # kept without --purge
    assert host.run(["id", "roboshop"], check=False).returncode == 0  # kept without --purge
    rc, doc = status(host)
    assert rc == 4, doc
    again = host.dispatchctl("uninstall", "--json")
    assert again.returncode == 0
    assert {s["status"] for s in json.loads(again.stdout)["steps"]} == {"ok"}

    install(host, broker, vhost)
    rc, doc = status(host)
    assert rc == 0 and doc["process"]["user"] == "roboshop"


def test_uninstall_purge_removes_the_user_and_the_app_dir_and_is_idempotent(systemd_host, broker, vhost):
    host = systemd_host
    install(host, broker, vhost)
    res = host.dispatchctl("uninstall", "--purge", "--yes", "--json")  # --purge asks first (issue 7)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {s["name"]: s["status"] for s in json.loads(res.stdout)["steps"]}
    assert steps == {"stop": "changed", "disable": "changed", "unit": "changed", "config": "changed",
                     "binary": "changed", "appdir": "changed", "user": "changed"}
    assert not host.path("/app").exists()
    assert host.run(["id", "roboshop"], check=False).returncode != 0
    assert host.run(["systemctl", "is-active", "dispatch"], check=False).stdout.strip() in ("inactive", "unknown")
    again = host.dispatchctl("uninstall", "--purge", "--yes")
    assert again.returncode == 0 and "changed=0 failed=0" in again.stdout.splitlines()[-1], again.stdout


# -- check: the manual's common issues, made for real ------------------------------------------


def test_check_passes_on_a_healthy_host(systemd_host, broker, vhost):
    install(host := systemd_host, broker, vhost)
    host.wait_for(lambda: status(host)[1]["queue"].get("consumers") == 1, timeout=15, what="a consumer")
    doc = check(host)
    assert doc["issues"] == []
    by = doc["_by_name"]
    for name in ("os", "root", "systemd", "user", "binary", "unit", "envfile", "unit-user", "service",
                 "rabbitmq.auth", "rabbitmq.permissions", "rabbitmq.exchange", "rabbitmq.queue", "rabbitmq.counts"):
        assert by[name]["status"] == "ok", by[name]
    assert by["selinux"]["status"] == "skip"  # a Debian host
    table = host.dispatchctl("check")
    # install puts the password in the credential (systemd 252, bundled flavour): all healthy
    assert "LoadCredential=" in host.run(["systemctl", "cat", "dispatch"]).stdout
    assert by["credential"]["status"] == "ok", by["credential"]
    assert doc["_rc"] == 0, json.dumps(doc["findings"], indent=1)
    assert table.returncode == 0 and "0 failure(s)" in table.stdout


def test_check_binary_removed_is_binary_not_found(systemd_host, broker, vhost):
    install(host := systemd_host, broker, vhost)
    host.run(["rm", "-f", "/app/dispatch"])
    restart_no_block(host)
    doc = check(host)
    f = assert_issue(doc, "binary", "Binary not found", "Binary not found: run the build")
    assert "dispatchctl build" in f["fix"]
    table = host.dispatchctl("check")
    assert table.returncode == 1 and "Binary not found" in table.stdout


def test_check_wrong_amqp_host_is_service_not_starting(systemd_host, broker, vhost):
    install(host := systemd_host, broker, vhost)
    set_env(host, "AMQP_HOST", "127.0.0.3")  # loopback, nothing listens: refused
    restart_no_block(host)
    host.wait_for(lambda: "127.0.0.3" in host.journal(), timeout=15, what="the consumer trying 127.0.0.3")
    doc = check(host)
    f = assert_issue(doc, "service", "Service not starting", "Service not starting")
    assert "AMQP_HOST=127.0.0.3" in f["summary"] and f["data"]["log"]
    tcp = assert_issue(doc, "rabbitmq.tcp", "Service not starting", "nothing listens on port")
    assert "127.0.0.3" in tcp["summary"]


def test_check_wrong_password_is_auth_failure(systemd_host, broker, vhost):
    install(host := systemd_host, broker, vhost)
    host.write(CREDENTIAL, "not-the-password", mode=0o600)  # where install keeps the password
    restart_no_block(host)
    doc = check(host)
    f = assert_issue(doc, "rabbitmq.auth", "Auth failure", "Auth failure: check AMQP user/pass")
    assert "rabbitmqctl add_user" in f["fix"]
    assert "not-the-password" not in json.dumps(doc)
    table = host.dispatchctl("check")
    assert "Auth failure: check AMQP user/pass" in table.stdout and "not-the-password" not in table.stdout


def test_check_user_root_is_permission_denied(systemd_host, broker, vhost):
    install(host := systemd_host, broker, vhost)
    host.write("/etc/systemd/system/dispatch.service.d/override.conf", "[Service]\nUser=root\n", mode=0o644)
    restart_no_block(host)
    wait_active(host)
    doc = check(host)
    f = assert_issue(doc, "unit-user", "Permission denied", "ensure User=roboshop")
    assert f["data"]["unit_user"] == "root"


def test_check_reads_the_password_credential_of_the_real_unit(systemd_host, broker, vhost):
    """The credential layout of a real install (LoadCredential= in the unit): check reads it from the
    unit, uses it for RabbitMQ, and names an AMQP_PASS left in the environment file and a credential
    file that is not root 0600."""
    install(host := systemd_host, broker, vhost)
    assert f"LoadCredential=amqp-pass:{CREDENTIAL}" in host.run(["systemctl", "cat", "dispatch"]).stdout
    host.sh(f"printf 'AMQP_PASS=\"%s\"\\n' '{broker.password}' >> {ENV_FILE}")  # as an older install left it
    doc = check(host)
    f = doc["_by_name"]["credential"]
    assert f["status"] == "fail" and "next to the credential" in f["summary"], f
    assert f["diagnosis"] == "Password in the environment: use the systemd credential" and f["data"]["credential"]
    assert f["fix"].startswith("dispatchctl configure")

    # the password only in the credential (the running consumer keeps the one it started with)
    host.sh(f"sed -i '/^AMQP_PASS=/d' {ENV_FILE}")
    doc = check(host)
    by = doc["_by_name"]
    for name in ("envfile", "credential", "rabbitmq.auth", "rabbitmq.permissions"):
        assert by[name]["status"] == "ok", by[name]
    assert CREDENTIAL in by["credential"]["summary"] and doc["_rc"] == 0, json.dumps(doc["findings"], indent=1)
    assert broker.password not in json.dumps(doc)
    res = host.dispatchctl("check-rabbitmq", "--json")  # the installed settings, the credential's password
    assert res.returncode == 0 and broker.password not in res.stdout, res.stdout + res.stderr
    rc, st = status(host)
    assert rc == 0 and st["config"]["password_source"] == "credential" and st["config"]["password"] == "********"

    host.run(["chmod", "0644", CREDENTIAL])
    f = check(host)["_by_name"]["credential"]
    assert f["status"] == "fail" and f["diagnosis"] == "Password exposed" and "0644" in f["summary"], f


# -- logs --------------------------------------------------------------------------------------


def test_logs_show_the_journal_with_the_password_masked_and_follow(systemd_host, broker, vhost):
    host = systemd_host
    install(host, broker, vhost)
    # a unit that leaks the password into the journal (as the original Go binary does with its URI)
    host.write("/etc/systemd/system/dispatch.service.d/leak.conf",
               "[Service]\nExecStartPre=/bin/sh -c "
               "'echo leaking amqp://roboshop:$(cat \"$$CREDENTIALS_DIRECTORY/amqp-pass\")@broker'\n", mode=0o644)
    host.run(["systemctl", "daemon-reload"])
    host.run(["systemctl", "restart", "dispatch"])
    assert broker.password in host.journal()  # the leak is real
    res = host.dispatchctl("logs", "-n", "50")
    assert res.returncode == 0
    assert "leaking amqp://roboshop:********@broker" in res.stdout and broker.password not in res.stdout
    res = host.dispatchctl("logs", "-n", "2")
    assert len(res.stdout.strip().splitlines()) == 2
    _, doc = status(host, "--lines", "50")
    assert any("leaking amqp://roboshop:********@broker" in line for line in doc["logs"])
    assert broker.password not in json.dumps(doc)

    # -f: new lines appear while it runs; SIGINT ends it cleanly. No guess at when it has begun
    # to follow: restart the service (each start writes the leaking line) until a new line shows
    # (`timeout` inside is only a backstop; the SIGINT is ours, sent once the line was seen)
    argv = ["nsenter", "-t", str(host.leader), "-a", "env", "-i", f"PATH={PATH_INSIDE}", "LANG=C.UTF-8",
            "timeout", "--preserve-status", "-s", "INT", "120", venv_bin("dispatchctl"), "logs", "-f", "-n", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: List[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    masked = "leaking amqp://roboshop:********@broker"
    deadline = time.monotonic() + 60
    while not any(masked in line for line in seen):
        assert proc.poll() is None and time.monotonic() < deadline, (proc.poll(), seen)
        host.run(["systemctl", "restart", "dispatch"])
        wait_until = time.monotonic() + 3
        while not any(masked in line for line in seen) and time.monotonic() < wait_until:
            time.sleep(0.05)
    os.kill(child_named(proc.pid, "timeout"), signal.SIGINT)  # passed on to dispatchctl
    proc.wait(timeout=30)
    reader.join(5)
    text = "".join(seen)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert masked in text and broker.password not in text
