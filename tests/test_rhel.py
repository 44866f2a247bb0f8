"""The RHEL-family path executed for real: dispatchctl's ``rpm -q`` and ``dnf install`` on a
RHEL-shaped systemd host (tests/support/rhel.py: a booted systemd-nspawn container whose
os-release says Rocky Linux 9 or Fedora, Debian's real dnf and rpm, and one local repository of
RPMs this session builds with rpmbuild). The bundled zipapp runs on that repository's CPython 3.9
against the real test broker. Nothing is mocked."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from typing import Dict, List

import pytest

from tests.test_provision_systemd import wait_consumer

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

PASS_FILE = "/root/amqp.pass"
ZIP_INSIDE = "/root/dispatch.zip"
# what dnf leaves behind when it runs a transaction (history database, logs, rpm database)
DNF_TRACES = ("/var/lib/dnf", "/var/lib/rpm", "/var/log/dnf.log", "/var/log/dnf.rpm.log", "/var/log/hawkey.log")

GO_PROGRAM = """package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	fmt.Printf("dispatch-go on rhel ready host=%s\\n", os.Getenv("AMQP_HOST"))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	<-stop
}
"""


# -- the hosts ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rhel_rootfs():
    from roboshop_dispatch.lab.nspawn import HostError
    from tests.support.rhel import ensure_rhel_rootfs

    try:
        return ensure_rhel_rootfs(log=lambda m: print(m, file=sys.stderr))
    except (HostError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot build the RHEL-shaped test host: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def rhel_repos(rhel_rootfs, tmp_path_factory):
    """The session's RPM repositories (built once per session): ``all`` and ``no-golang``."""
    from roboshop_dispatch.lab.nspawn import HostError
    from tests.support.rhel import build_repo

    try:
        return build_repo(tmp_path_factory.mktemp("rpms"), rhel_rootfs)
    except (HostError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot build the test RPM repository: {exc}", pytrace=False)


def boot(rootfs, repo, os_release: str = "rocky"):
    from roboshop_dispatch.lab.nspawn import HostError
    from tests.support.rhel import RhelHost

    host = RhelHost(rootfs, repo, os_release)
    try:
        return host.boot()
    except HostError as exc:
        pytest.fail(f"cannot boot the RHEL-shaped test host: {exc}", pytrace=False)


@pytest.fixture
def rocky(rhel_rootfs, rhel_repos):
    host = boot(rhel_rootfs, rhel_repos["all"])
    yield host
    host.poweroff()


@pytest.fixture
def fedora(rhel_rootfs, rhel_repos):
    host = boot(rhel_rootfs, rhel_repos["all"], "fedora")
    yield host
    host.poweroff()


@pytest.fixture
def rocky_without_golang(rhel_rootfs, rhel_repos):
    host = boot(rhel_rootfs, rhel_repos["no-golang"])
    yield host
    host.poweroff()


@pytest.fixture(scope="session")
def versions(rhel_rootfs, rhel_repos):
    """What the session's RPMs hold: python3 -> 3.9.x, golang -> the toolchain's version."""
    from tests.support.rhel import go_version, python39

    return {"python3": python39()[1], "golang": go_version(rhel_rootfs)}


# -- helpers --------------------------------------------------------------------------------------


def install_args(broker, vhost: str, *extra: str) -> List[str]:
    return ["install", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port), "--amqp-vhost", vhost,
            "--amqp-user", broker.user, "--amqp-pass-file", PASS_FILE, *extra, "--json"]


def run_json(host, args: List[str], expect: int = 0, env: Dict[str, str] | None = None):
    res = host.dispatchctl(*args, env=env)
    assert res.returncode == expect, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout), res


def changed(doc: Dict) -> List[str]:
    return [s["name"] for s in doc["steps"] if s["changed"]]


def step(doc: Dict, name: str) -> Dict:
    return next(s for s in doc["steps"] if s["name"] == name)


def dnf_traces(host) -> List[str]:
    return host.listing(*DNF_TRACES)


def go_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dispatch/main.go", GO_PROGRAM)
    return buf.getvalue()


def rerun_without_dnf(host, args: List[str]) -> float:
    """The re-run: 0 changes, no dnf transaction (history and dnf's files untouched); its time."""
    history = host.dnf_history()  # (reading the history touches its database: before the snapshot)
    traces = dnf_traces(host)
    started = time.perf_counter()
    doc, _ = run_json(host, args)
    seconds = time.perf_counter() - started
    assert changed(doc) == [], doc
    assert "installed" in step(doc, "packages")["message"]
    assert dnf_traces(host) == traces
    assert host.dnf_history() == history
    return seconds


# -- install where the packages are missing: dnf really installs ------------------------------------


def test_bundled_on_rocky_installs_python39_with_dnf_and_runs_on_it(rocky, broker, vhost, versions):
    host = rocky
    host.write(PASS_FILE, broker.password + "\n")
    assert host.rpm_installed("python3") is None and host.run(["which", "python3"], check=False).returncode != 0
    assert host.dnf_history() == []
    args = install_args(broker, vhost)
    predicted, _ = run_json(host, [*args, "--dry-run"])
    assert "install python3 with dnf" in step(predicted, "packages")["message"]
    assert host.rpm_installed("python3") is None  # the dry run installed nothing

    started = time.perf_counter()
    doc, _ = run_json(host, args)
    first = time.perf_counter() - started
    assert changed(doc) == changed(predicted), "the dry run predicted other steps than the real run changed"
    assert f"installed python3 {versions['python3']} with dnf" in step(doc, "packages")["message"]
    assert host.rpm_installed("python3") == versions["python3"] and versions["python3"].startswith("3.9.")
    assert len(host.dnf_history()) == 1 and "Install" in host.dnf_history()[0]

    # useradd on RHEL: a system account, no home created, RHEL's /sbin/nologin
    argv = step(doc, "user")["data"]["argv"]
    assert argv[:4] == ["useradd", "--system", "--user-group", "--no-create-home"]
    assert argv[argv.index("--shell") + 1] == "/sbin/nologin"
    account = host.run(["getent", "passwd", "roboshop"]).stdout.strip().split(":")
    assert int(account[2]) < 1000 and account[5] == "/app" and account[6] == "/sbin/nologin"
    assert host.run(["test", "-e", "/home/roboshop"], check=False).returncode != 0

    # the bundled zipapp really runs on RHEL 9's python3, 3.9, and consumes from the broker
    wait_consumer(broker, vhost)
    pid = host.main_pid()
    exe = host.run(["readlink", f"/proc/{pid}/exe"]).stdout.strip()
    assert exe == "/usr/bin/python3.9", exe

    rerun = rerun_without_dnf(host, args)
    noop = time.perf_counter()
    host.run(["dnf", "-q", "install", "-y", "python3"])  # what a naive re-run would pay
    noop = time.perf_counter() - noop
    print(f"\nrocky bundled: first install {first:.2f}s, re-run {rerun:.2f}s (no dnf), "
          f"a no-op `dnf install python3` alone {noop:.2f}s")


def test_go_on_fedora_installs_golang_with_dnf_and_builds(fedora, broker, vhost, versions):
    host = fedora
    host.write(PASS_FILE, broker.password + "\n")
    host.path(ZIP_INSIDE).write_bytes(go_zip())
    assert "Fedora" in host.run(["cat", "/etc/os-release"]).stdout
    assert host.rpm_installed("golang") is None and host.run(["which", "go"], check=False).returncode != 0
    args = install_args(broker, vhost, "--flavour", "go", "--artifact", ZIP_INSIDE)
    predicted, _ = run_json(host, [*args, "--dry-run"])
    doc, _ = run_json(host, args)
    assert changed(doc) == changed(predicted)
    assert f"installed golang {versions['golang']} with dnf" in step(doc, "packages")["message"]
    assert host.rpm_installed("golang") == versions["golang"]
    assert host.rpm_installed("python3") is None  # the go flavour asks for golang only
    host.wait_for(lambda: "dispatch-go on rhel ready host=127.0.0.1" in host.journal(), timeout=15,
                  what="the go program's start line")
    # check on a RHEL-family host: the OS family and SELinux's mode (this kernel has none: absent)
    res = host.dispatchctl("check", "--json")
    by = {f["name"]: f for f in json.loads(res.stdout)["findings"]}
    assert by["os"]["status"] == "ok" and "rhel family" in by["os"]["summary"], by["os"]
    assert by["selinux"]["status"] == "ok" and by["selinux"]["summary"] == "absent", by["selinux"]
    rerun = rerun_without_dnf(host, args)
    print(f"\nfedora go: re-run {rerun:.2f}s (no dnf transaction, build skipped)")


# -- a package no repository has: a clear failure, nothing half-done --------------------------------


def test_a_package_missing_from_every_repository_fails_clearly(rocky_without_golang, broker, vhost):
    host = rocky_without_golang
    host.write(PASS_FILE, broker.password + "\n")
    host.path(ZIP_INSIDE).write_bytes(go_zip())
    before = host.listing("/etc/systemd/system", "/etc/roboshop", "/app", "/var/lib/dispatchctl")
    doc, _ = run_json(host, install_args(broker, vhost, "--flavour", "go", "--artifact", ZIP_INSIDE), expect=1)
    failed = step(doc, "packages")
    assert failed["failed"], doc
    assert "golang: no such package in any enabled repository (dispatchctl-test)" in failed["message"]
    assert "dnf repolist --all" in failed["next_action"]
    assert not any(s["changed"] for s in doc["steps"]), doc
    # nothing half-done: no package, no dnf transaction, no user, nothing written
    assert host.run(["rpm", "-qa"]).stdout.strip() == ""
    assert host.dnf_history() == []
    assert host.run(["id", "roboshop"], check=False).returncode != 0
    assert host.listing("/etc/systemd/system", "/etc/roboshop", "/app", "/var/lib/dispatchctl") == before


# -- dnf's lock held by another process: bounded wait with a message, never corrupts -----------------


def hold_dnf_lock(host, seconds: int) -> int:
    """A live process whose pid sits in dnf's RPMDB lock file, as a running dnf leaves it."""
    host.run(["systemd-run", "--unit=dnf-holder", "--collect", "sleep", str(seconds)])
    pid = host.wait_for(lambda: int(host.show("dnf-holder.service", ["MainPID"])["MainPID"] or 0), timeout=10,
                        what="the lock holder")
    host.run(["mkdir", "-p", "/var/lib/dnf"])
    host.write("/var/lib/dnf/rpmdb_lock.pid", str(pid), mode=0o644)
    return pid


def test_a_held_dnf_lock_is_waited_for_within_a_bound_then_fails_clearly(rocky, broker, vhost, versions):
    host = rocky
    host.write(PASS_FILE, broker.password + "\n")
    holder = hold_dnf_lock(host, 300)
    args = install_args(broker, vhost)
    started = time.monotonic()
    doc, res = run_json(host, args, expect=1, env={"DISPATCHCTL_DNF_LOCK_WAIT": "3"})
    elapsed = time.monotonic() - started
    failed = step(doc, "packages")
    assert failed["failed"] and f"dnf is busy: another process holds its lock (pid {holder} (/usr/bin/sleep 300))" \
        in failed["message"], failed
    assert "waiting for dnf's lock, held by pid" in res.stderr
    # an ordering, not an absolute bound: it waited the 3 s it was told to, then gave up long
    # before the holder (300 s) or the default wait (300 s) would have ended
    assert 3 <= elapsed < 300 / 4, elapsed
    # never corrupts: nothing installed, the holder's lock file intact, no user yet
    assert host.rpm_installed("python3") is None
    assert host.path("/var/lib/dnf/rpmdb_lock.pid").read_text() == str(holder)
    assert host.run(["id", "roboshop"], check=False).returncode != 0

    # the holder finishes while dispatchctl waits: the install goes on by itself
    host.run(["systemctl", "stop", "dnf-holder.service"])
    holder = hold_dnf_lock(host, 4)
    doc, res = run_json(host, args)
    assert "waiting for dnf's lock" in res.stderr
    assert f"installed python3 {versions['python3']} with dnf" in step(doc, "packages")["message"]
    assert host.rpm_installed("python3") == versions["python3"]


def test_bundled_on_rocky_traces_and_serves_metrics_on_python39(rocky, broker, vhost, versions):
    """Tracing and metrics on in the installed unit (its sandbox) on RHEL 9's python3 3.9, from
    the zipapp: OpenTelemetry's entry points and namespace packages found inside the zip."""
    from tests.support.otlp import Receiver, free_port
    from tests.support.payment import PaymentPublisher, make_order, parameters
    from tests.test_observability import instana_headers, w3c_headers
    from tests.test_observability_systemd import metrics, outcome, switch_on
    from tests.test_provision_systemd import wait_consumer

    host = rocky
    host.write(PASS_FILE, broker.password + "\n")
    run_json(host, install_args(broker, vhost))
    port = free_port()
    with Receiver() as receiver:
        switch_on(host, f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.endpoint}\nOTEL_BSP_SCHEDULE_DELAY=200\n"
                        f"DISPATCH_METRICS_LISTEN=127.0.0.1:{port}\nDISPATCH_PROCESSING_MS=0-5\n")
        wait_consumer(broker, vhost)
        exe = host.run(["readlink", f"/proc/{host.main_pid()}/exe"]).stdout.strip()
        assert exe == "/usr/bin/python3.9", exe
        sent = [(make_order(i), instana_headers() if i % 2 else w3c_headers()) for i in range(10)]
        with PaymentPublisher(parameters(broker.host, broker.port, vhost, broker.user, broker.password)) as payment:
            for order, headers in sent:
                payment.publish(order, headers)
        spans = receiver.wait_spans(20, timeout=60)
        for order, headers in sent:
            [get] = [s for s in spans if s.name == "getOrder" and s.attributes["orderid"] == order["orderid"]]
            [sale] = [s for s in spans if s.parent_span_id == get.span_id]
            if "traceparent" in headers:
                parent = tuple(headers["traceparent"].split("-")[1:3])
            else:
                parent = ("0" * 16 + headers["X-INSTANA-T"], headers["X-INSTANA-S"])
            assert (get.trace_id, get.parent_span_id) == parent and get.kind == "CONSUMER"
            assert (sale.name, sale.kind, sale.trace_id) == ("processSale", "INTERNAL", get.trace_id)
        assert spans[0].resource["service.name"] == "dispatch"
        assert outcome(metrics(port), "dispatched") == 10
        journal = host.journal()
        assert "tracing on: spans to " in journal and "metrics on http://127.0.0.1:" in journal
        assert "Traceback" not in journal
