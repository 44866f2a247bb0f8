"""The AMQP part of check-rabbitmq, over one connection: handshake, login, vhost, then the topology
checks in order. It runs in a worker bounded in time (see rabbitmq.py); :class:`Session` records
what it found so far and which check it is at, so a broker that stops answering is blamed on the
right check."""

from __future__ import annotations

import contextlib
import shlex
import time
from typing import Any, List, Optional, Tuple, Type

from .. import amqp as contract
from ..errors import DispatchctlError
from ..settings import AmqpSettings
from . import permissions, topology
from .bounded import Clock
from .broker import Broker, reply_of
from .catalog import CONNECT_TIMEOUT_S, auth_fix, finding, host_label, scrub
from .report import AUTH_FAILURE, FAIL, OK, Finding


def connection_errors() -> Tuple[Type[BaseException], ...]:
    """What pika raises when a connection fails or breaks: its AMQPError family, socket errors,
    and the connection workflow's own exceptions (a stack timeout is not an AMQPError)."""
    import pika.exceptions as pe
    from pika.adapters.utils import connection_workflow as cw

    return (pe.AMQPError, OSError, EOFError, cw.AMQPConnectorException, cw.AMQPConnectionWorkflowFailed)


class HandshakeFailed(DispatchctlError):
    """The port answered TCP but no AMQP session came of it (the message names why)."""


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def auth_failure(amqp: AmqpSettings, reply_text: str, elapsed_ms: float) -> Finding:
    return finding(
        "auth", FAIL, f"RabbitMQ refused the login of user '{amqp.user}': ACCESS_REFUSED",
        diagnosis="Auth failure: check AMQP user/pass",
        cause=(f"the user '{amqp.user}' does not exist on the broker or its password differs from the "
               "one configured (AMQP_USER/AMQP_PASS)"),
        fix=auth_fix(amqp), issue=AUTH_FAILURE, data={"reply": scrub(reply_text)}, elapsed_ms=elapsed_ms)


def vhost_refused(amqp: AmqpSettings, reply_text: str, elapsed_ms: float) -> Finding:
    missing = "not found" in reply_text
    vhost, user = shlex.quote(amqp.vhost), shlex.quote(amqp.user)
    return finding(
        "vhost", FAIL,
        f"vhost '{amqp.vhost}' " + ("does not exist" if missing else f"refused for user '{amqp.user}'")
        + " (NOT_ALLOWED)",
        diagnosis="Vhost access refused: check AMQP_VHOST and the user's permissions",
        cause=(f"the vhost '{amqp.vhost}' does not exist on this broker" if missing else
               f"the user '{amqp.user}' has no permissions at all in vhost '{amqp.vhost}'"),
        fix=((f"on the RabbitMQ server: rabbitmqctl add_vhost {vhost}\nthen: " if missing
              else "on the RabbitMQ server: ")
             + f"rabbitmqctl set_permissions -p {vhost} {user} \".*\" \".*\" \".*\""
             + "\n(or correct AMQP_VHOST: the RoboShop contract uses '/')"),
        data={"reply": scrub(reply_text)}, elapsed_ms=elapsed_ms)


def server_version(conn: Any) -> str:
    """RabbitMQ's version from the handshake (pika keeps it on the connection's implementation;
    an empty string if a pika release keeps it elsewhere)."""
    props = getattr(getattr(conn, "_impl", None), "server_properties", None) or {}
    version = props.get("version", b"") if isinstance(props, dict) else b""
    return version.decode("utf-8", "replace") if isinstance(version, bytes) else str(version)


class Session:
    def __init__(self, amqp: AmqpSettings, declare: bool, queue_type: str = contract.CLASSIC) -> None:
        self.amqp = amqp
        self.declare = declare
        self.queue_type = queue_type  # what --declare declares an absent queue as
        self.findings: List[Finding] = []
        self.step = "handshake"
        self.stopped: Optional[Tuple[str, str]] = None  # (after which check, why the rest is meaningless)

    def begin(self, step: str) -> None:
        self.step = step

    def add(self, f: Finding) -> None:
        self.findings.append(f)

    def run(self, address: str, clock: Clock) -> None:
        conn = self._connect(address, clock)
        if conn is None:
            return
        try:
            self._topology(Broker(conn))
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _connect(self, address: str, clock: Clock) -> Any:
        from ..pikaload import load

        pika = load()
        import pika.exceptions as pe

        amqp, label = self.amqp, host_label(address, self.amqp.port)
        params = contract.parameters([address], amqp.port, amqp.vhost, amqp.user, amqp.password.reveal(),
                                     heartbeat=0, socket_timeout=max(0.2, min(CONNECT_TIMEOUT_S, clock.left() / 2)),
                                     blocked_connection_timeout=None, client_name="dispatchctl check-rabbitmq")
        started = time.monotonic()
        try:
            conn = pika.BlockingConnection(params[0])
        except pe.ProbableAuthenticationError as exc:
            self.add(finding("handshake", OK, f"{label} speaks AMQP 0-9-1"))
            self.add(auth_failure(amqp, str(exc), _ms(started)))
            self.stopped = ("auth", "the login was refused")
            return None
        except pe.ProbableAccessDeniedError as exc:
            self.add(finding("handshake", OK, f"{label} speaks AMQP 0-9-1"))
            self.add(finding("auth", OK, f"user '{amqp.user}' logged in"))
            self.add(vhost_refused(amqp, str(exc), _ms(started)))
            self.stopped = ("vhost", "no access to the vhost")
            return None
        except pe.IncompatibleProtocolError as exc:
            raise HandshakeFailed(f"{label} accepted the connection but did not speak AMQP 0-9-1 ({exc})") from None
        except pe.ConnectionClosedByBroker as exc:
            code, text = reply_of(exc)
            raise HandshakeFailed(f"{label} closed the connection during the handshake: {code} {text}") from None
        except connection_errors() as exc:  # stack timeout, stream lost...
            raise HandshakeFailed(f"{label}: AMQP handshake failed: {type(exc).__name__}: {exc}") from None
        connect_ms = _ms(started)
        version = server_version(conn)
        self.add(finding("handshake", OK, f"{label}: RabbitMQ {version}".rstrip(),
                         data={"server_version": version}, elapsed_ms=connect_ms))
        self.add(finding("auth", OK, f"user '{amqp.user}' logged in"))
        self.add(finding("vhost", OK, f"vhost '{amqp.vhost}' open", elapsed_ms=connect_ms))
        return conn

    def _topology(self, broker: Broker) -> None:
        amqp = self.amqp
        if self.declare:
            self.begin("declare")
            self.add(topology.declare(broker, self.queue_type))
        self.begin("permissions")
        started = time.monotonic()
        perms = permissions.probe(broker)
        self.add(permissions.permissions_finding(amqp, perms, _ms(started)))
        may = permissions.configurable(perms)
        self.begin("exchange")
        started = time.monotonic()
        exchange = topology.probe_exchange(broker, contract.EXCHANGE in may)
        self.add(topology.exchange_finding(amqp, exchange, _ms(started)))
        self.begin("queue")
        started = time.monotonic()
        queue = topology.probe_queue(broker, contract.QUEUE in may)
        self.add(topology.queue_finding(amqp, queue, _ms(started)))
        counts = topology.queue_counts(queue)
        self.begin("binding")
        started = time.monotonic()
        exchange_ok = exchange.active is not None and exchange.active.code == 0
        early = topology.binding_precheck(counts, exchange.passive.code == 0, exchange_ok)
        self.add(early or topology.binding_finding(amqp, topology.probe_binding(broker), _ms(started)))
        self.begin("counts")
        self.add(topology.counts_finding(counts))
        self.begin("latency")
        self.add(topology.latency_finding(topology.probe_latency(broker)))
        self.begin("done")


def snapshot(session: Session) -> Tuple[List[Finding], str, Optional[Tuple[str, str]]]:
    """What the session found so far (safe to read while its worker may still be running)."""
    return list(session.findings), session.step, session.stopped


