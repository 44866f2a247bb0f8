"""The Ansible module's pure mapping (ansible/roles/dispatchctl/library/dispatchctl.py): options ->
argv + environment, dispatchctl's JSON document -> Ansible's result. Fast: no host, no broker;
the documents come from the real CLI (a --dry-run needs neither root nor systemd) or are shaped
by the JSON Schema the CLI's own tests hold it to."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
MODULE_PATH = REPO / "ansible/roles/dispatchctl/library/dispatchctl.py"
DISPATCHCTL = str(Path(sys.executable).parent / "dispatchctl")


def load_module():
    spec = importlib.util.spec_from_file_location("ansible_dispatchctl_module", MODULE_PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


M = load_module()


def params(**given_params):
    base = {k: None for k in (*M.VALUE_FLAGS, "command", "amqp_password", "amqp_password_file", "insecure")}
    base.update(state="present", purge=False)
    base.update(given_params)
    return base


# -- options -> argv -------------------------------------------------------------------------------


def test_install_argv_and_password_only_in_the_environment():
    argv, env = M.build_command(params(amqp_host=["n1", "n2"], amqp_port=5673, amqp_password="s3cret",
                                       instances=2), "/usr/local/bin/dispatchctl")
    assert argv == ["/usr/local/bin/dispatchctl", "install", "--amqp-host=n1,n2", "--amqp-port=5673",
                    "--instances=2", "--json"]
    assert env == {"DISPATCHCTL_AMQP_PASS": "s3cret"}


def test_check_mode_is_dry_run_and_diff_mode_is_diff_where_the_command_takes_them():
    argv, _ = M.build_command(params(command="configure", amqp_host=["h"]), "d", check_mode=True, diff_mode=True)
    assert argv[-3:] == ["--dry-run", "--diff", "--json"]
    argv, _ = M.build_command(params(command="start"), "d", check_mode=True, diff_mode=True)
    assert argv == ["d", "start", "--dry-run", "--json"]  # start has no --diff
    argv, _ = M.build_command(params(command="status"), "d", check_mode=True, diff_mode=True)
    assert argv == ["d", "status", "--json"]  # read-only: runs as it is in check mode


def test_state_absent_uninstalls_and_purge_says_yes():
    argv, env = M.build_command(params(state="absent", purge=True), "d", check_mode=True)
    assert argv == ["d", "uninstall", "--purge", "--yes", "--dry-run", "--json"] and env == {}
    with pytest.raises(M.UsageError, match="state=absent"):
        M.build_command(params(state="absent", command="install"), "d")


def test_the_roles_one_set_of_variables_serves_every_command():
    """ignore_inapplicable (the role): what a command does not take is dropped, and said."""
    inventory = params(amqp_host=["10.0.0.5"], amqp_port=5672, amqp_user="roboshop", amqp_password="pw",
                       ignore_inapplicable=True)
    gone = {**inventory, "state": "absent", "purge": True}
    assert M.inapplicable(gone) == ["amqp_host", "amqp_port", "amqp_user", "amqp_password"]
    argv, env = M.build_command(M.applicable(gone), "d")
    assert argv == ["d", "uninstall", "--purge", "--yes", "--json"] and env == {}
    argv, env = M.build_command(M.applicable({**inventory, "command": "status"}), "d")
    assert argv == ["d", "status", "--json"] and env == {}
    argv, env = M.build_command(M.applicable(inventory), "d")  # install takes them all: nothing dropped
    assert M.inapplicable(inventory) == [] and "--amqp-port=5672" in argv and env == {"DISPATCHCTL_AMQP_PASS": "pw"}


@pytest.mark.parametrize(("given_params", "error"), [
    ({"command": "status", "amqp_host": ["h"]}, "status does not take amqp_host"),
    ({"command": "build", "instances": 3}, "build does not take instances"),
    ({"command": "start", "error_percent": 0}, "start does not take error_percent"),  # 0 is a value too
    ({"command": "start", "amqp_password": "x"}, "start takes no password"),
    ({"amqp_password": "x", "amqp_password_file": "/root/p"}, "not both"),
])
def test_options_that_do_not_fit_the_command_are_refused_before_anything_runs(given_params, error):
    with pytest.raises(M.UsageError, match=error):
        M.build_command(params(**given_params), "d")


@given(secret=st.text(min_size=1, max_size=40), host=st.text(min_size=1, max_size=20),
       check=st.booleans(), diff=st.booleans(), command=st.sampled_from(["install", "configure", "check-rabbitmq"]))
def test_the_password_never_reaches_the_command_line(secret, host, check, diff, command):
    without, env0 = M.build_command(params(command=command, amqp_host=[host]), "d", check, diff)
    with_secret, env = M.build_command(params(command=command, amqp_host=[host], amqp_password=secret), "d",
                                       check, diff)
    assert with_secret == without  # the argv is the same with or without a password
    assert env0 == {} and env == {"DISPATCHCTL_AMQP_PASS": secret}
    assert without[2] == f"--amqp-host={host}"  # one token whatever the text: "-x" cannot become an option


def test_every_option_the_module_maps_is_one_the_command_takes():
    """The module's table against the real CLI's --help: a renamed option fails here, not on a fleet."""
    for command, options in M.COMMAND_OPTIONS.items():
        helptext = subprocess.run([DISPATCHCTL, command, "--help"], capture_output=True, text=True,
                                  env={**os.environ, "COLUMNS": "200"}, timeout=60).stdout
        flags = [M.VALUE_FLAGS.get(o) or M.SETTINGS.get(o, ("--" + o,))[0] for o in options]
        assert all(flag in helptext for flag in flags), (command, [f for f in flags if f not in helptext])
        assert ("--dry-run" in helptext) == (command in M.PLANS), command
        assert ("--diff" in helptext) == (command in M.DIFFS), command
        assert ("--amqp-pass-file" in helptext) == (command in M.TAKES_PASSWORD), command


# -- the document -> Ansible's result --------------------------------------------------------------


def real_dry_run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISPATCHCTL_AMQP_PASS": "Pw-in-the-env-1"}
    return subprocess.run([DISPATCHCTL, "install", "--amqp-host", "127.0.0.1", "--dry-run", "--json", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_real_dry_run_with_diff_maps_to_changed_steps_and_one_diff_per_file():
    res = real_dry_run("--diff")
    result = M.interpret("install", res.returncode, res.stdout, res.stderr, diff_mode=True)
    doc = json.loads(res.stdout)
    assert result["failed"] is False and result["dry_run"] is True
    assert result["changed"] is (doc["changed"] > 0)
    assert result["changed_steps"] == [s["name"] for s in doc["steps"] if s["changed"]]
    assert "config" in result["changed_steps"]
    headers = [d["after_header"] for d in result["diff"]]
    assert "/etc/systemd/system/dispatch.service" in headers and "/etc/roboshop/dispatch.env" in headers
    for d in result["diff"]:
        assert d["prepared"].startswith("--- ") and f"+++ b{d['after_header']}" in d["prepared"]
    assert "Pw-in-the-env-1" not in json.dumps(result)
    assert result["msg"].startswith("would change: ")


def test_a_real_usage_error_fails_with_dispatchctls_message():
    res = real_dry_run("--amqp-port", "70000")
    result = M.interpret("install", res.returncode, res.stdout, res.stderr)
    assert result["failed"] is True and result["rc"] == 2 and result["kind"] == "usage"
    assert "70000" in result["msg"] and result["next_action"]


def step_failure_document():
    steps = [{"name": "config", "status": "changed", "changed": True, "failed": False, "message": "wrote",
              "diff": {"added": 1, "removed": 1}, "next_action": "", "duration_s": 0.1},
             {"name": "service", "status": "failed", "changed": False, "failed": True,
              "message": "dispatch.service did not become ready: login refused", "diff": {"added": 0, "removed": 0},
              "next_action": "run `dispatchctl check`", "duration_s": 2.0}]
    return {"command": "install", "ok": False, "version": "0.3.0", "dry_run": False, "changed": 1,
            "failed_step": "service", "duration_s": 2.1, "steps": steps,
            "error": {"kind": "step", "step": "service", "message": "dispatch.service did not become ready: "
                      "login refused", "next_action": "run `dispatchctl check`"}}


def test_a_failed_step_fails_with_its_message_next_action_and_the_steps():
    result = M.interpret("install", 1, json.dumps(step_failure_document()), "")
    assert result["failed"] is True and result["rc"] == 1
    assert result["msg"] == "dispatch.service did not become ready: login refused"
    assert result["next_action"] == "run `dispatchctl check`" and result["step"] == "service"
    assert result["changed"] is True and result["changed_steps"] == ["config"]  # what it did before failing


def test_a_rolled_back_change_fails_saying_so_and_what_failed():
    """The document of a change whose restart failed its health gate (valid against the CLI's
    schema): the task fails, with ``rolled_back`` and ``rollback`` for the play to act on."""
    from tests.support.schema import schema_errors

    doc = step_failure_document()
    doc.update(version="0.4.0", recap={"ok": 0, "changed": 1, "failed": 1, "skipped": 0})
    doc.update(rolled_back=True, rollback={
        "rolled_back": True, "reason": "dispatch.service did not become ready: login refused",
        "units": ["dispatch.service"], "journal": ["ERROR authentication failed"], "ok": True,
        "restored": ["/etc/roboshop/dispatch.amqp-pass"], "generation": "20261206T082501-f64e8994",
        "duration_s": 0.7})
    assert not schema_errors(doc), schema_errors(doc)
    result = M.interpret("install", 1, json.dumps(doc), "")
    assert result["failed"] is True and result["rolled_back"] is True
    assert result["rollback"]["units"] == ["dispatch.service"] and result["rollback"]["restored"]
    plain = M.interpret("install", 1, json.dumps(step_failure_document()), "")
    assert plain["rolled_back"] is False and "rollback" not in plain


def test_no_json_document_is_a_failure_naming_the_output():
    result = M.interpret("install", 127, "", "sh: dispatchctl: not found\n")
    assert result["failed"] is True and "not found" in result["msg"] and "127" in result["msg"]


def test_check_findings_fail_with_their_titles_and_fixes():
    finding = {"name": "login", "title": "Login", "status": "fail", "summary": "ACCESS_REFUSED", "fix": "check pass"}
    doc = {"command": "check-rabbitmq", "ok": False, "version": "0.3.0", "findings": [
        finding, {**finding, "name": "x", "title": "Port", "status": "ok", "summary": "open", "fix": ""}]}
    result = M.interpret("check-rabbitmq", 1, json.dumps(doc), "")
    assert result["failed"] is True and result["msg"] == "Login: ACCESS_REFUSED"
    assert result["next_action"] == "check pass" and result["changed"] is False


def test_status_not_running_is_reported_not_failed_but_no_systemd_fails():
    doc = {"command": "status", "ok": False, "version": "0.3.0", "installed": True, "running": False}
    result = M.interpret("status", 3, json.dumps(doc), "")
    assert result["failed"] is False and result["msg"] == "installed, not running"
    doc = {**doc, "error": {"kind": "no-systemd", "message": "PID 1 is not systemd"}}
    result = M.interpret("status", 4, json.dumps(doc), "")
    assert result["failed"] is True and result["msg"] == "PID 1 is not systemd"


def _containers(inner):
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10), _containers, max_leaves=12)
KEYS = st.sampled_from(["command", "ok", "changed", "steps", "error", "findings", "dry_run", "running", "diff_text"])


@given(stdout=st.text(max_size=200) | st.dictionaries(KEYS, JSON).map(json.dumps),
       command=st.sampled_from(sorted(M.COMMAND_OPTIONS)), rc=st.sampled_from([0, 1, 2, 3, 4, 130]))
def test_any_output_gives_a_result_never_an_exception(stdout, command, rc):
    result = M.interpret(command, rc, stdout, "", diff_mode=True)
    assert isinstance(result["failed"], bool) and (result["failed"] or "msg" in result)


# -- the whole module, as Ansible runs it on a host, on the hosts' Python floor -------------------


def run_module_on_python39(module_args: dict) -> dict:
    """The module file run by a real CPython 3.9 (RHEL 9's python3) the way AnsiballZ runs it:
    its arguments as ANSIBLE_MODULE_ARGS, ansible-core's module_utils on the path (made for 3.8+)."""
    import tempfile

    from tests.test_python39 import find_python39

    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and (Path(p) / "ansible").is_dir())
    args = json.dumps({"ANSIBLE_MODULE_ARGS": {"dispatchctl_path": DISPATCHCTL, **module_args}})
    # only ansible-core on the path, not this virtualenv's every package: a .pth file of the 3.9's own
    # site-packages must not reach them (one appending a CA to certifi.where() would change this
    # virtualenv's certifi, which the consumer zipapp packs)
    with tempfile.TemporaryDirectory(prefix="dispatchctl-ansible-path-") as path:
        (Path(path) / "ansible").symlink_to(site / "ansible")
        res = subprocess.run([find_python39(), str(MODULE_PATH)], input=args, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": path}, timeout=120)
    return json.loads(res.stdout)


def test_the_module_runs_on_python39_in_check_and_diff_mode_without_showing_the_password():
    secret = "Py39-Secret-Pw"
    out = run_module_on_python39({"amqp_host": "127.0.0.1", "amqp_password": secret,
                                  "_ansible_check_mode": True, "_ansible_diff": True})
    assert out.get("failed") is not True, out
    assert out["changed"] is True and out["dry_run"] is True and "--dry-run" in out["cmd"]
    assert "/etc/systemd/system/dispatch.service" in [d["after_header"] for d in out["diff"]]
    assert secret not in json.dumps(out) and secret not in out["cmd"]
    assert out["invocation"]["module_args"]["amqp_password"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


def test_the_module_on_python39_fails_with_dispatchctls_message():
    out = run_module_on_python39({"amqp_host": "127.0.0.1", "amqp_port": 70000, "amqp_password": "x",
                                  "_ansible_check_mode": True})
    assert out["failed"] is True and out["rc"] == 2 and "70000" in out["msg"] and out["next_action"]


# -- the module's options are the declared settings (roboshop_dispatch/knobs.py) --------------------


def test_the_modules_settings_are_a_copy_of_the_declaration():
    """The module runs alone on the managed host and cannot import dispatchctl: its copy of the
    settings (names, types, choices, the commands that take each, the option each becomes) must
    equal the one declaration, and its DOCUMENTATION must describe each as the CLI's help does."""
    import yaml

    from roboshop_dispatch import knobs

    documented = yaml.safe_load(M.DOCUMENTATION)["options"]
    for knob in knobs.OPTIONS:
        spec, doc = M.ARGUMENT_SPEC[knob.ansible], documented[knob.ansible]
        assert (spec["type"], doc["type"]) == (knob.ansible_type, knob.ansible_type), knob.name
        assert tuple(spec.get("choices", ())) == tuple(doc.get("choices", ())) == knob.choices, knob.name
        assert spec.get("elements") == doc.get("elements") == ("str" if knob.ansible_type == "list" else None)
        assert spec.get("no_log", False) == knob.secret, knob.name
        if not knob.name.startswith("amqp_pass"):  # the module hands the password over in the environment
            assert doc["description"] == knob.help, knob.name
    own = {"command", "state", "purge", "dispatchctl_path", "ignore_inapplicable"}
    assert set(M.ARGUMENT_SPEC) == set(documented) == own | {k.ansible for k in knobs.OPTIONS}
    assert {k: flag for k, (flag, _, _) in M.SETTINGS.items()} == {k.ansible: k.option for k in knobs.OPTIONS}
    assert {k.ansible: k.option for k in knobs.KNOBS if not k.flag} == M.VALUE_FLAGS
    assert set(M.COMMAND_OPTIONS) >= set(knobs.COMMANDS)
    for command, options in M.COMMAND_OPTIONS.items():
        declared = {k.ansible for k in knobs.KNOBS if command in k.commands or command in k.plain}
        assert set(options) - {"purge"} == declared, command
    assert set(M.TAKES_PASSWORD) == set(knobs.PASSWORD_KNOBS[0].commands) == set(knobs.PASSWORD_KNOBS[1].commands)
    assert M.PASSWORD_ENV == knobs.PASSWORD_ENV


def test_the_otlp_headers_reach_dispatchctl_in_its_environment_never_in_argv():
    argv, env = M.build_command(params(amqp_host=["h"], otlp_endpoint="http://10.0.0.9:4318",
                                       metrics_listen="127.0.0.1:9100",
                                       otlp_headers={"authorization": "Bearer t0k,en", "x-team": 7}), "d")
    assert argv == ["d", "install", "--amqp-host=h", "--otlp-endpoint=http://10.0.0.9:4318",
                    "--metrics-listen=127.0.0.1:9100", "--json"]
    assert env == {"DISPATCHCTL_OTLP_HEADER": "authorization=Bearer%20t0k%2Cen,x-team=7"}
    assert M.build_command(params(command="configure", otlp_headers={}), "d")[1] == {"DISPATCHCTL_OTLP_HEADER": "none"}
    assert M.ARGUMENT_SPEC["otlp_headers"]["no_log"] is True
    with pytest.raises(M.UsageError, match="does not take otlp_headers"):
        M.build_command(params(command="check", otlp_headers={"a": "b"}), "d")
    # dispatchctl reads that text back as the same headers
    from roboshop_dispatch.validate import validate_otlp_headers

    assert validate_otlp_headers("DISPATCHCTL_OTLP_HEADER", env["DISPATCHCTL_OTLP_HEADER"]).reveal() == \
        "authorization=Bearer%20t0k%2Cen,x-team=7"


def test_the_role_passes_every_setting_from_its_own_default():
    """The role's task hands each of the module's settings over from a `dispatch_*` variable its
    defaults declare (null: omitted, the remembered value kept); the password file is the module's
    alone (the role passes the password itself, from Vault)."""
    import re

    import yaml

    role = REPO / "ansible/roles/dispatchctl"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    task = next(t for t in yaml.safe_load((role / "tasks/main.yml").read_text()) if "dispatchctl" in t)
    args = task["dispatchctl"]
    assert set(M.SETTINGS) - {"amqp_password_file"} <= set(args), set(M.SETTINGS) - set(args)
    for option in set(M.SETTINGS) - {"amqp_password_file"}:
        variables = set(re.findall(r"\b(dispatch_[a-z0-9_]+)\b", args[option]))
        assert variables and variables <= set(defaults), (option, variables)
