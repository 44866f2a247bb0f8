"""The pure logic of the diagnostics, status and uninstall: parsing systemd's answers, masking,
settings from the installed environment file, the time bound, the uninstall steps on a temp
root. Plus the commands on a host without systemd (a real, unbooted container)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from roboshop_dispatch import diagnostics as d
from roboshop_dispatch import envfile, status
from roboshop_dispatch.cli.check import resolve_amqp
from roboshop_dispatch.cli.output.status import human_bytes, human_duration
from roboshop_dispatch.diagnostics.bounded import run_bounded
from roboshop_dispatch.diagnostics.report import (
    AUTH_FAILURE,
    FAIL,
    OK,
    SERVICE_NOT_STARTING,
    SKIP,
    WARN,
    Finding,
    Report,
)
from roboshop_dispatch.facts.host import HostFacts
from roboshop_dispatch.facts.paths import flavour_of
from roboshop_dispatch.facts.unitfile import binary_from_unit, env_file_from_unit, exec_argv
from roboshop_dispatch.host import Runner
from roboshop_dispatch.redact import Redactor
from roboshop_dispatch.settings import AmqpSettings, Secret, Settings, SettingsError
from roboshop_dispatch.steps.base import Context, run_steps
from roboshop_dispatch.steps.uninstall import plan
from roboshop_dispatch.systemd import Systemd

SHOW_BUNDLED = ("{ path=/usr/bin/python3 ; argv[]=/usr/bin/python3 -I /app/dispatch ; ignore_errors=no ; "
                "start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }")
SHOW_GO = "{ path=/app/dispatch ; argv[]=/app/dispatch ; ignore_errors=no ; start_time=[n/a] ; pid=0 }"


# -- parsing systemd's answers -----------------------------------------------------------------


def test_exec_argv_and_the_binary_of_each_flavour():
    assert exec_argv(SHOW_BUNDLED) == ["/usr/bin/python3", "-I", "/app/dispatch"]
    assert binary_from_unit({"ExecStart": SHOW_BUNDLED}, Path("/x")) == Path("/app/dispatch")
    assert binary_from_unit({"ExecStart": SHOW_GO}, Path("/x")) == Path("/app/dispatch")
    assert binary_from_unit({"ExecStart": "{ path=/opt/d/run ; argv[]=/opt/d/run ; }"}, Path("/srv/dispatch")) \
        == Path("/srv/dispatch")
    assert binary_from_unit({}, Path("/app/dispatch")) == Path("/app/dispatch")


def test_env_file_from_unit():
    props = {"EnvironmentFiles": "/etc/roboshop/dispatch.env (ignore_errors=no)"}
    assert env_file_from_unit(props, Path("/x")) == Path("/etc/roboshop/dispatch.env")
    assert env_file_from_unit({"EnvironmentFiles": "-/etc/other.env (ignore_errors=yes)"}, Path("/x")) \
        == Path("/etc/other.env")
    assert env_file_from_unit({}, Path("/default.env")) == Path("/default.env")


def test_flavour_of(tmp_path):
    elf = tmp_path / "elf"
    elf.write_bytes(b"\x7fELF\x02\x01\x01")
    zipapp = tmp_path / "zipapp"
    zipapp.write_bytes(b"#!/usr/bin/env python3\nPK\x03\x04")
    other = tmp_path / "other"
    other.write_bytes(b"hello")
    assert flavour_of(elf) == "go"
    assert flavour_of(zipapp) == "bundled"
    assert flavour_of(other) == "unknown"
    assert flavour_of(tmp_path / "missing") is None


# -- masking -----------------------------------------------------------------------------------


def test_the_redactor_hides_the_password_raw_and_url_encoded():
    secret = "p@ss:w/rd %#"
    redactor = Redactor([secret, ""])
    mask = redactor.text
    assert mask(f"amqp://u:{secret}@h/") == "amqp://u:********@h/"
    assert mask("amqp://u:p%40ss%3Aw%2Frd%20%25%23@h/") == "amqp://u:********@h/"
    assert mask("nothing secret") == "nothing secret"
    doc = redactor.document({"a": [f"x{secret}", {"b": secret}], "n": 3})
    assert doc == {"a": ["x********", {"b": "********"}], "n": 3}
    assert Redactor([]).text("text") == "text"


# -- settings from the installed configuration -------------------------------------------------


def _env(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "dispatch.env"
    path.write_text(envfile.render(values))
    return path


def test_resolve_amqp_options_win_then_the_installed_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPATCHCTL_AMQP_PASS", raising=False)
    env = _env(tmp_path, AMQP_HOST="10.1.1.1", AMQP_PORT="5673", AMQP_VHOST="shop", AMQP_USER="inst",
               AMQP_PASS="installed-pw")
    amqp, password, _ = resolve_amqp(host=None, port=None, vhost=None, user=None, pass_file=None, env_file=env)
    assert (amqp.hosts, amqp.port, amqp.vhost, amqp.user) == (("10.1.1.1",), 5673, "shop", "inst")
    assert password().reveal() == "installed-pw"
    pass_file = tmp_path / "pass"
    pass_file.write_text("from-file\n")
    amqp, password, _ = resolve_amqp(host="10.2.2.2", port="5674", vhost="v", user="opt", pass_file=str(pass_file),
                                  env_file=env)
    assert (amqp.hosts, amqp.port, amqp.vhost, amqp.user) == (("10.2.2.2",), 5674, "v", "opt")
    assert password().reveal() == "from-file"
    monkeypatch.setenv("DISPATCHCTL_AMQP_PASS", "from-env")
    amqp, password, _ = resolve_amqp(host="10.2.2.2", port=None, vhost=None, user=None, pass_file=None, env_file=env)
    assert password().reveal() == "from-env" and amqp.port == 5673  # each setting not given: the installed one


def test_resolve_amqp_errors_name_the_option(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPATCHCTL_AMQP_PASS", raising=False)
    with pytest.raises(SettingsError, match=r"--amqp-host.*is required"):
        resolve_amqp(host=None, port=None, vhost=None, user=None, pass_file=None, env_file=tmp_path / "none")
    _, password, _ = resolve_amqp(host="10.0.0.1", port=None, vhost=None, user=None, pass_file=None,
                               env_file=tmp_path / "none")
    with pytest.raises(SettingsError, match="--amqp-pass-file"):  # only when the login needs it
        password()
    with pytest.raises(SettingsError, match="--amqp-port"):
        resolve_amqp(host="10.0.0.1", port="99999", vhost=None, user=None, pass_file=None, env_file=tmp_path / "n")
    with pytest.raises(SettingsError, match="--amqp-host"):
        resolve_amqp(host="not a host", port=None, vhost=None, user=None, pass_file=None, env_file=tmp_path / "n")


# -- reports and the time bound ----------------------------------------------------------------


def test_report_ok_issues_and_counts():
    report = Report()
    report.add(Finding("a", "A", OK, "fine"))
    report.add(Finding("b", "B", WARN, "meh"))
    assert report.ok and report.issues == []
    report.add(Finding("c", "C", FAIL, "bad", issue=AUTH_FAILURE))
    report.add(Finding("e", "E", FAIL, "bad", issue=SERVICE_NOT_STARTING))
    report.add(Finding("f", "F", FAIL, "bad", issue=AUTH_FAILURE))
    report.add(Finding("g", "G", SKIP, "not run"))
    assert not report.ok
    assert report.issues == [AUTH_FAILURE, SERVICE_NOT_STARTING]
    assert report.counts() == {"ok": 1, "warn": 1, "fail": 3, "skip": 1}
    assert json.loads(json.dumps(report.as_dict()))["findings"][2]["issue"] == "Auth failure"


def test_run_bounded_never_waits_past_its_timeout():
    """An ordering, not an absolute bound: with a 0.2 s timeout it returns long before the function
    (which waits 30 s) could end; a third of that leaves a busy machine room."""
    import threading

    release = threading.Event()
    started = time.monotonic()
    try:
        finished, result, error = run_bounded(lambda: release.wait(30), 0.2)
        took = time.monotonic() - started
    finally:
        release.set()  # the abandoned call ends now
    assert not finished and result is None and error is None
    assert 0.2 <= took < 30 / 3, took
    assert run_bounded(lambda: 42, 1) == (True, 42, None)
    finished, _, error = run_bounded(lambda: 1 / 0, 1)
    assert finished and isinstance(error, ZeroDivisionError)


def test_a_closed_port_is_refused_at_once_and_named():
    """Refused, not timed out: with a 30 s connect timeout (and budget) the answer comes long
    before either, so nothing waited for the port (an ordering, not an absolute bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        amqp = AmqpSettings.build(hosts="127.0.0.1", port=port, password=Secret("pw"))
        report = d.check_rabbitmq(amqp, budget=60, connect_timeout=30)
    tcp = report.get("tcp")
    assert tcp is not None and tcp.status == FAIL and tcp.issue == SERVICE_NOT_STARTING
    assert f"nothing listens on port {port}" in tcp.diagnosis  # the port given, named (issue 20)
    assert f"AMQP_PORT ({port})" in tcp.fix and "5672" not in tcp.fix
    assert [f.status for f in report.findings[2:]] == [SKIP] * (len(report.findings) - 2)
    assert report.elapsed_s < 30 / 3, report.elapsed_s


def test_latency_is_a_warning_only_above_the_slow_round_trip():
    from roboshop_dispatch.diagnostics.catalog import SLOW_RTT_MS
    from roboshop_dispatch.diagnostics.topology import latency_finding

    fast = latency_finding([3.0, 1.0, 2.0])
    assert fast.status == OK and fast.data == {"median_ms": 2.0, "samples_ms": [1.0, 2.0, 3.0]}
    assert latency_finding([SLOW_RTT_MS, 1.0, 9000.0]).status == OK  # the median decides, not one sample
    slow = latency_finding([SLOW_RTT_MS + 1, 1.0, 9000.0])
    assert slow.status == WARN and slow.diagnosis == "Slow broker" and slow.fix


# -- status helpers ----------------------------------------------------------------------------


def test_status_exit_codes_and_formatting():
    assert status.exit_code({"installed": False, "running": False}) == 4
    assert status.exit_code({"installed": True, "running": False}) == 3
    assert status.exit_code({"installed": True, "running": True}) == 0
    assert human_bytes(29032448) == "27.7 MiB"
    assert human_bytes(512) == "512 B"
    assert human_duration(3.25) == "3.2s"
    assert human_duration(3725) == "1h 2m 5s"
    assert human_duration(90061) == "1d 1h 1m"


# -- uninstall steps on a temp root ------------------------------------------------------------


def _installed_tree(root: Path) -> None:
    unit_dir = root / "etc/systemd/system"
    (unit_dir / "dispatch.service.d").mkdir(parents=True)
    (unit_dir / "dispatch.service").write_text("[Service]\nExecStart=/app/dispatch\n")
    (unit_dir / "dispatch.service.d/override.conf").write_text("[Service]\n")
    (unit_dir / "multi-user.target.wants").mkdir()
    (unit_dir / "multi-user.target.wants/dispatch.service").symlink_to("/etc/systemd/system/dispatch.service")
    (root / "etc/roboshop").mkdir(parents=True)
    (root / "etc/roboshop/dispatch.env").write_text('AMQP_PASS="x"\n')
    (root / "app").mkdir()
    (root / "app/dispatch").write_text("#!/usr/bin/python3\n")
    (root / "app/go.mod").write_text("module dispatch\n")


def _context(root: Path, *, dry_run: bool) -> Context:
    settings = Settings.build(amqp=AmqpSettings(hosts=("localhost",), password=Secret("unused")),
                              service_user="dispatchctl-test-nobody")
    runner = Runner(timeout=30)
    ctx = Context(settings=settings, facts=HostFacts(is_root=True, systemd_pid1=False), runner=runner,
                  systemd=Systemd(runner), dry_run=dry_run)
    ctx.root = root
    return ctx


def _tree(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_uninstall_dry_run_predicts_the_real_run_which_is_idempotent(tmp_path):
    _installed_tree(tmp_path)
    before = _tree(tmp_path)
    dry = run_steps(plan(purge=False), _context(tmp_path, dry_run=True))
    assert _tree(tmp_path) == before
    predicted = {r.name: r.status for r in dry}
    assert predicted == {"stop": "ok", "disable": "changed", "unit": "changed", "config": "changed",
                         "binary": "changed"}
    real = run_steps(plan(purge=False), _context(tmp_path, dry_run=False))
    assert {r.name: r.status for r in real} == predicted
    assert _tree(tmp_path) == sorted(["app", "app/go.mod", "etc", "etc/systemd", "etc/systemd/system",
                                      "etc/systemd/system/multi-user.target.wants"])
    again = run_steps(plan(purge=False), _context(tmp_path, dry_run=False))
    assert {r.status for r in again} == {"ok"}


def test_uninstall_purge_removes_the_app_dir(tmp_path):
    # issue 7: purge removes only what dispatchctl created (the record), asked to with --yes
    import json

    _installed_tree(tmp_path)
    record = tmp_path / "var/lib/dispatchctl/created.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"dirs": ["/app"], "files": ["/app/dispatch", "/app/go.mod"]}))
    ctx = _context(tmp_path, dry_run=False)
    ctx.confirmed = True
    results = run_steps(plan(purge=True), ctx)
    by = {r.name: r for r in results}
    assert by["appdir"].status == "changed" and not (tmp_path / "app").exists()
    assert by["user"].status == "ok" and "does not exist" in by["user"].message
    assert {r.status for r in run_steps(plan(purge=True), ctx)} == {"ok"}


# -- the commands on a host without systemd as PID 1 (a real, unbooted container) --------------


def test_commands_on_a_host_without_systemd(systemd_rootfs):
    from roboshop_dispatch.lab.nspawn import run_unbooted, venv_bin

    cli = venv_bin("dispatchctl")
    script = "; ".join(
        f"echo '=== {name}'; {cli} {args}; echo \"=== rc=$?\""
        for name, args in [
            ("status", "status --json"),
            ("check", "check --json"),
            ("uninstall", "uninstall"),
            ("dry", "uninstall --dry-run --json"),
        ])
    res = run_unbooted(systemd_rootfs, ["sh", "-c", "exec 2>&1; " + script])
    parts = {}
    name, text = "", ""
    for chunk in res.stdout.split("=== ")[1:]:
        head, _, body = chunk.partition("\n")
        if head.startswith("rc="):
            parts[name] = (int(head[3:]), text)
        else:
            name, text = head.strip(), body
    rc, out = parts["status"]
    assert rc == 4 and json.loads(out)["installed"] is False, out
    rc, out = parts["check"]
    assert rc == 1, out
    by = {f["name"]: f for f in json.loads(out)["findings"]}
    assert by["systemd"]["status"] == "fail" and by["envfile"]["status"] == "fail"
    assert by["rabbitmq"]["status"] == "skip"
    rc, out = parts["uninstall"]
    assert rc == 1 and "systemd is not running as PID 1" in out
    rc, out = parts["dry"]
    assert rc == 0, out
    assert [(s["name"], s["status"]) for s in json.loads(out)["steps"]] == [
        ("stop", "ok"), ("disable", "ok"), ("unit", "ok"), ("config", "ok"), ("binary", "ok")]


def test_a_broker_reply_is_shown_on_one_line_with_controls_escaped():
    from roboshop_dispatch.diagnostics.catalog import scrub

    shown = scrub("NOT_FOUND - no queue 'x\x1b[2J\x9b31m'\nin vhost '/'")
    assert "\n" not in shown and "\x1b" not in shown and "\x9b" not in shown
    assert "\\x1b[2J" in shown and "\\x9b31m" in shown and "in vhost '/'" in shown
    assert len(scrub("x" * 1000)) == 300
