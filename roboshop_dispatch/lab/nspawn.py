"""A real systemd (PID 1) host: a Debian rootfs booted with systemd-nspawn. One implementation
for the lab (``dispatchctl lab``) and the test suite; never imported by the consumer or the steps.

Recipe: ../shared/real-test-hosts.md. ``ensure_rootfs()`` builds the rootfs with debootstrap the
first time (minutes) and caches it under /var/cache/dispatchctl-lab/ ($DISPATCHCTL_LAB_CACHE),
keyed by a hash of the recipe, so a changed package list builds a new one. ``Container`` boots a
throwaway host from it with ``--volatile=overlay`` (a tmpfs over the root: nothing done inside
persists), runs commands inside with nsenter and powers it off.

The source tree of this package, the virtualenv it runs from and the interpreter that virtualenv
links to are bind-mounted read-only at the same paths, so ``Container.dispatchctl(...)`` runs this
very CLI inside the host, while the service itself runs with the container's own /usr/bin/python3.
The container shares the host's network: a service inside reaches a broker on 127.0.0.1, and
``enable_ssh()`` makes the host reachable by ssh on a port of its own (Ansible's connection).

Nothing here skips: when the host cannot be built or booted, the caller fails with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import DispatchctlError

CACHE = Path(os.environ.get("DISPATCHCTL_LAB_CACHE", "/var/cache/dispatchctl-lab"))
SUITE = "bookworm"
# what a RHEL/Debian host has for the bundled flavour (python3, useradd) plus golang for the go
# flavour (a real `go build`), procps for ps/kill, systemd as PID 1, and the way operators put
# dispatchctl on root's PATH: pipx (with python3-venv) and sudo (whose secure_path is the test);
# and what Ansible needs of a managed host: sshd (started per host by enable_ssh, not at boot),
# python3-apt for the package module and unzip for unarchive (the course's role uses both).
PACKAGES: Tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "python3", "passwd", "procps", "golang-go", "pipx", "sudo",
    "openssh-server", "python3-apt", "unzip",
)
RECIPE_VERSION = 4  # 4: no SSH host keys in the image (each host makes its own, HOSTKEYS_UNIT)
# started on demand: every host shares the machine's network, so each sshd needs its own port
NOT_AT_BOOT = ("ssh.service", "ssh.socket")
# units that only slow the boot or do background work a test must not race with
MASKED_UNITS = (
    "systemd-remount-fs.service", "getty@tty1.service", "console-getty.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "systemd-pstore.service",
)
READY_MARK = ".dispatchctl-rootfs-ready"
# openssh-server's package makes host keys while the image is built: every host booted from it
# would share them (and their private halves sit in the cache). The image keeps none; this unit
# makes each host's own before its sshd first starts (ed25519 only: what the lab's sshd offers).
HOSTKEYS_UNIT = "lab-ssh-hostkeys.service"  # not dispatch*: the tests list dispatch's units by that name
HOSTKEY = "/etc/ssh/ssh_host_ed25519_key"
HOSTKEYS_UNIT_TEXT = f"""[Unit]
Description=This lab host's own SSH host key (the lab's image has none)
Before=ssh.service
ConditionPathExists=!{HOSTKEY}

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -C "" -f {HOSTKEY}
RemainAfterExit=yes
"""
PATH_INSIDE = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# the tree this package is imported from: the checkout for an editable install (bound read-only
# into every host, so the CLI inside is this one), else inside the bound virtualenv anyway
SOURCE = Path(__file__).resolve().parents[2]


class HostError(DispatchctlError):
    """The test host could not be built, booted or driven; the message says why."""


def recipe_key() -> str:
    recipe = {"suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES),
              "masked": sorted(MASKED_UNITS), "not_at_boot": sorted(NOT_AT_BOOT), "version": RECIPE_VERSION,
              "hostkeys": [HOSTKEYS_UNIT, HOSTKEYS_UNIT_TEXT]}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def rootfs_path() -> Path:
    return CACHE / f"rootfs-{SUITE}-{recipe_key()}"


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_rootfs(log=None) -> Path:
    """The cached rootfs, built first when missing. Safe against concurrent test runs (a lock)."""
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            raise HostError(f"{tool} is not installed: run scripts/setup-dev "
                            "(apt-get install -y systemd-container debootstrap)")
    if os.geteuid() != 0:
        raise HostError("building and booting a systemd-nspawn host needs root")
    target = rootfs_path()
    if (target / READY_MARK).exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / READY_MARK).exists():  # another run built it while we waited
            return target
        work = CACHE / f".{target.name}.build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        if target.exists():  # a half-built leftover from an interrupted build
            shutil.rmtree(target)
        argv = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(work)]
        if log:
            log(f"building the test rootfs (once): {' '.join(argv)}")
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1500,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            debootstrap_log = work / "debootstrap" / "debootstrap.log"
            detail = debootstrap_log.read_text(errors="replace") if debootstrap_log.exists() else ""
            shutil.rmtree(work, ignore_errors=True)
            raise HostError(f"debootstrap failed (exit {proc.returncode}):\n"
                            f"{_tail(proc.stdout + proc.stderr)}\n{_tail(detail)}")
        _customise(work)
        missing = [p for p in ("usr/bin/python3", "usr/bin/go", "usr/sbin/useradd", "usr/sbin/sshd",
                                  "usr/bin/ssh-keygen", "lib/systemd/systemd")
                   if not (work / p).exists()]
        if missing:
            raise HostError(f"the built rootfs lacks {', '.join(missing)} (see {work})")
        (work / READY_MARK).write_text(json.dumps({"packages": PACKAGES, "built_s": time.monotonic() - started}))
        os.rename(work, target)
        return target


def _customise(root: Path) -> None:
    (root / "etc/machine-id").write_text("")  # a fresh id per boot (uninitialized)
    for key in (root / "etc/ssh").glob("ssh_host_*"):  # each host makes its own (HOSTKEYS_UNIT)
        key.unlink()
    (root / "etc/systemd/system" / HOSTKEYS_UNIT).write_text(HOSTKEYS_UNIT_TEXT)
    requires = root / "etc/systemd/system/ssh.service.requires"
    requires.mkdir(parents=True, exist_ok=True)
    (requires / HOSTKEYS_UNIT).symlink_to(f"../{HOSTKEYS_UNIT}")
    (root / "etc/hostname").write_text("dispatch-test\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    system = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = system / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    for wants in system.glob("*.wants"):
        for link in wants.iterdir():
            if link.name in MASKED_UNITS or link.name in NOT_AT_BOOT:
                link.unlink()
    default = system / "default.target"
    if default.is_symlink() or default.exists():
        default.unlink()
    default.symlink_to("/lib/systemd/system/multi-user.target")


def bind_args() -> List[str]:
    """Read-only binds that let the CLI of this checkout run inside at the same paths."""
    prefix = Path(sys.prefix).resolve()
    if sys.prefix == sys.base_prefix or str(prefix) in ("/", "/usr", "/usr/local"):
        # binding the system's own prefix would lay this machine's /usr over the host's
        raise HostError(f"dispatchctl runs from {prefix}, not from a virtualenv: the hosts run it through a "
                        "read-only bind of its virtualenv, so install it in one (python3 -m venv .venv && "
                        ".venv/bin/pip install ., or pipx)")
    paths = {SOURCE, prefix}
    base = Path(sys.base_prefix).resolve()
    if not str(base).startswith("/usr"):  # a pyenv or /opt interpreter the venv links to
        paths.add(base)
    exe = Path(sys.executable).resolve()
    if not str(exe).startswith("/usr") and not any(exe.is_relative_to(p) for p in paths):
        paths.add(exe.parent.parent)
    # drop paths already inside another bound path
    ordered = sorted(paths, key=lambda p: len(p.parts))
    kept: List[Path] = []
    for p in ordered:
        if not any(p.is_relative_to(k) for k in kept):
            kept.append(p)
    return [f"--bind-ro={p}" for p in kept]


def venv_bin(name: str) -> str:
    return str(Path(sys.prefix) / "bin" / name)


def run_unbooted(rootfs: Path, argv: Sequence[str], *, binds_ro: Sequence[Tuple[str, str]] = (),
                 env: Optional[Dict[str, str]] = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``argv`` as PID 1 of a throwaway container that is *not* booted: a host without
    systemd (what a Docker container or a chroot looks like). Volatile: nothing persists."""
    environ = {"PATH": PATH_INSIDE, "HOME": "/root", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    environ.update(env or {})
    full = ["systemd-nspawn", "-q", "-D", str(rootfs), "--register=no", "--keep-unit", "--volatile=overlay",
            "-M", f"dtest-{uuid.uuid4().hex[:8]}", "--console=pipe", *bind_args(),
            *(f"--bind-ro={src}:{dst}" for src, dst in binds_ro),
            *(f"--setenv={k}={v}" for k, v in environ.items()), "--", *argv]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _cmdline(pid: int) -> List[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat_fields(pid: int) -> List[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...]; [] when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2:].split()


def pid_running(pid: int) -> bool:
    """A live process (not a zombie waiting for its parent to reap it)."""
    fields = _stat_fields(pid) if pid > 0 else []
    return bool(fields) and fields[0] not in ("Z", "X")


def nspawn_alive(name: str, pid: int) -> bool:
    """``pid`` is the systemd-nspawn that runs machine ``name`` (not a reused pid)."""
    argv = _cmdline(pid)
    return (pid_running(pid) and any(a.endswith("systemd-nspawn") for a in argv[:1])
            and "-M" in argv and argv[argv.index("-M") + 1:argv.index("-M") + 2] == [name])


def host_alive(name: str, nspawn_pid: int, leader: int) -> bool:
    """Machine ``name`` runs: its systemd-nspawn at ``nspawn_pid`` with its init at ``leader``."""
    fields = _stat_fields(leader) if leader > 0 else []
    return (nspawn_alive(name, nspawn_pid) and pid_running(leader) and len(fields) > 1
            and fields[1] == str(nspawn_pid))


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` no longer runs; False when it still does after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while pid_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Container:
    """One booted, throwaway systemd host."""

    def __init__(self, rootfs: Path, name: Optional[str] = None, extra_args: Sequence[str] = (),
                 log_dir: Optional[Path] = None) -> None:
        self.rootfs = rootfs
        self.name = name or f"dtest-{uuid.uuid4().hex[:8]}"
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.leader = 0
        self.nspawn_pid = 0  # systemd-nspawn's pid: ours (self.proc) or, attached, another process's
        # the boot log (nspawn's console): the tests' under the cache, the lab's in its state dir
        self.log_path = (log_dir or CACHE / "logs") / f"{self.name}.log"

    @classmethod
    def attach(cls, rootfs: Path, name: str, nspawn_pid: int, leader: int,
               log_dir: Optional[Path] = None) -> Container:
        """A host booted by another process (``dispatchctl lab up``), driven by its pids: run
        things inside, power it off. Raises HostError when those pids are not that host."""
        container = cls(rootfs, name, log_dir=log_dir)
        if not host_alive(name, nspawn_pid, leader):
            raise HostError(f"host {name} is not running (systemd-nspawn pid {nspawn_pid}, init pid {leader})")
        container.nspawn_pid, container.leader = nspawn_pid, leader
        return container

    # -- life cycle ---------------------------------------------------------------------------
    def boot(self, timeout: float = 60.0) -> Container:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["systemd-nspawn", "-D", str(self.rootfs), "--boot", "--register=no", "--keep-unit",
                "--console=passive", "-M", self.name, "--volatile=overlay", *bind_args(), *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise HostError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.boot_log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise HostError(f"the container's init did not appear within {timeout}s:\n{self.boot_log()}")
            self.leader = self._container_init(self.proc.pid)
            self.nspawn_pid = self.proc.pid
            if not self.leader:
                time.sleep(0.02)
        state = ""
        while time.monotonic() < deadline:
            res = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = res.stdout.strip() or res.stderr.strip()
            if state in ("running", "degraded"):
                break
            if self.proc.poll() is not None:
                raise HostError(f"the container stopped while booting:\n{self.boot_log()}")
            time.sleep(0.05)
        else:
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            self.kill()
            raise HostError(f"the container did not finish booting in {timeout}s (state {state!r}); "
                            f"failed units: {failed.strip()}\n{self.boot_log()}")
        return self

    @staticmethod
    def _container_init(pid: int) -> int:
        """The container's PID 1 as seen from here: the child of systemd-nspawn that lives in
        another PID namespace and runs systemd (nspawn forks a short-lived helper first)."""
        try:
            own = os.readlink("/proc/self/ns/pid")
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    if (os.readlink(f"/proc/{child}/ns/pid") != own
                            and Path(f"/proc/{child}/comm").read_text().strip() == "systemd"):
                        return int(child)
        except (OSError, ValueError):
            pass
        return 0

    def boot_log(self) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def poweroff(self, timeout: float = 15.0) -> None:
        if self.proc is None and not self.nspawn_pid:
            return
        if self.proc is None:  # attached: not our child, so watch its pid instead of waiting for it
            self._poweroff_attached(timeout)
        elif self.proc.poll() is None and self.leader:
            try:
                os.kill(self.leader, signal.SIGRTMIN + 4)
                self.proc.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
        self.proc = None
        self.nspawn_pid = self.leader = 0
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def _poweroff_attached(self, timeout: float) -> None:
        if host_alive(self.name, self.nspawn_pid, self.leader):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGRTMIN + 4)
            if wait_gone(self.nspawn_pid, timeout):
                return
        if nspawn_alive(self.name, self.nspawn_pid):  # never a pid reused by another process
            for pid in (self.leader, self.nspawn_pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_gone(self.nspawn_pid, 15)

    def kill(self) -> None:
        if self.proc is None:
            return
        for pid in (self.leader, self.proc.pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)

    def __enter__(self) -> Container:
        return self.boot()

    def __exit__(self, *exc) -> None:
        self.poweroff()

    # -- running things inside ----------------------------------------------------------------
    def run(
        self, argv: Sequence[str], *, check: bool = True, input: Optional[str] = None,
        timeout: float = 120.0, env: Optional[Dict[str, str]] = None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside (all namespaces of the container's PID 1), with a clean environment."""
        if not self.leader:
            raise HostError("the container is not running")
        environ = {"PATH": PATH_INSIDE, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                   "PYTHONDONTWRITEBYTECODE": "1"}
        environ.update(env or {})
        full = ["nsenter", "-t", str(self.leader), "-a", "env", "-i",
                *(f"{k}={v}" for k, v in environ.items()), *argv]
        proc = subprocess.run(full, capture_output=True, text=True, input=input, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise HostError(f"{' '.join(argv)} exited {proc.returncode} inside {self.name}:\n"
                            f"{proc.stdout}\n{proc.stderr}")
        return proc

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], **kw)

    def dispatchctl(self, *args: str, check: bool = False, env: Optional[Dict[str, str]] = None,
                    timeout: float = 300.0) -> subprocess.CompletedProcess:
        """This checkout's CLI, run as root inside the container."""
        return self.run([venv_bin("dispatchctl"), *args], check=check, env=env, timeout=timeout)

    def path(self, inside: str) -> Path:
        """The host-side path of a file inside the container (through /proc/PID/root)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def write(self, inside: str, data: str, mode: int = 0o600) -> None:
        path = self.path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        # created with its mode (a secret is never readable by others, not even for a moment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)

    # -- systemd helpers ----------------------------------------------------------------------
    def show(self, unit: str, properties: Iterable[str]) -> Dict[str, str]:
        out = self.run(["systemctl", "show", unit, "--property=" + ",".join(properties)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str = "dispatch.service") -> int:
        return int(self.show(unit, ["MainPID"]).get("MainPID", "0") or 0)

    def journal(self, unit: str = "dispatch.service", since: str = "") -> str:
        argv = ["journalctl", "-u", unit, "--no-pager", "-o", "cat"]
        if since:
            argv += ["--since", since]
        return self.run(argv, check=False).stdout

    def wait_for(self, predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise HostError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def listing(self, *roots: str) -> List[str]:
        """Every path under ``roots`` with type, mode, owner, size and mtime: for 'nothing changed'."""
        script = ("for r in \"$@\"; do [ -e \"$r\" ] && find \"$r\" -xdev -printf '%p %y %m %u %s %T@\\n'; "
                  "done; true")
        return sorted(self.run(["sh", "-c", script, "sh", *roots]).stdout.splitlines())

    # -- reaching it the way Ansible does -------------------------------------------------------
    def enable_ssh(self, port: int, authorized_key: str, address: str = "127.0.0.1") -> None:
        """Start sshd inside on ``address:port`` (the host's network is shared, so every host
        needs a port of its own), accepting only ``authorized_key`` for root, with this host's own
        host key (made by HOSTKEYS_UNIT as sshd starts)."""
        self.write("/etc/ssh/sshd_config.d/00-lab.conf",
                   f"Port {port}\nListenAddress {address}\nHostKey {HOSTKEY}\nPermitRootLogin prohibit-password\n"
                   "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n", mode=0o644)
        ssh_dir = self.path("/root/.ssh")
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.write("/root/.ssh/authorized_keys", authorized_key.strip() + "\n", mode=0o600)
        self.run(["systemctl", "start", "ssh.service"])
