"""Remembered settings on a real systemd host (one booted systemd-nspawn container shared by the
tests of this module, the real test broker): after one ``install`` with options, ``install`` with
no options and no password changes nothing; ``configure --amqp-host`` keeps the password;
``DISPATCHCTL_*`` variables work; ``--dry-run`` shows where each value came from; ``check`` tests
the consumer's own login. The tests run in order, each leaving the host installed and healthy."""

from __future__ import annotations

import json
import uuid
from typing import Dict, Iterator, List, Optional

import pytest

from roboshop_dispatch import envfile
from roboshop_dispatch.settings import MASK
from tests.test_provision_systemd import PASS_FILE, amqp_args, changed, mtime_ns, props, service_actions, wait_consumer

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

ENV_FILE = "/etc/roboshop/dispatch.env"
CREDENTIAL = "/etc/roboshop/dispatch.amqp-pass"
UNIT = "/etc/systemd/system/dispatch.service"


@pytest.fixture(scope="module")
def shared_vhost(broker) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    broker.ctl("add_vhost", name)
    broker.ctl("set_permissions", "-p", name, broker.user, ".*", ".*", ".*")
    yield name
    broker.ctl("delete_vhost", name, check=False)


@pytest.fixture(scope="module")
def host(systemd_rootfs, broker, shared_vhost):
    """One booted host with dispatch installed once, with every AMQP option and a password file."""
    from tests.support.hosts import booted

    with booted(systemd_rootfs) as container:
        container.write(PASS_FILE, broker.password + "\n")
        doc = dispatchctl(container, "install", *amqp_args(broker, shared_vhost))
        assert doc["ok"], doc
        container.run(["rm", PASS_FILE])  # nothing left to read the password from but the installed credential
        wait_consumer(broker, shared_vhost)
        yield container


def dispatchctl(host, *args: str, expect: int = 0, env: Optional[Dict[str, str]] = None) -> Dict:
    res = host.dispatchctl(*args, "--json", env=env)
    assert res.returncode == expect, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def installed_env(host) -> Dict[str, str]:
    return envfile.read(host.path(ENV_FILE))


def mtimes(host) -> List[int]:
    return [mtime_ns(host, p) for p in (ENV_FILE, CREDENTIAL, UNIT, "/app/dispatch")]


def test_install_again_with_no_options_and_no_password_changes_nothing(host):
    before = props(host, "MainPID", "NRestarts", "InvocationID")
    files = mtimes(host)
    doc = dispatchctl(host, "install")  # stdin is not a terminal: a prompt would fail the run
    assert all(s["status"] == "ok" for s in doc["steps"]), doc
    assert changed(doc) == [] and doc["changed"] == 0 and service_actions(doc) == []
    assert props(host, "MainPID", "NRestarts", "InvocationID") == before
    assert mtimes(host) == files
    for command in ("configure", "build", "start"):
        assert changed(dispatchctl(host, command)) == [], command
    assert props(host, "MainPID", "NRestarts", "InvocationID") == before


def test_dry_run_shows_where_each_value_came_from(host, broker, shared_vhost):
    doc = dispatchctl(host, "install", "--dry-run", "--amqp-vhost", shared_vhost,
                      env={"DISPATCHCTL_AMQP_PORT": str(broker.port)})
    sources = {name: (item["source"], item["from"]) for name, item in doc["settings"].items()}
    assert sources["amqp_vhost"] == ("option", "--amqp-vhost")
    assert sources["amqp_port"] == ("environment", "DISPATCHCTL_AMQP_PORT")
    assert sources["amqp_hosts"] == ("installed", f"{ENV_FILE}: AMQP_HOST")
    assert sources["amqp_user"] == ("installed", f"{ENV_FILE}: AMQP_USER")
    assert sources["service_user"] == ("installed", f"{UNIT}: User=")
    assert sources["app_dir"] == ("installed", f"{UNIT}: ExecStart=")
    assert sources["flavour"] == ("installed", "/app/dispatch (the installed binary)")
    # the bundled flavour reads none of the go flavour's own settings: not listed (issue 20)
    assert doc["settings"]["flavour"]["value"] == "bundled"
    assert not {"artifact", "artifact_sha256", "insecure"} & set(sources), sources
    assert doc["settings"]["amqp_pass"] == {"value": MASK, "source": "installed", "from": CREDENTIAL}
    assert doc["settings"]["amqp_hosts"]["value"] == ["127.0.0.1"]
    assert changed(doc) == []
    text = host.dispatchctl("install", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "settings:" in text.stdout and f"installed ({CREDENTIAL})" in text.stdout
    assert broker.password not in text.stdout + text.stderr + json.dumps(doc)


def test_configure_a_new_host_keeps_the_installed_password(host, broker, shared_vhost):
    credential = host.path(CREDENTIAL).read_text()
    pid = props(host, "MainPID")["MainPID"]
    # the test broker listens on 127.0.0.1 only: the restarted service cannot become ready (exit 1);
    # --no-rollback keeps the new host (without it the change is rolled back: test_rollback_systemd.py)
    doc = dispatchctl(host, "configure", "--amqp-host", "127.0.0.2", "--no-rollback", expect=1)
    assert [s["name"] for s in doc["steps"] if s["changed"] or s["failed"]] == ["config", "service"], doc
    assert doc["failed_step"] == "service" and "127.0.0.2" in doc["steps"][-1]["message"]
    assert installed_env(host)["AMQP_HOST"] == "127.0.0.2"
    assert host.path(CREDENTIAL).read_text() == credential
    assert props(host, "MainPID")["MainPID"] != pid
    # back through the environment variable: the kept password still logs in
    doc = dispatchctl(host, "configure", env={"DISPATCHCTL_AMQP_HOST": "127.0.0.1"})
    assert changed(doc) == ["config", "service"], doc
    assert installed_env(host)["AMQP_HOST"] == "127.0.0.1"
    assert host.path(CREDENTIAL).read_text() == credential
    wait_consumer(broker, shared_vhost)


def test_a_bad_installed_value_is_named_and_nothing_is_touched(host):
    env_path = host.path(ENV_FILE)
    original = env_path.read_text()
    try:
        port = installed_env(host)["AMQP_PORT"]
        env_path.write_text(original.replace(f'AMQP_PORT="{port}"', 'AMQP_PORT="x"'))
        assert installed_env(host)["AMQP_PORT"] == "x"
        files = mtimes(host)
        res = host.dispatchctl("install")
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stderr.strip().startswith(f"dispatchctl: error: {ENV_FILE}: AMQP_PORT: ")
        assert res.stderr.strip().endswith("give --amqp-port")
        assert mtimes(host) == files
        ok = host.dispatchctl("install", "--amqp-port", port, "--dry-run")
        assert ok.returncode == 0, ok.stderr  # the option wins over the broken installed value
    finally:
        env_path.write_text(original)


def test_check_logs_in_as_the_consumer_does_when_the_file_sets_no_user(host, broker, shared_vhost):
    env_path = host.path(ENV_FILE)
    original = env_path.read_text()
    lines = [line for line in original.splitlines() if not line.startswith("AMQP_USER=")]
    env_path.write_text("\n".join(lines) + "\n")
    try:
        doc = dispatchctl(host, "check", expect=1)
        auth = next(f for f in doc["findings"] if f["name"] == "rabbitmq.auth")
        assert "'guest'" in json.dumps(auth), auth  # the consumer's default (consumer/config.py)
        assert f"'{broker.user}'" not in json.dumps(auth)
        remembered = dispatchctl(host, "install", "--dry-run")["settings"]["amqp_user"]
        assert remembered["value"] == "guest" and "the consumer's default" in remembered["from"]
    finally:
        env_path.write_text(original)
