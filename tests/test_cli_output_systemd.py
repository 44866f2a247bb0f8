"""Machine output, progress, ``--exit-code``, -vv streaming and the run log on a real systemd
host (systemd-nspawn, one booted host for the whole story) with the real test broker; and a
host without systemd (a container that is not booted) for ``status`` and the preflight."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import threading
import time
import zipfile

import pytest

from roboshop_dispatch.lab.nspawn import PATH_INSIDE, run_unbooted, venv_bin
from tests.test_json_output import VALIDATOR
from tests.test_provision_systemd import ArtifactServer

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

PASS_FILE = "/root/amqp.pass"
LOG = "/var/log/dispatchctl/dispatchctl.log"
BROKEN_GO = "package main\n\nfunc main() {\n\tundefinedDispatchThing()\n}\n"


def valid(res: subprocess.CompletedProcess, code: int) -> dict:
    assert res.returncode == code, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    doc = json.loads(res.stdout)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(doc)]
    assert not errors, "\n".join(errors)
    return doc


def stream_lines(host, *args: str):
    """Run the CLI inside with stdout piped, yielding (seconds since start, line) as they come."""
    argv = ["nsenter", "-t", str(host.leader), "-a", "env", "-i", f"PATH={PATH_INSIDE}", "HOME=/root",
            "LANG=C.UTF-8", venv_bin("dispatchctl"), *args]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        yield time.monotonic() - started, line.rstrip("\n")
    proc.wait(timeout=300)
    yield time.monotonic() - started, f"<exit {proc.returncode}> " + (proc.stderr.read() if proc.stderr else "")


def test_a_real_install_its_json_its_log_exit_codes_and_a_failing_build(systemd_host, broker, vhost):
    host = systemd_host
    host.write(PASS_FILE, broker.password + "\n")
    amqp = ["--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port), "--amqp-vhost", vhost,
            "--amqp-user", broker.user, "--amqp-pass-file", PASS_FILE]

    # a fresh host: a dry run finds drift (--exit-code 3), the real install changes things (3 too)
    assert host.dispatchctl("install", *amqp, "--dry-run", "--exit-code", "-q").returncode == 3
    doc = valid(host.dispatchctl("install", *amqp, "--json"), 0)
    assert doc["ok"] and doc["dry_run"] is False and doc["changed"] >= 4
    # converged: nothing would change, nothing changes
    assert host.dispatchctl("install", *amqp, "--dry-run", "--exit-code").returncode == 0
    assert host.dispatchctl("install", *amqp, "--exit-code", "-q").returncode == 0
    assert host.dispatchctl("configure", *amqp, "--error-percent", "5", "--dry-run", "--exit-code",
                            "-q").returncode == 3

    # the run log: root 0600, every run that changed the host, masked
    log = host.path(LOG)
    st = os.stat(log)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    text = log.read_text()
    assert text.count("dispatchctl install (pid") == 2 and "step service: changed" in text
    assert broker.password not in text and "--dry-run" not in text

    # status and check through the envelope
    status = valid(host.dispatchctl("status", "--json"), 0)
    assert status["ok"] is True and status["systemd"] is True and status["running"] is True
    plain = host.dispatchctl("status")
    assert plain.returncode == 0 and plain.stdout.splitlines()[0].startswith("state:")
    assert not set(plain.stdout) & set("╭╮╰╯│"), plain.stdout
    valid(host.dispatchctl("check", "--json"), 0)
    logs = valid(host.dispatchctl("logs", "--json", "-n", "20"), 0)
    assert logs["lines"] and not any(broker.password in line for line in logs["lines"])

    # a go build that fails: rows stream as steps finish, -vv streams go's output, the hint points
    # at the log, and the log has go's full output
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("dispatch/main.go", BROKEN_GO)
    # each row is read when its step ends, not when the run ends: the artifact's server holds
    # its answer (so the build step cannot end) until the packages row has been read here
    artifact = ArtifactServer(hold=threading.Event())
    artifact.body = zipped.getvalue()
    try:
        lines = []
        for at, line in stream_lines(host, "build", "--flavour", "go", "--artifact", artifact.url, "--insecure",
                                     "-vv"):
            lines.append((at, line))
            if line.startswith("packages ") and artifact.hold is not None:
                artifact.hold.set()
    finally:
        artifact.close()
    assert artifact.requests == 1 and artifact.answered_after_release, \
        "the packages row came only once the build step had ended"
    *output, (_, last) = lines
    assert last.startswith("<exit 1>"), "\n".join(line for _, line in lines)
    assert f"the full output of the failed step: {LOG}" in last
    texts = [line for _, line in output]
    assert any(t.startswith("  | ") and "undefinedDispatchThing" in t for t in texts), texts
    assert any(t.startswith("build ") and " failed " in t for t in texts), texts
    text = log.read_text()
    assert "step build: failed" in text and "$ " in text and "go build" in text
    assert "undefined: undefinedDispatchThing" in text

    valid(host.dispatchctl("uninstall", "--json"), 0)


def test_without_systemd_status_says_so_and_a_real_run_is_refused(systemd_rootfs):
    res = run_unbooted(systemd_rootfs, [venv_bin("dispatchctl"), "status"])
    assert res.returncode == 4, res.stdout + res.stderr
    assert "does not run systemd" in res.stdout and "not installed" not in res.stdout
    doc = valid(run_unbooted(systemd_rootfs, [venv_bin("dispatchctl"), "status", "--json"]), 4)
    assert doc["systemd"] is False and doc["error"]["kind"] == "no-systemd"
    refused = run_unbooted(systemd_rootfs, [venv_bin("dispatchctl"), "start", "--json"])
    doc = valid(refused, 1)
    assert doc["error"]["kind"] == "preflight" and "systemd" in doc["error"]["message"]
