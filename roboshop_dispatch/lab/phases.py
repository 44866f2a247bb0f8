"""``lab up``'s phases from nothing, each timed and the state saved after each (rootfs, broker,
hosts, install, orders, status), and the lab's errors. :class:`roboshop_dispatch.lab.session.Lab`
runs them; a phase that fails for any reason is a :class:`LabError` naming it."""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import DispatchctlError, ErrorKind
from ..files import write_atomic
from .broker import Broker, BrokerUnavailable, free_port, port_open
from .nspawn import READY_MARK, Container, HostError, ensure_rootfs, rootfs_path, venv_bin
from .orders import PaymentPublisher, handled_order_id, make_order, parameters
from .report import LabReport, Phase
from .state import BrokerRecord, HostRecord, LabState

if TYPE_CHECKING:
    from .session import Lab

PhaseCallback = Callable[[Phase], None]

AMQP_USER = "roboshop"   # the course's user name; the password is generated per lab
EPMD_PORT = 4369
ORDERS = 5
PASS_INSIDE = "/root/amqp.pass"


class LabError(DispatchctlError):
    """The lab cannot do what was asked; ``kind`` is the JSON error kind (preflight: nothing was
    touched; step: something failed on the way and what was made is removed again)."""

    def __init__(self, message: str, kind: str = ErrorKind.STEP) -> None:
        super().__init__(message, kind=kind)


class Build:
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
        wait_until(lambda: broker.queue_counts().get("orders", (0, 0))[1] >= wanted, 60,
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

        wait_until(all_handled, 60, f"the {len(ids)} orders to be dispatched")
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

        wait_until(lambda: handled() >= mine, 30, f"{first.name}'s status to show {mine} orders handled")
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
def signals_raise() -> Iterator[None]:
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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


