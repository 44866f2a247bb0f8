"""A throwaway RabbitMQ node (recipe: ../shared/real-test-hosts.md), for the lab and the tests.

The node listens on a free loopback port, keeps its data in a temp dir, and is stopped (and its
dir removed) at the end. ``outage()`` closes the AMQP listener and every connection
(``stop_app``) and ``recover()`` brings it back, which is how the tests make a broker outage.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from ..errors import DispatchctlError

USER = "roboshop"
PASSWORD = "roboshop123"
SAFE_CONF_VALUE = re.compile(r"[A-Za-z0-9_-]+")


class BrokerUnavailable(DispatchctlError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Broker:
    """One RabbitMQ node. By default the tests' (a temp dir, user roboshop/roboshop123); the lab
    passes its own dir, node name, ports and a generated password, and can drive a node another
    process started (``started=True``)."""

    def __init__(self, port: Optional[int] = None, *, dir: Optional[Path] = None, node: Optional[str] = None,
                 dist_port: Optional[int] = None, user: str = USER, password: str = PASSWORD,
                 started: bool = False, host: str = "127.0.0.1") -> None:
        if shutil.which("rabbitmq-server") is None and not Path("/usr/sbin/rabbitmq-server").exists():
            raise BrokerUnavailable(
                "rabbitmq-server is not installed: run scripts/setup-dev (apt-get install -y rabbitmq-server)"
            )
        self.host = host  # a loopback address: AMQP listens there only
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        self.node = node or f"dispatchtest{uuid.uuid4().hex[:8]}@localhost"
        self.dir = dir if dir is not None else Path(tempfile.mkdtemp(prefix="dispatch-broker-"))
        self.user = user
        self.password = password
        self.started = started

    # -- process control ----------------------------------------------------------------------
    def _env(self) -> dict:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_PID_FILE=str(self.dir / "node.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            # Erlang distribution on loopback only (AMQP already is: RABBITMQ_NODE_IP_ADDRESS)
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self, *, sole_user: bool = False) -> Broker:
        """Start the node and give ``user`` every right on ``/``. ``sole_user`` (the lab): the node
        creates that user itself at its first boot (``default_user``/``default_pass`` in its 0600
        config, instead of ``guest``), and start waits for that user's AMQP login rather than
        three rabbitmqctl runs (each starts an Erlang VM: about a second apiece)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir / "enabled_plugins").write_text("[].\n")
        # loopback_users = none: lets tests use any user from 127.0.0.1 exactly like a remote host
        conf = "loopback_users = none\nlog.console = false\n"
        if sole_user:
            if not SAFE_CONF_VALUE.fullmatch(self.user + self.password):
                raise BrokerUnavailable("a sole user's name and password must be [A-Za-z0-9_-]: "
                                        "they go in rabbitmq.conf")
            conf += f"default_user = {self.user}\ndefault_pass = {self.password}\ndefault_vhost = /\n"
        fd = os.open(self.dir / "rabbitmq.conf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(conf)
        (self.dir / "advanced.config").write_text("[].\n")
        try:
            uid = __import__("pwd").getpwnam("rabbitmq").pw_uid
            gid = __import__("grp").getgrnam("rabbitmq").gr_gid
            for p in [self.dir, *self.dir.rglob("*")]:
                os.chown(p, uid, gid)
        except KeyError:
            pass
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        self.started = True
        if sole_user:
            self._wait_login(timeout=90)
            return self
        self.ctl("wait", "--timeout", "60", str(self.dir / "node.pid"), timeout=90)
        self.ctl("await_startup", timeout=90)
        self.add_user(self.user, self.password)  # the password on stdin, never in argv
        return self

    def _wait_login(self, timeout: float) -> None:
        """Until ``user`` logs in over AMQP (the node is booted and has created it)."""
        import pika

        params = pika.ConnectionParameters(self.host, self.port, credentials=pika.PlainCredentials(
            self.user, self.password), connection_attempts=1, socket_timeout=2)
        deadline = time.monotonic() + timeout
        last = "port closed"
        while time.monotonic() < deadline:
            if port_open(self.host, self.port):
                try:
                    pika.BlockingConnection(params).close()
                    return
                except Exception as exc:  # booting: refused, reset, or not yet the user
                    last = repr(exc)
            time.sleep(0.1)
        raise BrokerUnavailable(f"no AMQP login as {self.user} on {self.host}:{self.port} "
                                f"after {timeout:.0f}s ({last})")

    def pid(self) -> int:
        """The node's beam.smp pid (its pid file), 0 when unknown."""
        try:
            return int((self.dir / "node.pid").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def ctl(self, *args: str, timeout: float = 60, check: bool = True,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.node, *args], env=self._env(), capture_output=True,
            text=True, timeout=timeout, input=input,
        )
        if check and proc.returncode != 0:
            raise BrokerUnavailable(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): "
                                    f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def outage(self) -> None:
        """Close the AMQP port and every connection: the broker is down for clients."""
        self.ctl("stop_app", timeout=120)

    def recover(self) -> None:
        self.ctl("start_app", timeout=120)
        self.ctl("await_startup", timeout=120)

    def stop(self) -> None:
        if self.started:
            self.ctl("stop", timeout=120, check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers for tests --------------------------------------------------------------------
    def add_user(self, name: str, password: str, *, permissions: Optional[tuple] = (".*", ".*", ".*"),
                 vhost: str = "/") -> None:
        # on stdin, not argv: Debian's rabbitmqctl wrapper re-quotes argv through `su -c`,
        # which mangles `$` and backquotes
        self.ctl("add_user", "--", name, input=password + "\n")
        if permissions is not None:
            self.ctl("set_permissions", "-p", vhost, "--", name, *permissions)

    def delete_user(self, name: str) -> None:
        self.ctl("delete_user", "--", name, check=False)

    def queue_counts(self, vhost: str = "/") -> dict:
        out = self.ctl("list_queues", "-p", vhost, "name", "messages", "consumers", "--no-table-headers").stdout
        counts = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].isdigit():
                counts[parts[0]] = (int(parts[1]), int(parts[2]))
        return counts

    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/%2F"
