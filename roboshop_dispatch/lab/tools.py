"""What the lab needs on this machine, and what to do when something is missing.

:func:`decide` is pure (unit-tested): from the tools found, whether apt-get exists and whether we
are root, it returns the packages to install and either the commands that install them (Debian
family: the host's package manager with its configured mirrors) or the exact words to tell the
operator. :func:`ensure` is the thin part that looks and runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from ..errors import DispatchctlError

# each tool the lab runs, and the Debian package that ships it
TOOLS: Tuple[Tuple[str, str], ...] = (
    ("systemd-nspawn", "systemd-container"),
    ("nsenter", "util-linux"),
    ("debootstrap", "debootstrap"),
    ("rabbitmq-server", "rabbitmq-server"),
    ("rabbitmqctl", "rabbitmq-server"),
    ("ssh-keygen", "openssh-client"),
)
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class ToolsMissing(DispatchctlError):
    """Tools are missing and cannot be installed here; the message says exactly what to install."""


@dataclass(frozen=True)
class Decision:
    missing: Tuple[str, ...]          # tools not found
    packages: Tuple[str, ...]         # the packages that ship them, in TOOLS order, once each
    commands: Tuple[Tuple[str, ...], ...]  # what to run (empty: nothing, or we cannot)
    message: str                      # what to tell the operator ("" when nothing is missing)


def decide(found: Mapping[str, bool], *, has_apt: bool, is_root: bool) -> Decision:
    missing = tuple(tool for tool, _ in TOOLS if not found.get(tool, False))
    packages: List[str] = []
    for tool, package in TOOLS:
        if tool in missing and package not in packages:
            packages.append(package)
    if not missing:
        return Decision((), (), (), "")
    names = ", ".join(missing)
    if has_apt and is_root:
        commands = (("apt-get", "update", "-qq"), ("apt-get", "install", "-y", "-qq", *packages))
        return Decision(missing, tuple(packages), commands,
                        f"installing {' '.join(packages)} with apt-get (for {names})")
    how = (f"apt-get install -y {' '.join(packages)}" if has_apt else
           f"the packages that provide {names} (Debian names: {' '.join(packages)}) "
           "with this system's package manager")
    return Decision(missing, tuple(packages), (), f"the lab needs {names}: install {how}, then run it again")


def which(tool: str) -> bool:
    """On PATH, or in an sbin directory (sudo's PATH has them, a user's may not)."""
    return shutil.which(tool) is not None or any(os.access(f"{d}/{tool}", os.X_OK) for d in SBIN)


def ensure(say: Callable[[str], None], *, finder: Optional[Callable[[str], bool]] = None) -> Tuple[str, ...]:
    """Install what is missing (apt-get, as root) or raise ToolsMissing saying what to install.
    Returns the packages installed."""
    look = finder or which
    found: Dict[str, bool] = {tool: look(tool) for tool, _ in TOOLS}
    decision = decide(found, has_apt=look("apt-get"), is_root=os.geteuid() == 0)
    if not decision.missing:
        return ()
    if not decision.commands:
        raise ToolsMissing(decision.message)
    say(decision.message)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in decision.commands:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=1800)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise ToolsMissing(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    still = [tool for tool, _ in TOOLS if not look(tool)]
    if still:
        raise ToolsMissing(f"still missing after apt-get install: {', '.join(still)}")
    return decision.packages
