"""The floor of the target hosts, for real: RHEL 9's python3 is 3.9.

dispatchctl itself runs on the target host (typer evaluates annotations at run time, so a
``X | None`` there breaks only on 3.9), and the bundled consumer runs under the host's system
python3 with nothing but the zipapp. Both are run here under a real CPython 3.9; vermin in CI
checks the syntax statically as well.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from roboshop_dispatch import amqp, bundle
from tests.support.consumer import Consumer
from tests.support.payment import PaymentPublisher, make_order, parameters

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("install", "configure", "build", "start", "status", "check", "check-rabbitmq", "logs", "uninstall")


def find_python39() -> str:
    """A CPython 3.9: $DISPATCH_PYTHON39, python3.9 on PATH, or pyenv's (the machine image has one)."""
    candidates = [os.environ.get("DISPATCH_PYTHON39", ""), shutil.which("python3.9") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    pytest.fail("no CPython 3.9 found (set DISPATCH_PYTHON39=/path/to/python3.9): the target hosts' floor "
                "cannot be tested", pytrace=False)


@pytest.fixture(scope="module")
def python39() -> str:
    return find_python39()


@pytest.fixture(scope="module")
def venv39(python39, tmp_path_factory) -> Path:
    """dispatchctl installed from this checkout (a wheel, as users get it) into a 3.9 venv."""
    venv = tmp_path_factory.mktemp("py39") / "venv"
    subprocess.run([python39, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


def test_every_command_parses_its_options_on_39(venv39):
    for command in COMMANDS:
        proc = subprocess.run([str(venv39 / "bin/dispatchctl"), command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
        assert "Usage: dispatchctl " + command in proc.stdout


def test_install_dry_run_on_39(venv39, tmp_path):
    env = dict(os.environ, DISPATCHCTL_AMQP_PASS="roboshop123")
    proc = subprocess.run(
        [str(venv39 / "bin/dispatchctl"), "install", "--amqp-host", "127.0.0.1", "--dry-run", "--json"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert [s["name"] for s in doc["steps"]] == ["packages", "user", "appdir", "build", "config", "service"]
    assert "roboshop123" not in proc.stdout + proc.stderr


def test_bundled_consumer_on_a_bare_39(python39, broker, vhost, tmp_path):
    """The zipapp under a python3.9 that has no pika: everything it needs is inside."""
    bare = subprocess.run([python39, "-I", "-c", "import pika"], capture_output=True, timeout=30)
    assert bare.returncode != 0, "this python3.9 has pika installed: the test would not prove the zipapp"
    app = tmp_path / "dispatch"
    app.write_bytes(bundle.build_zipapp(python39))
    app.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AMQP_HOST": broker.host, "AMQP_PORT": str(broker.port),
           "AMQP_VHOST": vhost, "AMQP_USER": broker.user, "AMQP_PASS": broker.password}
    consumer = Consumer(env, [str(app)])
    try:
        consumer.wait_line("consuming orders", timeout=60)
        # the process really is the 3.9 interpreter named in the zipapp's #! line
        assert os.path.realpath(f"/proc/{consumer.proc.pid}/exe") == os.path.realpath(python39)
        publisher = PaymentPublisher(parameters(broker.host, broker.port, vhost, broker.user, broker.password))
        orders = [make_order(i) for i in range(20)]
        with publisher.connect():
            for order in orders:
                publisher.publish(order)
            publisher.publish({"user": "no order id"})
        consumer.wait_orders([o["orderid"] for o in orders], timeout=60)
        consumer.wait_line("quarantined", timeout=30)
        code, took = consumer.stop(signal.SIGTERM)
        # the README's promise, kept as a bound: exit 0 within 10 s of SIGTERM (here: under 1 s)
        assert code == 0 and took < 10, consumer.output[-2000:]
        assert all(consumer.orders[o["orderid"]] == 1 for o in orders)
    finally:
        consumer.kill()
        consumer.assert_no_password()
    assert broker.queue_counts(vhost)[amqp.QUARANTINE_QUEUE][0] == 1
