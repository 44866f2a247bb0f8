"""The unit and environment file templates (rendering is pure; the score is systemd's own)."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess

import pytest

from roboshop_dispatch import envfile
from roboshop_dispatch.render import render_env, render_unit, unit_quote
from roboshop_dispatch.settings import AmqpSettings, Secret, Settings

PASSWORD = 'p@ss w0rd:/%#?&"\'$`\\ ünï'


def _settings(**kw):
    amqp = AmqpSettings.build(hosts="10.0.0.5,10.0.0.6", password=Secret(PASSWORD))
    return Settings.build(amqp=amqp, **kw)


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_unit_has_what_the_manual_needs_and_more():
    unit = _unit(render_unit(_settings()))
    svc = unit["Service"]
    assert svc["User"] == "roboshop"
    assert svc["SyslogIdentifier"] == "dispatch"
    assert svc["Restart"] == "on-failure"
    assert svc["RestartSec"] == "2s"
    assert svc["Type"] == "notify"
    assert svc["WatchdogSec"] == "30"
    assert svc["EnvironmentFile"] == "/etc/roboshop/dispatch.env"
    assert svc["ExecStart"] == "/usr/bin/python3 -I /app/dispatch"
    assert unit["Unit"]["After"] == "network-online.target"
    assert unit["Unit"]["Wants"] == "network-online.target"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_go_flavour_runs_the_binary_without_notify():
    svc = _unit(render_unit(_settings(flavour="go")))["Service"]
    assert svc["ExecStart"] == "/app/dispatch"
    assert svc["Type"] == "simple"
    assert "WatchdogSec" not in svc


def test_unit_never_holds_the_password_or_environment():
    text = render_unit(_settings())
    assert PASSWORD not in text
    assert "AMQP_PASS" not in text
    assert "Environment=" not in text


def test_env_file_round_trips_the_settings():
    s = _settings(error_percent=7)
    assert envfile.parse(render_env(s)) == s.environment()
    assert envfile.parse(render_env(s))["AMQP_PASS"] == PASSWORD


def test_exec_start_quoting():
    assert unit_quote("/opt/my app/dispatch") == '"/opt/my app/dispatch"'
    assert unit_quote("/a%b$c") == "/a%%b$$c"


def _analyze(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd): cannot score the unit")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flavour, limit, credential", [("bundled", 2.0, False), ("bundled", 2.0, True),
                                                       ("go", 2.0, False)])
def test_security_exposure_score(tmp_path, flavour, limit, credential):
    path = tmp_path / "dispatch.service"
    path.write_text(render_unit(_settings(flavour=flavour), credential=credential))
    assert ("LoadCredential=amqp-pass:" in path.read_text()) is credential
    res = _analyze("security", "--offline=true", f"--threshold={int(limit * 10)}", str(path))
    last = res.stdout.strip().splitlines()[-1]
    assert "Overall exposure level" in last, res.stdout + res.stderr
    score = float(last.split(":", 1)[1].split()[0])
    assert score <= limit, res.stdout
    assert res.returncode == 0, res.stdout
    checks = json.loads(_analyze("security", "--offline=true", "--json=short", str(path)).stdout)
    by_name = {c["name"]: c for c in checks}
    # the knobs that matter most for a network consumer are all set
    for name in ("User=/DynamicUser=", "NoNewPrivileges=", "ProtectSystem=", "PrivateTmp="):
        assert by_name[name]["set"] is True, by_name[name]


def test_course_unit_scores_unsafe_for_comparison(tmp_path):
    """The same scorer rates the course's unit as unsafe: the check above can fail."""
    path = tmp_path / "dispatch.service"
    path.write_text(
        "[Unit]\nDescription=Dispatch Service\n[Service]\nUser=roboshop\n"
        "Environment=AMQP_HOST=10.0.0.5\nExecStart=/app/dispatch\nSyslogIdentifier=dispatch\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    last = _analyze("security", "--offline=true", str(path)).stdout.strip().splitlines()[-1]
    assert float(last.split(":", 1)[1].split()[0]) > 8.0


# -- the template unit of several instances (--instances N > 1) ---------------------------------


def _score(path) -> float:
    last = _analyze("security", "--offline=true", str(path)).stdout.strip().splitlines()[-1]
    assert "Overall exposure level" in last, last
    return float(last.split(":", 1)[1].split()[0])


@pytest.mark.parametrize("credential", [False, True])
def test_the_template_verifies_and_scores_as_the_unit(tmp_path, credential):
    """dispatch@.service is today's unit with the instance in its description and its number in
    DISPATCH_INSTANCE: the same hardening (the same score), and an instance of it verifies clean."""
    s = _settings()
    single, template = render_unit(s, credential=credential), render_unit(s, credential=credential, template=True)
    body = [ln for ln in template.splitlines() if not ln.startswith("#")]
    assert "Environment=DISPATCH_INSTANCE=%i" in body and "DISPATCH_INSTANCE" not in single  # its metrics port
    body.remove("Environment=DISPATCH_INSTANCE=%i")
    assert body == [ln.replace("Description=RoboShop Dispatch Service",
                               "Description=RoboShop Dispatch Service (instance %i)")
                    for ln in single.splitlines() if not ln.startswith("#")]
    (tmp_path / "dispatch.service").write_text(single)
    (tmp_path / "dispatch@.service").write_text(template)
    (tmp_path / "dispatch@7.service").symlink_to(tmp_path / "dispatch@.service")
    res = _analyze("verify", str(tmp_path / "dispatch@7.service"))
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    assert _score(tmp_path / "dispatch@7.service") == _score(tmp_path / "dispatch.service") <= 2.0


# -- tracing and metrics on ----------------------------------------------------------------------
TOKEN = "Bearer t0ken-xyz"


def _telemetry_settings(**kw):
    from roboshop_dispatch.validate import validate_otlp_headers

    return _settings(otlp_endpoint="http://127.0.0.1:4318", metrics_listen="127.0.0.1:9100",
                     otlp_headers=validate_otlp_headers("--otlp-header", f"authorization={TOKEN}"), **kw)


def test_with_tracing_and_metrics_on_the_unit_and_the_template_score_2_or_less(tmp_path):
    """Metrics listen on a port and the exporter's headers come as a second credential: the unit
    (and an instance of the template) keeps its hardening, systemd's score <= 2.0."""
    s = _telemetry_settings()
    single, template = render_unit(s, credential=True), render_unit(s, credential=True, template=True)
    for text in (single, template):
        assert "LoadCredential=otlp-headers:/etc/roboshop/dispatch.otlp-headers" in text
        assert "t0ken" not in text and "OTEL_EXPORTER_OTLP_HEADERS" not in text
    (tmp_path / "dispatch.service").write_text(single)
    (tmp_path / "dispatch@.service").write_text(template)
    (tmp_path / "dispatch@2.service").symlink_to(tmp_path / "dispatch@.service")
    res = _analyze("verify", str(tmp_path / "dispatch@2.service"))
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    scores = {name: _score(tmp_path / name) for name in ("dispatch.service", "dispatch@2.service")}
    print(f"\nexposure with tracing and metrics on: {scores}")
    assert all(score <= 2.0 for score in scores.values()), scores


def test_the_headers_stay_out_of_the_environment_file_unless_no_credential_can_carry_them():
    s = _telemetry_settings()
    env = envfile.parse(render_env(s, with_password=False))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert env["DISPATCH_METRICS_LISTEN"] == "127.0.0.1:9100"
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env and "AMQP_PASS" not in env
    # systemd < 247: both secrets in the 0600 file, the headers in OpenTelemetry's form
    env = envfile.parse(render_env(s, with_password=True))
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == "authorization=Bearer%20t0ken-xyz"
    assert "otlp-headers" not in render_unit(s, credential=False)
    off = envfile.parse(render_env(_settings(), with_password=True))
    assert not {"OTEL_EXPORTER_OTLP_ENDPOINT", "DISPATCH_METRICS_LISTEN", "OTEL_EXPORTER_OTLP_HEADERS"} & set(off)
