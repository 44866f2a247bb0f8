"""The single-file dispatchctl (dist/dispatchctl-VERSION.pyz from scripts/build-dist) on a real
systemd host (a booted Debian 12 systemd-nspawn host: python3.11) against the real test broker.

- Copied alone to /usr/local/bin/dispatchctl on a host whose python3 has no third-party package at
  all (the host's dist-packages hidden: no psutil, no click, nothing), it installs dispatch, the
  service consumes and dispatches orders, and `status` / `status --json` answer with the process's
  figures from /proc.
- A host provisioned by a virtualenv's dispatchctl, then given the pyz, sees no change: the pyz
  writes the same /app/dispatch byte for byte, so `install` changes nothing and restarts nothing.

The same on the RHEL-shaped host with python3.9, and the RPM: tests/test_rhel_rpm.py."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List

import pytest

from roboshop_dispatch import bundle
from tests.support.dist import assert_virtualenv_as_installed
from tests.support.hosts import booted
from tests.support.payment import PaymentPublisher, make_order, parameters
from tests.test_json_output import VALIDATOR
from tests.test_provision_systemd import amqp_args, changed, wait_consumer

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

PASS_FILE = "/root/amqp.pass"
TOOL = "/usr/local/bin/dispatchctl"
THIRD_PARTY = ("psutil", "click", "typer", "rich", "jinja2", "markupsafe", "pika", "pygments", "yaml", "apt")


def put_pyz(host, pyz, dest: str = TOOL) -> None:
    """The pyz copied onto the host (root, 0755), as an operator or the Ansible role does."""
    path = host.path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o755)
    with os.fdopen(fd, "wb") as f:
        f.write(pyz.read_bytes())
    os.chmod(path, 0o755)


def tool(host, *args: str, expect: int = 0) -> Dict:
    """``dispatchctl ARGS --json`` found on the host's PATH (the copied pyz)."""
    res = host.run(["dispatchctl", *args, "--json"], check=False, timeout=300)
    assert res.returncode == expect, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def sha256_inside(host, path: str) -> str:
    return hashlib.sha256(host.path(path).read_bytes()).hexdigest()


def dispatched(host, broker, vhost: str, count: int = 3) -> List[str]:
    ids = []
    with PaymentPublisher(parameters(broker.host, broker.port, vhost, broker.user, broker.password)) as payment:
        for i in range(count):
            order = make_order(i)
            ids.append(order["orderid"])
            payment.publish(order)
    host.wait_for(lambda: all(f"order {oid} dispatched" in host.journal() for oid in ids), timeout=30,
                  what=f"{count} orders dispatched")
    return ids


@pytest.fixture
def bare_host(systemd_rootfs):
    """A fresh systemd host whose python3 sees no third-party package: Debian's dist-packages
    (python3-apt, pipx's dependencies) hidden for this boot (the root is volatile)."""
    with booted(systemd_rootfs) as host:
        host.sh("mv /usr/lib/python3/dist-packages /usr/lib/python3/dist-packages.hidden && "
                "mkdir /usr/lib/python3/dist-packages")
        for module in THIRD_PARTY:
            probe = host.run(["python3", "-c", f"import {module}"], check=False)
            assert probe.returncode != 0, f"the host's python3 has {module}: the test would not prove the pyz"
        yield host


def test_the_pyz_alone_installs_dispatch_on_a_host_without_psutil_and_answers_status(bare_host, broker, vhost,
                                                                                      dist):
    host = bare_host
    put_pyz(host, dist.pyz)
    assert host.run(["sh", "-c", "command -v dispatchctl"]).stdout.strip() == TOOL
    host.write(PASS_FILE, broker.password + "\n")
    doc = tool(host, "install", *amqp_args(broker, vhost))
    assert doc["ok"] is True and changed(doc) == ["user", "appdir", "build", "config", "service"], doc
    wait_consumer(broker, vhost)
    dispatched(host, broker, vhost)
    # the consumer it wrote is the one a virtualenv's dispatchctl writes, byte for byte
    assert_virtualenv_as_installed()
    assert sha256_inside(host, "/app/dispatch") == hashlib.sha256(bundle.build_zipapp("/usr/bin/python3")).hexdigest()

    text = host.run(["dispatchctl", "status"], check=False)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "active (running)" in text.stdout and "roboshop" in text.stdout and "MiB RSS" in text.stdout, text.stdout
    assert "Traceback" not in text.stderr
    status = tool(host, "status")
    VALIDATOR.validate(status)
    assert status["ok"] is True and status["running"] is True
    process = status["process"]
    assert process["source"] == "/proc" and process["user"] == "roboshop", process
    assert process["rss_bytes"] > 1024 * 1024 and process["pid"] == host.main_pid()
    assert process["cmdline"][-1] == "/app/dispatch"
    assert status["queue"]["consumers"] == 1
    # it ran from its unpacked copy, root's alone
    fingerprint = dist.pyz_fingerprint()
    assert host.path(f"/var/cache/dispatchctl/pyz/{fingerprint}/.complete").is_file()
    assert host.run(["stat", "-c", "%U %a", "/var/cache/dispatchctl/pyz"]).stdout.split() == ["root", "700"]
    again = tool(host, "install", *amqp_args(broker, vhost))
    assert changed(again) == [], again
    assert broker.password not in json.dumps(doc) + json.dumps(status) + text.stdout


def test_a_host_moved_from_the_virtualenvs_dispatchctl_to_the_pyz_sees_no_change(systemd_host, broker, vhost, dist):
    assert_virtualenv_as_installed()
    host = systemd_host
    host.write(PASS_FILE, broker.password + "\n")
    res = host.dispatchctl("install", *amqp_args(broker, vhost), "--json")  # the virtualenv's dispatchctl
    assert res.returncode == 0, res.stdout + res.stderr
    wait_consumer(broker, vhost)
    pid = host.main_pid()
    before = host.listing("/app", "/etc/roboshop", "/etc/systemd/system/dispatch.service")
    put_pyz(host, dist.pyz)
    doc = tool(host, "install", *amqp_args(broker, vhost))
    assert changed(doc) == [], doc
    assert host.main_pid() == pid
    assert host.listing("/app", "/etc/roboshop", "/etc/systemd/system/dispatch.service") == before
    build = next(s for s in doc["steps"] if s["name"] == "build")
    assert "up to date" in build["message"], build
