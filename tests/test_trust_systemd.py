"""Issue 19 on a real systemd host (systemd-nspawn, roboshop_dispatch/lab/nspawn.py) with the real
test broker: directories another user controls are refused before anything changes, an /app/src
that is not ours survives a go build, the running consumer's /proc/PID files belong to root,
privileged groups are refused, Group= is the user's primary group, a FIFO planted at the run log
hangs nothing, and check warns about other units running as the service user.

One booted host is shared by the tests of this module (each one leaves it uninstalled)."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.hosts import booted, uninstalled
from tests.test_provision_systemd import PASS_FILE, ArtifactServer, _go_zip, amqp_args, props
from tests.test_safety_systemd import exists, install

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

LOG = "/var/log/dispatchctl/dispatchctl.log"


@pytest.fixture(scope="module")
def host(systemd_rootfs):
    with booted(systemd_rootfs) as container:
        yield container


@pytest.fixture
def clean(host):
    """Every test starts (and leaves the host) without dispatch, its users and what a test made."""
    with uninstalled(host, "systemctl stop other-roboshop.service 2>/dev/null; "
                           "rm -f /etc/systemd/system/other-roboshop.service; systemctl daemon-reload; "
                           "userdel roboshop 2>/dev/null; userdel alice 2>/dev/null; groupdel services 2>/dev/null; "
                           "groupdel roboshop 2>/dev/null; rm -rf /app /srv/* /var/lib/dispatchctl "
                           "/var/cache/dispatchctl /run/dispatchctl /etc/roboshop /var/log/dispatchctl"):
        yield host


# -- 3: directories another user controls ----------------------------------------------------------


@pytest.mark.parametrize("make, app_dir, named", [
    ("useradd -M alice && mkdir /srv/appx && chown alice /srv/appx", "/srv/appx", "/srv/appx is owned by uid"),
    ("mkdir -m 0777 /srv/shared && mkdir /srv/shared/app", "/srv/shared/app", "/srv/shared is writable by"),
    ("useradd -M alice && mkdir /etc/roboshop && chown alice /etc/roboshop", "/app", "/etc/roboshop is owned by uid"),
], ids=["app-dir-of-another-user", "parent-writable-by-others", "etc-roboshop-of-another-user"])
def test_a_directory_another_user_controls_is_refused_before_anything_changes(clean, broker, vhost, make, app_dir,
                                                                             named):
    host = clean
    host.sh(make)
    before = host.listing("/srv", "/etc/roboshop", "/etc/systemd/system")
    doc = install(host, broker, vhost, "--app-dir", app_dir, expect=1)
    assert doc["error"]["kind"] == "preflight" and named in doc["error"]["message"], doc
    assert "chown root:root" in doc["error"]["message"] or "chmod go-w" in doc["error"]["message"]
    assert host.listing("/srv", "/etc/roboshop", "/etc/systemd/system") == before
    assert host.run(["getent", "passwd", "roboshop"], check=False).returncode != 0  # no user made either
    dry = install(host, broker, vhost, "--app-dir", app_dir, "--dry-run", expect=1)  # the dry run says so too
    assert dry["error"]["kind"] == "preflight"


# -- 4: the go build leaves what is not ours alone -----------------------------------------------------


def test_an_app_src_that_is_not_ours_survives_a_go_build(clean, broker, vhost):
    """/app is shared: another RoboShop service unzipped its sources to /app/src. Before issue 19 a
    go build replaced it with dispatch's sources. The stamp records the artifact masked, root 0600."""
    host = clean
    host.sh("mkdir -p /app/src/catalogue && echo 'package main // catalogue' > /app/src/catalogue/main.go")
    before = host.listing("/app/src")
    server = ArtifactServer()
    server.body = _go_zip("v1")
    try:
        url = server.url + "?X-Amz-Signature=s3cr3t-signature&X-Amz-Credential=AKIAEXAMPLE"
        started = time.monotonic()
        doc = install(host, broker, vhost, "--flavour", "go", "--artifact", url, "--insecure")
        print(f"go install with an /app/src of another service: {time.monotonic() - started:.1f} s")
    finally:
        server.close()
    assert "build" in [s["name"] for s in doc["steps"] if s["changed"]]
    assert host.listing("/app/src") == before
    assert host.path("/app/src/catalogue/main.go").read_text() == "package main // catalogue\n"
    assert host.path("/app/dispatch").read_bytes()[:4] == b"\x7fELF"
    assert host.path("/var/cache/dispatchctl/go-src/main.go").exists()  # our sources, in our private dir
    assert host.run(["stat", "-c", "%a %U", "/var/cache/dispatchctl/go-build"]).stdout.split() == ["700", "root"]
    stamp = "/app/.dispatch-build.json"
    assert host.run(["stat", "-c", "%a %U", stamp]).stdout.split() == ["600", "root"]
    recorded = json.loads(host.path(stamp).read_text())["artifact"]
    assert "s3cr3t-signature" not in recorded and "AKIAEXAMPLE" not in recorded and "X-Amz-Signature=***" in recorded
    created = json.loads(host.path("/var/lib/dispatchctl/created.json").read_text())
    assert "/app/src" not in created["files"]
    res = host.dispatchctl("uninstall", "--purge", "--yes", "--json")
    assert res.returncode == 0, res.stdout
    assert host.listing("/app/src") == before  # purge removes only what we made


# -- 5: the running consumer is not dumpable -------------------------------------------------------------


def test_the_running_consumers_proc_files_belong_to_root(clean, broker, vhost):
    """prctl(PR_SET_DUMPABLE, 0) at start: /proc/PID/environ, mem... belong to root, so no other
    process of the service user reads the consumer's memory or environment (before issue 19 they
    belonged to roboshop)."""
    host = clean
    install(host, broker, vhost)
    pid = props(host, "MainPID")["MainPID"]
    owners = host.run(["stat", "-c", "%U", f"/proc/{pid}/environ", f"/proc/{pid}/mem", f"/proc/{pid}/maps"]).stdout
    print(f"the consumer's /proc/{pid}/environ, mem, maps belong to: {owners.split()}")
    assert owners.split() == ["root", "root", "root"]
    assert host.run(["ps", "-o", "user=", "-p", pid]).stdout.strip() == "roboshop"
    peek = host.run(["setpriv", "--reuid=roboshop", "--regid=roboshop", "--init-groups", "--", "cat",
                     f"/proc/{pid}/environ"], check=False)
    assert peek.returncode != 0 and "Permission denied" in peek.stderr


# -- 6: privileged groups, Group= ---------------------------------------------------------------------


def test_a_service_user_in_a_privileged_group_is_refused_unless_allowed(clean, broker, vhost):
    host = clean
    host.sh("groupadd services && useradd --system -M -g services -G adm -s /usr/sbin/nologin roboshop")
    doc = install(host, broker, vhost, expect=1)
    step = next(s for s in doc["steps"] if s["failed"])
    assert step["name"] == "user" and "privileged group adm" in step["message"], step
    assert "--allow-group adm" in step["next_action"]
    assert not exists(host, "/etc/systemd/system/dispatch.service")
    doc = install(host, broker, vhost, "--allow-group", "adm")
    assert doc["ok"]
    unit = host.path("/etc/systemd/system/dispatch.service").read_text()
    assert "\nUser=roboshop\nGroup=services\n" in unit  # the primary group the system has, not the user's name
    assert props(host, "ActiveState")["ActiveState"] == "active"
    check = json.loads(host.dispatchctl("check", "--json").stdout)
    user = next(f for f in check["findings"] if f["name"] == "user")
    assert user["status"] == "warn" and "adm" in user["summary"]


# -- 7: the run log --------------------------------------------------------------------------------------


def test_a_fifo_planted_at_the_run_log_hangs_nothing(clean, broker, vhost):
    host = clean
    host.sh(f"mkdir -m 0700 -p /var/log/dispatchctl && mkfifo {LOG}")
    started = time.monotonic()
    host.write(PASS_FILE, broker.password + "\n")
    res = host.dispatchctl("install", *amqp_args(broker, vhost), "--json", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"cannot write {LOG}" in res.stderr and "not logged" in res.stderr
    assert time.monotonic() - started < 60
    assert host.run(["stat", "-c", "%F", LOG]).stdout.strip() == "fifo"  # left for the operator to look at


def test_the_run_log_is_in_a_directory_of_roots_and_masks_a_quoted_password(clean, broker, vhost):
    host = clean
    host.sh("printf '=== a run of 0.4\\n' > /var/log/dispatchctl.log")
    password = "it's a \"quoted\" pass"
    res = host.dispatchctl("install", *amqp_args(broker, vhost)[:-2], "--amqp-pass", password, "--dry-run")
    assert res.returncode == 0, res.stderr
    res = host.dispatchctl("uninstall")  # a run that changes the host (and takes no password)
    host.write(PASS_FILE, password + "\n")
    broker.add_user("quoted-user", password, vhost=vhost)
    try:
        res = host.dispatchctl("configure", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                               "--amqp-vhost", vhost, "--amqp-user", "quoted-user", "--amqp-pass", password)
        text = host.path(LOG).read_text()
        assert "=== a run of 0.4" in text and not exists(host, "/var/log/dispatchctl.log")  # moved in
        assert "--amqp-user quoted-user --amqp-pass '********'" in text, text
        assert "it's" not in text and "quoted" not in text.replace("quoted-user", "")
        assert host.run(["stat", "-c", "%a %U", "/var/log/dispatchctl", LOG]).stdout.split() == \
            ["700", "root", "600", "root"]
    finally:
        broker.ctl("delete_user", "quoted-user", check=False)


# -- 5: other units of the service user ------------------------------------------------------------------


def test_check_warns_when_other_units_run_as_the_service_user(clean, broker, vhost):
    host = clean
    install(host, broker, vhost)
    check = json.loads(host.dispatchctl("check", "--json").stdout)
    same = next(f for f in check["findings"] if f["name"] == "same-user")
    assert same["status"] == "ok", same
    password = next(f for f in check["findings"] if f["name"] == "password")
    assert password["status"] == "warn" and "well-known default" in password["summary"]  # the lab's roboshop123
    host.write("/etc/systemd/system/other-roboshop.service",
               "[Service]\nUser=roboshop\nExecStart=/bin/sleep infinity\n", mode=0o644)
    host.sh("systemctl daemon-reload && systemctl start other-roboshop.service")
    check = json.loads(host.dispatchctl("check", "--json").stdout)
    same = next(f for f in check["findings"] if f["name"] == "same-user")
    assert same["status"] == "warn" and same["data"]["units"] == ["other-roboshop.service"], same
    assert "/run/credentials/dispatch.service/amqp-pass" in same["cause"] and "--user dispatch" in same["fix"]
