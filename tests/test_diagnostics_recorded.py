"""The host checks on facts recorded from a real systemd 252 host (tests/record_installed.py:
a bundled install with the password in a systemd credential) give what ``dispatchctl check``
gave there; then one recorded fact at a time is broken."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from roboshop_dispatch.diagnostics import check_installed
from roboshop_dispatch.facts import installed as inst
from roboshop_dispatch.lab.broker import PASSWORD

RECORD = Path(__file__).parent / "data" / "installed-debian12-bundled-credential.json"
LIVE_PASSWORD = PASSWORD


def load():
    record = json.loads(RECORD.read_text())
    # the record holds no password: the live host had the lab broker's (the course's default, so
    # its check warned about it: issue 19)
    return inst.from_json(record["facts"], password=LIVE_PASSWORD), record["check"]


def test_the_recorded_host_checks_as_it_did_live():
    state, live = load()
    assert state.host.systemd_version == 252 and state.flavour == "bundled" and state.loads_credential
    assert state.password_source == "credential" and not state.env_has_password
    report, _ = check_installed(state, rabbitmq=False)
    assert {f.name: f.status for f in report.findings} == live
    assert report.ok


def test_breaking_one_recorded_fact_fails_its_check():
    state, _ = load()
    exposed = replace(state, credential_file=replace(state.credential_file, mode=0o644))
    report, _ = check_installed(exposed, rabbitmq=False)
    assert [f.name for f in report.failures] == ["credential"]
    leaked = replace(state, env_has_password=True)
    report, _ = check_installed(leaked, rabbitmq=False)
    assert [(f.name, f.diagnosis) for f in report.failures] == [
        ("credential", "Password in the environment: use the systemd credential")]
