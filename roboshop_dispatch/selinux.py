"""What SELinux means for dispatch on a RHEL-family host: the modes, the labels its files need,
and the commands that give them. Pure (no I/O): ``check`` reads the mode and the binary's label
(facts.host.HostFacts.gather, facts.installed) and asks here what they mean.

- ``/app/dispatch`` (go flavour: executed by systemd): ``/app`` matches no rule of the targeted
  policy, so files there get ``default_t`` (or inherit their directory's type), which ``init_t``
  may not execute: under enforcing the unit fails with status 203/EXEC. It needs ``bin_t``:
  ``semanage fcontext -a -t bin_t '/app/dispatch'`` (a persistent rule) then ``restorecon``.
  For the bundled flavour ``/usr/bin/python3`` (``bin_t``) is executed and reads the zipapp: the
  same rule keeps it readable to a confined domain too.
- ``/etc/systemd/system/dispatch.service``: created in a directory labelled
  ``systemd_unit_file_t``, it inherits that type (``restorecon`` gives the same): nothing to do.
- ``/etc/roboshop/*``: ``etc_t`` by inheritance and by the policy's ``/etc(/.*)?`` rule: nothing to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

ENFORCING, PERMISSIVE, DISABLED, ABSENT = "enforcing", "permissive", "disabled", "absent"
BINARY_TYPE = "bin_t"
# types that systemd (init_t) may not execute, or that a confined service may not read
UNFIT_BINARY_TYPES = frozenset({"default_t", "user_home_t", "admin_home_t", "tmp_t", "root_t", "unlabeled_t",
                                "var_t", "file_t"})


def describe_mode(mode: Optional[str]) -> str:
    """The mode as ``check`` reports it: None (no /sys/fs/selinux, no /etc/selinux/config) is absent."""
    return mode if mode in (ENFORCING, PERMISSIVE, DISABLED) else ABSENT


def label_type(label: str) -> str:
    """``system_u:object_r:bin_t:s0`` -> ``bin_t``; '' for anything that is not a context."""
    parts = label.strip().strip("\0").split(":")
    return parts[2] if len(parts) >= 4 and parts[2].endswith("_t") else ""


def binary_label_unfit(label: str) -> bool:
    return label_type(label) in UNFIT_BINARY_TYPES


def binary_fix(binary: Path) -> str:
    """The persistent fix: a file-context rule (survives a relabel), then the label itself."""
    return f"semanage fcontext -a -t {BINARY_TYPE} '{binary}' && restorecon -v {binary}"
