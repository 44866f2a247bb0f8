"""``--instances N`` and ``--queue-type``: the decisions from recorded facts (what systemd answered
on the nspawn host), the parsing of systemd's answers, the validation of the options (exit 2
naming the option), the template unit and the check. The real host: test_instances_systemd.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch.diagnostics.host_checks import check_instances
from roboshop_dispatch.facts import installed
from roboshop_dispatch.facts import instances as inst
from roboshop_dispatch.facts.host import HostFacts
from roboshop_dispatch.layout import MAX_INSTANCES
from roboshop_dispatch.settings import AmqpSettings, Secret, Settings, SettingsError
from roboshop_dispatch.steps.instances import decide, in_use
from roboshop_dispatch.systemd import parse_show
from roboshop_dispatch.validate import validate_instances

LEGACY_FILE = Path("/etc/systemd/system/dispatch.service")
TEMPLATE_FILE = Path("/etc/systemd/system/dispatch@.service")


def running(unit: str, pid: int) -> inst.InstanceInfo:
    return inst.InstanceInfo(unit, "loaded", "active", "running", "enabled", pid,
                             "consuming orders on 127.0.0.1 vhost=/ (delivery path: fast)")


def stopped(unit: str, enabled: str = "disabled") -> inst.InstanceInfo:
    return inst.InstanceInfo(unit, "loaded", "inactive", "dead", enabled)


def template_host(*units: inst.InstanceInfo, recorded: int = 0) -> inst.InstanceFacts:
    return inst.InstanceFacts(template_file=True, recorded=recorded,
                              legacy=inst.InstanceInfo("dispatch.service", "not-found", "inactive", "dead", ""),
                              units=units)


TWO = template_host(running("dispatch@1.service", 101), running("dispatch@2.service", 102), recorded=2)
ONE = inst.InstanceFacts(legacy_file=True, legacy=running("dispatch.service", 100))


def plan_of(count, facts, mode="start", changed=(), pending=(), stale=None):
    return decide(count, facts, mode=mode, changed=changed, pending=pending, stale_file=stale)


def test_two_to_three_starts_only_the_third():
    change = plan_of(3, TWO, changed={"instances"})
    plan = change.the_plan()
    assert plan.start == ("dispatch@3.service",) and plan.enable == ("dispatch@3.service",)
    assert plan.restart == plan.stop == plan.disable == plan.remove == ()


def test_three_to_two_stops_and_disables_only_the_third():
    three = replace(TWO, units=(*TWO.units, running("dispatch@3.service", 103)), recorded=3)
    plan = plan_of(2, three, changed={"instances"}).the_plan()
    assert plan.stop == plan.disable == ("dispatch@3.service",)
    assert plan.start == plan.restart == ()


def test_the_same_count_again_changes_nothing():
    change = plan_of(2, TWO)
    assert not change.needed
    assert "2 of 2 instance(s) running" in change.summary and "pid 101" in change.summary


def test_one_to_three_starts_the_instances_before_the_old_unit_stops_and_goes():
    facts = replace(ONE, template_file=True)
    change = plan_of(3, facts, changed={"unit", "instances"}, stale=LEGACY_FILE)
    plan = change.the_plan()
    assert plan.reload and plan.start == tuple(f"dispatch@{i}.service" for i in (1, 2, 3))
    assert plan.stop == plan.disable == ("dispatch.service",) and plan.remove == (LEGACY_FILE,)
    verbs = [a.verb for a in change.actions]
    assert verbs.index("start") < verbs.index("stop") < verbs.index("remove")


def test_three_to_one_starts_dispatch_service_and_stops_every_instance():
    facts = replace(TWO, legacy_file=True, legacy=stopped("dispatch.service", ""))
    plan = plan_of(1, facts, changed={"unit"}, stale=TEMPLATE_FILE).the_plan()
    assert plan.start == ("dispatch.service",) and plan.enable == ("dispatch.service",)
    assert plan.stop == plan.disable == ("dispatch@1.service", "dispatch@2.service")
    assert plan.remove == (TEMPLATE_FILE,)


def test_a_settings_change_restarts_the_running_instances_one_by_one():
    change = plan_of(2, TWO, changed={"envfile"})
    assert change.the_plan().restart == ("dispatch@1.service", "dispatch@2.service")
    assert "envfile changed" in change.message()


def test_follow_mode_never_starts_a_stopped_dispatch():
    facts = template_host(stopped("dispatch@1.service", "enabled"), stopped("dispatch@2.service", "enabled"),
                          recorded=2)
    change = plan_of(3, facts, mode="follow", changed={"envfile", "instances"})
    assert not change.needed and "not started" in change.summary


def test_follow_mode_scales_a_running_dispatch():
    plan = plan_of(3, TWO, mode="follow", changed={"instances"}).the_plan()
    assert plan.start == plan.enable == ("dispatch@3.service",)


def test_a_killed_instance_is_started_again_and_a_failed_one_reset_first():
    failed = replace(TWO.units[1], active_state="failed", sub_state="failed", main_pid=0)
    plan = plan_of(2, replace(TWO, units=(TWO.units[0], failed))).the_plan()
    assert plan.start == plan.reset_failed == ("dispatch@2.service",)


def test_the_instance_logic_applies_only_when_instances_are_wanted_or_left():
    assert not in_use(ONE, 1)
    assert in_use(ONE, 2) and in_use(TWO, 1)


# -- the facts: systemd's answers parsed, the count recorded, JSON records ------------------------

SHOW_TWO = ("Id=dispatch.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\n"
            "MainPID=0\n\nId=dispatch@1.service\nLoadState=loaded\nActiveState=active\nSubState=running\n"
            "UnitFileState=enabled\nMainPID=4242\nStatusText=consuming orders 7 orders handled\n"
            "NeedDaemonReload=no\n\nId=dispatch@2.service\nLoadState=loaded\nActiveState=failed\n"
            "SubState=failed\nUnitFileState=enabled\nMainPID=0\nResult=signal\n")


def test_systemctl_show_of_several_units_is_read_block_by_block():
    blocks = [inst.InstanceInfo.from_show(b) for b in parse_show(SHOW_TWO)]
    assert [b.unit for b in blocks] == ["dispatch.service", "dispatch@1.service", "dispatch@2.service"]
    assert blocks[1].main_pid == 4242 and blocks[1].running and blocks[1].number == 1
    assert blocks[2].active_state == "failed" and not blocks[2].running and blocks[2].result == "signal"


def test_list_units_keeps_only_dispatch_instances():
    text = ("dispatch@1.service loaded active running RoboShop Dispatch Service (instance 1)\n"
            "\u25cf dispatch@12.service loaded failed failed RoboShop\n"
            "dispatch@01.service loaded x\ndispatch@x.service loaded\nnotdispatch@3.service loaded\n"
            "dispatch@3.service.bak loaded\n")
    assert inst.parse_instance_list(text) == [1, 12]


@pytest.mark.parametrize("content, count", [
    ("3\n", 3), ("64", 64), ("65\n", 0), ("0\n", 0), ("-1", 0), ("1_0", 0), ("\u0663", 0), ("3 4", 0), ("", 0),
    ("9" * 50, 0),
])
def test_the_recorded_count_is_a_sane_number_or_nothing(tmp_path, content, count):
    path = tmp_path / "dispatch.instances"
    path.write_text(content, encoding="utf-8")
    assert inst.recorded_instances(path) == count


def test_a_link_as_the_recorded_count_is_not_followed(tmp_path):
    (tmp_path / "real").write_text("5\n")
    (tmp_path / "dispatch.instances").symlink_to(tmp_path / "real")
    assert inst.recorded_instances(tmp_path / "dispatch.instances") == 0


def test_the_instances_without_systemd_are_the_files_and_links(tmp_path):
    wants = tmp_path / "multi-user.target.wants"
    wants.mkdir()
    for name in ("dispatch@1.service", "dispatch@2.service", "dispatch@.service", "other@1.service"):
        (wants / name).symlink_to("/etc/systemd/system/dispatch@.service")
    (tmp_path / "dispatch@.service").write_text("[Unit]\n")
    facts = inst.read_instances(None, systemd_pid1=False, unit_dir=tmp_path,
                                instances_file=tmp_path / "absent")
    assert [u.unit for u in facts.units] == ["dispatch@1.service", "dispatch@2.service"]
    assert facts.template_file and not facts.legacy_file and facts.configured == 2  # two linked


def test_the_instance_facts_record_to_json_and_back():
    state = installed.InstalledState(instance_facts=replace(TWO, legacy_file=True))
    again = installed.from_json(json.loads(json.dumps(state.to_json())))
    assert again.instance_facts == state.instance_facts


# -- check: fewer instances than configured ------------------------------------------------------

def _state(facts: inst.InstanceFacts) -> installed.InstalledState:
    return installed.InstalledState(unit="dispatch@1.service", host=HostFacts(systemd_pid1=True), instance_facts=facts,
                               properties={"LoadState": "loaded", "ActiveState": "active"})


def test_check_names_the_instance_that_does_not_run():
    down = replace(TWO, units=(TWO.units[0], stopped("dispatch@2.service", "enabled")))
    f = check_instances(_state(down))
    assert f is not None and f.status == "fail" and "dispatch@2.service" in f.summary
    assert "1 of 2 running" in f.summary and "dispatchctl start" in f.fix


def test_check_warns_of_a_stale_dispatch_service_beside_the_instances():
    f = check_instances(_state(replace(TWO, legacy=running("dispatch.service", 99))))
    assert f is not None and f.status == "warn" and "dispatch.service" in f.summary


def test_check_passes_when_every_configured_instance_runs():
    f = check_instances(_state(TWO))
    assert f is not None and f.status == "ok" and "2 of 2 running" in f.summary


# -- the options ------------------------------------------------------------------------------

@given(st.text(max_size=8))
def test_only_plain_numbers_in_range_are_instance_counts(text):
    try:
        value = validate_instances("--instances", text)
    except SettingsError as exc:
        assert exc.option == "--instances"
        return
    assert value is not None and 1 <= value <= MAX_INSTANCES
    assert text.strip().isascii() and text.strip().isdigit()


@pytest.mark.parametrize("text", ["0", "65", "-1", "+3", "1_0", "\u0663", "3.0", "", "1e1"])
def test_bad_instance_counts_are_refused(text):
    with pytest.raises(SettingsError, match="--instances"):
        validate_instances("--instances", text)


def _settings(**kw) -> Settings:
    return Settings.build(amqp=AmqpSettings.build(hosts="127.0.0.1", password=Secret("pw")), **kw)


def test_queue_type_goes_into_the_environment_file():
    from roboshop_dispatch import envfile
    from roboshop_dispatch.render import render_env

    assert envfile.parse(render_env(_settings()))["DISPATCH_QUEUE_TYPE"] == "classic"
    assert envfile.parse(render_env(_settings(queue_type="quorum")))["DISPATCH_QUEUE_TYPE"] == "quorum"


@pytest.mark.parametrize("kw", [{"queue_type": "stream"}, {"queue_type": "Quorum"}, {"queue_type": ""},
                                {"queue_type": "quorum", "flavour": "go"}])
def test_bad_queue_types_are_refused(kw):
    with pytest.raises(SettingsError, match="--queue-type"):
        _settings(**kw)


DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")


@pytest.mark.parametrize("args, option", [
    (["--instances", "0"], "--instances"), (["--instances", "65"], "--instances"),
    (["--instances", "two"], "--instances"), (["--queue-type", "lazy"], "--queue-type"),
])
@pytest.mark.parametrize("command", ["install", "configure"])
def test_bad_options_exit_2_naming_them(command, args, option):
    env = {**os.environ, "DISPATCHCTL_AMQP_PASS": "pw"}
    res = subprocess.run([DISPATCHCTL, command, "--amqp-host", "127.0.0.1", *args, "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stdout + res.stderr
    assert option in res.stderr and res.stdout == ""
