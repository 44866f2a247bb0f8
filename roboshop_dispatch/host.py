"""Facts about the host (OS family, init system, privileges) and a command runner."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .layout import CHANGE_LOCK

# never handed to a child process (dnf, apt-get, useradd, go, systemctl...): a child's environment
# is readable in /proc/PID/environ by its user, and some tools log their environment
SECRET_ENV_VARS = ("DISPATCHCTL_AMQP_PASS", "AMQP_PASS")

RHEL_FAMILY = ("rhel", "centos", "fedora", "rocky", "almalinux")
DEBIAN_FAMILY = ("debian", "ubuntu")


class CommandError(RuntimeError):
    """A command that failed: carries the argv, exit code and the tail of its output."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-5:])
        super().__init__(f"`{shlex.join(self.argv)}` exited {returncode}" + (f": {tail}" if tail else ""))


@dataclass(frozen=True)
class Result:
    argv: Tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def child_environment(base: Optional[Mapping[str, str]] = None,
                      extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment every child process gets: ``base`` (default: ours) and ``extra``, without
    any secret variable."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in SECRET_ENV_VARS}
    env.update({k: v for k, v in (extra or {}).items() if k not in SECRET_ENV_VARS})
    return env


class Runner:
    """Runs commands with a timeout, never through a shell, never with a secret in their
    environment (:func:`child_environment`). Output is captured as text."""

    def __init__(self, timeout: float = 300.0, env: Optional[Mapping[str, str]] = None) -> None:
        self.timeout = timeout
        self.env = dict(env) if env is not None else None
        self.calls: List[Tuple[str, ...]] = []  # every argv run, in order (reports and tests)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: Optional[float] = None,
        input: Optional[str] = None,
        cwd: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> Result:
        self.calls.append(tuple(argv))
        merged = child_environment(self.env, env)
        try:
            proc = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=timeout or self.timeout,
                input=input, cwd=cwd, env=merged, stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            if check:
                raise CommandError(argv, 127, f"{argv[0]}: command not found") from None
            return Result(tuple(argv), 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired as exc:
            raise CommandError(argv, -1, f"timed out after {exc.timeout:.0f}s") from None
        result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, (proc.stderr or proc.stdout))
        return result


    def spawn(self, argv: Sequence[str]) -> subprocess.Popen:
        """Start a command in the background (stdout and stderr piped, as text), recorded like run()."""
        self.calls.append(tuple(argv))
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=child_environment(self.env))


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
    selinux: Optional[str] = None
    # systemd's version when known (tests, or set by the caller); None: ask systemd_version() when
    # it matters (a subprocess: not on every run)
    systemd_version: Optional[int] = None
    extra: Dict[str, str] = field(default_factory=dict)

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
    def from_os_release(cls, text: str, **kwargs) -> HostFacts:
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
    """``systemd 252 (252.22-1~deb12u1)`` -> 252; None when systemctl is missing or says otherwise."""
    try:
        proc = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL, env=child_environment())
    except (OSError, subprocess.SubprocessError):
        return None
    words = proc.stdout.split()
    return int(words[1]) if len(words) > 1 and words[0] == "systemd" and words[1].isdigit() else None


def change_lock(path: Path = CHANGE_LOCK, on_wait: Optional[Callable[[], None]] = None):
    """Hold the host's dispatchctl lock: one run that changes the host at a time (install,
    build, configure, start, uninstall); a second one waits for the first. Returns the open file,
    which holds the lock until it is closed."""
    import fcntl

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # never through a link planted at the lock's path; never truncating a file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fh = os.fdopen(fd, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait()
        fcntl.flock(fh, fcntl.LOCK_EX)
    return fh
