"""``dispatchctl check-rabbitmq`` run as a user runs it: on a terminal (a real pty) and piped, against
the real test broker and a port nothing listens on. The password is asked for only when the login
is reached, exactly once; the settings not given come from DISPATCHCTL_* and the installed file,
read as the consumer reads it (its default user)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from roboshop_dispatch import envfile
from roboshop_dispatch.lab.broker import free_port
from tests.support.terminal import on_terminal

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")
PROMPT = b"RabbitMQ password:"


def clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHCTL_")}
    env.update(extra)
    return env


def on_a_terminal(argv: List[str], env: Dict[str, str], answer: Optional[str] = None,
                  timeout: float = 30.0) -> Tuple[int, bytes]:
    """On a real terminal; ``answer`` is typed when the password prompt shows."""
    return on_terminal(argv, env, prompt=PROMPT, answer=answer, timeout=timeout)


def test_a_closed_port_needs_no_password_and_asks_for_none(tmp_path):
    port = free_port()
    code, shown = on_a_terminal([DISPATCHCTL, "check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", str(port),
                                 "--env-file", str(tmp_path / "none.env")], clean_env())
    assert PROMPT not in shown, shown
    assert b"--amqp-pass-file" not in shown  # the old first error, about an option never given
    assert code == 1, shown
    assert b"TCP port reachable" in shown and b"connection refused" in shown.lower()


@pytest.mark.broker
def test_the_password_is_asked_for_exactly_once_when_the_login_is_reached(tmp_path, broker, vhost):
    code, shown = on_a_terminal([DISPATCHCTL, "check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port",
                                 str(broker.port), "--amqp-vhost", vhost, "--amqp-user", broker.user,
                                 "--env-file", str(tmp_path / "none.env")], clean_env(), answer=broker.password)
    assert shown.count(PROMPT) == 1, shown
    assert broker.password.encode() not in shown  # not echoed, not printed
    assert f"user '{broker.user}' logged in".encode() in shown, shown
    assert code in (0, 1)  # the topology of a fresh vhost may be missing: the login is what is tested here


@pytest.mark.broker
def test_no_password_anywhere_and_no_terminal_fails_the_login_check_with_the_fix(tmp_path, broker, vhost):
    proc = subprocess.run([DISPATCHCTL, "check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                           "--amqp-vhost", vhost, "--env-file", str(tmp_path / "none.env"), "--json"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=clean_env())
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    statuses = {f["name"]: f["status"] for f in doc["findings"]}
    assert statuses["resolve"] == statuses["tcp"] == "ok"
    assert statuses["auth"] == "fail"
    auth = next(f for f in doc["findings"] if f["name"] == "auth")
    assert "no AMQP password" in auth["summary"] and "DISPATCHCTL_AMQP_PASS" in auth["fix"]


@pytest.mark.broker
def test_amqp_pass_is_accepted_with_the_ps_warning_and_masked(tmp_path, broker, vhost):
    proc = subprocess.run([DISPATCHCTL, "check-rabbitmq", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                           "--amqp-vhost", vhost, "--amqp-user", broker.user, "--amqp-pass", broker.password,
                           "--env-file", str(tmp_path / "none.env"), "--json"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=clean_env())
    assert "visible to every user in `ps`" in proc.stderr
    doc = json.loads(proc.stdout)
    assert {f["name"]: f["status"] for f in doc["findings"]}["auth"] == "ok", proc.stdout
    assert broker.password not in proc.stdout


def test_settings_come_from_dispatchctl_variables(tmp_path):
    port = free_port()
    proc = subprocess.run([DISPATCHCTL, "check-rabbitmq", "--env-file", str(tmp_path / "none.env"), "--json"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=clean_env(DISPATCHCTL_AMQP_HOST="127.0.0.3", DISPATCHCTL_AMQP_PORT=str(port),
                                        DISPATCHCTL_AMQP_USER="ops"))
    assert proc.returncode == 1, proc.stderr
    target = json.loads(proc.stdout)["target"]
    assert (target["hosts"], target["port"], target["user"]) == (["127.0.0.3"], port, "ops")
    bad = subprocess.run([DISPATCHCTL, "check-rabbitmq", "--env-file", str(tmp_path / "none.env")],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env=clean_env(DISPATCHCTL_AMQP_HOST="127.0.0.3", DISPATCHCTL_AMQP_PORT="x"))
    assert bad.returncode == 2
    assert bad.stderr.strip() == "dispatchctl: error: DISPATCHCTL_AMQP_PORT: 'x' is not a whole number"


def test_an_installed_file_without_amqp_user_is_checked_with_the_consumers_default_user(tmp_path):
    """The service logs in as the consumer's default (guest) when AMQP_USER is not set: so does the
    check. (Before: with the password given separately, it tested 'roboshop', a login the service
    never uses.)"""
    port = free_port()
    env = tmp_path / "dispatch.env"
    env.write_text(envfile.render({"AMQP_HOST": "127.0.0.1", "AMQP_PORT": str(port)}))
    proc = subprocess.run([DISPATCHCTL, "check-rabbitmq", "--env-file", str(env), "--json"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=clean_env(DISPATCHCTL_AMQP_PASS="pw"))
    assert proc.returncode == 1, proc.stderr
    target = json.loads(proc.stdout)["target"]
    assert (target["hosts"], target["port"], target["user"]) == (["127.0.0.1"], port, "guest")
    broken = tmp_path / "broken.env"
    broken.write_text(envfile.render({"AMQP_HOST": "127.0.0.1", "AMQP_PORT": "x"}))
    proc = subprocess.run([DISPATCHCTL, "check-rabbitmq", "--env-file", str(broken)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=clean_env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"dispatchctl: error: {broken}: AMQP_PORT: 'x' is not a whole number: "
                                   "give --amqp-port")
