"""``--json`` prints exactly one JSON document on stdout for every command, in the envelope
``{"command", "ok", "version", "error"?}``, valid against roboshop_dispatch/schema/
dispatchctl.schema.json: on success, on usage errors (bad value, unknown option, missing
argument, unknown command), preflight failures (not root, no systemd) and crashes.

The real CLI runs as a subprocess with pipes inside a throwaway container that is not booted
(``no_systemd_host``: its PID 1 is ``sleep``, checked when it starts), a real "no systemd" host,
so that a real ``install`` or ``uninstall`` refused there could change nothing on this machine
whatever its PID 1 (the systemd cases are in test_cli_output_systemd.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roboshop_dispatch import __version__

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "roboshop_dispatch" / "schema" / "dispatchctl.schema.json"
PASSWORD = "s3cr3t-Pa$$ w0rd"
NOWHERE = "/nonexistent-dispatchctl-json-test"
COMMANDS = ["install", "configure", "build", "start", "check-rabbitmq", "check", "status", "logs", "uninstall"]


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


VALIDATOR = validator()


@pytest.fixture(scope="module")
def host(no_systemd_host):
    return no_systemd_host


def cli(host, *args: str, password: bool = True, prefix=()) -> subprocess.CompletedProcess:
    """This checkout's CLI inside the host without systemd (a clean environment, the password in
    it, never in a command line)."""
    env = {"DISPATCHCTL_AMQP_PASS": PASSWORD} if password else {}
    return host.run([*prefix, DISPATCHCTL, *args], check=False, env=env, timeout=60)


def one_document(res: subprocess.CompletedProcess) -> dict:
    """stdout is exactly one JSON document, valid against the schema, password-free."""
    doc, end = json.JSONDecoder().raw_decode(res.stdout)
    assert res.stdout[end:].strip() == "", f"more than one document: {res.stdout!r}"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(doc)]
    assert not errors, "\n".join(errors) + "\n" + res.stdout
    assert list(doc)[:3] == ["command", "ok", "version"] and doc["version"] == __version__
    assert PASSWORD not in res.stdout + res.stderr
    return doc


@pytest.mark.parametrize("args, command", [
    (["install", "--amqp-host", "10.0.0.5", "--app-dir", NOWHERE, "--dry-run", "--diff"], "install"),
    (["configure", "--amqp-host", "10.0.0.5", "--app-dir", NOWHERE, "--dry-run"], "configure"),
    (["build", "--app-dir", NOWHERE, "--dry-run"], "build"),
    (["uninstall", "--dry-run", "--app-dir", NOWHERE], "uninstall"),
])
def test_dry_runs_print_one_valid_document(host, args, command):
    res = cli(host, *args, "--json")
    assert res.returncode == 0, res.stderr
    doc = one_document(res)
    assert doc["command"] == command and doc["ok"] is True and doc["dry_run"] is True and "error" not in doc
    assert doc["steps"] and all(s["status"] in ("ok", "changed") for s in doc["steps"])


def test_a_failed_step_is_one_document_with_the_step_named(host):
    """`start` where nothing is installed (the fresh container): the service step fails, exit 1."""
    res = cli(host, "start", "--dry-run", "--json")
    assert res.returncode == 1
    doc = one_document(res)
    assert doc["ok"] is False and doc["failed_step"] == "service"
    assert doc["error"]["kind"] == "step" and doc["error"]["step"] == "service"
    assert "not installed" in doc["error"]["message"] and doc["error"]["next_action"]


def test_check_rabbitmq_and_check_print_one_valid_document(host):
    closed = cli(host, "check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", "1", "--json")
    assert closed.returncode == 1
    doc = one_document(closed)
    assert doc["command"] == "check-rabbitmq" and doc["ok"] is False and doc["counts"]["skip"] >= 1
    res = cli(host, "check", "--json", "--env-file", NOWHERE + "/dispatch.env")
    assert res.returncode == 1  # nothing is installed there, and no systemd
    assert one_document(res)["command"] == "check"


def test_logs_json_is_one_document_and_refuses_follow(host):
    res = cli(host, "logs", "--json", "-n", "5")
    assert res.returncode in (0, 1), res.stderr  # no journald runs there: an empty journal or none
    doc = one_document(res)
    assert doc["command"] == "logs" and isinstance(doc["lines"], list)
    follow = cli(host, "logs", "--json", "-f")
    assert follow.returncode == 2 and one_document(follow)["error"]["kind"] == "usage"


def test_status_without_systemd_says_so_in_the_envelope(host):
    res = cli(host, "status", "--json")
    assert res.returncode == 4
    doc = one_document(res)
    assert doc["systemd"] is False and doc["ok"] is False and doc["error"]["kind"] == "no-systemd"
    assert "does not run systemd" in doc["error"]["message"]


@pytest.mark.parametrize("args, command, needle", [
    (["status", "--bogus"], "status", "--bogus"),
    (["check", "--lines", "many"], "check", "many"),
    (["install", "--amqp-host", "10.0.0.5", "--amqp-port", "70000", "--dry-run"], "install", "--amqp-port"),
    (["install", "--dry-run"], "install", "--amqp-host"),
    (["uninstall", "--purge"], "uninstall", "--yes"),
    (["check-rabbitmq", "--amqp-host"], "check-rabbitmq", "--amqp-host"),
    (["instal", "--amqp-host", "10.0.0.5"], "dispatchctl", "instal"),
    (["--json-not-an-option"], "dispatchctl", "--json-not-an-option"),
])
def test_usage_errors_print_one_valid_document_and_exit_2(host, args, command, needle):
    res = cli(host, *args, "--json")
    assert res.returncode == 2, (res.stdout, res.stderr)
    doc = one_document(res)
    assert doc["command"] == command and doc["error"]["kind"] == "usage" and doc["ok"] is False
    assert needle in doc["error"]["message"]
    assert res.stderr.startswith("dispatchctl: error:") and needle in res.stderr


def test_no_password_is_a_usage_error_in_json_too(host):
    res = cli(host, "install", "--amqp-host", "10.0.0.5", "--dry-run", "--json", password=False)
    assert res.returncode == 2
    assert one_document(res)["error"]["message"].startswith("--amqp-pass-file")


@pytest.mark.parametrize("command", ["install", "configure", "build", "start", "uninstall"])
def test_preflight_no_systemd_is_one_document_exit_1(host, command):
    """The container's PID 1 is not systemd: a real run is refused before anything is touched."""
    args = ["--amqp-host", "10.0.0.5"] if command in ("install", "configure") else []
    res = cli(host, command, *args, "--json")
    assert res.returncode == 1, res.stderr
    doc = one_document(res)
    assert doc["error"]["kind"] == "preflight" and "systemd" in doc["error"]["message"]
    assert doc["dry_run"] is False


def test_preflight_not_root_is_one_document_exit_1(host):
    # the virtualenv's interpreter may live under /root (pyenv), which the rootfs keeps 0700: let
    # nobody reach it, so that dispatchctl refuses it rather than the dynamic loader
    host.run(["chmod", "0711", "/root"])
    res = cli(host, "install", "--amqp-host", "10.0.0.5", "--json",
              prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert res.returncode == 1, (res.stdout, res.stderr)
    doc = one_document(res)
    assert doc["error"]["kind"] == "preflight" and "root" in doc["error"]["message"]


def test_an_unexpected_exception_is_one_document_exit_1(tmp_path):
    """A command that crashes (a real exception inside the real main() wrapper): one line on
    stderr (the traceback only with -v), the internal-error document on stdout."""
    script = ("import sys\n"
              "from roboshop_dispatch.cli import main\n"
              "import typer\n"
              "from roboshop_dispatch.cli.app import app\n"
              "@app.command('status')\n"
              "def status(json_output: bool = typer.Option(False, '--json')) -> None:\n"
              "    raise ZeroDivisionError('boom')\n"
              "sys.argv = ['dispatchctl', *sys.argv[1:]]\n"
              "main()\n")
    for verbose in ([], ["-v"]):
        res = subprocess.run([sys.executable, "-c", script, "status", "--json", *verbose], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 1, res.stderr
        doc, _ = json.JSONDecoder().raw_decode(res.stdout)
        assert not list(VALIDATOR.iter_errors(doc)), res.stdout
        assert doc["error"]["kind"] == "internal" and "ZeroDivisionError" in doc["error"]["message"]
        assert ("Traceback" in res.stderr) == bool(verbose)
        assert "internal error" in res.stderr


def test_without_json_a_usage_error_prints_nothing_on_stdout(host):
    res = cli(host, "status", "--bogus")
    assert res.returncode == 2 and res.stdout == "" and "--bogus" in res.stderr


OPTION_WORDS = st.sampled_from(["--json", "--dry-run", "--amqp-host", "--amqp-port", "--lines", "-n", "-v", "-q",
                                "--exit-code", "--purge", "--nope", "-x", "--", "10.0.0.5", "70000", "x"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.sampled_from(COMMANDS), words=st.lists(OPTION_WORDS, max_size=5))
def test_any_command_line_with_json_prints_exactly_one_valid_document(host, command, words):
    """Whatever the other words, `--json` (before any `--`) gets one valid document; never a
    traceback. Real runs among them are refused (no systemd in the container), and would change
    only the throwaway container if they were not."""
    if command == "logs":  # never -f (it would follow the journal): --json refuses it anyway
        words = [w for w in words if w not in ("-n", "--lines")] + ["-n", "0"]
    res = cli(host, command, "--json", *words)
    assert "Traceback" not in res.stderr
    assert res.returncode in (0, 1, 2, 3, 4), res.stderr
    one_document(res)
