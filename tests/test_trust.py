"""Issue 19 in pure logic and on this machine's file system: directories another user controls
(trust.py), privileged groups and Group= (steps/user.py, render.py), weak passwords (warned, in
--json too). The real-host side is tests/test_trust_systemd.py."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch import trust
from roboshop_dispatch.facts.paths import FileInfo, chains
from roboshop_dispatch.render import render_unit
from roboshop_dispatch.settings import AmqpSettings, Secret, Settings
from roboshop_dispatch.steps.base import StepFailed
from roboshop_dispatch.steps.user import decide
from roboshop_dispatch.validate import PRIVILEGED_GROUPS, SettingsError, validate_allowed_groups, weak_password
from tests.test_json_output import DISPATCHCTL, one_document

ENTRIES = st.builds(FileInfo, path=st.sampled_from(["/", "/srv", "/srv/app", "/etc", "/etc/roboshop"]),
                    kind=st.sampled_from(["dir", "dir", "dir", "symlink", "file", "missing", "other"]),
                    mode=st.integers(min_value=0, max_value=0o7777), uid=st.sampled_from([0, 0, 0, 1000, 65534]),
                    gid=st.sampled_from([0, 4, 1000]))


@given(st.lists(ENTRIES, max_size=6, unique_by=lambda e: e.path))
def test_a_directory_is_trusted_only_when_it_is_roots_alone(entries):
    """Refused: any existing entry on the way that is not a directory or a link, not owned by root,
    or a directory group or others may write in (a root-owned group 'root' too)."""
    bad = {e.path for e in entries if e.kind != "missing" and (
        e.kind not in ("dir", "symlink") or e.uid != 0 or (e.kind == "dir" and e.mode & 0o022))}
    found = trust.problems(entries)
    assert {p.path for p in found} == bad
    for problem in found:
        assert problem.fix and problem.path in trust.message(found)


def test_the_chain_is_read_from_the_real_file_system(tmp_path):
    app = tmp_path / "roboshop-app"
    app.mkdir(mode=0o755)
    paths = [p.path for p in trust.problems(chains([app]))]
    assert paths == ["/tmp"]  # 1777: anyone may make a directory there (validate refuses an app dir in /tmp)
    os.chown(app, 65534, 65534)
    found = trust.problems(chains([app / "not-yet"]))  # a part that does not exist yet is ours to make
    assert [p.path for p in found] == ["/tmp", str(app)] and "uid 65534" in found[1].why
    link = tmp_path / "link"
    link.symlink_to(app)
    assert str(app) in [p.path for p in trust.problems(chains([link]))]  # what the link points at is judged


def test_the_provisioned_directories_are_the_app_dir_and_etc_roboshop():
    assert trust.provisioned_dirs(Path("/srv/app")) == [Path("/srv/app"), Path("/etc/roboshop")]


# -- privileged groups, Group= -------------------------------------------------------------------


def _passwd(name: str = "roboshop", gid: int = 990) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", 990, gid, "", "/app", "/sbin/nologin"))


@pytest.mark.parametrize("group", PRIVILEGED_GROUPS)
def test_a_service_user_in_a_privileged_group_is_refused_naming_it_unless_allowed(group):
    names = {990: "roboshop", 4: group}
    with pytest.raises(StepFailed, match=f"privileged group {group}") as err:
        decide("roboshop", _passwd(), Path("/app"), "/sbin/nologin", [990, 4], names)
    assert f"--allow-group {group}" in err.value.next_action
    assert not decide("roboshop", _passwd(), Path("/app"), "/sbin/nologin", [990, 4], names, (group,)).needed
    tty = {990: "roboshop", 5: "tty"}
    assert not decide("roboshop", _passwd(), Path("/app"), "/sbin/nologin", [990, 5], tty).needed


def test_allow_group_takes_only_privileged_groups():
    assert validate_allowed_groups("--allow-group", "docker, adm,docker") == ("docker", "adm")
    assert validate_allowed_groups("--allow-group", "") == ()
    with pytest.raises(SettingsError, match="'dockr'"):
        validate_allowed_groups("--allow-group", "dockr")


def test_group_is_the_users_primary_group_as_the_system_has_it():
    settings = Settings(amqp=AmqpSettings(hosts=("h",), password=Secret("p")), service_user="roboshop")
    assert "\nUser=roboshop\nGroup=services\n" in render_unit(settings, group="services")
    assert "\nUser=roboshop\nGroup=roboshop\n" in render_unit(settings)  # not made yet: useradd -U's group


# -- weak passwords ----------------------------------------------------------------------------


@pytest.mark.parametrize("password, user, reasons", [
    ("roboshop123", "roboshop", ["well-known default", "shorter than 12"]),
    ("roboshop", "roboshop", ["user's name", "shorter than 12"]),
    ("same-as-the-user-name", "same-as-the-user-name", ["user's name"]),
    ("short", "u", ["shorter than 12"]),
    ("a-long-random-0ne", "roboshop", []),
])
def test_weak_passwords(password, user, reasons):
    found = weak_password(password, user)
    assert len(found) == len(reasons) and all(any(r in f for f in found) for r in reasons)


def test_a_weak_password_is_warned_about_not_refused_and_in_the_json(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHCTL_")}
    env["DISPATCHCTL_AMQP_PASS"] = "roboshop123"
    res = subprocess.run([DISPATCHCTL, "install", "--amqp-host", "10.0.0.5", "--app-dir", "/nonexistent-trust-test",
                          "--dry-run", "--json"], capture_output=True, text=True, env=env, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert len(doc["warnings"]) == 1 and "well-known default" in doc["warnings"][0], doc.get("warnings")
    assert "shorter than 12" in doc["warnings"][0] and "roboshop123" not in res.stdout + res.stderr
    assert "warning: the AMQP password (DISPATCHCTL_AMQP_PASS) is weak" in res.stderr
    env["DISPATCHCTL_AMQP_PASS"] = "a-long-random-0ne!"
    strong = subprocess.run([DISPATCHCTL, "install", "--amqp-host", "10.0.0.5", "--app-dir", "/nonexistent-trust-test",
                             "--dry-run", "--json"], capture_output=True, text=True, env=env, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert "warnings" not in json.loads(strong.stdout) and "weak" not in strong.stderr


def test_the_warnings_document_is_valid_against_the_schema():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHCTL_")}
    res = subprocess.run([DISPATCHCTL, "configure", "--amqp-host", "10.0.0.5", "--amqp-pass", "short",
                          "--app-dir", "/nonexistent-trust-test", "--dry-run", "--json"], capture_output=True,
                         text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    doc, _ = json.JSONDecoder().raw_decode(res.stdout)
    assert doc["warnings"], res.stdout
    one_document(res)
