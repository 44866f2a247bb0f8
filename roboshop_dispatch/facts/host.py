"""Facts about the host itself: the OS and its family (os-release), root, systemd as PID 1 and its
version, SELinux's mode. Read once per run (:meth:`HostFacts.gather`); steps, checks and the
installed state all hold this one value."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

RHEL_FAMILY = ("rhel", "centos", "fedora", "rocky", "almalinux")
DEBIAN_FAMILY = ("debian", "ubuntu")


def parse_os_release(text: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value.strip("\"'")]
        values[key.strip()] = parts[0] if parts else ""
    return values


@dataclass(frozen=True)
class HostFacts:
    os_id: str = ""
    os_like: Tuple[str, ...] = ()
    os_name: str = ""
    os_version: str = ""
    is_root: bool = False
    systemd_pid1: bool = False
    selinux: Optional[str] = None  # enforcing | permissive | disabled | None
    # systemd's version when known (read by installed.read, or set by tests); None: ask
    # systemd_version() when it matters (a subprocess: not on every run)
    systemd_version: Optional[int] = None

    def __post_init__(self) -> None:  # from a JSON record: a list
        object.__setattr__(self, "os_like", tuple(self.os_like))

    @property
    def family(self) -> Optional[str]:
        """``rhel`` (dnf), ``debian`` (apt-get) or None for anything else."""
        ids = (self.os_id, *self.os_like)
        if any(i in RHEL_FAMILY for i in ids):
            return "rhel"
        if any(i in DEBIAN_FAMILY for i in ids):
            return "debian"
        return None

    @property
    def package_manager(self) -> Optional[str]:
        return {"rhel": "dnf", "debian": "apt-get"}.get(self.family or "")

    @classmethod
    def from_os_release(cls, text: str, **kwargs: Any) -> HostFacts:
        info = parse_os_release(text)
        return cls(
            os_id=info.get("ID", "").lower(),
            os_like=tuple(info.get("ID_LIKE", "").lower().split()),
            os_name=info.get("PRETTY_NAME", info.get("NAME", "")),
            os_version=info.get("VERSION_ID", ""),
            **kwargs,
        )

    @classmethod
    def gather(cls, root: Path = Path("/")) -> HostFacts:
        text = ""
        for candidate in ("etc/os-release", "usr/lib/os-release"):
            try:
                text = (root / candidate).read_text(encoding="utf-8", errors="replace")
                break
            except OSError:
                continue
        selinux = None
        enforce = root / "sys/fs/selinux/enforce"
        if enforce.exists():
            try:
                selinux = "enforcing" if enforce.read_text().strip() == "1" else "permissive"
            except OSError:
                selinux = None
        elif (root / "etc/selinux/config").exists():
            selinux = "disabled"
        return cls.from_os_release(
            text,
            is_root=os.geteuid() == 0,
            systemd_pid1=(root / "run/systemd/system").is_dir(),
            selinux=selinux,
        )


@lru_cache(maxsize=1)
def systemd_version() -> Optional[int]:
    """systemd's major version (``systemctl --version``: ``systemd 252 (252.39-1~deb12u2)``); None
    when systemctl is missing or says otherwise. Asked once per process."""
    from ..host import CommandError, Runner

    try:
        res = Runner(timeout=10).run(["systemctl", "--version"], check=False)
    except CommandError:  # timed out
        return None
    m = re.match(r"systemd (\d+)", res.stdout)
    return int(m.group(1)) if m else None
