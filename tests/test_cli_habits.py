"""The habits users bring (issue 20), driven through the real CLI inside the throwaway container
without systemd (``no_systemd_host``: dry runs work there, and nothing depends on this machine),
or on this machine where only dispatchctl's own words are read (help, completion, version):

- masking by field: the password ``roboshop`` (the course's user name) hides no user, no path;
- ``dispatchctl completion bash|zsh|fish`` and value completion;
- the recap, Ansible's, last in every run of steps; a dry run's hint never says to run for real;
- the password prompt: Enter alone is an empty password, Ctrl-C aborts (exit 130);
- ``--artifact`` checked when the option is read, never echoed with its secrets;
- ``-vv`` echoes each command, ``-vvv`` its exit status and time; ``-n`` means log lines;
- a bundled dry run lists no go-only setting; ``-o json``, ``help COMMAND``, ``version``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from tests.support.schema import schema_errors
from tests.support.terminal import on_terminal

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")
NOWHERE = "/nonexistent-dispatchctl-habits-test"
DRY_INSTALL = ["install", "--amqp-host", "10.0.0.5", "--app-dir", NOWHERE, "--dry-run"]
STRONG = "a-long-random-test-password-0123"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RECAP = re.compile(r"^recap: ok=(\d+) changed=(\d+) failed=(\d+) skipped=(\d+) in \d+\.\d\ds( \(dry run\))?$")
PROMPT = b"RabbitMQ password:"


@pytest.fixture(scope="module")
def host(no_systemd_host):
    return no_systemd_host


def piped(host, *args: str, password: Optional[str] = STRONG) -> subprocess.CompletedProcess:
    """The CLI inside the host, into pipes (a clean environment; the password in it, if any)."""
    env = {"DISPATCHCTL_AMQP_PASS": password} if password is not None else {}
    return host.run([DISPATCHCTL, *args], check=False, env=env, timeout=90)


def terminal(host, *args: str, password: Optional[str] = STRONG, keys: Optional[bytes] = None,
             answer: Optional[str] = None) -> Tuple[int, str]:
    """On a real pty (80 columns) inside the host; ``keys`` or ``answer`` at the password prompt."""
    env = host.environment({"TERM": "xterm-256color", **({"DISPATCHCTL_AMQP_PASS": password} if password else {})})
    code, shown = on_terminal(host.argv([DISPATCHCTL, *args]), env, prompt=PROMPT, keys=keys, answer=answer)
    return code, shown.decode("utf-8", "replace")


def local(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """On this machine: only for what reads nothing of the host (help, completion, version, a bad option)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHCTL_", "_DISPATCHCTL"))}
    return subprocess.run([DISPATCHCTL, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**clean, "COLUMNS": "80", **(env or {})})


# -- 2: masking by field, not by substring ----------------------------------------------------------


def test_the_password_roboshop_masks_no_user_and_no_path(host):
    """The course's user name as the password: the user, the paths and the user setting show as
    they are; the password itself (the credential file) is still masked."""
    res = piped(host, *DRY_INSTALL, "--diff", password="roboshop")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "would create system user roboshop " in out, out
    assert "+User=roboshop\n" in out and "+Group=roboshop\n" in out
    assert "write /etc/roboshop/dispatch.env" in out and "+EnvironmentFile=/etc/roboshop/dispatch.env" in out
    assert '+AMQP_USER="roboshop"' in out
    assert "+++ b/etc/roboshop/dispatch.amqp-pass\n@@ -0,0 +1 @@\n+********\n" in out  # the secret: masked
    assert "/etc/********" not in out and "user ********" not in out and "User=********" not in out


def test_the_json_of_that_dry_run_masks_no_path(host):
    res = piped(host, *DRY_INSTALL, "--diff", "--json", password="roboshop")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    steps = {s["name"]: s for s in doc["steps"]}
    assert "would create system user roboshop" in steps["user"]["message"]
    assert "/etc/roboshop/dispatch.env" in steps["config"]["message"]
    assert "+User=roboshop\n" in steps["config"]["diff_text"]
    assert doc["settings"]["service_user"]["value"] == doc["settings"]["amqp_user"]["value"] == "roboshop"
    assert doc["settings"]["amqp_pass"]["value"] == "********"
    assert "/etc/********" not in res.stdout and "user ********" not in res.stdout


def test_a_secret_files_values_are_masked_by_key_and_its_fields_stay():
    from roboshop_dispatch.redact import MASK, Redactor

    red = Redactor(["roboshop"])
    text = 'AMQP_USER="roboshop"\nAMQP_PASS="roboshop\\\nstill the value"\n# set by roboshop\nUser=roboshop\n'
    assert red.assignments(text) == f'AMQP_USER="roboshop"\nAMQP_PASS="{MASK}"\n# set by {MASK}\nUser=roboshop\n'
    # a comment dispatchctl writes itself is a field too
    assert red.assignments("# the roboshop service\n", ours=["# the roboshop service"]) == "# the roboshop service\n"


def test_a_commands_output_is_masked_by_value_where_it_is_shown():
    """What a child prints can echo anything: a failed command's tail shows every secret masked."""
    from roboshop_dispatch.host import CommandError, Runner
    from roboshop_dispatch.redact import Redactor

    runner = Runner(timeout=30, mask=Redactor(["roboshop"]).text)
    with pytest.raises(CommandError) as caught:
        runner.run(["sh", "-c", 'echo "no user $0 here" >&2; exit 3', "roboshop"])
    assert "no user ******** here" in str(caught.value) and "user roboshop" not in str(caught.value)


# -- 3: completion of the shell named; values and instances ----------------------------------------


def test_completion_prints_the_script_of_the_shell_it_is_given():
    zsh, fish, bash = local("completion", "zsh"), local("completion", "fish"), local("completion", "bash")
    assert zsh.returncode == fish.returncode == bash.returncode == 0
    assert zsh.stdout.startswith("#compdef dispatchctl\n"), zsh.stdout[:200]  # zsh finds it in $fpath by it
    assert "compdef _dispatchctl_completion dispatchctl" in zsh.stdout and "complete_zsh" in zsh.stdout
    assert fish.stdout.startswith("complete --command dispatchctl") and "complete_fish" in fish.stdout
    assert "complete -o default -F _dispatchctl_completion dispatchctl" in bash.stdout
    assert "complete_bash" in bash.stdout and "compdef" not in bash.stdout
    bad = local("completion", "tcsh")
    assert bad.returncode == 2 and "'tcsh' is not one of bash, zsh, fish" in bad.stderr


@pytest.mark.parametrize("words, expected", [
    ("dispatchctl install --flavour ", ["bundled", "go"]),
    ("dispatchctl configure --queue-type q", ["quorum"]),
    ("dispatchctl comp", ["completion"]),
])
def test_values_complete_through_the_scripts_protocol(words, expected):
    res = local(env={"_DISPATCHCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
                     "COMP_CWORD": str(len(words.split(" ")) - 1)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == expected


def test_instances_complete_from_the_recorded_count(tmp_path, monkeypatch):
    from roboshop_dispatch import layout
    from roboshop_dispatch.cli.operate import installed_units

    monkeypatch.setattr(layout, "INSTANCES_FILE", tmp_path / "dispatch.instances")
    assert installed_units("") == ["dispatch"]  # nothing recorded: the one unit
    (tmp_path / "dispatch.instances").write_text("3\n")
    assert installed_units("") == ["dispatch@1", "dispatch@2", "dispatch@3"]
    assert installed_units("dispatch@2") == ["dispatch@2"]


# -- 4: the recap; a dry run's hint --------------------------------------------------------------


def test_the_recap_counts_every_row_the_skipped_ones_too():
    from roboshop_dispatch.cli.output.steps import recap, results_document
    from roboshop_dispatch.steps.base import CHANGED, FAILED, OK, StepResult

    results = [StepResult("packages", OK, "installed"), StepResult("user", CHANGED, "created"),
               StepResult("build", FAILED, "cannot fetch", next_action="run `dispatchctl build` again")]
    doc = results_document("install", results, dry_run=False, planned=["packages", "user", "build", "config",
                                                                        "service"], duration_s=1.234)
    assert doc["recap"] == {"ok": 1, "changed": 1, "failed": 1, "skipped": 2}
    assert list(doc["recap"]) == ["ok", "changed", "failed", "skipped"]
    assert recap(doc) == "recap: ok=1 changed=1 failed=1 skipped=2 in 1.23s"
    assert doc["error"]["next_action"] == "run `dispatchctl build` again"  # a real run: said as it is


def test_a_dry_runs_hint_never_says_to_run_for_real():
    from roboshop_dispatch.cli.output.steps import dry_run_hint, results_document
    from roboshop_dispatch.steps.base import FAILED, StepResult

    hint = "fix it, then run `dispatchctl build --flavour go` again (or `dispatchctl status`)"
    assert dry_run_hint(hint) == ("fix it, then run `dispatchctl build --flavour go --dry-run` again "
                                  "(or `dispatchctl status`)")
    assert dry_run_hint("`dispatchctl install --dry-run`") == "`dispatchctl install --dry-run`"
    doc = results_document("build", [StepResult("build", FAILED, "no", next_action=hint)], dry_run=True,
                           planned=["build"], duration_s=0.0)
    assert doc["steps"][0]["next_action"] == doc["error"]["next_action"] == dry_run_hint(hint)


def test_a_failed_dry_run_ends_with_the_recap_after_the_error(host):
    """A step that fails: the recap counts it and the skipped step after it; the hint keeps the
    run dry; the recap is the run's last line (the error lines before it, on stderr)."""
    res = piped(host, "build", "--flavour", "go", "--artifact", "/nonexistent/dispatch.zip", "--app-dir", NOWHERE,
                "--dry-run")
    assert res.returncode == 1, res.stdout + res.stderr
    last = res.stdout.splitlines()[-1]
    match = RECAP.match(last)
    assert match and match.group(3) == "1" and int(match.group(4)) >= 1 and match.group(5), last
    rows = len([line for line in res.stdout.splitlines()[2:-1] if line.split()[1:2] in (["ok"], ["would"],
                                                                                           ["failed"], ["skipped"])])
    assert sum(int(n) for n in match.groups()[:4]) == rows, res.stdout
    assert "dispatchctl: next:" in res.stderr and "--dry-run` again" in res.stderr, res.stderr
    code, out = terminal(host, "build", "--flavour", "go", "--artifact", "/nonexistent/dispatch.zip", "--app-dir",
                         NOWHERE, "--dry-run")  # stdout and stderr on one screen: the recap comes last
    lines = [line.rstrip() for line in ANSI.sub("", out).replace("\r", "").splitlines() if line.strip()]
    assert code == 1 and lines[-1].startswith("recap: ok=") and lines[-2].startswith("dispatchctl: next:"), lines


def test_a_run_the_host_refuses_ends_with_the_recap_every_step_skipped(host):
    """No systemd here: stop is refused before any step runs; the recap still ends the run."""
    res = piped(host, "stop")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "systemd" in res.stderr
    assert RECAP.match(res.stdout.splitlines()[-1]) and res.stdout.splitlines()[-1].startswith(
        "recap: ok=0 changed=0 failed=0 skipped="), res.stdout


def test_the_terminal_table_has_the_pipes_columns_and_ends_with_the_recap(host):
    code, out = terminal(host, *DRY_INSTALL)
    assert code == 0, out
    lines = [line.rstrip() for line in ANSI.sub("", out).replace("\r", "").splitlines() if line.strip()]
    header = next(line for line in lines if line.lstrip().startswith("step "))
    assert [w for w in header.split() if w != "┃"] == ["step", "result", "time", "details"], header
    assert RECAP.match(lines[-1]) and lines[-1].startswith("recap: ok=1 changed=5 failed=0 skipped=0"), lines[-1]


# -- 5: the password prompt --------------------------------------------------------------------------


@pytest.mark.parametrize("keys", [b"\x03", b"\x04"], ids=["ctrl-c", "ctrl-d"])
def test_ctrl_c_at_the_prompt_ends_the_line_and_says_aborted(keys):
    """On this machine (inside the container the terminal's SIGINT would reach nsenter too): the
    run ends at the prompt, a dry run that has read nothing yet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHCTL_")}
    code, shown = on_terminal([DISPATCHCTL, *DRY_INSTALL], {**env, "TERM": "dumb"}, prompt=PROMPT, keys=keys)
    assert code == 130, shown
    assert b"RabbitMQ password: \r\ndispatchctl: aborted\r\n" in shown, shown


def test_enter_alone_at_the_prompt_is_an_empty_password(host):
    code, out = terminal(host, *DRY_INSTALL, password=None, answer="")
    assert code == 2, out
    assert "empty password" in out and "terminal" not in out, out


# -- 6: check-rabbitmq on a closed port ------------------------------------------------------------


def test_check_rabbitmq_without_a_password_claims_none_and_names_the_port(tmp_path):
    from roboshop_dispatch.lab.broker import free_port

    port = free_port()
    res = local("check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", str(port),
                "--env-file", str(tmp_path / "none.env"))
    assert res.returncode == 1, res.stderr
    assert res.stdout.splitlines()[0] == f"RabbitMQ 127.0.0.1:{port} vhost / user roboshop (no password given)"
    assert f"nothing listens on port {port}" in res.stdout and "wrong RabbitMQ IP" not in res.stdout
    doc = json.loads(local("check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", str(port),
                           "--env-file", str(tmp_path / "none.env"), "--json").stdout)
    assert doc["target"]["password"] is None
    given = local("check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", str(port),
                  "--env-file", str(tmp_path / "none.env"), env={"DISPATCHCTL_AMQP_PASS": STRONG})
    assert "(password ********)" in given.stdout.splitlines()[0]


# -- 7: --artifact checked when the option is read; never echoed with its secrets --------------------


@pytest.mark.parametrize("url, said", [
    ("https://ops:s3cret-token@artifacts.invalid/dispatch.zip", "https://ops:***@artifacts.invalid/dispatch.zip: "
                                                                 "credentials in the URL are refused"),
    ("ftp://artifacts.invalid/dispatch.zip", "only http, https and file URLs"),
    ("https://artifacts.invalid:99999/dispatch.zip", "not a valid URL"),
    ("https:///dispatch.zip", "names no host"),
    ("dispatch.zip", "give an https URL or an absolute path"),
])
def test_a_bad_artifact_is_a_usage_error_before_any_step(host, url, said):
    res = piped(host, "build", "--flavour", "go", "--artifact", url, "--app-dir", NOWHERE, "--dry-run")
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == "" and said in res.stderr, res.stderr
    assert "s3cret-token" not in res.stderr


def test_an_artifacts_signature_is_masked_in_every_message(host):
    url = "/nonexistent/dispatch.zip"
    signed = "https://artifacts.invalid/dispatch.zip?X-Amz-Signature=s3cret-sig&X-Amz-Credential=AKIA0"
    for args in (["--json"], ["--diff"], ["-vv"]):
        res = piped(host, "build", "--flavour", "go", "--artifact", signed, "--insecure", "--app-dir", NOWHERE,
                    "--dry-run", *args)
        assert "s3cret-sig" not in res.stdout + res.stderr and "AKIA0" not in res.stdout + res.stderr, args
        assert "X-Amz-Signature=***" in res.stdout + res.stderr, res.stdout + res.stderr
    assert url  # a path has no secret: shown as it is (below)
    res = piped(host, "build", "--flavour", "go", "--artifact", url, "--app-dir", NOWHERE, "--dry-run")
    assert url in res.stdout


# -- 8: -vv each command, -vvv its time; -n is log lines ---------------------------------------------


def test_vv_echoes_each_command_and_vvv_adds_its_exit_status_and_time(host):
    v, vv, vvv = (piped(host, *DRY_INSTALL, flag) for flag in ("-v", "-vv", "-vvv"))
    assert vv.returncode == vvv.returncode == 0, vv.stderr
    commands = [line for line in vv.stdout.splitlines() if line.startswith("  $ ")]
    assert commands and any(re.match(r"  \$ (dpkg-query|rpm) ", line) for line in commands), vv.stdout
    assert "  = exit " not in vv.stdout and "  $ " not in v.stdout
    assert re.search(r"^  = exit \d+ in \d+\.\d{3}s$", vvv.stdout, re.M), vvv.stdout


def test_vv_echoes_the_commands_of_a_command_that_runs_no_steps(host):
    """logs: journalctl, on stderr (stdout holds the journal)."""
    vv, vvv = piped(host, "logs", "-n", "2", "-vv"), piped(host, "logs", "-n", "2", "-vvv")
    assert "$ journalctl -u dispatch.service -u 'dispatch@*.service' --no-pager -n 2" in vv.stderr, vv.stderr
    assert "= exit" not in vv.stderr and re.search(r"^= exit \d+ in \d+\.\d{3}s$", vvv.stderr, re.M), vvv.stderr
    assert "$ " not in piped(host, "logs", "-n", "2", "-v").stderr


def test_n_means_log_lines_wherever_it_is_taken():
    for command in ("status", "check", "logs"):
        out = local(command, "--help").stdout
        assert re.search(r"-n, --lines", out), (command, out)
    up = local("lab", "up", "--help").stdout
    assert "--hosts 1..8" in up and "-n" not in up.replace("--no-install", ""), up


# -- 9: a bundled dry run lists no go-only setting ----------------------------------------------------


def test_a_bundled_dry_run_lists_no_go_only_setting(host):
    bundled = piped(host, *DRY_INSTALL, "--flavour", "bundled", "--json")
    go = piped(host, *DRY_INSTALL, "--flavour", "go", "--json")
    settings, go_settings = json.loads(bundled.stdout)["settings"], json.loads(go.stdout)["settings"]
    for name in ("artifact", "artifact_sha256", "insecure"):
        assert name not in settings and name in go_settings, name
    text = piped(host, *DRY_INSTALL, "--flavour", "bundled").stdout
    assert not re.search(r"^  (artifact|artifact_sha256|insecure) ", text, re.M), text


# -- 10: -o json, help COMMAND, version --------------------------------------------------------------


def test_o_json_is_json(host):
    with_o = json.loads(piped(host, *DRY_INSTALL, "-o", "json").stdout)
    with_json = json.loads(piped(host, *DRY_INSTALL, "--json").stdout)
    assert with_o["command"] == "install" and set(with_o) == set(with_json)
    assert json.loads(piped(host, "status", "--output=json").stdout)["command"] == "status"
    bad = local("status", "-o", "yaml", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["kind"] == "usage" and "yaml" in bad.stderr


def test_help_command_is_command_help():
    assert local("help", "install").stdout == local("install", "--help").stdout
    assert local("help", "lab", "up").stdout == local("lab", "up", "--help").stdout
    assert local("help").stdout == local("--help").stdout
    assert local("help", "nosuch").returncode == 2


def test_version_says_the_version_and_its_json_meets_the_schema():
    from roboshop_dispatch import __version__

    assert local("version").stdout == local("--version").stdout == f"dispatchctl {__version__}\n"
    doc = json.loads(local("version", "-o", "json").stdout)
    assert doc["command"] == "version" and doc["version"] == __version__ and doc["python"].startswith("3.")
    assert schema_errors(doc) == []
