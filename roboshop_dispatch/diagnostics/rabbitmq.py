"""``dispatchctl check-rabbitmq``: can dispatch, with these settings, reach RabbitMQ and use the
contract's topology? In order (name, TCP, handshake, login, vhost, permissions, exchange, queue,
binding, counts, latency), stopping where the rest is meaningless, within a time budget (a host
that drops packets answers in seconds)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Dict, Optional

from .. import amqp as contract
from ..settings import AmqpSettings, Secret, SettingsError
from . import network
from .bounded import Clock, run_bounded
from .catalog import (
    CONNECT_TIMEOUT_S,
    DEFAULT_BUDGET_S,
    RESOLVE_TIMEOUT_S,
    TITLES,
    finding,
    host_label,
    order,
)
from .queue_type import DEFAULT_MANAGEMENT_PORT, NAME, queue_type_check
from .report import FAIL, SERVICE_NOT_STARTING, SKIP, Finding, Report, internal_error

MANAGEMENT_TIMEOUT_S = 1.0


def check_rabbitmq(
    amqp: AmqpSettings,
    *,
    declare: bool = False,
    budget: float = DEFAULT_BUDGET_S,
    resolve_timeout: float = RESOLVE_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    password: Optional[Callable[[], Secret]] = None,
    management_port: int = DEFAULT_MANAGEMENT_PORT,
    queue_type: str = contract.CLASSIC,
) -> Report:
    """Every check of ``dispatchctl check-rabbitmq``, within ``budget`` seconds. ``password``, when
    given, is called only when the login is reached (it may prompt: the time it waits is not
    counted); its SettingsError (no password) is the login's failure. The queue's type, leader and
    members come from the management HTTP API on ``management_port`` of the node checked.
    ``queue_type``: what --declare declares a queue that does not exist as (one that exists: its type)."""
    clock = Clock(budget)
    report = Report()
    names = order(declare)
    try:
        _check(report, amqp, clock, declare, resolve_timeout, connect_timeout, password, management_port,
               queue_type)
    except Exception as exc:  # a bug in a check: reported as such, never blamed on the broker
        name = next((n for n in names if report.get(n) is None), names[-1])
        report.add(internal_error(name, TITLES[name], exc))
        report.skip_rest(names, name, "an internal error stopped the checks", TITLES)
    finally:
        report.elapsed_s = clock.elapsed()
    return report


def _check(report: Report, amqp: AmqpSettings, clock: Clock, declare: bool, resolve_timeout: float,
           connect_timeout: float, password: Optional[Callable[[], Secret]] = None,
           management_port: int = DEFAULT_MANAGEMENT_PORT, queue_type: str = contract.CLASSIC) -> None:
    names = order(declare)
    started = time.monotonic()
    resolved = network.resolve_all(amqp.hosts, amqp.port, min(resolve_timeout, clock.left()))
    if report.add(network.resolve_finding(amqp.hosts, resolved, _ms(started))).status == FAIL:
        report.skip_rest(names, "resolve", "the name does not resolve", TITLES)
        return
    started = time.monotonic()
    timeout = min(connect_timeout, clock.left())
    tcp = network.connect_all([r for r in resolved if "error" not in r], timeout)
    if report.add(network.tcp_finding(tcp, amqp.port, timeout, _ms(started))).status == FAIL:
        report.skip_rest(names, "tcp", "the port is not reachable", TITLES)
        return
    if password is not None:
        asked = time.monotonic()
        try:
            amqp = replace(amqp, password=password())
        except SettingsError as exc:
            report.add(finding("handshake", SKIP, "not tried: there is no password to log in with"))
            report.add(finding("auth", FAIL, exc.message, diagnosis="No AMQP password", cause=str(exc),
                               fix="give --amqp-pass-file FILE, or set DISPATCHCTL_AMQP_PASS, or type it at "
                                   "the prompt (dispatchctl check-rabbitmq on a terminal asks for it)"))
            report.skip_rest(names, "auth", "no password", TITLES)
            return
        clock.extend(time.monotonic() - asked)
    target = next(t for t in tcp if t["ok"])
    _amqp(report, amqp, target, clock, declare, queue_type)
    _queue_type(report, amqp, target["address"], clock, management_port)


def _queue_type(report: Report, amqp: AmqpSettings, address: str, clock: Clock, management_port: int) -> None:
    """Type, leader and members of orders; a warning for a classic queue on a cluster (read-only)."""
    if report.get(NAME) is not None:
        return  # skipped with the rest already
    queue = report.get("queue")
    if queue is None or queue.status == FAIL or queue.status == SKIP:
        report.add(finding(NAME, SKIP, f"not checked: queue '{contract.QUEUE}' is missing or not readable"))
        return
    started = time.monotonic()
    result = queue_type_check(amqp, address, queue.data.get("queue_type"), management_port,
                              min(MANAGEMENT_TIMEOUT_S, clock.left()))
    result.elapsed_ms = _ms(started)
    report.add(result)


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _amqp(report: Report, amqp: AmqpSettings, target: Dict[str, Any], clock: Clock, declare: bool,
          queue_type: str = contract.CLASSIC) -> None:
    """The AMQP checks, in a worker, so that a broker that stops answering cannot hold up the answer."""
    from ..pikaload import load

    load()  # pika without its asyncio adapter, before session imports the contract (which imports pika)
    from .session import HandshakeFailed, Session, snapshot

    names = order(declare)
    session = Session(amqp, declare, queue_type)
    finished, _, error = run_bounded(lambda: session.run(target["address"], clock), clock.left())
    findings, step, stopped = snapshot(session)
    for f in findings:
        report.add(f)
    if finished and error is None:
        if stopped is not None:
            report.skip_rest(names, stopped[0], stopped[1], TITLES)
        return
    if report.get(step) is not None:  # stalled right after reporting it: blame the next check
        step = next((n for n in names if report.get(n) is None), "latency")
    if step == "handshake" and (error is None or isinstance(error, HandshakeFailed)):
        report.add(_handshake_failed(target, amqp.port, clock, error))
        report.skip_rest(names, "handshake", "no AMQP session", TITLES)
    elif error is not None and not _broker_error(error):
        report.add(internal_error(step, TITLES[step], error))
        report.skip_rest(names, step, "an internal error stopped the checks", TITLES)
    else:
        report.add(_stopped_answering(step, clock, error))
        report.skip_rest(names, step, "the broker stopped answering", TITLES)


def _broker_error(error: BaseException) -> bool:
    """An error of the connection (the broker or the network), not of dispatchctl's own code."""
    from .session import connection_errors

    return isinstance(error, connection_errors())


def _handshake_failed(target: Dict[str, Any], port: int, clock: Clock, error: Any) -> Finding:
    if error is not None:
        summary = str(error)
    else:
        summary = (f"{host_label(target['address'], port)} accepted the TCP connection but the AMQP "
                   f"handshake did not complete within {clock.elapsed():.1f}s")
    return finding(
        "handshake", FAIL, summary, diagnosis="AMQP handshake failed",
        cause=("the port answers TCP but not as RabbitMQ: another service, a TLS-only port, or a broker "
               "still booting or overloaded"),
        fix="verify AMQP_HOST and AMQP_PORT (5672 is RabbitMQ's plain AMQP port); on the broker: "
            "rabbitmq-diagnostics check_port_connectivity",
        issue=SERVICE_NOT_STARTING)


def _stopped_answering(step: str, clock: Clock, error: Any) -> Finding:
    what = "stopped answering" if error is None else f"failed: {type(error).__name__}: {error}"
    return finding(
        step, FAIL, f"the broker {what} during this check (after {clock.elapsed():.1f}s)",
        diagnosis="RabbitMQ stopped answering",
        cause="the connection stalled or broke mid-check: broker overloaded, blocked (memory or disk "
              "alarm), or the network started dropping packets",
        fix="on the broker: rabbitmq-diagnostics status; rabbitmqctl list_connections; then re-run")
