"""Diagnoses for the on-call engineer: each finding names the cause in plain words and the fix.

Two families of checks live here:

- :func:`check_rabbitmq`: can dispatch, with these settings, reach RabbitMQ and use the contract's
  topology? It runs in order (name, TCP, AMQP handshake, authentication, vhost, permissions,
  exchange, queue, binding, counts, latency) and stops at the first failure that makes the rest
  meaningless. The whole check is bounded in time (a host that drops packets answers in seconds).
- :func:`check_host`: the host side (OS, root, systemd, user, binary, unit, environment file,
  password credential, ``User=``, service state, SELinux), each a pure function of the installed
  state read once (:mod:`roboshop_dispatch.facts.installed`), followed by :func:`check_rabbitmq` with the
  installed settings (the consumer's own reading of them).

Modules: ``report`` (Finding, Report, the skip rule, masking), ``bounded`` (time bounds),
``host_checks`` (the host checks' table), ``catalog`` (check-rabbitmq's checks, titles, fixes),
``network`` (names, TCP), ``session`` (the AMQP connection), ``permissions`` (probes and their pure
``interpret``), ``topology`` (exchange, queue, binding, counts, latency), ``rabbitmq`` (the order).

**Nothing is created or changed on the broker unless ``declare=True``.** AMQP 0-9-1 has no
"may I?" query, so the permission and topology checks use requests that RabbitMQ refuses *after*
its permission check and *before* it changes anything (verified on RabbitMQ 3.10, see
``tests/test_diagnostics_rabbitmq.py``):

- configure on an exchange: an active ``exchange.declare`` whose ``alternate-exchange`` argument has
  an invalid type. RabbitMQ checks the configure permission first (403), then either finds the
  exchange and rejects the inequivalent argument, or validates the argument before creating and
  rejects it (406): never created, never changed.
- configure on a queue: the same with ``x-max-length`` set to a string (406 "inequivalent" or
  "invalid arg" after the 403 check).
- exchange type and durability: ``exchange.declare`` passive first (404: absent). Only when it exists
  is it declared actively with the contract's exact arguments: identical means no-op, different
  means 406 PRECONDITION_FAILED ("inequivalent arg 'type' ... current is 'fanout'"), which changes
  nothing. A passive declare alone cannot see the type.
- read on ``orders``: ``basic.consume`` with an ``x-priority`` of the wrong type: 403 without read
  permission, else 404 (no queue) or 406 (invalid argument). No consumer is ever registered, so no
  message is ever delivered.
- write on ``orders``: ``queue.bind`` of ``orders`` to an exchange that does not exist: RabbitMQ
  checks write on the queue first (403), then fails with 404: no binding is made.
- read on ``robot-shop``: ``exchange.bind`` of ``robot-shop`` to ``amq.default``: RabbitMQ checks write
  on the destination (dispatch needs write on ``amq.default`` anyway), then read on ``robot-shop``
  (403), then finds no exchange called ``amq.default`` (the name is reserved: none can exist) and
  fails with 404. Without write on ``amq.default``, made-up queue names are tried instead (so a
  restrictive regex can make this inconclusive: reported as such).
- write on the default exchange (dispatch republishes bad messages to ``orders.invalid`` through it):
  a confirmed publish to a queue name that does not exist; the broker drops it, unroutable.
- the binding ``robot-shop --orders--> orders``: when ``orders`` has no consumer, a probe message is
  published to ``robot-shop`` with key ``orders``, ``mandatory`` and ``expiration=0``, with publisher
  confirms. Unroutable: the broker returns it (not bound). Routed: it reaches ``orders`` with a TTL
  of 0 and no consumer to take it, so RabbitMQ discards it (expired messages are never delivered;
  behind a backlog it is dropped when it reaches the head). With consumers attached, the probe could
  be delivered to them, so it is not sent and the binding is reported as not probed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Tuple

from .. import layout
from ..facts.installed import InstalledState
from ..redact import Redactor
from .catalog import DEFAULT_BUDGET_S
from .report import FAIL, SERVICE_NOT_STARTING, SKIP, Finding, Report, internal_error

__all__ = ["check_host", "check_installed", "check_rabbitmq"]


def __getattr__(name: str) -> Any:
    """check_rabbitmq loads pika (through pikaload, without its asyncio adapter) only when used:
    ``check`` on a host without installed settings never pays for it."""
    if name == "check_rabbitmq":
        from .rabbitmq import check_rabbitmq

        return check_rabbitmq
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_host(
    *,
    service_user: str = layout.SERVICE_USER,
    app_dir: Path = layout.APP_DIR,
    env_file: Optional[Path] = None,
    rabbitmq: bool = True,
    log_lines: int = 10,
    runner: object = None,
    budget: float = DEFAULT_BUDGET_S,
) -> Tuple[Report, Redactor]:
    """Every check of ``dispatchctl check``; returns the report and the redactor for its passwords."""
    from ..facts import installed

    started = time.monotonic()
    try:
        state = installed.read(env_file=env_file, service_user=service_user, app_dir=app_dir, runner=runner,
                               verify_unit=True, journal_lines=log_lines, process=True, telemetry=True)
    except Exception as exc:  # a bug in reading the host: reported, with its traceback, as a finding
        report = Report(findings=[internal_error("installed", "Installed state", exc)])
        report.elapsed_s = time.monotonic() - started
        return report, Redactor(())
    return check_installed(state, rabbitmq=rabbitmq, budget=budget, started=started)


def check_installed(state: InstalledState, *, rabbitmq: bool = True, budget: float = DEFAULT_BUDGET_S,
                    started: Optional[float] = None) -> Tuple[Report, Redactor]:
    """``check`` on facts already read (or recorded): the host checks, then RabbitMQ with the
    installed settings."""
    from .host_checks import host_findings  # check's alone: check-rabbitmq never loads the host checks

    started = time.monotonic() if started is None else started
    report = Report(findings=host_findings(state))
    if rabbitmq:
        _rabbitmq_with_installed(report, state, max(0.5, budget - (time.monotonic() - started)))
    report.elapsed_s = time.monotonic() - started
    return report, Redactor(state.secrets())


def _rabbitmq_with_installed(report: Report, state: InstalledState, budget: float) -> None:
    if state.env_error:
        report.add(Finding("rabbitmq", "RabbitMQ", SKIP, "not checked: no installed AMQP settings"))
        return
    if state.consumer is None or not state.password:
        cause = state.config_error or "no AMQP password"
        report.add(Finding("rabbitmq", "RabbitMQ", FAIL, f"{state.env_file.path}: {cause}",
                           diagnosis="Configuration invalid", cause=cause,
                           fix="dispatchctl configure --amqp-host HOST --amqp-pass-file FILE",
                           issue=SERVICE_NOT_STARTING))
        return
    from .rabbitmq import check_rabbitmq

    for f in check_rabbitmq(state.amqp_settings(), budget=min(DEFAULT_BUDGET_S, budget)).findings:
        f.name = "rabbitmq." + f.name
        f.title = "RabbitMQ: " + f.title
        report.add(f)
