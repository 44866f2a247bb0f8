"""The checks of ``check-rabbitmq`` in their order, their titles, and the fixes they print."""

from __future__ import annotations

import shlex
from typing import Any, Tuple

from ..settings import AmqpSettings
from .report import Finding

DEFAULT_BUDGET_S = 4.0  # the whole check-rabbitmq, so that the command answers within 5 s
RESOLVE_TIMEOUT_S = 1.5
CONNECT_TIMEOUT_S = 1.5
SLOW_RTT_MS = 250.0

RABBIT_CHECKS: Tuple[Tuple[str, str], ...] = (
    ("resolve", "Name resolves"),
    ("tcp", "TCP port reachable"),
    ("handshake", "AMQP handshake"),
    ("auth", "Authentication"),
    ("vhost", "Vhost access"),
    ("declare", "Declare topology (--declare)"),
    ("permissions", "Permissions"),
    ("exchange", "Exchange robot-shop"),
    ("queue", "Queue orders"),
    ("binding", "Binding robot-shop -> orders"),
    ("counts", "Messages and consumers"),
    ("latency", "Round-trip latency"),
    ("queue-type", "Queue type and replicas"),
)
TITLES = dict(RABBIT_CHECKS)


def order(declare: bool) -> Tuple[str, ...]:
    """The checks that run, in order (``declare`` only with --declare)."""
    return tuple(n for n, _ in RABBIT_CHECKS if declare or n != "declare")


def finding(name: str, status: str, summary: str, **kw: Any) -> Finding:
    return Finding(name=name, title=TITLES.get(name, name), status=status, summary=summary, **kw)


def scrub(text: str) -> str:
    """A broker's reply text, on one line and short, every non-printable character escaped (it can
    carry names a publisher chose: a terminal never gets their control sequences)."""
    from ..consumer.orders import escape

    return escape(text.replace("\n", " "))[:300]


def host_label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def permissions_fix(amqp: AmqpSettings) -> str:
    vhost = shlex.quote(amqp.vhost)
    user = shlex.quote(amqp.user)
    return (f"on the RabbitMQ server: rabbitmqctl set_permissions -p {vhost} {user} \".*\" \".*\" \".*\"\n"
            f"(least privilege for dispatch alone: rabbitmqctl set_permissions -p {vhost} {user} "
            "'^(robot-shop|orders|orders\\.invalid)$' '^(orders|amq\\.default)$' '^(orders|robot-shop)$')")


def auth_fix(amqp: AmqpSettings) -> str:
    user = shlex.quote(amqp.user)
    vhost = shlex.quote(amqp.vhost)
    lines = [
        f"on the RabbitMQ server: rabbitmqctl add_user {user} 'PASSWORD'   "
        f"(or, if the user exists: rabbitmqctl change_password {user} 'PASSWORD')",
        f"then: rabbitmqctl set_permissions -p {vhost} {user} \".*\" \".*\" \".*\"",
        "or correct the password dispatch uses: dispatchctl configure --amqp-host HOST --amqp-pass-file FILE",
    ]
    if amqp.user == "guest":
        lines.insert(0, "the 'guest' user may only log in over loopback: use a dedicated user (roboshop)")
    return "\n".join(lines)
