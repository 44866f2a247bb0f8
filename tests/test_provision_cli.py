"""The provisioning commands' contract at the edges: bad options (exit 2, one line naming the
option, nothing touched), a host without systemd or of an unsupported OS family (exit 1 with the
reason, nothing touched), the dry run's output (JSON and table, passwords masked).

The hosts without systemd are real: a throwaway container that is not booted (PID 1 is the
command itself), from the same rootfs as the systemd host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from roboshop_dispatch.lab.nspawn import run_unbooted, venv_bin

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")
PASSWORD = "s3cr3t-Pa$$ w0rd"


def cli(*args: str, env=None, password: bool = True) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "DISPATCHCTL_AMQP_PASS"}
    if password:
        environ["DISPATCHCTL_AMQP_PASS"] = PASSWORD
    environ.update(env or {})
    return subprocess.run([DISPATCHCTL, *args], capture_output=True, text=True, env=environ, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, option", [
    (["--amqp-host", "bad host!"], "--amqp-host"),
    (["--amqp-host", "10.0.0.5,,10.0.0.6"], "--amqp-host"),
    (["--amqp-host", "999.1.1.1"], "--amqp-host"),
    (["--amqp-host", "10.0.0.5", "--amqp-port", "70000"], "--amqp-port"),
    (["--amqp-host", "10.0.0.5", "--amqp-port", "abc"], "--amqp-port"),
    (["--amqp-host", "10.0.0.5", "--error-percent", "101"], "--error-percent"),
    (["--amqp-host", "10.0.0.5", "--flavour", "rust"], "--flavour"),
    (["--amqp-host", "10.0.0.5", "--user", "root"], "--user"),
    (["--amqp-host", "10.0.0.5", "--app-dir", "app"], "--app-dir"),
    (["--amqp-host", "10.0.0.5", "--artifact", "ftp://example.invalid/d.zip"], "--artifact"),
    (["--amqp-host", "10.0.0.5", "--amqp-vhost", "a\nb"], "--amqp-vhost"),
    ([], "--amqp-host"),
])
def test_a_bad_option_exits_2_with_one_line_naming_it(no_systemd_host, args, option):
    """A real run too: inside a container without systemd, so that an option that slipped through
    could change nothing on this machine."""
    for dry in ([], ["--dry-run"]):
        res = no_systemd_host.dispatchctl("install", *args, *dry, env={"DISPATCHCTL_AMQP_PASS": PASSWORD})
        assert res.returncode == 2, (res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and option in lines[0] and lines[0].startswith("dispatchctl: error:"), res.stderr
        assert res.stdout == ""


def test_no_password_anywhere_names_the_ways_to_give_one():
    res = cli("install", "--amqp-host", "10.0.0.5", "--dry-run", password=False)
    assert res.returncode == 2
    assert "--amqp-pass-file" in res.stderr and "DISPATCHCTL_AMQP_PASS" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_amqp_pass_on_the_command_line_warns_about_ps():
    res = cli("install", "--amqp-host", "10.0.0.5", "--amqp-pass", "visible", "--dry-run", "--json",
              password=False)
    assert res.returncode == 0, res.stderr
    assert "visible to every user in `ps`" in res.stderr
    assert "visible" not in res.stdout


def test_dry_run_json_reports_one_object_per_step(no_systemd_host):
    """The dry run works on a host without systemd (it reads only) and predicts a fresh install
    there (a fresh container: what is installed on this machine does not matter)."""
    res = no_systemd_host.dispatchctl("install", "--amqp-host", "10.0.0.5", "--app-dir",
                                      "/nonexistent-dispatchctl-test", "--dry-run", "--json", "--diff",
                                      env={"DISPATCHCTL_AMQP_PASS": PASSWORD})
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["command"] == "install" and doc["dry_run"] is True and doc["ok"] is True
    names = [s["name"] for s in doc["steps"]]
    assert names == ["packages", "user", "appdir", "build", "config", "service"]
    for step in doc["steps"]:
        assert set(step) >= {"name", "changed", "message", "diff", "status"}
        assert set(step["diff"]) == {"added", "removed"}
    by_name = {s["name"]: s for s in doc["steps"]}
    assert by_name["appdir"]["changed"] and by_name["build"]["changed"]
    assert by_name["config"]["diff"]["added"] > 10
    diff = by_name["config"]["diff_text"]
    assert "+++ b/etc/roboshop/dispatch.amqp-pass\n@@ -0,0 +1 @@\n+********\n" in diff  # the credential, masked
    assert "+LoadCredential=amqp-pass:/etc/roboshop/dispatch.amqp-pass" in diff and "AMQP_PASS" not in diff
    assert PASSWORD not in res.stdout and PASSWORD not in res.stderr
    assert not no_systemd_host.path("/nonexistent-dispatchctl-test").exists()


def test_dry_run_table_and_diff_mask_the_password(no_systemd_host):
    res = no_systemd_host.dispatchctl("install", "--amqp-host", "10.0.0.5", "--app-dir",
                                      "/nonexistent-dispatchctl-test", "--dry-run", "--diff",
                                      env={"DISPATCHCTL_AMQP_PASS": PASSWORD})
    assert res.returncode == 0, res.stderr
    assert "would change" in res.stdout and "+++ b/etc/roboshop/dispatch.amqp-pass" in res.stdout
    assert "+********" in res.stdout
    assert PASSWORD not in res.stdout
    assert "dispatchctl install (dry run)" in res.stdout


def test_no_systemd_is_a_clear_error_and_nothing_changes(systemd_rootfs):
    script = (f"{venv_bin('dispatchctl')} install --amqp-host 127.0.0.1; echo rc=$?; "
              "ls -d /app /etc/roboshop /etc/systemd/system/dispatch.service 2>&1; getent passwd roboshop; true")
    res = run_unbooted(systemd_rootfs, ["sh", "-c", script], env={"DISPATCHCTL_AMQP_PASS": PASSWORD})
    assert "rc=1" in res.stdout, res.stdout + res.stderr
    assert "systemd is not running as PID 1" in res.stdout + res.stderr
    assert "No such file or directory" in res.stdout and "roboshop:" not in res.stdout


def test_no_systemd_dry_run_still_works(systemd_rootfs):
    res = run_unbooted(systemd_rootfs, [venv_bin("dispatchctl"), "install", "--amqp-host", "127.0.0.1",
                                        "--dry-run", "--json"], env={"DISPATCHCTL_AMQP_PASS": PASSWORD})
    doc = json.loads(res.stdout[res.stdout.index("{"):])
    assert doc["ok"], res.stdout + res.stderr
    service = doc["steps"][-1]
    assert service["data"]["actions"] == ["daemon-reload", "enable", "start"]
    assert "systemd is not running here" in service["data"]["note"]


@pytest.mark.parametrize("os_release, name", [
    ('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\nPRETTY_NAME="Alpine Linux v3.20"\n', "Alpine"),
    ('NAME="openSUSE Leap"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\nPRETTY_NAME="openSUSE Leap 15.6"\n',
     "openSUSE"),
])
def test_unsupported_os_family_is_refused_before_any_change(systemd_rootfs, tmp_path, os_release, name):
    fake = tmp_path / "os-release"
    fake.write_text(os_release)
    script = (f"{venv_bin('dispatchctl')} install --amqp-host 127.0.0.1 --dry-run; echo rc=$?; "
              "ls -d /app 2>&1; true")
    res = run_unbooted(systemd_rootfs, ["sh", "-c", script], binds_ro=[(str(fake), "/etc/os-release")],
                       env={"DISPATCHCTL_AMQP_PASS": PASSWORD})
    out = res.stdout + res.stderr
    assert "rc=1" in res.stdout, out
    assert f"unsupported OS: {name}" in out and "RHEL family (dnf)" in out
    assert "No such file or directory" in res.stdout
