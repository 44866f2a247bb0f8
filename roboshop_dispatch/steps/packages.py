"""Step 1: the packages the flavour needs (python3 >= 3.9 for bundled, golang for go).

The installed state is read from the package database first (``dpkg-query`` / ``rpm -q``), so a
re-run on a ready host runs no package manager at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..host import CommandError, HostFacts, Runner
from .base import Action, Change, Context, Step, StepFailed, unchanged

MIN_PYTHON = (3, 9)

# flavour -> family -> packages
PACKAGES: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "bundled": {"rhel": ("python3",), "debian": ("python3",)},
    "go": {"rhel": ("golang",), "debian": ("golang-go",)},
}


class UnsupportedHost(StepFailed):
    pass


def package_manager(facts: HostFacts) -> str:
    """``dnf`` or ``apt-get``; any other OS family is an error before anything changes."""
    manager = facts.package_manager
    if manager is None:
        name = facts.os_name or facts.os_id or "unknown OS"
        like = f" (ID={facts.os_id or '?'}, ID_LIKE={' '.join(facts.os_like) or '-'})"
        raise UnsupportedHost(
            f"unsupported OS family: {name}{like}; dispatchctl supports the RHEL family "
            "(RHEL, CentOS Stream, Rocky, AlmaLinux, Fedora: dnf) and the Debian family (apt-get)",
            "run dispatchctl on a RHEL- or Debian-family host",
        )
    return manager


def required_packages(flavour: str, facts: HostFacts) -> Tuple[str, ...]:
    family = facts.family
    if family is None:
        package_manager(facts)  # raises with the explanation
    return PACKAGES[flavour][family or ""]


def query_command(manager: str, packages: Tuple[str, ...]) -> List[str]:
    if manager == "dnf":
        return ["rpm", "-q", "--qf", "%{NAME}\t%{VERSION}\n", *packages]
    return ["dpkg-query", "-W", "-f=${Package}\t${db:Status-Abbrev}\t${Version}\n", *packages]


def install_commands(manager: str, packages: Tuple[str, ...]) -> List[List[str]]:
    if manager == "dnf":
        return [["dnf", "install", "-y", "-q", *packages]]
    return [["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]]


def parse_installed(manager: str, stdout: str) -> Dict[str, str]:
    """name -> version of the installed packages in a query's output."""
    installed: Dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if manager == "dnf":
            if len(parts) == 2 and "not installed" not in line:
                installed[parts[0]] = parts[1]
        elif len(parts) == 3 and parts[1].startswith("ii"):
            installed[parts[0].split(":")[0]] = parts[2]
    return installed


def version_tuple(version: str) -> Optional[Tuple[int, int]]:
    """``3.11.2-1+b1`` -> (3, 11); an epoch (``1:``) is skipped."""
    match = re.match(r"^(?:\d+:)?(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed(runner: Runner, manager: str, packages: Tuple[str, ...]) -> Dict[str, str]:
    res = runner.run(query_command(manager, packages), check=False, timeout=60)
    if res.returncode == 127:
        tool = query_command(manager, packages)[0]
        raise StepFailed(f"{tool} not found: the package database cannot be read on this host")
    return parse_installed(manager, res.stdout)


@dataclass(frozen=True)
class PackagesPlan:
    manager: str
    missing: Tuple[str, ...]


def decide(manager: str, wanted: Tuple[str, ...], have: Dict[str, str]) -> Change[PackagesPlan]:
    """The change from the package database's answer (``have``: name -> version)."""
    missing = tuple(p for p in wanted if p not in have)
    check_python(have)
    report = {"manager": manager, "packages": list(wanted), "missing": list(missing)}
    if not missing:
        return unchanged(f"installed: {', '.join(f'{p} {have[p]}' for p in wanted)}", report)
    return Change([Action("install", " ".join(missing), f" with {manager}")], PackagesPlan(manager, missing),
                  report=report)


def check_python(have: Dict[str, str]) -> None:
    version = have.get("python3")
    if version is None:
        return
    parsed = version_tuple(version)
    if parsed is not None and parsed < MIN_PYTHON:
        raise StepFailed(
            f"python3 {version} is older than {'.'.join(map(str, MIN_PYTHON))}, "
            "which the bundled dispatch needs",
            "install python3.9 or newer as /usr/bin/python3, or use --flavour go",
        )


class PackagesStep(Step[PackagesPlan]):
    name = "packages"
    title = "Packages"

    def check(self, ctx: Context) -> Change[PackagesPlan]:
        manager = package_manager(ctx.facts)
        wanted = required_packages(ctx.settings.flavour, ctx.facts)
        return decide(manager, wanted, installed(ctx.runner, manager, wanted))

    def apply(self, ctx: Context, change: Change[PackagesPlan]) -> str:
        manager, missing = change.the_plan().manager, change.the_plan().missing
        env = {"DEBIAN_FRONTEND": "noninteractive"} if manager == "apt-get" else {}
        for argv in install_commands(manager, missing):
            try:
                ctx.runner.run(argv, env=env, timeout=1800)
            except CommandError:
                if manager != "apt-get":
                    raise
                # a fresh Debian host often has no package lists yet
                ctx.runner.run(["apt-get", "update", "-q"], env=env, timeout=600)
                ctx.runner.run(argv, env=env, timeout=1800)
        have = installed(ctx.runner, manager, missing)
        still = [p for p in missing if p not in have]
        if still:
            raise StepFailed(f"{manager} finished but {' '.join(still)} is still not installed",
                             f"install it by hand ({manager} install {' '.join(still)}), then re-run")
        check_python(have)
        return f"installed {', '.join(f'{p} {have[p]}' for p in missing)} with {manager}"

    def retry_hint(self, ctx: Context) -> str:
        return "check the package manager's output above (repositories reachable?), then run " \
               "`dispatchctl install` again"
