"""Every host check of ``dispatchctl check``, from recorded facts: a healthy installed state (as
InstalledState.to_json records it), then one broken fact at a time. Each state goes through
JSON first, so what is tested is what a recording holds."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from roboshop_dispatch.diagnostics import check_installed
from roboshop_dispatch.diagnostics import host_checks as hc
from roboshop_dispatch.diagnostics.report import INTERNAL_ERROR
from roboshop_dispatch.facts import installed as inst
from roboshop_dispatch.facts.host import HostFacts
from roboshop_dispatch.facts.instances import InstanceInfo

ROOT_0600 = dict(kind="file", mode=0o600, uid=0, gid=0)
SHOW = {
    "LoadState": "loaded", "ActiveState": "active", "SubState": "running", "Result": "success",
    "UnitFileState": "enabled", "MainPID": "4242", "NRestarts": "0", "User": "roboshop",
    "ExecStart": "{ path=/usr/bin/python3 ; argv[]=/usr/bin/python3 -I /app/dispatch ; ignore_errors=no }",
    "EnvironmentFiles": "/etc/roboshop/dispatch.env (ignore_errors=no)",
    "FragmentPath": "/etc/systemd/system/dispatch.service", "DropInPaths": "",
    "StatusText": "consuming orders on 10.0.0.5 vhost=/ (delivery path: fast)",
}


def recorded(state: inst.InstalledState, password: str = "s3cret-long-enough") -> inst.InstalledState:
    """``state`` after a trip through its JSON record (the password given separately, as recorded)."""
    doc = json.loads(json.dumps(state.to_json()))
    secret = state.password.reveal() if state.password else ""
    if secret and not (state.consumer and secret == state.consumer.user):  # a password that is the user's name shows
        assert secret not in json.dumps(doc)
    return inst.from_json(doc, password=password if state.password else None)


HEALTHY = inst.InstalledState(
    properties=SHOW, host=HostFacts(os_id="rocky", os_name="Rocky Linux 9.4", is_root=True, systemd_pid1=True,
                                    systemd_version=252, selinux="enforcing"),
    unit_file=inst.FileInfo("/etc/systemd/system/dispatch.service", "file", 0o644, 0, 0),
    credentials=(("amqp-pass", "/etc/roboshop/dispatch.amqp-pass"),),
    env_file=inst.FileInfo("/etc/roboshop/dispatch.env", **ROOT_0600),
    environment={"AMQP_HOST": "10.0.0.5", "AMQP_USER": "roboshop", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://10.0.0.9:4318",
                 "DISPATCH_METRICS_LISTEN": "127.0.0.1:9100"},
    credential_file=inst.FileInfo("/etc/roboshop/dispatch.amqp-pass", **ROOT_0600),
    password=inst.Secret("s3cret-long-enough"), password_source="credential",
    consumer=inst.ConsumerSettings(("10.0.0.5",), 5672, "/", "roboshop"),
    service_user=inst.UserInfo("roboshop", True, 990, 990, "/sbin/nologin", (990,)),
    app_dir=inst.FileInfo("/app", "dir", 0o755, 0, 0),
    binary=inst.FileInfo("/app/dispatch", "file", 0o755, 0, 0), flavour="bundled",
    interpreter=inst.FileInfo("/usr/bin/python3", "file", 0o755, 0, 0),
    build_stamp={"bundle": "abc"}, binary_label="system_u:object_r:bin_t:s0", process_user="roboshop",
    unit_verify={"returncode": 0, "stderr": ""},
    instance_facts=inst.InstanceFacts(legacy_file=True, legacy=InstanceInfo(
        "dispatch.service", "loaded", "active", "running", "enabled", 4242)),
    otlp_headers=(inst.Secret("authorization=Bearer%20t0ken"),),
    otlp_headers_file=inst.FileInfo("/etc/roboshop/dispatch.otlp-headers", **ROOT_0600),
    telemetry={"metrics": [{"unit": "dispatch.service", "url": "http://127.0.0.1:9100/metrics", "samples": {
        "connected": 1.0, "dispatched": 12.0, "failed": 1.0, "quarantined": 2.0, "spans_dropped": 0.0}}],
        "otlp": {"endpoint": "http://10.0.0.9:4318", "address": "10.0.0.9:4318", "ms": 0.4}},
    trust_dirs=(inst.FileInfo("/", "dir", 0o755, 0, 0), inst.FileInfo("/app", "dir", 0o755, 0, 0),
                inst.FileInfo("/etc", "dir", 0o755, 0, 0), inst.FileInfo("/etc/roboshop", "dir", 0o755, 0, 0)),
    same_user_units=(),
)
SCRAPED = HEALTHY.telemetry["metrics"][0]  # type: ignore[index]


def telemetry(**changes):
    """HEALTHY's telemetry facts with one instance's scrape or the collector's connect replaced."""
    return {"metrics": [changes.get("metrics", SCRAPED)], "otlp": changes.get("otlp", HEALTHY.telemetry["otlp"])}


def findings(state: inst.InstalledState):
    report, _ = check_installed(recorded(state, state.password.reveal() if state.password else ""), rabbitmq=False)
    return {f.name: f for f in report.findings}


def test_a_healthy_host_passes_every_check_in_order():
    report, redactor = check_installed(recorded(HEALTHY), rabbitmq=False)
    assert [f.name for f in report.findings] == [name for name, _, _ in hc.HOST_CHECKS]
    assert {f.name: f.status for f in report.findings} == {name: "ok" for name, _, _ in hc.HOST_CHECKS}
    assert report.ok and redactor.text("pw s3cret-long-enough") == "pw ********"


def test_the_record_round_trips_and_hides_the_password():
    doc = HEALTHY.to_json()
    assert doc["password"] == "********" and doc["environment"] == dict(HEALTHY.environment)
    assert doc["otlp_headers"] == ["********"] and "t0ken" not in json.dumps(doc)
    assert inst.loads(json.dumps(doc), password="s3cret-long-enough") == HEALTHY
    with pytest.raises(TypeError):
        HEALTHY.environment["AMQP_HOST"] = "x"  # type: ignore[index]


# (a broken state, the check, its status, words of its diagnosis, the manual's common issue)
BROKEN = [
    (replace(HEALTHY, host=replace(HEALTHY.host, os_id="arch", os_name="Arch Linux")), "os", "fail", "Unsupported OS",
     ""),
    (replace(HEALTHY, host=replace(HEALTHY.host, is_root=False)), "root", "fail", "Not root", ""),
    (replace(HEALTHY, host=replace(HEALTHY.host, systemd_pid1=False)), "systemd", "fail", "No systemd", ""),
    (replace(HEALTHY, service_user=inst.UserInfo("roboshop")), "user", "fail", "Service user missing",
     "Permission denied"),
    (replace(HEALTHY, binary=inst.FileInfo("/app/dispatch")), "binary", "fail", "Binary not found: run the build",
     "Binary not found"),
    (replace(HEALTHY, binary=inst.FileInfo("/app/dispatch", "file", 0o644, 0, 0)), "binary", "fail",
     "Binary not found", "Binary not found"),
    (replace(HEALTHY, binary=inst.FileInfo("/app/dispatch", "symlink", 0o777, 990, 990)), "binary", "fail",
     "symbolic link", "Binary not found"),
    (replace(HEALTHY, interpreter=inst.FileInfo("/usr/bin/python3")), "binary", "fail", "interpreter is missing",
     "Binary not found"),
    (replace(HEALTHY, binary=inst.FileInfo("/app/dispatch", "file", 0o700, 0, 0)), "binary", "fail",
     "cannot run the binary", "Permission denied"),
    (replace(HEALTHY, unit_verify={"returncode": 1, "stderr": "dispatch.service: Command /x is not executable"}),
     "unit", "fail", "Unit file invalid", "Service not starting"),
    (replace(HEALTHY, unit_verify={"returncode": 0, "stderr": "Unknown key name 'Foo'"}), "unit", "warn",
     "Unit file warnings", ""),
    (replace(HEALTHY, properties={**SHOW, "LoadState": "not-found"}, unit_file=inst.FileInfo("/x")), "unit", "fail",
     "Service not installed", ""),
    (replace(HEALTHY, env_file=inst.FileInfo("/etc/roboshop/dispatch.env"), env_error="not present"), "envfile",
     "fail", "Configuration missing", "Service not starting"),
    (replace(HEALTHY, env_file=inst.FileInfo("/etc/roboshop/dispatch.env", "file", 0o644, 0, 0)), "envfile", "fail",
     "Password exposed", ""),
    (replace(HEALTHY, env_file=inst.FileInfo("/etc/roboshop/dispatch.env", "symlink", 0o777, 0, 0)), "envfile",
     "fail", "Password exposed", ""),
    (replace(HEALTHY, environment={}), "envfile", "fail", "Configuration incomplete", "Service not starting"),
    (replace(HEALTHY, password=None, password_source="", credential_error="empty"), "envfile", "fail",
     "Configuration incomplete", "Service not starting"),
    (replace(HEALTHY, credential_file=inst.FileInfo("/etc/roboshop/dispatch.amqp-pass", "file", 0o644, 0, 0)),
     "credential", "fail", "Password exposed", ""),
    (replace(HEALTHY, credential_file=inst.FileInfo("/etc/roboshop/dispatch.amqp-pass", "file", 0o600, 990, 990)),
     "credential", "fail", "Password exposed", ""),
    (replace(HEALTHY, credential_file=inst.FileInfo("/etc/roboshop/dispatch.amqp-pass")), "credential", "fail",
     "Configuration missing", "Service not starting"),
    (replace(HEALTHY, env_has_password=True), "credential", "fail", "use the systemd credential", ""),
    (replace(HEALTHY, credentials=(), credential_file=None, env_has_password=True, password_source="environment file"),
     "credential", "fail", "use the systemd credential", ""),
    (replace(HEALTHY, properties={**SHOW, "User": ""}), "unit-user", "fail", "ensure User=roboshop",
     "Permission denied"),
    (replace(HEALTHY, process_user="root"), "unit-user", "fail", "ensure User=roboshop", "Permission denied"),
    (replace(HEALTHY, properties={**SHOW, "User": "nobody"}), "unit-user", "fail", "wrong user",
     "Permission denied"),
    (replace(HEALTHY, properties={**SHOW, "ActiveState": "activating", "SubState": "auto-restart", "NRestarts": "3",
                                  "Result": "exit-code"}, journal=("connection refused",)),
     "service", "fail", "Service not starting: verify AMQP_HOST", "Service not starting"),
    (replace(HEALTHY, properties={**SHOW, "ActiveState": "inactive", "SubState": "dead"}), "service", "fail",
     "Service stopped", ""),
    (replace(HEALTHY, binary_label="unconfined_u:object_r:user_home_t:s0"), "selinux", "warn", "SELinux label",
     "Permission denied"),
    (replace(HEALTHY, telemetry=telemetry(metrics={"unit": "dispatch.service", "url": SCRAPED["url"],
                                                   "error": "Connection refused"})),
     "metrics", "fail", "does not answer", ""),
    (replace(HEALTHY, telemetry=telemetry(metrics={**SCRAPED, "samples": {**SCRAPED["samples"], "connected": 0}})),
     "metrics", "fail", "not consuming", ""),
    (replace(HEALTHY, telemetry=telemetry(metrics={**SCRAPED, "samples": {**SCRAPED["samples"], "spans_dropped": 7}})),
     "metrics", "warn", "Spans dropped", ""),
    (replace(HEALTHY, environment={**HEALTHY.environment, "DISPATCH_METRICS_LISTEN": "9100"}), "metrics", "fail",
     "Metrics address invalid", ""),
    (replace(HEALTHY, telemetry=telemetry(otlp={"endpoint": "http://10.0.0.9:4318", "address": "10.0.0.9:4318",
                                                "error": "Connection refused"})),
     "otlp", "warn", "Tracing collector unreachable", ""),
    (replace(HEALTHY, otlp_headers_file=inst.FileInfo("/etc/roboshop/dispatch.otlp-headers", "file", 0o644, 0, 0)),
     "otlp", "fail", "Secret exposed", ""),
    (replace(HEALTHY, otlp_headers_file=inst.FileInfo("/etc/roboshop/dispatch.otlp-headers")), "otlp", "fail",
     "Configuration missing", ""),
    # issue 19: another user's app dir (or one above it), a privileged group, a shared user, a weak password
    (replace(HEALTHY, trust_dirs=(*HEALTHY.trust_dirs[:1], inst.FileInfo("/app", "dir", 0o755, 1000, 1000))),
     "dirs", "fail", "Directories another user controls", ""),
    (replace(HEALTHY, trust_dirs=(inst.FileInfo("/", "dir", 0o777, 0, 0), *HEALTHY.trust_dirs[1:])),
     "dirs", "fail", "Directories another user controls", ""),
    (replace(HEALTHY, service_user=replace(HEALTHY.service_user, groups=(990, 999),
                                           group_names=("roboshop", "docker"))),
     "user", "warn", "privileged group", ""),
    (replace(HEALTHY, same_user_units=("catalogue.service", "user.service")), "same-user", "warn",
     "share the service user", ""),
    (replace(HEALTHY, password=inst.Secret("roboshop123")), "password", "warn", "Weak AMQP password", ""),
    (replace(HEALTHY, password=inst.Secret("roboshop")), "password", "warn", "Weak AMQP password", ""),
]


@pytest.mark.parametrize("state, name, status, diagnosis, issue", BROKEN,
                         ids=[f"{b[1]}-{i}" for i, b in enumerate(BROKEN)])
def test_each_broken_fact_is_named_with_its_fix(state, name, status, diagnosis, issue):
    by = findings(state)
    f = by[name]
    assert f.status == status, f
    assert diagnosis in f.diagnosis, f
    assert f.issue == issue and f.fix, f
    others = {n: g.status for n, g in by.items() if n != name and g.status not in ("ok", "skip")}
    assert all(n in ("envfile", "credential", "unit", "binary", "unit-user") for n in others), others


def test_where_no_credential_can_be_used_the_password_stays_in_the_0600_env_file():
    go = replace(HEALTHY, flavour="go", interpreter=None, credentials=(), credential_file=None,
                 env_has_password=True, password_source="environment file")
    old = replace(go, flavour="bundled", host=replace(go.host, systemd_version=245))
    for state in (go, old):
        f = findings(state)["credential"]
        assert f.status == "ok" and "AMQP_PASS is in /etc/roboshop/dispatch.env" in f.summary, f
    # and the bundled flavour on systemd >= 247 must use it: the fix is configure
    f = findings(replace(go, flavour="bundled"))["credential"]
    assert f.status == "fail" and f.fix.startswith("dispatchctl configure")


def test_nothing_installed_leaves_out_what_does_not_apply():
    bare = inst.InstalledState(host=HostFacts(os_id="debian", is_root=True), env_error="not present")
    by = findings(bare)
    assert "unit-user" not in by and "service" not in by
    assert by["credential"].status == "skip" and by["selinux"].status == "skip" and by["unit"].status == "skip"
    report, _ = check_installed(recorded(bare), rabbitmq=True)
    assert report.get("rabbitmq").status == "skip"


def test_a_check_that_raises_is_an_internal_error_with_its_traceback(monkeypatch):
    def broken(state):
        raise KeyError("surprise")

    monkeypatch.setattr(hc, "HOST_CHECKS", (*hc.HOST_CHECKS[:2], ("boom", "Boom", broken), *hc.HOST_CHECKS[2:]))
    by = {f.name: f for f in hc.host_findings(HEALTHY)}
    assert by["boom"].status == "fail" and by["boom"].diagnosis == INTERNAL_ERROR
    assert "KeyError: 'surprise'" in by["boom"].traceback and "broken" in by["boom"].traceback
    assert by["boom"].as_dict()["traceback"] == by["boom"].traceback
    assert by["systemd"].status == "ok"  # the checks after it still ran


def test_can_access_follows_owner_group_other_and_never_a_symlink():
    user = inst.UserInfo("svc", True, 1000, 1000, "/bin/sh", (1000, 50))
    f = inst.FileInfo("/app/dispatch", "file", 0o750, 0, 50)
    assert hc.can_access(f, user, 5) is True
    assert hc.can_access(replace(f, gid=0), user, 5) is False
    assert hc.can_access(replace(f, uid=1000, mode=0o500), user, 5) is True
    assert hc.can_access(replace(f, kind="symlink", mode=0o777), user, 4) is False
    assert hc.can_access(f, inst.UserInfo("nobody-here"), 4) is None


# -- tracing and metrics ---------------------------------------------------------------------------


def test_metrics_are_read_per_instance_and_the_one_that_does_not_answer_is_named():
    units = tuple(InstanceInfo(f"dispatch@{i}.service", "loaded", "active", "running", "enabled", 100 + i)
                  for i in (1, 2))
    two = replace(HEALTHY, instance_facts=inst.InstanceFacts(template_file=True, recorded=2, units=units),
                  telemetry={"metrics": [
                      {**SCRAPED, "unit": "dispatch@1.service"},
                      {"unit": "dispatch@2.service", "url": "http://127.0.0.1:9101/metrics",
                       "error": "Connection refused"}], "otlp": HEALTHY.telemetry["otlp"]})  # type: ignore[index]
    f = findings(two)["metrics"]
    assert f.status == "fail" and "dispatch@2.service: http://127.0.0.1:9101/metrics does not answer" in f.summary
    assert "dispatch@1.service: connected, 12 dispatched, 1 failed, 2 quarantined" in f.summary
    assert "ss -ltnp 'sport = :9101'" in f.fix and "--metrics-listen" in f.fix
    assert findings(replace(two, telemetry={"metrics": [{**SCRAPED, "unit": u} for u in
                                                        ("dispatch@1.service", "dispatch@2.service")]}))[
        "metrics"].status == "ok"


def test_tracing_and_metrics_off_or_not_running_are_skipped_and_the_go_flavour_too():
    off = replace(HEALTHY, environment={"AMQP_HOST": "10.0.0.5", "AMQP_USER": "roboshop"}, telemetry={"metrics": []})
    by = findings(off)
    assert by["metrics"].status == by["otlp"].status == "skip"
    assert "--metrics-listen" in by["metrics"].summary and "--otlp-endpoint" in by["otlp"].summary
    stopped = replace(HEALTHY, telemetry={"metrics": [], "otlp": HEALTHY.telemetry["otlp"]})  # type: ignore[index]
    assert findings(stopped)["metrics"].summary == "not checked: no instance is running"
    disabled = replace(HEALTHY, environment={**HEALTHY.environment, "OTEL_SDK_DISABLED": "true"})
    assert "OTEL_SDK_DISABLED=true" in findings(disabled)["otlp"].summary
    assert "metrics" not in findings(replace(HEALTHY, telemetry=None))  # not read: not reported


def test_the_collectors_finding_shows_no_secret_and_check_masks_the_header_values():
    f = findings(HEALTHY)["otlp"]
    assert f.status == "ok" and f.summary.startswith("http://10.0.0.9:4318: 10.0.0.9:4318 accepts connections")
    _, redactor = check_installed(HEALTHY, rabbitmq=False)
    assert redactor.text("Bearer t0ken and Bearer%20t0ken") == "******** and ********"
