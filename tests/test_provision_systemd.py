"""``dispatchctl install`` and its parts on a real systemd host (a booted systemd-nspawn
container, roboshop_dispatch/lab/nspawn.py) against the real test broker: the service inside reaches it on
127.0.0.1 through the shared network. Nothing is mocked."""

from __future__ import annotations

import http.server
import io
import json
import stat
import threading
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import pika
import pytest

from roboshop_dispatch.systemd import START_TIMEOUT
from tests.support.payment import PaymentPublisher, make_order, parameters

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

PASS_FILE = "/root/amqp.pass"
SPECIAL_PASSWORD = 'p@ss w0rd:/%#?&"\'$`\\ ünï;*!'


# -- helpers ------------------------------------------------------------------------------------


def amqp_args(broker, vhost: str, host: str = "127.0.0.1", user: Optional[str] = None) -> List[str]:
    return ["--amqp-host", host, "--amqp-port", str(broker.port), "--amqp-vhost", vhost,
            "--amqp-user", user or broker.user, "--amqp-pass-file", PASS_FILE]


def run(host, command: str, *args: str, expect: int = 0) -> Dict:
    res = host.dispatchctl(command, *args, "--json")
    assert res.returncode == expect, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)


def install(host, broker, vhost, *extra: str, password: Optional[str] = None, amqp_host: str = "127.0.0.1",
            user: Optional[str] = None, command: str = "install", dry_run: bool = False, expect: int = 0) -> Dict:
    host.write(PASS_FILE, (password if password is not None else broker.password) + "\n")
    args = amqp_args(broker, vhost, amqp_host, user) + list(extra) + (["--dry-run"] if dry_run else [])
    return run(host, command, *args, expect=expect)


def changed(doc: Dict) -> List[str]:
    return [s["name"] for s in doc["steps"] if s["changed"]]


def service_actions(doc: Dict) -> List[str]:
    step = next(s for s in doc["steps"] if s["name"] == "service")
    return list(step.get("data", {}).get("actions", []))


def props(host, *names: str) -> Dict[str, str]:
    return host.show("dispatch.service", names)


def wait_consumer(broker, vhost: str, timeout: float = 30.0) -> None:
    """Until the service's consumer is attached to ``orders`` (publishing earlier would be
    dropped by the broker: payment never declares the queue)."""
    params = parameters(broker.host, broker.port, vhost, broker.user, broker.password)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(params)
            try:
                ok = conn.channel().queue_declare("orders", passive=True)
                if ok.method.consumer_count >= 1:
                    return
                last = f"{ok.method.consumer_count} consumers"
            finally:
                if conn.is_open:
                    conn.close()
        except pika.exceptions.AMQPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"no consumer on orders in vhost {vhost} after {timeout}s ({last})")


def publish_and_see_dispatched(host, broker, vhost: str, timeout: float = 30.0,
                               outcomes: tuple = ("dispatched",)) -> str:
    """Publish one order and wait for the service's line about it; with DISPATCH_ERROR_PERCENT set,
    pass ``outcomes=("dispatched", "failed")``: a simulated failure is a handled order too."""
    wait_consumer(broker, vhost)
    order = make_order(3)
    with PaymentPublisher(parameters(broker.host, broker.port, vhost, broker.user, broker.password)) as pub:
        pub.publish(order)
    orderid = str(order["orderid"])
    host.wait_for(lambda: any(f"order {orderid} {outcome}" in line for line in host.journal().splitlines()
                              for outcome in outcomes),
                  timeout=timeout, what=f"order {orderid} {' or '.join(outcomes)} in the journal:\n"
                                        f"{host.journal()[-3000:]}")
    return orderid


def add_user_via_stdin(broker, name: str, password: str, vhost: str) -> None:
    """A broker user with an awkward password (``broker.add_user`` feeds it on stdin), proven
    to authenticate on the broker itself before the service is asked to."""
    broker.add_user(name, password, vhost=vhost)
    auth = broker.ctl("authenticate_user", "--", name, input=password + "\n", check=False)
    assert auth.returncode == 0, auth.stderr


def mtime_ns(host, path: str) -> int:
    return host.path(path).stat().st_mtime_ns


def starts(host) -> int:
    return sum(1 for line in host.journal().splitlines() if line.startswith("Started dispatch.service"))


# -- the tests ------------------------------------------------------------------------------------


def test_fresh_install_runs_dispatch_as_the_service_user(systemd_host, broker, vhost):
    host = systemd_host
    predicted = install(host, broker, vhost, dry_run=True)
    doc = install(host, broker, vhost)
    assert doc["ok"] and doc["command"] == "install" and doc["dry_run"] is False
    assert changed(doc) == ["user", "appdir", "build", "config", "service"]
    # the dry run predicted exactly what the real run then did
    assert changed(predicted) == changed(doc)
    assert service_actions(predicted) == service_actions(doc) == ["daemon-reload", "enable", "start"]

    p = props(host, "ActiveState", "SubState", "UnitFileState", "MainPID", "Type", "User")
    assert (p["ActiveState"], p["SubState"], p["UnitFileState"]) == ("active", "running", "enabled")
    status = host.run(["systemctl", "status", "dispatch", "--no-pager"], check=False).stdout
    assert "active (running)" in status
    pid = p["MainPID"]
    assert host.run(["ps", "-o", "user=", "-p", pid]).stdout.strip() == "roboshop"
    uids = next(ln for ln in host.path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
    assert set(uids.split()[1:]) != {"0"} and "0" not in uids.split()[1:]
    account = host.run(["getent", "passwd", "roboshop"]).stdout.strip().split(":")
    assert int(account[2]) < 1000 and account[6] in ("/usr/sbin/nologin", "/sbin/nologin")

    publish_and_see_dispatched(host, broker, vhost)

    env = host.path("/etc/roboshop/dispatch.env").stat()
    assert stat.S_IMODE(env.st_mode) == 0o600 and env.st_uid == 0
    binary = host.path("/app/dispatch").stat()
    assert stat.S_IMODE(binary.st_mode) == 0o755 and binary.st_uid == 0


def test_rerun_changes_nothing_and_restarts_nothing(systemd_host, broker, vhost):
    host = systemd_host
    install(host, broker, vhost)
    before = props(host, "MainPID", "NRestarts", "InvocationID")
    binary_mtime = mtime_ns(host, "/app/dispatch")
    env_mtime = mtime_ns(host, "/etc/roboshop/dispatch.env")
    unit_mtime = mtime_ns(host, "/etc/systemd/system/dispatch.service")

    predicted = install(host, broker, vhost, dry_run=True)
    doc = install(host, broker, vhost)
    assert changed(predicted) == changed(doc) == []
    assert all(s["status"] == "ok" for s in doc["steps"]), doc
    assert service_actions(doc) == []
    assert props(host, "MainPID", "NRestarts", "InvocationID") == before
    assert mtime_ns(host, "/app/dispatch") == binary_mtime
    assert mtime_ns(host, "/etc/roboshop/dispatch.env") == env_mtime
    assert mtime_ns(host, "/etc/systemd/system/dispatch.service") == unit_mtime
    assert starts(host) == 1


def test_changed_amqp_host_changes_only_the_configuration_and_restarts_once(systemd_host, broker, vhost):
    host = systemd_host
    install(host, broker, vhost, amqp_host="127.0.0.1")
    pid = props(host, "MainPID")["MainPID"]
    binary_mtime = mtime_ns(host, "/app/dispatch")
    unit_mtime = mtime_ns(host, "/etc/systemd/system/dispatch.service")

    predicted = install(host, broker, vhost, amqp_host="localhost", dry_run=True)
    doc = install(host, broker, vhost, amqp_host="localhost")
    assert changed(predicted) == changed(doc) == ["config", "service"]
    assert service_actions(predicted) == service_actions(doc) == ["restart"]
    config = next(s for s in doc["steps"] if s["name"] == "config")
    assert "AMQP_HOST" in config["message"] and config["diff"] == {"added": 1, "removed": 1}
    assert config["data"]["files"] == {"/etc/systemd/system/dispatch.service": "ok",
                                       "/etc/roboshop/dispatch.env": "update",
                                       "/etc/roboshop/dispatch.amqp-pass": "ok"}
    assert mtime_ns(host, "/app/dispatch") == binary_mtime
    assert mtime_ns(host, "/etc/systemd/system/dispatch.service") == unit_mtime
    assert props(host, "MainPID")["MainPID"] != pid
    assert starts(host) == 2  # the first start and exactly one restart
    assert 'AMQP_HOST="localhost"' in host.path("/etc/roboshop/dispatch.env").read_text()
    publish_and_see_dispatched(host, broker, vhost)
    # and settled: a third run with the new host changes nothing
    assert changed(install(host, broker, vhost, amqp_host="localhost")) == []


def test_kill_9_is_restarted_by_systemd_and_consumes_again(systemd_host, broker, vhost):
    host = systemd_host
    install(host, broker, vhost)
    publish_and_see_dispatched(host, broker, vhost)
    pid = props(host, "MainPID")["MainPID"]
    host.run(["kill", "-9", pid])

    def restarted():
        p = props(host, "MainPID", "ActiveState", "NRestarts")
        return p if p["ActiveState"] == "active" and p["MainPID"] not in ("0", pid) else None

    p = host.wait_for(restarted, timeout=20, what="systemd to restart dispatch after kill -9")
    assert p["NRestarts"] == "1"
    publish_and_see_dispatched(host, broker, vhost)


def test_password_with_special_characters_authenticates(systemd_host, broker, vhost):
    host = systemd_host
    user = "dispatch-special"
    add_user_via_stdin(broker, user, SPECIAL_PASSWORD, vhost)
    try:
        doc = install(host, broker, vhost, password=SPECIAL_PASSWORD, user=user)
        assert doc["ok"]
        publish_and_see_dispatched(host, broker, vhost)
        # the consumer authenticated as that user
        conns = broker.ctl("list_connections", "user", "vhost", "--no-table-headers").stdout
        assert any(line.split("\t")[:2] == [user, vhost] for line in conns.splitlines()), conns
        # the password is nowhere but the 0600 environment file
        show = host.run(["systemctl", "show", "dispatch.service"]).stdout
        unit = host.path("/etc/systemd/system/dispatch.service").read_text()
        cmdline = host.path(f"/proc/{props(host, 'MainPID')['MainPID']}/cmdline").read_bytes().decode()
        for text in (show, unit, cmdline, json.dumps(doc), host.journal()):
            assert SPECIAL_PASSWORD not in text
            assert "p@ss w0rd" not in text
    finally:
        broker.delete_user(user)


def test_a_wrong_password_fails_fast_with_the_reason_then_a_fix_recovers(systemd_host, broker, vhost):
    host = systemd_host
    host.write(PASS_FILE, "not-the-password\n")
    started = time.monotonic()
    res = host.dispatchctl("install", *amqp_args(broker, vhost), "--json")
    took = time.monotonic() - started
    assert res.returncode == 1, res.stdout + res.stderr
    # an ordering, not an absolute bound: the step stops at the consumer's "retrying" status,
    # long before its READY wait (START_TIMEOUT, 45 s) would have ended
    assert took < START_TIMEOUT / 2, f"install waited {took:.1f}s for a service that cannot log in"
    doc = json.loads(res.stdout)
    assert doc["failed_step"] == "service"
    service = next(s for s in doc["steps"] if s["name"] == "service")
    assert "did not become ready" in service["message"] and "authentication" in service["message"]
    assert "check-rabbitmq" in service["next_action"]
    assert "not-the-password" not in res.stdout + res.stderr
    doc = install(host, broker, vhost)  # the right password now
    assert changed(doc) == ["config", "service"] and service_actions(doc) == ["restart"]
    assert props(host, "ActiveState")["ActiveState"] == "active"
    publish_and_see_dispatched(host, broker, vhost)


def test_dry_run_on_a_fresh_host_changes_nothing(systemd_host, broker, vhost):
    host = systemd_host
    roots = ("/etc", "/app", "/run/dispatchctl", "/var/cache/dispatchctl")
    before = host.listing(*roots)
    host.write(PASS_FILE, broker.password + "\n")
    table = host.dispatchctl("install", *amqp_args(broker, vhost), "--dry-run", "--diff")
    assert table.returncode == 0, table.stderr
    assert "would change" in table.stdout and "+++ b/etc/roboshop/dispatch.amqp-pass" in table.stdout
    assert "+********" in table.stdout and "LoadCredential=amqp-pass:" in table.stdout
    assert broker.password not in table.stdout
    doc = install(host, broker, vhost, dry_run=True)
    assert changed(doc) == ["user", "appdir", "build", "config", "service"]
    after = host.listing(*roots)
    assert [ln for ln in after if not ln.startswith("/root/")] == [ln for ln in before]
    assert props(host, "LoadState")["LoadState"] == "not-found"
    assert host.run(["getent", "passwd", "roboshop"], check=False).returncode == 2

    # not root: a clear error, and the dry run still works
    host.run(["chmod", "0711", "/root"])  # lets 'nobody' reach the bind-mounted interpreter
    host.run(["chmod", "0644", PASS_FILE])
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                 host_dispatchctl(), "install", *amqp_args(broker, vhost)]
    refused = host.run(as_nobody, check=False)
    assert refused.returncode == 1 and "must run as root" in refused.stderr, refused.stderr
    dry = host.run([*as_nobody, "--dry-run", "--json"], check=False)
    assert dry.returncode == 0, dry.stderr
    assert changed(json.loads(dry.stdout)) == ["user", "appdir", "build", "config", "service"]
    assert host.listing(*roots) == after


def host_dispatchctl() -> str:
    from roboshop_dispatch.lab.nspawn import venv_bin

    return venv_bin("dispatchctl")


def test_rendered_unit_verifies_and_scores_2_or_less(systemd_host, broker, vhost):
    host = systemd_host
    install(host, broker, vhost)
    unit = "/etc/systemd/system/dispatch.service"
    verify = host.run(["systemd-analyze", "verify", unit], check=False)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = host.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit], check=False)
    last = security.stdout.strip().splitlines()[-1]
    assert "Overall exposure level" in last, security.stdout
    assert float(last.split(":", 1)[1].split()[0]) <= 2.0, last
    # and the hardened service really works under it
    publish_and_see_dispatched(host, broker, vhost)


def test_subcommands_build_configure_start_then_install_is_a_no_op(systemd_host, broker, vhost):
    host = systemd_host
    doc = run(host, "build")
    assert changed(doc) == ["appdir", "build"], doc
    assert "not installed" in doc["steps"][-1]["message"]
    doc = install(host, broker, vhost, command="configure")
    assert changed(doc) == ["user", "config", "service"]
    assert service_actions(doc) == ["daemon-reload"]  # configure never starts a stopped service
    assert props(host, "ActiveState")["ActiveState"] == "inactive"
    doc = run(host, "start")
    assert service_actions(doc) == ["enable", "start"]
    assert props(host, "ActiveState")["ActiveState"] == "active"
    assert changed(install(host, broker, vhost)) == []

    # stopped by hand: start starts it, and only that
    host.run(["systemctl", "stop", "dispatch"])
    assert service_actions(run(host, "start", "--dry-run")) == ["start"]
    assert service_actions(run(host, "start")) == ["start"]
    assert service_actions(run(host, "start")) == []

    # configure on a running service restarts it once
    pid = props(host, "MainPID")["MainPID"]
    doc = install(host, broker, vhost, "--error-percent", "5", command="configure")
    assert changed(doc) == ["config", "service"] and service_actions(doc) == ["restart"]
    assert props(host, "MainPID")["MainPID"] != pid
    # 5 % of orders are logged as failed now (about 1 run in 20 would wait for "dispatched" in vain)
    publish_and_see_dispatched(host, broker, vhost, outcomes=("dispatched", "failed"))


GO_PROGRAM = """package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "%s"

func main() {
	fmt.Printf("dispatch-go %%s ready host=%%s\\n", version, os.Getenv("AMQP_HOST"))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	<-stop
	fmt.Println("dispatch-go stopping")
}
"""


def _go_zip(version: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dispatch/main.go", GO_PROGRAM % version)
    return buf.getvalue()


class ArtifactServer:
    """Serves one zip over HTTP on 127.0.0.1 (the container shares the network). With ``hold``
    (an Event) each answer waits for it, at most 20 s (less than dispatchctl's receive timeout,
    artifact.TIMEOUT, 30 s): ``answered_after_release`` says whether it came."""

    def __init__(self, hold: Optional[threading.Event] = None) -> None:
        self.body = b""
        self.requests = 0
        self.hold = hold
        self.answered_after_release = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if self.path.split("?", 1)[0] != "/dispatch.zip":  # a query string as a pre-signed URL has
                    self.send_error(404)
                    return
                if server.hold is not None:
                    server.answered_after_release = server.hold.wait(20)
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dispatch.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def artifact_server():
    server = ArtifactServer()
    yield server
    server.close()


def test_go_flavour_builds_with_a_real_go_build(systemd_host, broker, vhost, artifact_server):
    host = systemd_host
    artifact_server.body = _go_zip("v1")
    # the test's artifact server is plain http on loopback: allowed only with --insecure
    refused = host.dispatchctl("install", *amqp_args(broker, vhost), "--flavour", "go", "--artifact",
                               artifact_server.url, "--dry-run")
    assert refused.returncode == 2 and "--insecure" in refused.stderr, refused.stderr
    go = ["--flavour", "go", "--artifact", artifact_server.url, "--insecure"]
    predicted = install(host, broker, vhost, *go, dry_run=True)
    doc = install(host, broker, vhost, *go)
    assert changed(predicted) == changed(doc) == ["user", "appdir", "build", "config", "service"]
    assert "go build" in next(s for s in predicted["steps"] if s["name"] == "build")["message"]
    assert host.path("/app/dispatch").read_bytes()[:4] == b"\x7fELF"
    assert (host.path("/var/cache/dispatchctl/go-src/go.mod").read_text().splitlines()[0]) == "module dispatch"
    p = props(host, "ActiveState", "MainPID", "ExecStart", "User")
    assert p["ActiveState"] == "active" and "path=/app/dispatch" in p["ExecStart"]
    host.wait_for(lambda: "dispatch-go v1 ready host=127.0.0.1" in host.journal(), timeout=15,
                  what="the go program's start line")
    assert host.run(["ps", "-o", "user=", "-p", p["MainPID"]]).stdout.strip() == "roboshop"

    # unchanged sources: the build is skipped, nothing restarts
    mtime = mtime_ns(host, "/app/dispatch")
    doc = install(host, broker, vhost, *go)
    assert changed(doc) == []
    assert "build skipped" in next(s for s in doc["steps"] if s["name"] == "build")["message"]
    assert mtime_ns(host, "/app/dispatch") == mtime and props(host, "MainPID")["MainPID"] == p["MainPID"]

    # new sources: rebuilt and restarted once, and the new binary runs
    artifact_server.body = _go_zip("v2")
    predicted = install(host, broker, vhost, *go, dry_run=True)
    doc = install(host, broker, vhost, *go)
    assert changed(predicted) == changed(doc) == ["build", "service"]
    assert service_actions(doc) == ["restart"]
    host.wait_for(lambda: "dispatch-go v2 ready" in host.journal(), timeout=15, what="v2 running")
    assert starts(host) == 2


DYING_GO_PROGRAM = """package main

import (
	"log"
	"time"
)

func main() {
	time.Sleep(80 * time.Millisecond) // a fatal error a moment after start (a refused declare, say)
	log.Fatal("dispatch-go: giving up")
}
"""


def test_a_go_binary_that_dies_right_after_start_fails_the_service_step(systemd_host, broker, vhost,
                                                                        artifact_server):
    """Type=simple has no READY: a main process gone within layout.SIMPLE_SETTLE_S is a failed start."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dispatch/main.go", DYING_GO_PROGRAM)
    artifact_server.body = buf.getvalue()
    doc = install(systemd_host, broker, vhost, "--flavour", "go", "--artifact", artifact_server.url, "--insecure",
                  expect=1)
    assert doc["failed_step"] == "service"
    service = next(s for s in doc["steps"] if s["name"] == "service")
    assert "dispatch.service failed to start" in service["message"], service["message"]
    assert "giving up" in service["message"], service["message"]  # the journal tail says why


def test_go_flavour_refuses_an_unsafe_archive(systemd_host, broker, vhost, artifact_server, tmp_path):
    host = systemd_host
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.go", "package main\nfunc main() {}\n")
        zf.writestr("../../etc/cron.d/evil", "* * * * * root true\n")
    artifact_server.body = buf.getvalue()
    host.write(PASS_FILE, broker.password + "\n")
    res = host.dispatchctl("install", *amqp_args(broker, vhost), "--flavour", "go", "--artifact",
                           artifact_server.url, "--insecure", "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["failed_step"] == "build"
    build = next(s for s in doc["steps"] if s["name"] == "build")
    assert "'..'" in build["message"] and build["next_action"]
    assert [s["status"] for s in doc["steps"]][-2:] == ["skipped", "skipped"]
    assert "step 'build' failed" in res.stderr
    assert not host.path("/etc/cron.d/evil").exists() and not host.path("/app/dispatch").exists()
    assert not Path("/etc/cron.d/evil").exists()
