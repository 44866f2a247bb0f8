"""A real 3-node RabbitMQ cluster on this machine's loopback (recipe: ../shared/real-test-hosts.md).

Node ``i`` listens on ``127.0.0.{i}``, all on ONE AMQP port (and one management port), so that
``AMQP_HOST=127.0.0.1,127.0.0.2,127.0.0.3`` with a single ``AMQP_PORT`` is exactly how dispatch
sees a cluster of three hosts. Node names and ports are unique per test session (the pid plus a
random tag, ports probed free on all three addresses), so several sessions on one machine do not
clash, nor with the single test broker (roboshop_dispatch/lab/broker.py). Data lives in a temp dir, removed
by :meth:`Cluster.stop`. When a node cannot start, the error carries the tail of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

from roboshop_dispatch.lab.broker import PASSWORD, USER, BrokerUnavailable

SIZE = 3


def _bindable(port: int, addresses: List[str]) -> bool:
    for address in addresses:
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def free_port_on(addresses: List[str], exclude: tuple = ()) -> int:
    """A TCP port free on every address (probed: another test session may hold any port)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        if port not in exclude and _bindable(port, addresses):
            return port
    raise BrokerUnavailable(f"no TCP port free on all of {addresses}")


class Node:
    def __init__(self, cluster: Cluster, index: int) -> None:
        self.index = index
        self.address = f"127.0.0.{index}"
        tag = cluster.tag
        self.name = f"dc{tag}n{index}@localhost"
        self.dir = cluster.dir / f"n{index}"
        self.dist_port = free_port_on(["127.0.0.1"], exclude=(cluster.port, cluster.http_port))
        self.cluster = cluster

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_NODE_PORT=str(self.cluster.port),
            RABBITMQ_NODE_IP_ADDRESS=self.address,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_PID_FILE=str(self.dir / "node.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
        )
        return env

    def ctl(self, *args: str, timeout: float = 60, check: bool = True, tool: str = "rabbitmqctl",
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([tool, "-q", "-n", self.name, *args], env=self.env(), capture_output=True,
                              text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise BrokerUnavailable(f"{tool} -n {self.name} {' '.join(args)} failed ({proc.returncode}): "
                                    f"{proc.stderr.strip() or proc.stdout.strip()}\n{self.log_tail()}")
        return proc

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.dir / "rabbitmq.conf").write_text(
            "loopback_users = none\nlog.console = false\n"
            f"management.tcp.port = {self.cluster.http_port}\nmanagement.tcp.ip = {self.address}\n"
            # a killed node must not be waited for: the others carry on (the default, made explicit)
            "cluster_partition_handling = ignore\n")
        (self.dir / "advanced.config").write_text("[].\n")
        try:
            uid = __import__("pwd").getpwnam("rabbitmq").pw_uid
            gid = __import__("grp").getgrnam("rabbitmq").gr_gid
        except KeyError:
            return
        for p in [self.cluster.dir, self.dir, *self.dir.rglob("*")]:
            os.chown(p, uid, gid)

    def launch(self) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self.ctl("wait", "--timeout", "90", str(self.dir / "node.pid"), timeout=120)
        self.ctl("await_startup", timeout=120)

    def pid(self) -> Optional[int]:
        try:
            return int((self.dir / "node.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """Kill the node hard (SIGKILL to its beam.smp): no goodbye to clients or peers."""
        pid = self.pid()
        if pid is None:
            raise BrokerUnavailable(f"{self.name} has no pid file")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        """Start a killed node again; it rejoins the cluster."""
        self.launch()

    def log_tail(self, lines: int = 30) -> str:
        logs = sorted((self.dir / "log").glob("*.log")) if (self.dir / "log").is_dir() else []
        out = []
        for path in logs:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out) or f"(no log in {self.dir / 'log'})"


class Cluster:
    """Three nodes joined into one cluster; ``hosts`` is the AMQP_HOST list, ``port`` the AMQP_PORT."""

    def __init__(self) -> None:
        if shutil.which("rabbitmq-server") is None and not Path("/usr/sbin/rabbitmq-server").exists():
            raise BrokerUnavailable("rabbitmq-server is not installed: run scripts/setup-dev")
        self.tag = f"{os.getpid()}{uuid.uuid4().hex[:4]}"
        self.dir = Path(tempfile.mkdtemp(prefix="dispatch-cluster-"))
        addresses = [f"127.0.0.{i}" for i in range(1, SIZE + 1)]
        self.port = free_port_on(addresses)
        self.http_port = free_port_on(addresses, exclude=(self.port,))
        self.nodes = [Node(self, i) for i in range(1, SIZE + 1)]
        self.user = USER
        self.password = PASSWORD
        self.host = self.nodes[0].address  # for consumer_env(): the first node
        self.started = False

    @property
    def hosts(self) -> str:
        return ",".join(n.address for n in self.nodes)

    def start(self) -> Cluster:
        for node in self.nodes:
            node.write_config()
        self.started = True
        with ThreadPoolExecutor(SIZE) as pool:
            list(pool.map(lambda n: n.launch(), self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app", timeout=120)
            node.ctl("join_cluster", first.name, timeout=120)
            node.ctl("start_app", timeout=120)
            node.ctl("await_startup", timeout=120)
        first.ctl("add_user", self.user, input=self.password + "\n")
        first.ctl("set_permissions", "-p", "/", self.user, ".*", ".*", ".*")
        first.ctl("set_user_tags", self.user, "monitoring")
        running = self.running_nodes()
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise BrokerUnavailable(f"the cluster has {running}, expected all of {[n.name for n in self.nodes]}")
        return self

    def stop(self) -> None:
        if self.started:
            with ThreadPoolExecutor(SIZE) as pool:
                list(pool.map(lambda n: n.alive() and n.ctl("stop", timeout=120, check=False), self.nodes))
            for node in self.nodes:  # whatever did not stop politely
                if node.alive():
                    node.kill()
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers for tests --------------------------------------------------------------------
    def up(self) -> List[Node]:
        return [n for n in self.nodes if n.alive()]

    def ctl(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """rabbitmqctl on a node that is up."""
        return self.up()[0].ctl(*args, **kwargs)

    def running_nodes(self) -> List[str]:
        out = self.ctl("cluster_status", "--formatter", "json").stdout
        return list(json.loads(out).get("running_nodes", []))

    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def node_at(self, address: str) -> Node:
        """The node whose AMQP listener is ``address`` (as the consumer logs it, port optional)."""
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
        return next(n for n in self.nodes if n.address == host)

    def queue_info(self, vhost: str, queue: str = "orders") -> Dict[str, object]:
        """type, leader and members of ``queue`` (as the broker reports them; {} when there is none)."""
        out = self.ctl("list_queues", "-p", vhost, "name", "type", "leader", "members", "messages",
                       "consumers", "--formatter", "json", timeout=60).stdout
        for row in json.loads(out or "[]"):
            if row.get("name") == queue:
                return row
        return {}

    def leader(self, vhost: str, queue: str = "orders") -> Node:
        """The node that leads quorum ``queue`` now."""
        info = self.queue_info(vhost, queue)
        if not info.get("leader"):
            raise BrokerUnavailable(f"{queue!r} in {vhost!r} has no leader: {info}")
        return self.node_named(str(info["leader"]))

    def wait_leader(self, vhost: str, not_on: Node, timeout: float = 60, queue: str = "orders") -> Node:
        """Wait until ``queue`` is led by a node that is up and is not ``not_on``."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                leader = self.leader(vhost, queue)
                if leader is not not_on and leader.alive():
                    return leader
                last = leader.name
            except (BrokerUnavailable, subprocess.TimeoutExpired) as exc:
                last = exc
            time.sleep(0.3)
        raise BrokerUnavailable(f"no new leader for {queue!r} within {timeout}s (last: {last})")

    def connection_nodes(self, name: str = "dispatch") -> List[Node]:
        """The nodes that clients named ``name`` (client property connection_name) are connected to."""
        out = self.ctl("list_connections", "name", "client_properties", "--formatter", "json").stdout
        nodes = []
        for row in json.loads(out or "[]"):
            props = row.get("client_properties") or []
            names = [p[2] for p in props if isinstance(p, list) and len(p) == 3 and p[0] == "connection_name"]
            if name in names:
                server = str(row.get("name", "")).split(" -> ")[-1]
                nodes.append(self.node_at(server))
        return nodes

    def add_vhost(self, name: str) -> None:
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")

    def delete_vhost(self, name: str) -> None:
        self.ctl("delete_vhost", name, check=False, timeout=120)
