"""Fast tests of the provisioning steps' own logic: OS family and package manager choice, safe
unzip, what each step predicts in check mode, the service step's decisions. Files are written
under a temporary root (``Context.root``); systemd's answers are given as recorded properties.
The real host behaviour is tested in test_provision_systemd.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch import envfile
from roboshop_dispatch.facts.host import HostFacts
from roboshop_dispatch.host import Result, Runner
from roboshop_dispatch.settings import AmqpSettings, Secret, Settings
from roboshop_dispatch.steps.base import CHANGED, FAILED, OK, Context, run_steps
from roboshop_dispatch.steps.packages import PackagesStep, parse_installed, version_tuple
from roboshop_dispatch.steps.plan import PLANS, PreflightError, plan, preflight
from roboshop_dispatch.steps.service import PENDING, ServiceStep, mark_pending

OS_RELEASE = {
    "rocky9": 'NAME="Rocky Linux"\nVERSION_ID="9.4"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
              'PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n',
    "alma9": 'NAME="AlmaLinux"\nVERSION_ID="9.4"\nID="almalinux"\nID_LIKE="rhel centos fedora"\n'
             'PRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"\n',
    "rhel9": 'NAME="Red Hat Enterprise Linux"\nVERSION_ID="9.4"\nID="rhel"\nID_LIKE="fedora"\n'
             'PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n',
    "centos-stream9": 'NAME="CentOS Stream"\nVERSION_ID="9"\nID="centos"\nID_LIKE="rhel fedora"\n'
                      'PRETTY_NAME="CentOS Stream 9"\n',
    "fedora40": 'NAME="Fedora Linux"\nVERSION_ID=40\nID=fedora\nPRETTY_NAME="Fedora Linux 40 (Server Edition)"\n',
    "debian12": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
                'ID=debian\n',
    "ubuntu2204": 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nID=ubuntu\n'
                  'ID_LIKE=debian\n',
    "alpine": 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.0\nPRETTY_NAME="Alpine Linux v3.20"\n',
    "arch": 'NAME="Arch Linux"\nPRETTY_NAME="Arch Linux"\nID=arch\n',
    "opensuse": 'NAME="openSUSE Leap"\nVERSION_ID="15.6"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\n'
                'PRETTY_NAME="openSUSE Leap 15.6"\n',
}
RHEL_FAMILY = ["rocky9", "alma9", "rhel9", "centos-stream9", "fedora40"]
DEBIAN_FAMILY = ["debian12", "ubuntu2204"]
UNSUPPORTED = ["alpine", "arch", "opensuse"]

PASSWORD = 'p@ss w0rd:/%#?&"\'$`\\ ünï'


class RecordingRunner(Runner):
    """Answers commands from a table instead of running them, and records them."""

    def __init__(self, answers: Optional[Dict[str, Result]] = None) -> None:
        super().__init__()
        self.answers = answers or {}

    def run(self, argv, *, check=True, timeout=None, input=None, cwd=None, env=None) -> Result:
        self.calls.append(tuple(argv))
        for prefix, result in self.answers.items():
            if " ".join(argv).startswith(prefix):
                return result
        return Result(tuple(argv), 0, "", "")


class FakeSystemd:
    """systemd's answers for the service step's decisions (its behaviour is tested for real in
    test_provision_systemd.py)."""

    unit = "dispatch.service"

    def __init__(self, props: Dict[str, str]) -> None:
        self.props = props
        self.runner = RecordingRunner()

    def show(self):
        return dict(self.props)


def facts(name: str, **kw) -> HostFacts:
    return HostFacts.from_os_release(OS_RELEASE[name], **kw)


def settings(**kw) -> Settings:
    amqp_kw = {k: kw.pop(k) for k in list(kw) if k in ("hosts", "password")}
    amqp = AmqpSettings.build(hosts=amqp_kw.get("hosts", "10.0.0.5"),
                              password=Secret(amqp_kw.get("password", PASSWORD)))
    return Settings.build(amqp=amqp, **kw)


def ctx_for(root: Path, s: Optional[Settings] = None, *, dry_run: bool = False,
            props: Optional[Dict[str, str]] = None, host: str = "debian12") -> Context:
    return Context(settings=s or settings(), facts=facts(host, is_root=True, systemd_pid1=True),
                   runner=RecordingRunner(), systemd=FakeSystemd(props or {}),  # type: ignore[arg-type]
                   dry_run=dry_run, root=root)


# -- OS family and package manager ---------------------------------------------------------------


@pytest.mark.parametrize("name", RHEL_FAMILY)
def test_rhel_family_uses_dnf(name):
    f = facts(name)
    assert f.family == "rhel" and f.package_manager == "dnf"
    preflight(f, dry_run=True)


@pytest.mark.parametrize("name", DEBIAN_FAMILY)
def test_debian_family_uses_apt_get(name):
    f = facts(name)
    assert f.family == "debian" and f.package_manager == "apt-get"


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_other_families_are_refused_before_any_change(name, tmp_path):
    f = facts(name, is_root=True, systemd_pid1=True)
    assert f.package_manager is None
    with pytest.raises(PreflightError, match="unsupported OS"):
        preflight(f, dry_run=True)
    with pytest.raises(PreflightError, match="unsupported OS"):
        preflight(f, dry_run=False)
    # and the packages step names it too, without running anything
    ctx = ctx_for(tmp_path, host=name)
    result = PackagesStep().run(ctx)
    assert result.status == FAILED and "unsupported OS family" in result.message
    assert ctx.runner.calls == []


@pytest.mark.parametrize("name, query, install", [
    ("rocky9", "rpm -q", ["dnf", "install", "-y", "-q", "--setopt=exit_on_lock=True", "golang"]),
    ("fedora40", "rpm -q", ["dnf", "install", "-y", "-q", "--setopt=exit_on_lock=True", "golang"]),
    ("debian12", "dpkg-query -W", ["apt-get", "install", "-y", "-q", "--no-install-recommends", "golang-go"]),
    ("ubuntu2204", "dpkg-query -W", ["apt-get", "install", "-y", "-q", "--no-install-recommends", "golang-go"]),
])
def test_missing_package_is_installed_with_the_family_manager(tmp_path, name, query, install):
    ctx = ctx_for(tmp_path, settings(flavour="go"), host=name)
    ctx.runner.answers = {query: Result((), 1, "", "not installed")}  # type: ignore[attr-defined]
    dry = ctx_for(tmp_path, settings(flavour="go"), host=name, dry_run=True)
    dry.runner.answers = ctx.runner.answers  # type: ignore[attr-defined]
    predicted = PackagesStep().run(dry)
    assert predicted.status == CHANGED and "would install" in predicted.message
    assert [c[0] for c in dry.runner.calls] == [query.split()[0]]  # the dry run only queried
    PackagesStep().run(ctx)
    assert list(ctx.runner.calls[1]) == install


@pytest.mark.parametrize("name, query, out", [
    ("rhel9", "rpm", "python3\t3.9.18\n"),
    ("debian12", "dpkg-query", "python3\tii \t3.11.2-1+b1\n"),
])
def test_a_ready_host_runs_no_package_manager(tmp_path, name, query, out):
    ctx = ctx_for(tmp_path, host=name)
    ctx.runner.answers = {query: Result((), 0, out, "")}  # type: ignore[attr-defined]
    result = PackagesStep().run(ctx)
    assert result.status == OK, result.message
    assert [c[0] for c in ctx.runner.calls] == [query]


def test_installed_state_parsing():
    assert parse_installed("dnf", "python3\t3.9.18\npackage golang is not installed\n") == {"python3": "3.9.18"}
    assert parse_installed("apt-get", "python3\tii \t3.11.2-1+b1\ngolang-go\tun \t\n") == {"python3": "3.11.2-1+b1"}
    assert version_tuple("3.11.2-1+b1") == (3, 11)
    assert version_tuple("1:3.9.18") == (3, 9)


def test_python_older_than_3_9_is_a_clear_failure(tmp_path):
    ctx = ctx_for(tmp_path, host="rhel9")
    ctx.runner.answers = {"rpm": Result((), 0, "python3\t3.6.8\n", "")}  # type: ignore[attr-defined]
    result = PackagesStep().run(ctx)
    assert result.status == FAILED and "3.6.8 is older than 3.9" in result.message
    assert result.next_action


# -- preflight and plans ------------------------------------------------------------------------


def test_preflight_needs_root_and_systemd_unless_dry_run():
    with pytest.raises(PreflightError, match="must run as root"):
        preflight(facts("rocky9", is_root=False, systemd_pid1=True), dry_run=False)
    with pytest.raises(PreflightError, match="systemd is not running as PID 1"):
        preflight(facts("rocky9", is_root=True, systemd_pid1=False), dry_run=False)
    preflight(facts("rocky9", is_root=False, systemd_pid1=False), dry_run=True)
    preflight(facts("rocky9", is_root=True, systemd_pid1=True), dry_run=False)


def test_plans_run_the_manual_steps_in_order():
    assert PLANS["install"] == ["packages", "user", "appdir", "build", "config", "service"]
    assert [s.name for s in plan("build")] == ["packages", "appdir", "build", "service"]
    assert [s.name for s in plan("configure")] == ["user", "config", "service"]
    assert [s.name for s in plan("start")] == ["service"]
    assert plan("install")[-1].mode == "start"  # type: ignore[attr-defined]
    assert plan("start")[-1].mode == "start"  # type: ignore[attr-defined]
    assert plan("build")[-1].mode == "follow"  # type: ignore[attr-defined]
    assert plan("configure")[-1].mode == "follow"  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        plan("deploy")


# -- files under a temporary root: check mode predicts exactly what apply does -------------------


def _file_steps():
    return [s for s in plan("install") if s.name in ("appdir", "build", "config")]


def _run(root: Path, s: Settings, dry_run: bool):
    ctx = ctx_for(root, s, dry_run=dry_run)
    results = run_steps(_file_steps(), ctx)
    assert not any(r.failed for r in results), [r.message for r in results]
    return ctx, {r.name: r for r in results}


def _snapshot(root: Path) -> Dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_dry_run_predicts_exactly_and_a_rerun_changes_nothing(tmp_path):
    s = settings()
    dry_ctx, dry = _run(tmp_path, s, dry_run=True)
    assert _snapshot(tmp_path) == {}, "the dry run wrote something"
    ctx, real = _run(tmp_path, s, dry_run=False)
    assert {n for n, r in dry.items() if r.changed} == {n for n, r in real.items() if r.changed} \
        == {"appdir", "build", "config"}
    assert dry_ctx.changed == ctx.changed == {"appdir", "build", "config", "binary", "unit", "envfile",
                                              "credential"}
    env = tmp_path / "etc/roboshop/dispatch.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert "AMQP_PASS" not in envfile.parse(env.read_text())  # the password is a systemd credential
    credential = tmp_path / "etc/roboshop/dispatch.amqp-pass"
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600 and credential.read_text() == PASSWORD
    unit = (tmp_path / "etc/systemd/system/dispatch.service").read_text()
    assert PASSWORD not in unit
    binary = tmp_path / "app/dispatch"
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    # written in the order credential, environment file, unit (a failed run never leaves a unit
    # that points at settings not yet written)
    assert (tmp_path / PENDING.relative_to("/")).read_text().split() == ["binary", "credential", "envfile", "unit"]
    before = _snapshot(tmp_path)
    ctx2, again = _run(tmp_path, s, dry_run=False)
    assert all(r.status == OK for r in again.values()), [r.message for r in again.values()]
    assert ctx2.changed == set()
    assert _snapshot(tmp_path) == before


def test_changed_host_changes_only_the_environment_file_and_masks_passwords(tmp_path):
    _run(tmp_path, settings(password="old-secret-1"), dry_run=False)
    unit_before = _snapshot(tmp_path)["etc/systemd/system/dispatch.service"]
    s = settings(hosts="10.0.0.9", password="new-secret-2")
    dry_ctx, dry = _run(tmp_path, s, dry_run=True)
    ctx, real = _run(tmp_path, s, dry_run=False)
    for results, c in ((dry, dry_ctx), (real, ctx)):
        assert [n for n, r in results.items() if r.changed] == ["config"]
        assert c.changed == {"config", "envfile", "credential"}
    assert "dispatch.amqp-pass" in real["config"].message and "dispatch.env (AMQP_HOST)" in real["config"].message
    diff = real["config"].diff
    assert '-AMQP_HOST="10.0.0.5"' in diff and '+AMQP_HOST="10.0.0.9"' in diff
    assert "old-secret-1" not in diff and "new-secret-2" not in diff and "********" in diff
    assert _snapshot(tmp_path)["etc/systemd/system/dispatch.service"] == unit_before


def test_the_course_unit_is_replaced_and_its_password_never_shown(tmp_path):
    unit = tmp_path / "etc/systemd/system/dispatch.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\nDescription=Dispatch Service\n[Service]\nUser=roboshop\n"
                    "Environment=AMQP_HOST=10.0.0.5\nEnvironment=AMQP_USER=roboshop\n"
                    "Environment=AMQP_PASS=course-pass-123\nExecStart=/app/dispatch\n"
                    'Environment="AMQP_PASS=quoted pass 456"\n[Install]\nWantedBy=multi-user.target\n')
    _, results = _run(tmp_path, settings(), dry_run=True)
    diff = results["config"].diff
    assert "-Environment=AMQP_PASS=********" in diff and "-Environment=AMQP_HOST=10.0.0.5" in diff
    assert "course-pass-123" not in diff and "quoted pass 456" not in diff
    assert "update /etc/systemd/system/dispatch.service" in results["config"].message


def test_a_rerun_skips_rendering_but_sees_a_hand_edit(tmp_path, monkeypatch):
    from roboshop_dispatch import render

    s = settings()
    _run(tmp_path, s, dry_run=False)

    def refuse(*a, **k):
        raise AssertionError("rendered although nothing changed")

    monkeypatch.setattr(render, "render_unit", refuse)
    monkeypatch.setattr(render, "render_env", refuse)
    _, results = _run(tmp_path, s, dry_run=False)
    assert results["config"].status == OK
    monkeypatch.undo()

    env = tmp_path / "etc/roboshop/dispatch.env"
    env.write_text(env.read_text().replace("10.0.0.5", "10.9.9.9"))  # edited by hand
    ctx, results = _run(tmp_path, s, dry_run=False)
    assert results["config"].changed and ctx.changed == {"config", "envfile"}
    assert "10.0.0.5" in env.read_text()
    _, results = _run(tmp_path, settings(error_percent=3), dry_run=True)  # new settings: compared again
    assert results["config"].changed and "DISPATCH_ERROR_PERCENT" in results["config"].message


def test_a_rerun_trusts_the_recorded_zipapp_until_it_is_replaced(tmp_path, monkeypatch):
    from roboshop_dispatch import bundle

    s = settings()
    _run(tmp_path, s, dry_run=False)

    def refuse(*a, **k):
        raise AssertionError("fingerprinted although nothing changed")

    monkeypatch.setattr(bundle, "fingerprint", refuse)
    _, results = _run(tmp_path, s, dry_run=False)
    assert results["build"].status == OK
    monkeypatch.undo()

    binary = tmp_path / "app/dispatch"
    data = binary.read_bytes()
    binary.unlink()
    binary.write_bytes(data[:-3] + b"xyz")  # same size, new inode and content
    os.chmod(binary, 0o755)
    ctx, results = _run(tmp_path, s, dry_run=False)
    assert results["build"].changed and "binary" in ctx.changed
    assert binary.read_bytes() == data


def test_wrong_modes_are_fixed_without_restart_marks(tmp_path):
    s = settings()
    _run(tmp_path, s, dry_run=False)
    (tmp_path / PENDING.relative_to("/")).unlink()
    os.chmod(tmp_path / "etc/roboshop/dispatch.env", 0o644)
    os.chmod(tmp_path / "app/dispatch", 0o777)
    ctx, results = _run(tmp_path, s, dry_run=False)
    assert results["config"].changed and "0644 -> 0600" in results["config"].message
    assert results["build"].changed and "0777 -> 0755" in results["build"].message
    assert ctx.changed == {"config", "build"}  # no unit/envfile/binary: no restart
    assert stat.S_IMODE((tmp_path / "etc/roboshop/dispatch.env").stat().st_mode) == 0o600


# -- the service step's decisions ----------------------------------------------------------------

RUNNING = {"LoadState": "loaded", "ActiveState": "active", "SubState": "running", "UnitFileState": "enabled",
           "NeedDaemonReload": "no", "MainPID": "42", "Type": "notify"}
STOPPED = {**RUNNING, "ActiveState": "inactive", "SubState": "dead", "MainPID": "0"}
FRESH = {"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead", "UnitFileState": "",
         "NeedDaemonReload": "no", "MainPID": "0"}


def _actions(tmp_path, props, changed=(), mode="start", pending=(), unit_file=True) -> List[str]:
    ctx = ctx_for(tmp_path, props=props, dry_run=True)
    ctx.changed.update(changed)
    if unit_file:
        unit = ctx.host_path(ctx.settings.unit_path)
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text("[Service]\n")
    for reason in pending:
        mark_pending(ctx, reason)
    result = ServiceStep(mode).run(ctx)
    assert not result.failed, result.message
    return list(result.data["actions"])  # type: ignore[arg-type]


@pytest.mark.parametrize("props, changed, mode, expected", [
    (FRESH, {"config", "unit", "envfile", "binary"}, "start", ["daemon-reload", "enable", "start"]),
    (RUNNING, set(), "start", []),
    (RUNNING, {"config", "envfile"}, "start", ["restart"]),
    (RUNNING, {"build", "binary"}, "start", ["restart"]),
    (RUNNING, {"config", "unit"}, "start", ["daemon-reload", "restart"]),
    (RUNNING, {"config"}, "start", []),  # only a mode was fixed
    ({**RUNNING, "NeedDaemonReload": "yes"}, set(), "start", ["daemon-reload"]),
    ({**RUNNING, "UnitFileState": "disabled"}, set(), "start", ["enable"]),
    (STOPPED, set(), "start", ["start"]),
    (STOPPED, {"config", "envfile"}, "start", ["start"]),
    ({**STOPPED, "ActiveState": "failed"}, set(), "start", ["start"]),
    (STOPPED, {"config", "envfile"}, "follow", []),
    (RUNNING, {"config", "envfile"}, "follow", ["restart"]),
    (RUNNING, {"config", "unit"}, "follow", ["daemon-reload", "restart"]),
    ({**RUNNING, "UnitFileState": "disabled"}, set(), "follow", []),
])
def test_service_decisions(tmp_path, props, changed, mode, expected):
    assert _actions(tmp_path, props, changed, mode) == expected


def test_a_change_left_pending_by_an_earlier_run_restarts(tmp_path):
    import time

    assert _actions(tmp_path, RUNNING, pending=["envfile"]) == ["restart"]
    started_before = {**RUNNING, "ExecMainStartTimestampMonotonic": str(int((time.monotonic() - 60) * 1e6))}
    assert _actions(tmp_path, started_before, pending=["envfile"]) == ["restart"]
    # restarted by hand after the change: it already runs the new files
    started_after = {**RUNNING, "ExecMainStartTimestampMonotonic": str(int((time.monotonic() + 5) * 1e6))}
    assert _actions(tmp_path, started_after, pending=["envfile"]) == []


def test_start_without_a_unit_names_the_fix(tmp_path):
    ctx = ctx_for(tmp_path, props=FRESH)
    result = ServiceStep("start").run(ctx)
    assert result.failed and "not installed" in result.message and "dispatchctl install" in result.next_action
    assert ServiceStep("follow").run(ctx_for(tmp_path, props=FRESH)).status == OK


def test_dry_run_without_systemd_predicts_a_fresh_host(tmp_path):
    ctx = ctx_for(tmp_path, props={}, dry_run=True)
    ctx.changed.update({"unit", "envfile", "binary", "config"})
    result = ServiceStep("start").run(ctx)
    assert result.data["actions"] == ["daemon-reload", "enable", "start"]
    assert "systemd is not running here" in str(result.data["note"])


# -- several instances: the config step writes the template and the count ----------------------


def test_config_writes_the_template_and_the_count_for_several_instances(tmp_path):
    from roboshop_dispatch.steps.config import ConfigStep

    unit_dir = tmp_path / "etc/systemd/system"
    count_file = tmp_path / "etc/roboshop/dispatch.instances"
    predicted = ConfigStep().run(ctx_for(tmp_path, settings(instances="3"), dry_run=True))
    assert predicted.status == CHANGED and "/etc/systemd/system/dispatch@.service" in predicted.message
    assert not unit_dir.exists()
    result = ConfigStep().run(ctx_for(tmp_path, settings(instances="3")))
    assert result.status == CHANGED and "instances" not in (tmp_path / "run/dispatchctl/restart-pending").read_text()
    assert (unit_dir / "dispatch@.service").is_file() and not (unit_dir / "dispatch.service").exists()
    assert "Description=RoboShop Dispatch Service (instance %i)" in (unit_dir / "dispatch@.service").read_text()
    assert count_file.read_text() == "3\n" and stat.S_IMODE(count_file.stat().st_mode) == 0o644
    # no --instances: as installed (the recorded 3), nothing to do
    assert ConfigStep().run(ctx_for(tmp_path, settings())).status == OK
    # back to one: dispatch.service and no count (the service step removes the template after the switch)
    result = ConfigStep().run(ctx_for(tmp_path, settings(instances="1")))
    assert result.status == CHANGED and (unit_dir / "dispatch.service").is_file() and not count_file.exists()


# -- tracing and metrics: the exporter's headers are a second credential --------------------------
TELEMETRY = dict(otlp_endpoint="http://127.0.0.1:4318", metrics_listen="127.0.0.1:9100")


def _secrets_shown(results) -> str:
    return "".join(r.diff + r.message for r in results.values())


def test_the_exporter_headers_are_a_root_only_credential_masked_in_every_diff(tmp_path):
    headers = tmp_path / "etc/roboshop/dispatch.otlp-headers"
    unit = tmp_path / "etc/systemd/system/dispatch.service"
    s = settings(**TELEMETRY, otlp_headers="authorization=Bearer%20old-t0ken")
    dry_ctx, dry = _run(tmp_path, s, dry_run=True)
    ctx, real = _run(tmp_path, s, dry_run=False)
    assert dry_ctx.changed == ctx.changed and "otlp-headers" in ctx.changed
    assert headers.read_text() == "authorization=Bearer%20old-t0ken\n" and stat.S_IMODE(headers.stat().st_mode) == 0o600
    assert "LoadCredential=otlp-headers:/etc/roboshop/dispatch.otlp-headers" in unit.read_text()
    env = envfile.parse((tmp_path / "etc/roboshop/dispatch.env").read_text())
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318" and "OTEL_EXPORTER_OTLP_HEADERS" not in env
    assert "old-t0ken" not in _secrets_shown(dry) + _secrets_shown(real)

    ctx, results = _run(tmp_path, settings(**TELEMETRY, otlp_headers="authorization=Bearer%20new-t0ken"), False)
    assert ctx.changed == {"config", "otlp-headers"}  # a restart, nothing else rewritten
    assert "+******** (changed)" in results["config"].diff
    assert "t0ken" not in _secrets_shown(results)

    ctx, results = _run(tmp_path, settings(**TELEMETRY), dry_run=False)  # none: the credential goes
    assert ctx.changed == {"config", "otlp-headers", "unit"} and not headers.exists()
    assert "otlp-headers" not in unit.read_text() and "t0ken" not in _secrets_shown(results)
    ctx, results = _run(tmp_path, settings(), dry_run=False)  # tracing and metrics off: two lines go
    assert ctx.changed == {"config", "envfile"}
    assert '-OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318"' in results["config"].diff


def test_without_credentials_the_headers_sit_masked_in_the_0600_environment_file(tmp_path):
    from dataclasses import replace

    from roboshop_dispatch.steps.config import ConfigStep

    def configure(headers: str):
        ctx = ctx_for(tmp_path, settings(**TELEMETRY, otlp_headers=headers))
        ctx.facts = replace(ctx.facts, systemd_version=245)  # before LoadCredential=
        return ConfigStep().run(ctx)

    first = configure("x-api-key=old-k3y-value")
    env = tmp_path / "etc/roboshop/dispatch.env"
    assert envfile.parse(env.read_text())["OTEL_EXPORTER_OTLP_HEADERS"] == "x-api-key=old-k3y-value"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert not (tmp_path / "etc/roboshop/dispatch.otlp-headers").exists()
    second = configure("x-api-key=new-k3y-value")
    assert 'OTEL_EXPORTER_OTLP_HEADERS="******** (changed)"' in second.diff
    assert "k3y" not in first.diff + second.diff + first.message + second.message


# -- the RHEL family's decisions (run for real in test_rhel.py) ---------------------------------

# dnf 4.14's own words (captured on the RHEL-shaped test host)
DNF_LOCKED = "Error: RPMDB already locked by 4242\nThe application with PID 4242 is: sleep\n"
DNF_NO_MATCH = "No match for argument: golang\nError: Unable to find a match: golang\n"
DNF_REPOLIST = "repo id           repo name\ndispatchctl-test  dispatchctl test repository\nappstream  AppStream\n"


class SequenceRunner(RecordingRunner):
    """Answers the same command differently each time it is run (dnf, lock held, then free)."""

    def __init__(self, answers: Dict[str, List[Result]]) -> None:
        super().__init__()
        self.queue = answers

    def run(self, argv, *, check=True, timeout=None, input=None, cwd=None, env=None) -> Result:
        self.calls.append(tuple(argv))
        for prefix, results in self.queue.items():
            if " ".join(argv).startswith(prefix):
                return results.pop(0) if len(results) > 1 else results[0]
        return Result(tuple(argv), 0, "", "")


def test_dnf_output_is_read_for_the_lock_holder_and_the_missing_packages():
    from roboshop_dispatch.steps.packages import lock_holder, not_found

    assert lock_holder(DNF_LOCKED) == 4242 and lock_holder(DNF_NO_MATCH) is None
    assert not_found(DNF_NO_MATCH) == ["golang"]
    assert not_found("Error: Unable to find a match: golang python3\n") == ["golang", "python3"]
    assert not_found(DNF_LOCKED) == []


@given(st.text(max_size=300))
def test_reading_dnf_output_never_invents_a_package_or_a_pid(text):
    from roboshop_dispatch.steps.packages import lock_holder, not_found

    assert all(name in text for name in not_found(text))
    pid = lock_holder(text)
    assert pid is None or str(pid) in text


def test_a_package_no_repository_has_is_named_with_the_repositories(monkeypatch):
    from roboshop_dispatch.steps.base import StepFailed
    from roboshop_dispatch.steps.packages import dnf_install

    runner = SequenceRunner({"dnf install": [Result((), 1, "", DNF_NO_MATCH)],
                             "dnf -q repolist": [Result((), 0, DNF_REPOLIST, "")]})
    with pytest.raises(StepFailed, match=r"golang: no such package in any enabled repository "
                                         r"\(dispatchctl-test, appstream\); nothing was installed"):
        dnf_install(runner, ("golang",))
    assert [c[:2] for c in runner.calls] == [("dnf", "install"), ("dnf", "-q")]


def test_a_held_dnf_lock_is_waited_for_with_one_message_then_the_install_goes_on(monkeypatch):
    from roboshop_dispatch.steps import packages

    monkeypatch.setattr(packages, "DNF_LOCK_POLL_S", 0.01)
    locked = Result((), packages.DNF_LOCKED_RC, "", DNF_LOCKED)
    runner = SequenceRunner({"dnf install": [locked, locked, locked, Result((), 0, "", "")]})
    said: List[str] = []
    packages.dnf_install(runner, ("python3",), say=said.append)
    assert len(runner.calls) == 4 and len(said) == 1 and "held by pid 4242" in said[0]


def test_a_dnf_lock_held_past_the_bound_fails_and_installs_nothing(monkeypatch):
    from roboshop_dispatch.steps import packages
    from roboshop_dispatch.steps.base import StepFailed

    monkeypatch.setenv(packages.DNF_LOCK_WAIT_ENV, "0")
    runner = SequenceRunner({"dnf install": [Result((), packages.DNF_LOCKED_RC, "", DNF_LOCKED)]})
    with pytest.raises(StepFailed, match="dnf is busy: another process holds its lock \\(pid 4242"):
        packages.dnf_install(runner, ("python3",), say=lambda m: None)
    assert len(runner.calls) == 1
    monkeypatch.setenv(packages.DNF_LOCK_WAIT_ENV, "not a number")
    assert packages.lock_wait_bound() == packages.DNF_LOCK_WAIT_S


def test_the_service_user_gets_the_family_s_nologin(tmp_path):
    from roboshop_dispatch.steps.user import decide, nologin_shell

    for shell in ("sbin/nologin", "usr/sbin/nologin"):
        (tmp_path / shell).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / shell).touch()
    assert nologin_shell(tmp_path, "rhel") == "/sbin/nologin"
    assert nologin_shell(tmp_path, "debian") == nologin_shell(tmp_path) == "/usr/sbin/nologin"
    assert nologin_shell(tmp_path / "nowhere", "rhel") == "/bin/false"
    change = decide("roboshop", None, Path("/app"), "/sbin/nologin")
    assert change.report["argv"] == ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                                     "/app", "--shell", "/sbin/nologin", "--comment", "RoboShop dispatch service",
                                     "roboshop"]


def test_go_builds_what_the_manual_builds():
    from roboshop_dispatch.steps.build import go_build_command

    # -trimpath (or a forced CGO_ENABLED=0) recompiles the standard library on a fresh host
    assert go_build_command("/usr/bin/go", Path("/app/.dispatch.new")) == [
        "/usr/bin/go", "build", "-o", "/app/.dispatch.new"]


def test_a_lock_holder_s_command_line_cannot_write_to_the_terminal(tmp_path):
    import subprocess
    import sys
    import time

    from roboshop_dispatch.steps.packages import describe_pid

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "\x1b[2J\x07evil"])
    try:
        deadline = time.monotonic() + 10
        while "evil" not in (shown := describe_pid(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert shown.endswith("import time; time.sleep(30) ?[2J?evil)") and shown.isprintable(), shown
    assert describe_pid(2 ** 22 + 1) == f"pid {2 ** 22 + 1}"
