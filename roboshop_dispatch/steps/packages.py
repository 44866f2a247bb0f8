"""Step 1: the packages the flavour needs (python3 >= 3.9 for bundled, golang for go).

The installed state is read from the package database first (``dpkg-query`` / ``rpm -q``), so a
re-run on a ready host runs no package manager at all.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ..facts.host import HostFacts
from ..host import CommandError, Result, Runner
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


# dnf (4: RHEL 8/9, Fedora <= 40) exits 200 when another process holds its lock and
# exit_on_lock is set; dispatchctl then waits itself, with a message and a bound
DNF_LOCKED_RC = 200
DNF_LOCK_WAIT_ENV = "DISPATCHCTL_DNF_LOCK_WAIT"
DNF_LOCK_WAIT_S = 300.0
DNF_LOCK_POLL_S = 2.0


def install_commands(manager: str, packages: Tuple[str, ...]) -> List[List[str]]:
    if manager == "dnf":
        return [["dnf", "install", "-y", "-q", "--setopt=exit_on_lock=True", *packages]]
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
        if manager == "dnf":
            dnf_install(ctx.runner, missing)
        else:
            apt_install(ctx.runner, missing)
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


def apt_install(runner: Runner, missing: Tuple[str, ...]) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    for argv in install_commands("apt-get", missing):
        try:
            runner.run(argv, env=env, timeout=1800)
        except CommandError:
            # a fresh Debian host often has no package lists yet
            runner.run(["apt-get", "update", "-q"], env=env, timeout=600)
            runner.run(argv, env=env, timeout=1800)


def lock_wait_bound() -> float:
    raw = os.environ.get(DNF_LOCK_WAIT_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DNF_LOCK_WAIT_S
    except ValueError:
        return DNF_LOCK_WAIT_S


def lock_holder(output: str) -> Optional[int]:
    """The pid in dnf's ``RPMDB already locked by 1234`` (None: not a lock refusal)."""
    match = re.search(r"already locked by (\d+)", output)
    return int(match.group(1)) if match else None


def describe_pid(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            words = fh.read(300).split(b"\0")
    except OSError:
        return f"pid {pid}"
    cmd = printable(" ".join(w.decode(errors="replace") for w in words if w))
    return f"pid {pid} ({cmd[:120]})" if cmd else f"pid {pid}"


def printable(text: str) -> str:
    """Another process's words (its command line, dnf's repo ids) without control characters: they
    end up on the operator's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def not_found(output: str) -> List[str]:
    """The packages dnf found in no repository."""
    names: List[str] = []
    for match in re.finditer(r"(?:No match for argument|Unable to find a match):\s*([^\n]+)", output):
        names += [n for n in match.group(1).split() if n not in names]
    return names


def enabled_repos(runner: Runner) -> List[str]:
    res = runner.run(["dnf", "-q", "repolist", "--enabled"], check=False, timeout=120)
    lines = res.stdout.splitlines()
    return [printable(line.split()[0]) for line in lines if line.strip() and not line.startswith("repo id")]


def dnf_install(runner: Runner, missing: Tuple[str, ...], say: Optional[Callable[[str], None]] = None) -> None:
    """``dnf install``; waits (bounded, with a message) while another process holds dnf's lock, and
    turns 'no match' into an error naming the package and the enabled repositories. dnf resolves
    the whole transaction before it changes anything, so a refusal installs nothing."""
    argv = install_commands("dnf", missing)[0]
    bound = lock_wait_bound()
    deadline = time.monotonic() + bound
    announced: Optional[int] = None
    while True:
        res = runner.run(argv, check=False, timeout=1800)
        output = (res.stderr or "") + (res.stdout or "")
        holder = lock_holder(output) if res.returncode == DNF_LOCKED_RC else None
        if holder is None:
            break
        if time.monotonic() >= deadline:
            raise StepFailed(f"dnf is busy: another process holds its lock ({describe_pid(holder)}) and did not "
                             f"let go within {bound:.0f}s; nothing was installed",
                             f"wait for it to finish (or stop it), then re-run; {DNF_LOCK_WAIT_ENV}=SECONDS "
                             "waits longer")
        if announced != holder:
            (say or runner.notice)(f"dispatchctl: waiting for dnf's lock, held by {describe_pid(holder)} "
                f"(up to {bound:.0f}s)")
            announced = holder
        time.sleep(DNF_LOCK_POLL_S)
    dnf_failed(runner, res, argv, output)


def dnf_failed(runner: Runner, res: Result, argv: List[str], output: str) -> None:
    if res.returncode == 0:
        return
    absent = not_found(output)
    if absent:
        repos = enabled_repos(runner)
        raise StepFailed(f"{', '.join(absent)}: no such package in any enabled repository "
                         f"({', '.join(repos) if repos else 'none enabled'}); nothing was installed",
                         f"enable a repository that has {', '.join(absent)} (dnf repolist --all; "
                         "dnf config-manager --set-enabled REPO), then re-run")
    raise CommandError(argv, res.returncode, runner.shown(output))
