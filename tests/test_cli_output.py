"""Readable output, driven through the real CLI: into a pipe (CI, ``| tee``) and on a terminal
(a real pty at 80 columns), inside a throwaway container that is not booted (``no_systemd_host``:
no systemd, checked when it starts): dry runs work, ``status`` says why not, and nothing here
depends on this machine's PID 1 (the systemd host's side is in test_cli_output_systemd.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest

from tests.support.terminal import on_terminal as run_on_terminal

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")
PASSWORD = "s3cr3t-Pa$$ w0rd"
NOWHERE = "/nonexistent-dispatchctl-output-test"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DRY_INSTALL = ["install", "--amqp-host", "10.0.0.5", "--app-dir", NOWHERE, "--dry-run"]


@pytest.fixture(scope="module")
def host(no_systemd_host):
    return no_systemd_host


def piped(host, *args: str) -> subprocess.CompletedProcess:
    """The CLI inside the host, its output into pipes (a clean environment with the password)."""
    return host.run([DISPATCHCTL, *args], check=False, env={"DISPATCHCTL_AMQP_PASS": PASSWORD}, timeout=60)


def on_terminal(host, *args: str, columns: int = 80) -> Tuple[int, str]:
    """Run with stdin, stdout and stderr on a real pty of ``columns`` columns: (exit code, output)."""
    env = host.environment({"DISPATCHCTL_AMQP_PASS": PASSWORD, "TERM": "xterm-256color"})
    code, shown = run_on_terminal(host.argv([DISPATCHCTL, *args]), env, columns=columns)
    return code, shown.decode("utf-8", "replace")


# -- steps: one row per step as it finishes (pipe), elapsed time per step (terminal) -------------


def test_piped_run_prints_title_header_one_row_per_step_then_the_summary(host):
    res = piped(host, *DRY_INSTALL)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "settings:", res.stdout  # the values used and their sources come first
    lines = lines[lines.index("dispatchctl install (dry run)"):]
    assert lines[1].split() == ["step", "result", "time", "details"]
    rows = lines[2:-1]
    assert [r.split()[0] for r in rows] == ["packages", "user", "appdir", "build", "config", "service"], res.stdout
    for row in rows:
        assert re.match(r"^\S+\s+(ok|would change)\s+\d+\.\d\ds  \S", row), row
    # the recap, Ansible's (issue 20): every row counted once, in Ansible's order
    assert re.match(r"^recap: ok=1 changed=5 failed=0 skipped=0 in \d+\.\d\ds \(dry run\)$", lines[-1]), lines[-1]
    assert "\x1b" not in res.stdout and PASSWORD not in res.stdout


def test_json_keeps_stdout_for_the_document_and_rows_go_to_stderr_with_v(host):
    quiet = piped(host, *DRY_INSTALL, "--json")
    assert quiet.returncode == 0 and quiet.stderr == ""  # --json alone: stderr only for errors
    res = piped(host, *DRY_INSTALL, "--json", "-v")
    assert res.returncode == 0
    assert res.stdout.lstrip().startswith("{")
    assert [line.split()[0] for line in res.stderr.splitlines()[2:]] == \
        ["packages", "user", "appdir", "build", "config", "service"], res.stderr


def test_quiet_prints_nothing_and_exit_code_says_there_is_drift(host):
    res = piped(host, *DRY_INSTALL, "-q", "--exit-code")
    assert res.returncode == 3, res.stderr  # something would change in the fresh container
    assert res.stdout == "" and res.stderr == ""
    assert piped(host, *DRY_INSTALL, "-q").returncode == 0  # without --exit-code: 0, as before


def test_exit_code_exists_only_beside_dry_run(host):
    res = piped(host, "status", "--exit-code")
    assert res.returncode == 2 and "--exit-code" in res.stderr


def test_vv_streams_the_commands_output_in_the_rows(host):
    res = piped(host, *DRY_INSTALL, "-vv")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    child = [i for i, line in enumerate(lines) if line.startswith("  | ")]
    packages_row = next(i for i, line in enumerate(lines) if line.startswith("packages "))
    assert child and all(i < packages_row for i in child), res.stdout  # the package query, before its row
    assert "  | " not in piped(host, *DRY_INSTALL, "-v").stdout


def test_terminal_shows_each_running_step_with_its_elapsed_time_then_the_table(host):
    code, out = on_terminal(host, *DRY_INSTALL)
    assert code == 0, out
    text = ANSI.sub("", out)
    assert re.search(r"packages: \w.*0:00:0\d", text), text  # the live view: a step, its elapsed time
    assert "dispatchctl install (dry run)" in text and "would change" in text and PASSWORD not in text


def test_diff_lines_are_never_wrapped_on_an_80_column_terminal(host):
    code, out = on_terminal(host, *DRY_INSTALL, "--diff", columns=80)
    assert code == 0, out
    text = ANSI.sub("", out).replace("\r", "")
    lines = text.splitlines()
    added = [line for line in lines if line.startswith("+") and not line.startswith("+++")]
    assert any(len(line) > 80 for line in added), "no diff line longer than the terminal: the test proves nothing"
    # a wrapped line would leave a continuation line in the diff without its +/-/space prefix
    start = next(i for i, line in enumerate(lines) if line.startswith("── diff:"))
    body = [line for line in lines[start:] if line and not line.startswith(("── diff:", "recap: "))]
    assert all(line[0] in "+- @" for line in body), [line for line in body if line[0] not in "+- @"][:3]


# -- check-rabbitmq: identical skips collapse; cause and fix wrap on a terminal ---------------------


CLOSED_PORT = ["check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", "1"]


def test_identical_skips_are_one_line_naming_the_checks(host):
    res = piped(host, *CLOSED_PORT)
    assert res.returncode == 1
    skips = [line for line in res.stdout.splitlines() if line.lstrip().startswith("skip")]
    assert len(skips) == 1, res.stdout
    from roboshop_dispatch.diagnostics.catalog import TITLES, order

    after_tcp = order(False)[2:]  # everything after name resolution and the TCP port
    assert re.search(rf"skip\s+{len(after_tcp)} checks\s+not checked: the port is not reachable: AMQP handshake, ",
                     skips[0]), skips[0]
    assert all(TITLES[name] in skips[0] for name in after_tcp), skips[0]
    cause = next(line for line in res.stdout.splitlines() if line.startswith("  cause: "))
    assert len(cause) > 80  # piped: each text on one line, as long as it is (grep-able)


def test_on_a_terminal_cause_and_fix_wrap_at_word_boundaries(host):
    code, out = on_terminal(host, *CLOSED_PORT, columns=80)
    assert code == 1
    lines = ANSI.sub("", out).replace("\r", "").splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    cause = next(i for i, line in enumerate(lines) if line.startswith("  cause: "))
    assert lines[cause + 1].startswith(" " * 9) and lines[cause + 1].strip()  # continued, indented
    piped_cause = next(line for line in piped(host, *CLOSED_PORT).stdout.splitlines() if line.startswith("  cause: "))
    rewrapped = " ".join(lines[cause].split()[1:] + " ".join(lines[cause + 1: cause + 4]).split())
    assert rewrapped.startswith(" ".join(piped_cause.split()[1:])[:100])  # no word split or lost


# -- status without systemd: says so; plain lines into a pipe, the panel on a terminal ----------------


def test_status_without_systemd_says_so_plainly_when_piped(host):
    res = piped(host, "status")
    assert res.returncode == 4
    assert res.stdout.startswith("systemd:") and "does not run systemd (PID 1 is " in res.stdout
    assert "not installed" not in res.stdout
    assert not set(res.stdout) & set("╭╮╰╯│─"), res.stdout


def test_status_draws_its_panel_on_a_terminal_only(host):
    code, out = on_terminal(host, "status")
    assert code == 4
    assert "╭" in out and "does not run systemd" in ANSI.sub("", out)


def test_quiet_check_prints_only_the_diagnoses(host):
    res = piped(host, *CLOSED_PORT, "-q")
    assert res.returncode == 1
    assert res.stdout.startswith("FAIL: ") and "skip" not in res.stdout and " ok, " not in res.stdout
