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
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from ..errors import DispatchctlError, ErrorKind
from ..files import write_atomic
from . import tools
from .broker import Broker, BrokerUnavailable, free_port, port_open
from .inventory import render
from .nspawn import (
    READY_MARK,
    Container,
    HostError,
    bind_args,
    ensure_rootfs,
    host_alive,
    pid_running,
    rootfs_path,
    venv_bin,
)
from .orders import PaymentPublisher, handled_order_id, make_order, parameters
from .report import LabReport, Phase
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

AMQP_USER = "roboshop"   # the course's user name; the password is generated per lab
EPMD_PORT = 4369
ORDERS = 5
PASS_INSIDE = "/root/amqp.pass"
# in every state dir the lab made: only such a dir is ever removed (a mistyped
# $DISPATCHCTL_LAB_STATE=/var/lib must not lose /var/lib)
MARK = ".dispatchctl-lab"


class LabError(DispatchctlError):
    """The lab cannot do what was asked; ``kind`` is the JSON error kind (preflight: nothing was
    touched; step: something failed on the way and what was made is removed again)."""

    def __init__(self, message: str, kind: str = ErrorKind.STEP) -> None:
        super().__init__(message, kind=kind)


@dataclass(frozen=True)
class LabHost:
    name: str
    ssh_port: int
    container: Container  # run things inside: .run(), .sh(), .dispatchctl(), .path()


PhaseCallback = Callable[[Phase], None]


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
            build = _Build(self, report, on_phase or (lambda _p: None), on_note or (lambda _m: None))
            try:
                with _signals_raise():
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


class _Build:
    """One ``lab up`` from nothing: the phases, each timed, the state saved after each."""

    def __init__(self, lab: Lab, report: LabReport, on_phase: PhaseCallback, on_note: Callable[[str], None]) -> None:
        self.lab, self.report, self.on_phase, self.on_note = lab, report, on_phase, on_note
        self.containers: List[Container] = []
        self.broker: Optional[Broker] = None
        self.state = LabState(rootfs=str(rootfs_path()), installed=False, created=time.time())

    def phase(self, name: str, work: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            outcome = work()
        except LabError:
            raise
        except Exception as exc:  # a host, the broker or pika failing: the phase failed, with the reason
            raise LabError(f"{name}: {type(exc).__name__}: {exc}") from exc
        phase = Phase(name, outcome, time.monotonic() - started)
        self.report.phases.append(phase)
        self.on_phase(phase)

    def run(self, hosts: int, install: bool) -> None:
        self.phase("rootfs", self.rootfs)
        self.phase("broker", self.start_broker)
        self.phase("hosts", lambda: self.boot(hosts))
        if install:
            self.phase("install", self.install)
            ids: List[str] = []
            self.phase("orders", lambda: self.orders(ids))
            self.phase("status", lambda: self.status(ids))
        self.state = replace(self.state, installed=install, created=time.time())
        self.lab.save(self.state)
        self.report.state = self.state

    def rootfs(self) -> str:
        cached = (rootfs_path() / READY_MARK).exists()
        if not cached:
            self.on_note(f"building the Debian 12 image once with debootstrap into {rootfs_path()} "
                         "(minutes; later labs reuse it)")
        try:
            path = ensure_rootfs()
        except HostError as exc:
            raise LabError(str(exc)) from None
        self.state = replace(self.state, rootfs=str(path))
        return "cached" if cached else f"built {path.name}"

    def start_broker(self) -> str:
        epmd_running = port_open("127.0.0.1", EPMD_PORT)
        password = secrets.token_urlsafe(24)
        write_atomic(self.lab.password_file, (password + "\n").encode(), mode=0o600)
        node = f"dispatchlab{uuid.uuid4().hex[:8]}@localhost"
        broker = Broker(self.lab.broker_port, dir=self.lab.dir / "broker", node=node, user=AMQP_USER,
                        password=password)
        self.broker = broker
        try:
            broker.start(sole_user=True)  # no guest: loopback_users = none would let anyone local in
        except (BrokerUnavailable, subprocess.SubprocessError) as exc:
            raise LabError(f"the broker did not start: {exc}") from None
        record = BrokerRecord(node=broker.node, dir=str(broker.dir), port=broker.port, dist_port=broker.dist_port,
                              pid=broker.pid(), user=broker.user, epmd_started=not epmd_running)
        self.state = replace(self.state, broker=record)
        self.lab.save(self.state)
        return f"started on 127.0.0.1:{broker.port}"

    def boot(self, count: int) -> str:
        key = self.ssh_key()
        ports: List[int] = []
        for n in range(1, count + 1):
            container = Container(Path(self.state.rootfs), f"lab-{n}", log_dir=self.lab.log_dir)
            self.containers.append(container)
            try:
                container.boot()
                container.write("/etc/hostname", f"lab-{n}\n", mode=0o644)
                container.run(["hostname", f"lab-{n}"])
                port = _new_port(ports)
                container.enable_ssh(port, key)
            except HostError as exc:
                raise LabError(f"host lab-{n}: {exc}") from None
            ports.append(port)
            record = HostRecord(f"lab-{n}", container.nspawn_pid, container.leader, port)
            self.state = replace(self.state, hosts=[*self.state.hosts, record])
            self.lab.save(self.state)
        self.known_hosts()
        return f"{count} booted, ssh on {', '.join(map(str, ports))}"

    def ssh_key(self) -> str:
        key = self.lab.key_path
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dispatchctl-lab", "-f", str(key)],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        return key.with_suffix(".pub").read_text()

    def known_hosts(self) -> None:
        """The hosts' own keys, for ssh's UserKnownHostsFile: no prompt, no ~/.ssh/known_hosts."""
        lines = []
        for container, record in zip(self.containers, self.state.hosts):
            for pub in sorted(container.path("/etc/ssh").glob("ssh_host_*_key.pub")):
                kind, blob = pub.read_text().split()[:2]
                lines.append(f"[127.0.0.1]:{record.ssh_port} {kind} {blob}")
        write_atomic(self.lab.known_hosts, ("\n".join(lines) + "\n").encode(), mode=0o644)

    def install(self) -> str:
        broker = self.broker
        assert broker is not None

        def one(container: Container) -> Tuple[str, subprocess.CompletedProcess]:
            container.run(["ln", "-sf", venv_bin("dispatchctl"), "/usr/local/bin/dispatchctl"])
            container.write(PASS_INSIDE, broker.password + "\n", mode=0o600)
            res = container.dispatchctl("install", "--amqp-host", "127.0.0.1", "--amqp-port", str(broker.port),
                                        "--amqp-user", broker.user, "--amqp-pass-file", PASS_INSIDE)
            container.run(["rm", "-f", PASS_INSIDE])  # installed as the service's credential now
            return container.name, res

        with ThreadPoolExecutor(max_workers=len(self.containers)) as pool:
            results = list(pool.map(one, self.containers))
        failed = [(name, res) for name, res in results if res.returncode != 0]
        if failed:
            name, res = failed[0]
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            raise LabError(f"dispatchctl install failed on {name} (exit {res.returncode}):\n{tail}")
        return f"{len(results)} host(s)"

    def orders(self, ids: List[str]) -> str:
        broker = self.broker
        assert broker is not None
        wanted = len(self.containers)
        _wait(lambda: broker.queue_counts().get("orders", (0, 0))[1] >= wanted, 60,
              f"{wanted} consumer(s) on the orders queue")
        count = max(ORDERS, wanted)  # round-robin: every host gets at least one
        with PaymentPublisher(parameters("127.0.0.1", broker.port, "/", broker.user, broker.password)) as pub:
            for i in range(count):
                order = make_order(i)
                ids.append(str(order["orderid"]))
                pub.publish(order)
        seen: Dict[str, str] = {}

        def all_handled() -> bool:
            for container in self.containers:
                for line in container.journal("dispatch*").splitlines():
                    orderid = handled_order_id(line)
                    if orderid in ids:
                        seen[orderid] = container.name
            return len(seen) == len(ids)

        _wait(all_handled, 60, f"the {len(ids)} orders to be dispatched")
        return f"{len(ids)} published, {len(seen)} dispatched"

    def status(self, ids: List[str]) -> str:
        """`dispatchctl status` inside host 1, once its STATUS= shows the orders it handled (the
        consumer updates it every second)."""
        first = self.containers[0]
        mine = sum(1 for line in first.journal("dispatch*").splitlines() if handled_order_id(line) in ids)

        def handled() -> int:
            res = first.dispatchctl("status", "--json", timeout=60)
            try:
                instances = json.loads(res.stdout).get("instances") or []
            except ValueError:
                return -1
            return sum(int(i.get("orders_handled") or 0) for i in instances)

        _wait(lambda: handled() >= mine, 30, f"{first.name}'s status to show {mine} orders handled")
        self.report.status_text = first.dispatchctl("status", timeout=60).stdout
        return f"{first.name}: {mine} orders handled"

    def abandon(self) -> None:
        """A failed up: power off the hosts it booted (their pids may not be recorded yet)."""
        for container in self.containers:
            with contextlib.suppress(Exception):
                container.poweroff()
        if self.broker is not None and self.state.broker is None:
            with contextlib.suppress(Exception):
                self.broker.stop()


class Interrupted(LabError):
    """SIGTERM or SIGHUP during ``lab up``: what was made is removed, as for Ctrl-C."""


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise (in the main thread), so that a killed ``lab up`` removes what it
    made instead of leaving hosts and a broker that no state file completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(f"lab up interrupted by {signal.Signals(signum).name}: what it made is removed")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _new_port(taken: List[int]) -> int:
    while True:
        port = free_port()
        if port not in taken:
            return port


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


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
