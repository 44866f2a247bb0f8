"""pytest glue for the real systemd hosts of ``roboshop_dispatch.lab.nspawn`` (the lab's code)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from roboshop_dispatch.lab.nspawn import PATH_INSIDE, Container, HostError

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def booted(rootfs):
    """A freshly booted systemd host from ``rootfs``, powered off afterwards; a host that cannot
    boot fails the test loudly with the reason."""
    import pytest

    container = Container(rootfs)
    try:
        container.boot()
    except HostError as exc:
        pytest.fail(f"cannot boot the systemd test host: {exc}", pytrace=False)
    try:
        yield container
    finally:
        container.poweroff()


@contextlib.contextmanager
def uninstalled(host, wipe: str):
    """``host`` without dispatch before and after the block: ``dispatchctl uninstall``, then the
    shell commands ``wipe`` (what the tests made: users, directories), whatever each one's exit."""
    def reset() -> None:
        host.dispatchctl("uninstall")
        host.sh(wipe + "; true")
    reset()
    try:
        yield host
    finally:
        reset()


class Unbooted(Container):
    """A throwaway container that is *not* booted and stays up: its PID 1 is ``sleep``, so it is
    a host without systemd (what a Docker container or a chroot looks like) that many commands can
    run in, one ``nsenter`` each (``run``, ``dispatchctl`` as in a booted host). Volatile and with
    its own /run: whatever a command does there, this machine and its PID 1 never see it."""

    LIFETIME_S = 3 * 3600  # a container leaked by a killed test run ends by itself

    def boot(self, timeout: float = 60.0) -> Unbooted:
        import time

        from roboshop_dispatch.lab.nspawn import bind_args

        argv = ["systemd-nspawn", "-q", "-D", str(self.rootfs), "--register=no", "--keep-unit",
                "--volatile=overlay", "-M", self.name, "--console=pipe", *bind_args(), "--",
                "sleep", str(self.LIFETIME_S)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise HostError(f"systemd-nspawn exited {self.proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise HostError(f"the unbooted container's PID 1 did not appear within {timeout}s")
            self.leader = _child_in_own_pid_namespace(self.proc.pid, "sleep")
            self.nspawn_pid = self.proc.pid
            if not self.leader:
                time.sleep(0.02)
        return self

    def environment(self, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        environ = {"PATH": PATH_INSIDE, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                   "PYTHONDONTWRITEBYTECODE": "1"}
        environ.update(env or {})
        return environ

    def argv(self, argv: Sequence[str]) -> List[str]:
        """``argv`` run inside (every namespace of its PID 1) with the environment it is given:
        nsenter keeps its caller's environment, so a test password never sits in a command line."""
        return [shutil.which("nsenter") or "/usr/bin/nsenter", "-t", str(self.leader), "-a", *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, input: Optional[str] = None,
            timeout: float = 120.0, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        if not self.leader:
            raise HostError("the container is not running")
        proc = subprocess.run(self.argv(argv), capture_output=True, text=True, input=input, timeout=timeout,
                              env=self.environment(env), stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise HostError(f"{' '.join(argv)} exited {proc.returncode} inside {self.name}:\n"
                            f"{proc.stdout}\n{proc.stderr}")
        return proc

    def poweroff(self, timeout: float = 15.0) -> None:
        """No init to ask: SIGKILL its PID 1 (from outside, the only signal it cannot ignore);
        systemd-nspawn then tears the container down and exits."""
        import os
        import signal

        if self.proc is None:
            return
        if self.leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        self.nspawn_pid = self.leader = 0

    def assert_no_systemd(self) -> None:
        """The premise of every test run here, checked rather than assumed."""
        if self.path("/run/systemd/system").exists():
            raise HostError(f"{self.name} has /run/systemd/system: it is not a host without systemd")
        comm = Path(f"/proc/{self.leader}/comm").read_text().strip()
        if comm != "sleep":
            raise HostError(f"{self.name}'s PID 1 is {comm!r}, not the sleep it was started with")


def _child_in_own_pid_namespace(pid: int, comm: str) -> int:
    """The child of ``pid`` that lives in another PID namespace and runs ``comm`` (nspawn's
    container PID 1), or 0."""
    import os

    try:
        own = os.readlink("/proc/self/ns/pid")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                if (os.readlink(f"/proc/{child}/ns/pid") != own
                        and Path(f"/proc/{child}/comm").read_text().strip() == comm):
                    return int(child)
    except (OSError, ValueError):
        pass
    return 0


@contextlib.contextmanager
def unbooted(rootfs):
    """An :class:`Unbooted` host from ``rootfs`` whose premise (no systemd) is checked; killed
    afterwards. One that cannot start fails the test loudly with the reason."""
    import pytest

    container = Unbooted(rootfs)
    try:
        container.boot()
        container.assert_no_systemd()
    except HostError as exc:
        container.poweroff()
        pytest.fail(f"cannot start the container without systemd: {exc}", pytrace=False)
    try:
        yield container
    finally:
        container.poweroff()
