"""The lab: one real RabbitMQ node and N booted systemd hosts on this machine, made by ``lab up``,
driven by any later process through the state file, removed by ``lab down``.

``Lab(state_dir)`` is the API (the CLI and the Ansible tests use it): ``up()``, ``down()``,
``hosts()``, ``broker``, ``inventory()``, ``key_path``. Every process the lab starts outlives
``lab up``: systemd-nspawn runs in a session of its own, the broker is ``rabbitmq-server -detached``
(its own session, reparented), sshd runs inside each host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional

from ..files import write_atomic
from . import tools
from .broker import Broker
from .inventory import render
from .nspawn import (
    Container,
    HostError,
    bind_args,
    host_alive,
    pid_running,
)
from .phases import Build, LabError, PhaseCallback, signals_raise
from .report import LabReport
from .state import (
    MAX_HOSTS,
    STATE_FILE,
    BrokerRecord,
    HostRecord,
    LabState,
    LabStateError,
    checked_dir,
    parse,
)
from .state import (
    state_dir as default_state_dir,
)

# in every state dir the lab made: only such a dir is ever removed (a mistyped
# $DISPATCHCTL_LAB_STATE=/var/lib must not lose /var/lib)
MARK = ".dispatchctl-lab"


@dataclass(frozen=True)
class LabHost:
    name: str
    ssh_port: int
    container: Container  # run things inside: .run(), .sh(), .dispatchctl(), .path()




class Lab:
    def __init__(self, state_dir: Optional[Path] = None, *, broker_port: Optional[int] = None) -> None:
        self.dir = checked_dir(str(state_dir), "state dir") if state_dir is not None else default_state_dir()
        self.broker_port = broker_port

    # -- where things are --------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def key_path(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "ssh" / "known_hosts"

    @property
    def password_file(self) -> Path:
        return self.dir / "amqp.pass"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    # -- reading the state ----------------------------------------------------------------------
    def _check_ours(self) -> None:
        """Raises LabError (preflight) when the state dir exists but is not one the lab made."""
        if self.dir.is_symlink():
            raise LabError(f"{self.dir} is a symbolic link: refusing to use or remove it", "preflight")
        if os.path.lexists(self.dir) and not (self.dir / MARK).is_file():
            raise LabError(f"{self.dir} exists and is not a lab's state dir (no {MARK} in it): refusing to "
                           f"use or remove it; point $DISPATCHCTL_LAB_STATE elsewhere", "preflight")

    def load(self) -> Optional[LabState]:
        """The recorded lab, None when there is none. Raises LabError for a state file that is
        not the lab's (a link, not root's, not parseable) or a state dir the lab did not make."""
        self._check_ours()
        try:
            st = os.lstat(self.state_file)
        except FileNotFoundError:
            return None
        if not self.state_file.is_file() or self.state_file.is_symlink() or st.st_uid != os.geteuid():
            raise LabError(f"{self.state_file} is not a regular file of this user: refusing to use it", "preflight")
        try:
            return parse(self.state_file.read_text())
        except (LabStateError, UnicodeDecodeError) as exc:
            raise LabError(f"{self.state_file}: {exc}. It lists what the lab runs: restore it, or stop the "
                           f"lab's systemd-nspawn and beam.smp processes by hand and remove {self.dir}",
                           "preflight") from None

    def _require(self) -> LabState:
        state = self.load()
        if state is None:
            raise LabError(f"no lab is up (no {self.state_file}): run `dispatchctl lab up`", "preflight")
        return state

    def dead_parts(self, state: LabState) -> List[str]:
        """What of the recorded lab no longer runs (after a reboot or a kill): [] when all runs."""
        dead = [h.name for h in state.hosts if not host_alive(h.name, h.nspawn_pid, h.leader_pid)]
        if state.broker is not None and not broker_alive(state.broker):
            dead.append("broker")
        return dead

    def hosts(self) -> List[LabHost]:
        state = self._require()
        return [LabHost(h.name, h.ssh_port, self._attach(state, h)) for h in state.hosts]

    def _attach(self, state: LabState, host: HostRecord) -> Container:
        try:
            return Container.attach(Path(state.rootfs), host.name, host.nspawn_pid, host.leader_pid,
                                    log_dir=self.log_dir)
        except HostError as exc:
            raise LabError(f"{exc}: the lab is stale; run `dispatchctl lab down`", "preflight") from None

    def host(self, which: str) -> LabHost:
        """A host by name (lab-2) or number (2)."""
        hosts = self.hosts()
        name = host_name(which, [h.name for h in hosts])
        return next(h for h in hosts if h.name == name)

    @property
    def broker(self) -> Broker:
        state = self._require()
        if state.broker is None:
            raise LabError("the lab has no broker", "preflight")
        try:
            password = self.password_file.read_text().strip()
        except OSError as exc:
            raise LabError(f"the lab's broker password cannot be read: {exc}", "preflight") from None
        return broker_of(state.broker, password)

    def inventory(self, host_vars: Optional[Mapping[str, Mapping[str, str]]] = None, **group_vars: str) -> str:
        """The Ansible inventory (INI) of the lab; ``host_vars``/``group_vars`` add or override."""
        return render(self._require(), key_path=self.key_path, known_hosts=self.known_hosts,
                      password_file=self.password_file, host_vars=host_vars, group_vars=group_vars)

    # -- up -----------------------------------------------------------------------------------------
    def up(self, hosts: int = 1, install: bool = True, on_phase: Optional[PhaseCallback] = None,
           on_note: Optional[Callable[[str], None]] = None) -> LabReport:
        """Make the lab (or find it up: nothing changes). Raises LabError."""
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts must be 1..{MAX_HOSTS}, not {hosts}", "usage")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (systemd-nspawn, a RabbitMQ node): run it with sudo", "preflight")
        try:
            bind_args()  # dispatchctl must run from a virtualenv to be bound into the hosts
        except HostError as exc:
            raise LabError(str(exc), "preflight") from None
        try:
            tools.ensure(on_note or (lambda _m: None))
        except tools.ToolsMissing as exc:
            raise LabError(str(exc), "preflight") from None
        report = LabReport(state_dir=str(self.dir))
        with self._lock():
            current = self.load()
            if current is not None and not self.dead_parts(current):
                if len(current.hosts) != hosts:
                    raise LabError(f"the lab is up with {len(current.hosts)} host(s), not {hosts}: "
                                   "run `dispatchctl lab down` first, then `dispatchctl lab up --hosts "
                                   f"{hosts}`", "preflight")
                report.already_up, report.state = True, current
                return report
            if current is not None or self.dir.exists():
                self._teardown(current)
                report.cleaned_stale = True
            try:
                self._make_dir()
            except OSError as exc:  # e.g. a leftover the teardown could not remove
                raise LabError(f"cannot make the lab's state dir {self.dir}: {exc}", "preflight") from None
            build = Build(self, report, on_phase or (lambda _p: None), on_note or (lambda _m: None))
            try:
                with signals_raise():
                    build.run(hosts, install)
            except BaseException:
                build.abandon()
                self._teardown(self._load_quietly())
                raise
        return report

    def _make_dir(self) -> None:
        self.dir.mkdir(mode=0o711, parents=True)  # rabbitmq must traverse it to its data dir
        os.chmod(self.dir, 0o711)
        write_atomic(self.dir / MARK, b"made by dispatchctl lab up; removed by dispatchctl lab down\n", mode=0o644)
        for sub in (self.log_dir, self.key_path.parent):
            sub.mkdir(mode=0o700)

    def save(self, state: LabState) -> None:
        write_atomic(self.state_file, state.to_json().encode(), mode=0o644)

    def _load_quietly(self) -> Optional[LabState]:
        try:
            return self.load()
        except LabError:
            return None

    # -- down ---------------------------------------------------------------------------------------
    def down(self) -> bool:
        """Power off every host, stop the broker, remove the state dir. False: nothing to do."""
        with self._lock():
            if not os.path.lexists(self.dir):
                return False
            # an unreadable record is refused, not removed: it is the only list of what to stop
            self._teardown(self.load())
            return True

    def _teardown(self, state: Optional[LabState]) -> None:
        """Stop whatever of ``state`` still runs (never a pid that is not the lab's), then remove
        the state dir."""
        if state is not None:
            for h in state.hosts:
                with contextlib.suppress(HostError):
                    Container.attach(Path(state.rootfs), h.name, h.nspawn_pid, h.leader_pid,
                                     log_dir=self.log_dir).poweroff()
            if state.broker is not None:
                stop_broker(state.broker)
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One lab command at a time per state dir: a lock on its parent dir (no lock file left)."""
        parent = self.dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> Dict[str, object]:
        state = self.load()
        if state is None:
            return {"up": False, "stale": False, "state_dir": str(self.dir), "hosts": [], "broker": None}
        dead = self.dead_parts(state)
        hosts = [{"name": h.name, "ssh_port": h.ssh_port, "running": h.name not in dead,
                  "nspawn_pid": h.nspawn_pid, "leader_pid": h.leader_pid} for h in state.hosts]
        b = state.broker
        broker = None if b is None else {"host": "127.0.0.1", "port": b.port, "node": b.node, "user": b.user,
                                         "running": "broker" not in dead, "password_file": str(self.password_file)}
        return {"up": not dead, "stale": bool(dead), "state_dir": str(self.dir), "installed": state.installed,
                "uptime_s": round(max(0.0, time.time() - state.created), 1), "hosts": hosts, "broker": broker,
                "key_path": str(self.key_path), "inventory": "dispatchctl lab inventory"}


def host_name(which: str, names: List[str]) -> str:
    """``which`` (``2`` or ``lab-2``) as one of ``names``; LabError (usage) naming them otherwise."""
    wanted = f"lab-{which}" if which.isdigit() else which
    if wanted not in names:
        raise LabError(f"no host {which!r} in the lab: its hosts are {', '.join(names) or 'none'}", "usage")
    return wanted


def broker_of(record: BrokerRecord, password: str) -> Broker:
    return Broker(record.port, dir=Path(record.dir), node=record.node, dist_port=record.dist_port,
                  user=record.user, password=password, started=True)


def broker_alive(record: BrokerRecord) -> bool:
    """The recorded beam.smp runs that node (not a reused pid: its environment names the node)."""
    try:
        comm = Path(f"/proc/{record.pid}/comm").read_text().strip()
        environ = Path(f"/proc/{record.pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_running(record.pid) and comm == "beam.smp" and f"RABBITMQ_NODENAME={record.node}".encode() in environ


def stop_broker(record: BrokerRecord) -> None:
    """Stop the lab's node (rabbitmqctl stop, then SIGKILL if it is still there) and the epmd it
    started when no other node uses it."""
    if broker_alive(record):
        with contextlib.suppress(Exception):
            broker_of(record, "").ctl("stop", timeout=120, check=False)
        deadline = time.monotonic() + 30
        while broker_alive(record) and time.monotonic() < deadline:
            time.sleep(0.1)
        if broker_alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, 9)
    if record.epmd_started and shutil.which("epmd"):
        names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, timeout=10)
        if names.returncode == 0 and "name " not in names.stdout:
            subprocess.run(["epmd", "-kill"], capture_output=True, timeout=10)
