"""Issue 7 on a real systemd host (systemd-nspawn, roboshop_dispatch/lab/nspawn.py) with the real test
broker: purge keeps what dispatchctl did not create and asks first; planted links are refused and
their targets untouched; the password is out of reach of the service user's other processes.

One booted host is shared by the tests of this module (each one leaves it uninstalled): a boot
and an install are most of a test's time."""

from __future__ import annotations

import json

import pytest

from tests.support.hosts import booted, uninstalled
from tests.test_provision_systemd import PASS_FILE, amqp_args, changed, props

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

CREDENTIAL = "/etc/roboshop/dispatch.amqp-pass"


@pytest.fixture(scope="module")
def host(systemd_rootfs):
    """One booted host shared by this module's tests (each starts from `clean`)."""
    with booted(systemd_rootfs) as container:
        yield container


@pytest.fixture
def clean(host):
    """Every test starts (and leaves the host) without dispatch, its user and /app."""
    with uninstalled(host, "userdel roboshop 2>/dev/null; rm -rf /app /var/lib/dispatchctl /var/cache/dispatchctl "
                           "/run/dispatchctl /usr/local/bin/victim /etc/roboshop"):
        yield host


def install(host, broker, vhost, *extra: str, expect: int = 0) -> dict:
    host.write(PASS_FILE, broker.password + "\n")
    res = host.dispatchctl("install", *amqp_args(broker, vhost), *extra, "--json")
    assert res.returncode == expect, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def exists(host, path: str) -> bool:
    return host.run(["test", "-e", path], check=False).returncode == 0


def user_exists(host, name: str = "roboshop") -> bool:
    return host.run(["getent", "passwd", name], check=False).returncode == 0


# -- 5: purge --------------------------------------------------------------------------------------


def test_purge_keeps_the_shared_app_dir_and_user_it_did_not_create(clean, broker, vhost):
    host = clean
    host.sh("useradd --system --user-group --no-create-home roboshop && mkdir -m 0755 /app && "
            "echo 'the cart service' > /app/cart.js && chown roboshop: /app/cart.js")
    install(host, broker, vhost)
    assert host.run(["stat", "-c", "%a %U", "/app"]).stdout.split() == ["755", "root"]

    asked = host.dispatchctl("uninstall", "--purge")  # no terminal, no --yes: refused, nothing removed
    assert asked.returncode == 2 and "--yes" in asked.stderr, asked.stderr
    assert exists(host, "/app/dispatch") and props(host, "ActiveState")["ActiveState"] == "active"

    res = host.dispatchctl("uninstall", "--purge", "--yes", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {s["name"]: s for s in json.loads(res.stdout)["steps"]}
    assert "did not create" in steps["appdir"]["message"] and "did not create" in steps["user"]["message"]
    assert not exists(host, "/app/dispatch") and host.run(["cat", "/app/cart.js"]).stdout == "the cart service\n"
    assert user_exists(host)
    assert props(host, "LoadState")["LoadState"] == "not-found"


def test_purge_removes_what_it_created_and_refuses_system_paths(clean, broker, vhost):
    host = clean
    install(host, broker, vhost)
    assert user_exists(host) and exists(host, "/app")
    for path in ("//", "//etc", "/usr/bin", "/boot", "/root", "/tmp"):
        res = host.dispatchctl("uninstall", "--purge", "--yes", "--dry-run", "--app-dir", path)
        assert res.returncode == 2 and "--app-dir" in res.stderr and res.stdout == "", (path, res.stderr)
    # a file of the user's elsewhere keeps the user (and says where)
    host.sh("touch /var/tmp/roboshop-owned && chown roboshop /var/tmp/roboshop-owned")
    res = host.dispatchctl("uninstall", "--purge", "--yes", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    steps = {s["name"]: s for s in json.loads(res.stdout)["steps"]}
    assert not exists(host, "/app"), steps["appdir"]
    assert user_exists(host) and "/var/tmp/roboshop-owned" in steps["user"]["message"]
    host.sh("rm /var/tmp/roboshop-owned")
    res = host.dispatchctl("uninstall", "--purge", "--yes", "--json")
    assert res.returncode == 0 and not user_exists(host), res.stdout
    assert host.dispatchctl("uninstall", "--purge", "--yes", "--json").returncode == 0  # idempotent


def test_install_never_chmods_an_existing_app_dir(clean, broker, vhost):
    host = clean
    host.sh("mkdir -m 0750 /app && chgrp daemon /app")
    install(host, broker, vhost, expect=1)  # the service user cannot enter it: dispatch fails to start...
    assert host.run(["stat", "-c", "%a %G", "/app"]).stdout.split() == ["750", "daemon"]  # ...but /app is as it was
    host.sh("chmod 0777 /app")
    doc = install(host, broker, vhost, expect=1)  # refused before any step (issue 19: trust.py)
    assert doc["error"]["kind"] == "preflight" and "steps" not in doc, doc
    assert "/app is writable by group and others (mode 0777)" in doc["error"]["message"], doc
    assert host.run(["stat", "-c", "%a", "/app"]).stdout.strip() == "777"


# -- 6: planted links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("planted", ["/app/dispatch", "/app/.dispatch-build.json"])
def test_a_planted_link_in_the_app_dir_is_refused_and_its_target_untouched(clean, broker, vhost, planted):
    host = clean
    install(host, broker, vhost)
    host.sh("cp /usr/bin/true /usr/local/bin/victim && chown nobody:nogroup /usr/local/bin/victim && "
            f"chmod 4750 /usr/local/bin/victim && rm -f {planted} && ln -s /usr/local/bin/victim {planted}")
    before = host.run(["stat", "-c", "%a %U %G %s", "/usr/local/bin/victim"]).stdout
    for command in (["install", *amqp_args(broker, vhost)], ["build"]):
        res = host.dispatchctl(*command, "--json")
        assert res.returncode == 1, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        failed = next(s for s in doc["steps"] if s["failed"])
        assert failed["name"] == "build" and planted in failed["message"] and "symbolic link" in failed["message"]
        assert failed["next_action"]
    assert host.run(["stat", "-c", "%a %U %G %s", "/usr/local/bin/victim"]).stdout == before == "4750 nobody nogroup " \
        + before.split()[-1] + "\n"
    host.run(["rm", planted])


# -- 11: the password out of reach of the service user's other processes -------------------------------


def _second_process_view(host, pid: int) -> str:
    """What another process running as the service user can learn: the service's environment,
    the credential file, its own environment."""
    script = (f"cat /proc/{pid}/environ 2>&1 | tr '\\0' '\\n'; cat {CREDENTIAL} 2>&1; "
              "cat /etc/roboshop/dispatch.env 2>&1; env")
    return host.run(["setpriv", "--reuid=roboshop", "--regid=roboshop", "--init-groups", "--", "sh", "-c", script],
                    check=False).stdout


def test_the_password_is_a_credential_no_other_process_can_read(clean, broker, vhost):
    host = clean
    install(host, broker, vhost)
    pid = host.main_pid()
    assert pid > 0
    assert broker.password not in _second_process_view(host, pid)
    environ = host.run(["cat", f"/proc/{pid}/environ"]).stdout
    assert "AMQP_PASS" not in environ and broker.password not in environ
    assert broker.password not in host.run(["systemctl", "show", "dispatch.service"]).stdout
    assert host.run(["stat", "-c", "%a %U %G", CREDENTIAL]).stdout.split() == ["600", "root", "root"]
    assert "AMQP_PASS" not in host.run(["cat", "/etc/roboshop/dispatch.env"]).stdout
    verify = host.run(["systemd-analyze", "verify", "/etc/systemd/system/dispatch.service"], check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr


def test_an_env_file_install_migrates_to_the_credential_and_restarts_once(clean, broker, vhost):
    host = clean
    install(host, broker, vhost)
    # what an earlier dispatchctl left: AMQP_PASS in the environment file, no credential
    host.sh(f"rm {CREDENTIAL} && sed -i '/LoadCredential=/d' /etc/systemd/system/dispatch.service && "
            f"printf 'AMQP_PASS=\"%s\"\\n' '{broker.password}' >> /etc/roboshop/dispatch.env && "
            "rm -rf /var/cache/dispatchctl && systemctl daemon-reload && systemctl restart dispatch")
    pid = host.main_pid()
    doc = install(host, broker, vhost)
    assert changed(doc) == ["config", "service"]
    service = next(s for s in doc["steps"] if s["name"] == "service")
    assert service["data"]["actions"] == ["daemon-reload", "restart"]
    assert host.main_pid() != pid and "AMQP_PASS" not in host.run(["cat", "/etc/roboshop/dispatch.env"]).stdout
    again = install(host, broker, vhost)
    assert changed(again) == []


def test_children_of_dispatchctl_never_see_the_password(clean, broker, vhost):
    """useradd, systemctl... run with the password in dispatchctl's own environment: none gets it."""
    host = clean
    host.write(PASS_FILE, "")
    res = host.dispatchctl("install", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                           "--amqp-vhost", vhost, "--amqp-user", broker.user, "--json",
                           env={"DISPATCHCTL_AMQP_PASS": broker.password,
                                "SYSTEMD_LOG_LEVEL": "debug"})  # systemctl then logs its environment
    assert res.returncode == 0, res.stdout + res.stderr
    assert broker.password not in res.stdout + res.stderr
    journal = host.run(["journalctl", "--no-pager", "-o", "cat"]).stdout
    assert broker.password not in journal


# -- 9: root under another name -------------------------------------------------------------------------


@pytest.mark.parametrize("make, fragment", [
    ("useradd -o -u 0 -g 0 -M toor", "uid 0"),
    ("groupadd rootish && useradd -M -g rootish -G root toor", "group root"),
])
def test_an_account_that_is_root_in_disguise_is_refused_before_anything(clean, broker, vhost, make, fragment):
    host = clean
    host.sh(make)
    try:
        doc = install(host, broker, vhost, "--user", "toor", expect=1)
        step = next(s for s in doc["steps"] if s["failed"])
        assert step["name"] == "user" and fragment in step["message"], step
        assert not exists(host, "/app") and not exists(host, "/etc/systemd/system/dispatch.service")
    finally:
        host.sh("userdel -f toor; groupdel rootish; true")
