"""SELinux on RHEL-family hosts: ``check`` reports the mode and, where it matters, a label fix
(roboshop_dispatch.selinux). Pure: no host here has an SELinux kernel (the RHEL-shaped host in
test_rhel.py reports "absent" for real); the labels are the targeted policy's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch import selinux
from roboshop_dispatch.diagnostics.host_checks import check_selinux
from roboshop_dispatch.facts import installed as inst
from roboshop_dispatch.facts.host import HostFacts


def state(mode: Optional[str], label: str, family: Optional[str] = "rhel") -> inst.InstalledState:
    return inst.InstalledState(host=HostFacts(os_id={"rhel": "rocky", "debian": "debian"}.get(family or "", ""),
                                              selinux=mode), flavour="go",
                               binary=inst.FileInfo("/app/dispatch", "file", 0o755, 0, 0), binary_label=label)


@pytest.mark.parametrize("mode, label, status, summary", [
    ("enforcing", "system_u:object_r:bin_t:s0", "ok", "enforcing; /app/dispatch: system_u:object_r:bin_t:s0"),
    ("permissive", "system_u:object_r:bin_t:s0", "ok", "permissive; /app/dispatch: system_u:object_r:bin_t:s0"),
    ("disabled", "", "ok", "disabled"),
    (None, "", "ok", "absent"),
    ("enforcing", "unconfined_u:object_r:default_t:s0", "warn", "enforcing; /app/dispatch is labelled"),
    ("permissive", "unconfined_u:object_r:user_home_t:s0", "warn", "permissive; /app/dispatch is labelled"),
])
def test_check_reports_the_mode_and_a_label_systemd_cannot_execute(mode, label, status, summary):
    f = check_selinux(state(mode, label))
    assert f.status == status and f.summary.startswith(summary), f
    if status == "warn":
        assert f.fix == "semanage fcontext -a -t bin_t '/app/dispatch' && restorecon -v /app/dispatch"
        assert f.issue == "Permission denied"
        assert ("203/EXEC" in f.cause) == (mode == "enforcing"), f.cause


def test_other_families_are_skipped_with_their_mode():
    f = check_selinux(state(None, "", family="debian"))
    assert f.status == "skip" and f.summary == "not a RHEL-family host (SELinux absent)"


def test_labels_are_read_by_their_type():
    assert selinux.label_type("system_u:object_r:bin_t:s0") == "bin_t"
    assert selinux.label_type("system_u:object_r:bin_t:s0-s0:c0.c1023\0") == "bin_t"
    assert selinux.label_type("") == selinux.label_type("bin_t") == ""
    assert selinux.binary_fix(Path("/app/dispatch")).startswith("semanage fcontext -a -t bin_t '/app/dispatch'")


@given(st.text(max_size=80), st.sampled_from(["enforcing", "permissive", "disabled", None, "weird"]))
def test_any_label_or_mode_gives_a_finding(label, mode):
    f = check_selinux(state(mode, label))
    assert f.status in ("ok", "warn")
    assert f.summary.split(";")[0] in ("enforcing", "permissive", "disabled", "absent")
    assert (f.status == "warn") == (mode in ("enforcing", "permissive") and selinux.binary_label_unfit(label))
