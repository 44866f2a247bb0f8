"""Diagnoses for the on-call engineer: each finding names the cause in plain words and the fix.

Two families of checks live here:

- :func:`check_rabbitmq`: can dispatch, with these settings, reach RabbitMQ and use the contract's
  topology? It runs in order (name, TCP, AMQP handshake, authentication, vhost, permissions,
  exchange, queue, binding, counts, latency) and stops at the first failure that makes the rest
  meaningless. The whole check is bounded in time (a host that drops packets answers in seconds).
- :func:`check_host`: the host side (OS, root, systemd, user, binary, unit, environment file,
  ``User=``, service state, SELinux) followed by :func:`check_rabbitmq` with the installed settings.

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

import contextlib
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .settings import MASK, AmqpSettings, Secret, SettingsError

OK = "ok"
WARN = "warn"
FAIL = "fail"
SKIP = "skip"
STATUSES = (OK, WARN, FAIL, SKIP)

# The manual's "Common issues & fixes" rows (../shared/roboshop-contract.md), by name.
BINARY_NOT_FOUND = "Binary not found"
SERVICE_NOT_STARTING = "Service not starting"
AUTH_FAILURE = "Auth failure"
PERMISSION_DENIED = "Permission denied"
COMMON_ISSUES = (BINARY_NOT_FOUND, SERVICE_NOT_STARTING, AUTH_FAILURE, PERMISSION_DENIED)

DEFAULT_BUDGET_S = 4.0  # the whole check-rabbitmq, so that the command answers within 5 s
RESOLVE_TIMEOUT_S = 1.5
CONNECT_TIMEOUT_S = 1.5
SLOW_RTT_MS = 250.0


@dataclass
class Finding:
    """One check's outcome. ``diagnosis`` is the named problem (empty when ok), ``issue`` the
    manual's common-issue row it is an instance of, if any."""

    name: str
    title: str
    status: str
    summary: str
    diagnosis: str = ""
    cause: str = ""
    fix: str = ""
    issue: str = ""
    data: Dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "title": self.title, "status": self.status, "summary": self.summary,
            "diagnosis": self.diagnosis, "cause": self.cause, "fix": self.fix, "issue": self.issue,
            "data": self.data, "elapsed_ms": round(self.elapsed_ms, 1),
        }


@dataclass
class Report:
    findings: List[Finding] = field(default_factory=list)
    elapsed_s: float = 0.0

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    @property
    def ok(self) -> bool:
        return not any(f.status == FAIL for f in self.findings)

    @property
    def failures(self) -> List[Finding]:
        return [f for f in self.findings if f.status == FAIL]

    @property
    def issues(self) -> List[str]:
        """The manual's common issues found, in order, without repeats."""
        seen: List[str] = []
        for f in self.findings:
            if f.status == FAIL and f.issue and f.issue not in seen:
                seen.append(f.issue)
        return seen

    def get(self, name: str) -> Optional[Finding]:
        return next((f for f in self.findings if f.name == name), None)

    def counts(self) -> Dict[str, int]:
        return {s: sum(1 for f in self.findings if f.status == s) for s in STATUSES}

    def as_dict(self) -> Dict[str, Any]:
        return {
            "ok": self.ok, "counts": self.counts(), "issues": self.issues,
            "elapsed_s": round(self.elapsed_s, 3), "findings": [f.as_dict() for f in self.findings],
        }


def masker(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces every secret (and its URL-encoded form) in a text by ********."""
    from urllib.parse import quote

    values: List[str] = []
    for secret in secrets:
        if not secret:
            continue
        for form in (secret, quote(secret, safe=""), quote(secret)):
            if form and form not in values:
                values.append(form)
    values.sort(key=len, reverse=True)

    def mask(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    return mask


def mask_document(obj: Any, mask: Callable[[str], str]) -> Any:
    """``obj`` (JSON-like) with every string passed through ``mask``."""
    if isinstance(obj, str):
        return mask(obj)
    if isinstance(obj, dict):
        return {k: mask_document(v, mask) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_document(v, mask) for v in obj]
    return obj


class _Clock:
    def __init__(self, budget: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + budget

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def run_bounded(fn: Callable[[], Any], timeout: float) -> Tuple[bool, Any, Optional[BaseException]]:
    """Run ``fn`` in a daemon thread; give up waiting after ``timeout`` s.

    Returns (finished, result, exception). A call that does not finish (a resolver or a broker
    that never answers) is left behind in its daemon thread: it cannot hold up the answer, nor
    the exit of the process.
    """
    box: Dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # reported to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="dispatchctl-bounded", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout))
    if thread.is_alive():
        return False, None, None
    return True, box.get("result"), box.get("error")


# -- settings ----------------------------------------------------------------------------------


def amqp_from_environment(values: Mapping[str, str], *, source: str = "the environment file") -> AmqpSettings:
    """AmqpSettings from the consumer's environment (AMQP_HOST, AMQP_PORT, AMQP_VHOST, AMQP_USER,
    AMQP_PASS), as written to the installed EnvironmentFile. Raises SettingsError naming the key."""
    host = values.get("AMQP_HOST", "")
    if not host.strip():
        raise SettingsError("AMQP_HOST", f"not set in {source}")
    port_text = values.get("AMQP_PORT", "") or "5672"
    try:
        port = int(port_text)
    except ValueError:
        raise SettingsError("AMQP_PORT", f"{port_text!r} in {source} is not a number") from None
    password = values.get("AMQP_PASS")
    return AmqpSettings.build(
        hosts=host, port=port, vhost=values.get("AMQP_VHOST", "") or "/",
        user=values.get("AMQP_USER", "") or "roboshop",
        password=Secret(password) if password else None,
    )


# -- check-rabbitmq ----------------------------------------------------------------------------

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
)
TITLES = dict(RABBIT_CHECKS)


def _finding(name: str, status: str, summary: str, **kw: Any) -> Finding:
    return Finding(name=name, title=TITLES.get(name, name), status=status, summary=summary, **kw)


def _quote_arg(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _permissions_fix(amqp: AmqpSettings) -> str:
    vhost = _quote_arg(amqp.vhost)
    user = _quote_arg(amqp.user)
    return (f"on the RabbitMQ server: rabbitmqctl set_permissions -p {vhost} {user} \".*\" \".*\" \".*\"\n"
            f"(least privilege for dispatch alone: rabbitmqctl set_permissions -p {vhost} {user} "
            "'^(robot-shop|orders|orders\\.invalid)$' '^(orders|amq\\.default)$' '^(orders|robot-shop)$')")


def _auth_fix(amqp: AmqpSettings) -> str:
    user = _quote_arg(amqp.user)
    vhost = _quote_arg(amqp.vhost)
    lines = [
        f"on the RabbitMQ server: rabbitmqctl add_user {user} 'PASSWORD'   "
        f"(or, if the user exists: rabbitmqctl change_password {user} 'PASSWORD')",
        f"then: rabbitmqctl set_permissions -p {vhost} {user} \".*\" \".*\" \".*\"",
        "or correct the password dispatch uses: dispatchctl configure --amqp-host HOST --amqp-pass-file FILE",
    ]
    if amqp.user == "guest":
        lines.insert(0, "the 'guest' user may only log in over loopback: use a dedicated user (roboshop)")
    return "\n".join(lines)


def _host_label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve(host: str, port: int, timeout: float) -> Dict[str, Any]:
    started = time.monotonic()
    finished, result, error = run_bounded(
        lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout)
    out: Dict[str, Any] = {"host": host, "elapsed_ms": (time.monotonic() - started) * 1000}
    if not finished:
        out["error"] = f"the resolver did not answer within {timeout:.1f}s"
        out["timeout"] = True
    elif error is not None:
        out["error"] = (error.strerror or str(error)) if isinstance(error, OSError) else str(error)
    else:
        seen: List[Tuple[int, Tuple[Any, ...]]] = []
        for family, _type, _proto, _canon, sockaddr in result:
            if (family, sockaddr) not in seen:
                seen.append((family, sockaddr))
        out["addresses"] = seen
    return out


def _tcp(addresses: Sequence[Tuple[int, Tuple[Any, ...]]], timeout: float) -> Dict[str, Any]:
    """Connect to each address in turn, within ``timeout`` in total; the first that answers wins."""
    clock = _Clock(timeout)
    errors: List[str] = []
    kinds: List[str] = []
    for family, sockaddr in addresses:
        left = clock.left()
        if left <= 0.05:
            kinds.append("timeout")
            errors.append(f"{sockaddr[0]}: no time left")
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(left)
        started = time.monotonic()
        try:
            sock.connect(sockaddr)
            return {"ok": True, "address": sockaddr[0], "rtt_ms": (time.monotonic() - started) * 1000}
        except socket.timeout:
            kinds.append("timeout")
            errors.append(f"{sockaddr[0]}: no answer within {left:.1f}s")
        except ConnectionRefusedError:
            kinds.append("refused")
            errors.append(f"{sockaddr[0]}: connection refused")
        except OSError as exc:
            kinds.append("unreachable")
            errors.append(f"{sockaddr[0]}: {exc.strerror or exc}")
        finally:
            sock.close()
    kind = "timeout" if "timeout" in kinds else ("refused" if "refused" in kinds else "unreachable")
    return {"ok": False, "kind": kind, "errors": errors}


_CHANNEL_ERROR = re.compile(r"\((\d{3}), ['\"](.*)['\"]\)$", re.S)


def _reply(exc: BaseException) -> Tuple[int, str]:
    """(reply code, reply text) of a pika channel/connection close."""
    code = getattr(exc, "reply_code", None)
    text = getattr(exc, "reply_text", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        text = exc.args[1] if len(exc.args) > 1 else ""
    return int(code or 0), str(text or exc)


class _Broker:
    """The checks that run over one AMQP connection. Each refused request closes its channel, so
    every probe gets a fresh one."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def attempt(self, fn: Callable[[Any], Any]) -> Tuple[int, str, Any]:
        """(0, '', result) when ``fn(channel)`` succeeded, else (reply code, reply text, None)."""
        import pika.exceptions as pe

        channel = self.conn.channel()
        try:
            result = fn(channel)
        except pe.ChannelClosedByBroker as exc:
            code, text = _reply(exc)
            return code, text, None
        if channel.is_open:
            channel.close()
        return 0, "", result


def check_rabbitmq(
    amqp: AmqpSettings,
    *,
    declare: bool = False,
    budget: float = DEFAULT_BUDGET_S,
    resolve_timeout: float = RESOLVE_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
) -> Report:
    """Every check of ``dispatchctl check-rabbitmq``, within ``budget`` seconds."""
    clock = _Clock(budget)
    report = Report()
    try:
        _check_rabbitmq(report, amqp, clock, declare=declare, resolve_timeout=resolve_timeout,
                        connect_timeout=connect_timeout)
    finally:
        report.elapsed_s = clock.elapsed()
    return report


def _skip_rest(report: Report, after: str, reason: str, *, declare: bool) -> None:
    names = [n for n, _ in RABBIT_CHECKS if declare or n != "declare"]
    done = {f.name for f in report.findings}
    for name in names[names.index(after) + 1:]:
        if name not in done:
            report.add(_finding(name, SKIP, f"not checked: {reason}"))


def _check_rabbitmq(report: Report, amqp: AmqpSettings, clock: _Clock, *, declare: bool,
                    resolve_timeout: float, connect_timeout: float) -> None:
    port = amqp.port
    # 1. names, all hosts of a cluster at once
    started = time.monotonic()
    timeout = min(resolve_timeout, clock.left())
    resolved: List[Dict[str, Any]] = []
    threads: List[threading.Thread] = []
    slots: List[Dict[str, Any]] = [{} for _ in amqp.hosts]

    def resolve_into(i: int, host: str) -> None:
        slots[i].update(_resolve(host, port, timeout))

    for i, host in enumerate(amqp.hosts):
        t = threading.Thread(target=resolve_into, args=(i, host), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout + 0.2)
    for i, host in enumerate(amqp.hosts):
        resolved.append(slots[i] or {"host": host, "error": "the resolver did not answer", "timeout": True})
    bad = [r for r in resolved if "error" in r]
    good = [r for r in resolved if "error" not in r]
    data: Dict[str, Any] = {"hosts": {r["host"]: ([a[1][0] for a in r["addresses"]] if "addresses" in r else r["error"])
                      for r in resolved}}
    elapsed = (time.monotonic() - started) * 1000
    names = ", ".join(amqp.hosts)
    if not good:
        detail = "; ".join(f"{r['host']}: {r['error']}" for r in bad)
        report.add(_finding(
            "resolve", FAIL, detail, diagnosis="Name does not resolve: verify AMQP_HOST",
            cause=(f"AMQP_HOST {names} has no address (no DNS or /etc/hosts entry, a typo, or a resolver "
                   "that does not answer): dispatch cannot find RabbitMQ"),
            fix=("verify AMQP_HOST: use the RabbitMQ server's IP or a name this host resolves "
                 "(check with: getent hosts NAME); to change it: dispatchctl configure --amqp-host IP"),
            issue=SERVICE_NOT_STARTING, data=data, elapsed_ms=elapsed))
        _skip_rest(report, "resolve", "the name does not resolve", declare=declare)
        return
    if bad:
        report.add(_finding(
            "resolve", WARN, "; ".join(f"{r['host']}: {r['error']}" for r in bad)
            + f" (resolved: {', '.join(r['host'] for r in good)})",
            diagnosis="A cluster member does not resolve",
            cause="dispatch skips the members it cannot resolve; the cluster has less redundancy",
            fix="correct or remove the name in AMQP_HOST (dispatchctl configure --amqp-host ...)",
            data=data, elapsed_ms=elapsed))
    else:
        shown = "; ".join(f"{r['host']} -> {', '.join(dict.fromkeys(a[1][0] for a in r['addresses']))}"
                          for r in good)
        report.add(_finding("resolve", OK, shown, data=data, elapsed_ms=elapsed))

    # 2. TCP, every resolved host at once; the first (in AMQP_HOST order) that answers is used
    started = time.monotonic()
    timeout = min(connect_timeout, clock.left())
    tcp_slots: List[Dict[str, Any]] = [{} for _ in good]

    def connect_into(i: int, addresses: Sequence[Tuple[int, Tuple[Any, ...]]]) -> None:
        tcp_slots[i].update(_tcp(addresses, timeout))

    threads = []
    for i, r in enumerate(good):
        t = threading.Thread(target=connect_into, args=(i, r["addresses"]), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout + 0.3)
    elapsed = (time.monotonic() - started) * 1000
    tcp = [dict(slot or {"ok": False, "kind": "timeout", "errors": ["no answer"]}, host=r["host"])
           for slot, r in zip(tcp_slots, good)]
    reachable = [t for t in tcp if t["ok"]]
    data = {"port": port, "hosts": {t["host"]: ("open" if t["ok"] else t["kind"]) for t in tcp}}
    if not reachable:
        kinds = {t["kind"] for t in tcp}
        detail = "; ".join(e for t in tcp for e in t["errors"])
        where = ", ".join(_host_label(t["host"], port) for t in tcp)
        if kinds == {"refused"}:
            diagnosis = "Service not starting: wrong RabbitMQ IP — verify AMQP_HOST"
            cause = (f"nothing listens on {where} (connection refused): AMQP_HOST points at a host that "
                     "is not the RabbitMQ server, the port is wrong, or RabbitMQ is stopped")
            fix = ("verify AMQP_HOST and AMQP_PORT (5672) name the RabbitMQ server: "
                   "dispatchctl configure --amqp-host IP; on the broker: systemctl status rabbitmq-server")
        elif "timeout" in kinds:
            diagnosis = "Service not starting: RabbitMQ does not answer — verify AMQP_HOST and the firewall"
            cause = (f"no answer from {where} within {timeout:.1f}s: packets are dropped on the way (a "
                     "firewall or security group), or AMQP_HOST is an address nobody answers at")
            fix = ("verify AMQP_HOST (dispatchctl configure --amqp-host IP) and open 5672/tcp on the broker: "
                   "firewall-cmd --permanent --add-port=5672/tcp && firewall-cmd --reload "
                   "(and the cloud security group)")
        else:
            diagnosis = "Service not starting: no route to RabbitMQ — verify AMQP_HOST"
            cause = f"{where} is unreachable from this host ({detail})"
            fix = "verify AMQP_HOST and this host's network (ip route get ADDRESS)"
        report.add(_finding("tcp", FAIL, detail, diagnosis=diagnosis, cause=cause, fix=fix,
                            issue=SERVICE_NOT_STARTING, data=data, elapsed_ms=elapsed))
        _skip_rest(report, "tcp", "the port is not reachable", declare=declare)
        return
    target = reachable[0]
    rtt = f"connected to {_host_label(target['address'], port)} in {target['rtt_ms']:.1f} ms"
    if len(reachable) < len(tcp):
        down = [t for t in tcp if not t["ok"]]
        report.add(_finding(
            "tcp", WARN, rtt + "; unreachable: " + "; ".join(e for t in down for e in t["errors"]),
            diagnosis="A cluster member is unreachable",
            cause="dispatch fails over to the members that answer; the cluster has less redundancy",
            fix="check RabbitMQ on the unreachable members, or remove them from AMQP_HOST",
            data=data, elapsed_ms=elapsed))
    else:
        report.add(_finding("tcp", OK, rtt, data=data, elapsed_ms=elapsed))

    # 3.. AMQP, in a worker so that a broker that stops answering cannot hold up the answer
    progress: Dict[str, str] = {"step": "handshake"}
    findings: List[Finding] = []
    finished, _, error = run_bounded(
        lambda: _amqp_checks(findings, progress, amqp, target["address"], target["host"], clock, declare),
        clock.left())
    for f in list(findings):
        report.add(f)
    if not finished or error is not None:
        step = progress["step"]
        done = {f.name for f in report.findings}
        if step in done:  # stalled right after reporting it: blame the next check
            step = next((n for n, _ in RABBIT_CHECKS if n not in done and (declare or n != "declare")), "latency")
        if step == "handshake":
            summary = (f"{_host_label(target['address'], port)} accepted the TCP connection but the AMQP "
                       f"handshake did not complete within {clock.elapsed():.1f}s")
            if isinstance(error, _Handshake):
                summary = str(error)
            elif error is not None:
                summary = f"{_host_label(target['address'], port)}: {type(error).__name__}: {error}"
            report.add(_finding(
                "handshake", FAIL, summary, diagnosis="AMQP handshake failed",
                cause=("the port answers TCP but not as RabbitMQ: another service, a TLS-only port, or a broker "
                       "still booting or overloaded"),
                fix="verify AMQP_HOST and AMQP_PORT (5672 is RabbitMQ's plain AMQP port); on the broker: "
                    "rabbitmq-diagnostics check_port_connectivity",
                issue=SERVICE_NOT_STARTING))
            _skip_rest(report, "handshake", "no AMQP session", declare=declare)
        else:
            what = "stopped answering" if not finished else f"failed: {type(error).__name__}: {error}"
            report.add(_finding(
                step, FAIL, f"the broker {what} during this check (after {clock.elapsed():.1f}s)",
                diagnosis="RabbitMQ stopped answering",
                cause="the connection stalled or broke mid-check: broker overloaded, blocked (memory or disk "
                      "alarm), or the network started dropping packets",
                fix="on the broker: rabbitmq-diagnostics status; rabbitmqctl list_connections; then re-run"))
            _skip_rest(report, step, "the broker stopped answering", declare=declare)


def _amqp_checks(out: List[Finding], progress: Dict[str, str], amqp: AmqpSettings, address: str,
                 host: str, clock: _Clock, declare: bool) -> None:
    from .pikaload import load

    pika = load()
    import pika.exceptions as pe

    from . import amqp as contract

    label = _host_label(address, amqp.port)
    timeout = max(0.2, min(CONNECT_TIMEOUT_S, clock.left() / 2))
    params = contract.parameters([address], amqp.port, amqp.vhost, amqp.user, amqp.password.reveal(),
                                 heartbeat=0, socket_timeout=timeout, blocked_connection_timeout=None,
                                 client_name="dispatchctl check-rabbitmq")
    started = time.monotonic()
    try:
        conn = pika.BlockingConnection(params[0])
    except pe.ProbableAuthenticationError as exc:
        text = str(exc)
        out.append(_finding("handshake", OK, f"{label} speaks AMQP 0-9-1"))
        out.append(_finding(
            "auth", FAIL, f"RabbitMQ refused the login of user '{amqp.user}': ACCESS_REFUSED",
            diagnosis="Auth failure: check AMQP user/pass",
            cause=(f"the user '{amqp.user}' does not exist on the broker or its password differs from the "
                   "one configured (AMQP_USER/AMQP_PASS)"),
            fix=_auth_fix(amqp), issue=AUTH_FAILURE,
            data={"reply": _scrub(text)}, elapsed_ms=(time.monotonic() - started) * 1000))
        _skip_list(out, "auth", "the login was refused", declare)
        return
    except pe.ProbableAccessDeniedError as exc:
        text = str(exc)
        out.append(_finding("handshake", OK, f"{label} speaks AMQP 0-9-1"))
        out.append(_finding("auth", OK, f"user '{amqp.user}' logged in"))
        missing = "not found" in text
        vhost = _quote_arg(amqp.vhost)
        user = _quote_arg(amqp.user)
        out.append(_finding(
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
            data={"reply": _scrub(text)}, elapsed_ms=(time.monotonic() - started) * 1000))
        _skip_list(out, "vhost", "no access to the vhost", declare)
        return
    except pe.IncompatibleProtocolError as exc:
        raise _Handshake(f"{label} accepted the connection but did not speak AMQP 0-9-1 ({exc})") from None
    except pe.ConnectionClosedByBroker as exc:
        code, text = _reply(exc)
        raise _Handshake(f"{label} closed the connection during the handshake: {code} {text}") from None
    except (pe.AMQPError, OSError, Exception) as exc:  # stack timeout, stream lost...
        raise _Handshake(f"{label}: AMQP handshake failed: {type(exc).__name__}: {exc}") from None
    try:
        connect_ms = (time.monotonic() - started) * 1000
        server = conn._impl.server_properties or {}
        version = server.get("version", b"")
        version = version.decode() if isinstance(version, bytes) else str(version)
        out.append(_finding("handshake", OK, f"{label}: RabbitMQ {version}".rstrip(),
                            data={"server_version": version}, elapsed_ms=connect_ms))
        out.append(_finding("auth", OK, f"user '{amqp.user}' logged in"))
        out.append(_finding("vhost", OK, f"vhost '{amqp.vhost}' open", elapsed_ms=connect_ms))
        _topology_checks(out, progress, _Broker(conn), amqp, declare)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


class _Handshake(RuntimeError):
    pass


def _scrub(text: str) -> str:
    return text.replace("\n", " ")[:300]


def _skip_list(out: List[Finding], after: str, reason: str, declare: bool) -> None:
    names = [n for n, _ in RABBIT_CHECKS if declare or n != "declare"]
    for name in names[names.index(after) + 1:]:
        out.append(_finding(name, SKIP, f"not checked: {reason}"))


def _topology_checks(out: List[Finding], progress: Dict[str, str], broker: _Broker, amqp: AmqpSettings,
                     declare: bool) -> None:
    import pika
    import pika.exceptions as pe

    from . import amqp as contract

    vhost_q = _quote_arg(amqp.vhost)

    # --declare: the contract's topology, exactly, before anything is checked
    if declare:
        progress["step"] = "declare"
        started = time.monotonic()
        code, text, _ = broker.attempt(contract.declare_topology)
        elapsed = (time.monotonic() - started) * 1000
        if code == 0:
            out.append(_finding("declare", OK, f"declared exchange {contract.EXCHANGE} (durable direct), queues "
                                f"{contract.QUEUE} and {contract.QUARANTINE_QUEUE} (durable), binding "
                                f"{contract.EXCHANGE} --{contract.ROUTING_KEY}--> {contract.QUEUE}",
                                elapsed_ms=elapsed))
        else:
            out.append(_finding(
                "declare", FAIL, f"the broker refused: {code} {_scrub(text)}",
                diagnosis="Cannot declare the topology",
                cause=("an existing exchange or queue has other properties than the contract (406), or the user "
                       "lacks permissions (403); nothing was deleted or changed"),
                fix="see the checks below for which resource differs and how to fix it",
                data={"reply_code": code}, elapsed_ms=elapsed))

    # permissions dispatch needs, each with a request refused after the permission check
    progress["step"] = "permissions"
    started = time.monotonic()
    perms: List[Dict[str, str]] = []

    def record(perm: str, resource: str, kind: str, code: int, text: str, expect: Tuple[int, ...],
               checked_first: bool = False) -> None:
        """``checked_first``: RabbitMQ checks this permission before any other the request needs,
        so a 403 about another resource means this one was granted."""
        if code == 403 and f"{kind} '{resource}'" in text:
            result = "denied"
        elif code in expect or (code == 403 and checked_first):
            result = "granted"
        elif code == 403:
            result = "unknown"
        else:
            result = f"unexpected {code}"
        perms.append({"permission": perm, "resource": resource, "kind": kind, "result": result,
                      "reply": "" if result == "granted" else _scrub(text)})

    def configure_exchange(ch: Any) -> None:
        ch.exchange_declare(exchange=contract.EXCHANGE, exchange_type=contract.EXCHANGE_TYPE, durable=True,
                            arguments={"alternate-exchange": 0})

    code, text, _ = broker.attempt(configure_exchange)
    if code == 0:  # a broker that accepted an invalid argument: it created or matched; say so
        raise RuntimeError("the broker accepted an invalid alternate-exchange argument")
    record("configure", contract.EXCHANGE, "exchange", code, text, (406,))

    for queue in (contract.QUEUE, contract.QUARANTINE_QUEUE):
        def configure_queue(ch: Any, q: str = queue) -> None:
            ch.queue_declare(queue=q, durable=True, arguments={"x-max-length": "invalid"})

        code, text, _ = broker.attempt(configure_queue)
        if code == 0:
            raise RuntimeError("the broker accepted an invalid x-max-length argument")
        record("configure", queue, "queue", code, text, (406,))

    code, text, _ = broker.attempt(lambda ch: ch.queue_bind(
        queue=contract.QUEUE, exchange=f"dispatchctl.no-such-exchange.{uuid.uuid4().hex}",
        routing_key=contract.ROUTING_KEY))
    record("write", contract.QUEUE, "queue", code, text, (404,), checked_first=True)

    # read on robot-shop: a bind checks write on the destination first, then read on the source.
    # First an exchange-to-exchange bind to "amq.default" (dispatch needs write on that name, and no
    # exchange can be called so: "amq." names are reserved, so the bind ends in 404), then queue
    # binds of made-up queues whose names a restrictive regex may match.
    def bind_to_default(ch: Any) -> None:
        ch.exchange_bind(destination="amq.default", source=contract.EXCHANGE, routing_key=contract.ROUTING_KEY)

    code, text, _ = broker.attempt(bind_to_default)
    if code == 403 and "exchange 'amq.default'" in text:
        for fake in (f"dispatchctl.probe.{uuid.uuid4().hex}", f"{contract.QUEUE}.dispatchctl-probe-{uuid.uuid4().hex}"):
            def bind_fake(ch: Any, q: str = fake) -> None:
                ch.queue_bind(queue=q, exchange=contract.EXCHANGE, routing_key=contract.ROUTING_KEY)

            code, text, _ = broker.attempt(bind_fake)
            if not (code == 403 and f"queue '{fake}'" in text):
                break
    record("read", contract.EXCHANGE, "exchange", code, text, (404,))
    if perms[-1]["result"] == "unknown":
        perms[-1]["reply"] = "not determined: the user may not write to any made-up queue name used to test it"

    def consume_probe(ch: Any) -> None:
        ch.basic_consume(queue=contract.QUEUE, on_message_callback=lambda *a: None,
                         arguments={"x-priority": "invalid"})

    code, text, _ = broker.attempt(consume_probe)
    if code == 0:
        raise RuntimeError("the broker accepted an invalid x-priority argument")
    record("read", contract.QUEUE, "queue", code, text, (404, 406))

    def publish_default(ch: Any) -> None:
        ch.confirm_delivery()
        ch.basic_publish(exchange="", routing_key=f"dispatchctl.no-such-queue.{uuid.uuid4().hex}", body=b"")

    code, text, _ = broker.attempt(publish_default)
    record("write", "amq.default", "exchange", code, text, (0,))

    denied = [p for p in perms if p["result"] == "denied"]
    unknown = [p for p in perms if p["result"] != "denied" and p["result"] != "granted"]
    summary_of = lambda ps: ", ".join(f"{p['permission']} on {p['kind']} '{p['resource']}'" for p in ps)  # noqa: E731
    elapsed = (time.monotonic() - started) * 1000
    if denied:
        out.append(_finding(
            "permissions", FAIL, f"user '{amqp.user}' lacks {summary_of(denied)}",
            diagnosis="RabbitMQ permissions missing",
            cause=(f"the user '{amqp.user}' lacks {summary_of(denied)} in vhost '{amqp.vhost}': dispatch's declare, "
                   "bind, consume or quarantine publish fails with 403 ACCESS_REFUSED"),
            fix=_permissions_fix(amqp), data={"permissions": perms}, elapsed_ms=elapsed))
    elif unknown:
        out.append(_finding(
            "permissions", WARN, f"granted except not determined: {summary_of(unknown)}",
            diagnosis="Some permissions could not be verified",
            cause="; ".join(p["reply"] for p in unknown),
            fix=_permissions_fix(amqp), data={"permissions": perms}, elapsed_ms=elapsed))
    else:
        out.append(_finding("permissions", OK, "configure robot-shop, orders, orders.invalid; write orders, "
                            "amq.default; read orders, robot-shop", data={"permissions": perms},
                            elapsed_ms=elapsed))
    can_configure = {p["resource"] for p in perms if p["permission"] == "configure" and p["result"] == "granted"}

    # the exchange: exists? then compare by an identical active declare (a no-op when it matches)
    progress["step"] = "exchange"
    started = time.monotonic()
    code, text, _ = broker.attempt(lambda ch: ch.exchange_declare(exchange=contract.EXCHANGE, passive=True))
    exchange_ok = False
    exchange_exists = code == 0
    if code == 404:
        out.append(_finding(
            "exchange", WARN, f"exchange '{contract.EXCHANGE}' does not exist",
            diagnosis="Exchange robot-shop missing",
            cause="nothing has declared it yet: payment declares it when it first publishes, dispatch when it starts",
            fix="start dispatch (systemctl start dispatch), or: dispatchctl check-rabbitmq --declare",
            elapsed_ms=(time.monotonic() - started) * 1000))
    elif code != 0:
        out.append(_finding("exchange", FAIL, f"passive declare refused: {code} {_scrub(text)}",
                            diagnosis="Exchange robot-shop cannot be inspected", cause=_scrub(text),
                            fix=_permissions_fix(amqp)))
    elif contract.EXCHANGE not in can_configure:
        out.append(_finding(
            "exchange", WARN, f"exchange '{contract.EXCHANGE}' exists; its type and durability cannot be compared "
            "without configure permission on it", diagnosis="Exchange robot-shop not verified",
            cause="comparing needs a declare, which needs the configure permission", fix=_permissions_fix(amqp),
            elapsed_ms=(time.monotonic() - started) * 1000))
    else:
        code, text, _ = broker.attempt(contract.declare_exchange)
        elapsed = (time.monotonic() - started) * 1000
        if code == 0:
            exchange_ok = True
            out.append(_finding("exchange", OK, f"'{contract.EXCHANGE}' exists: durable {contract.EXCHANGE_TYPE}, "
                                "not auto-delete, not internal, no arguments", elapsed_ms=elapsed))
        elif code == 406:
            m = re.search(r"inequivalent arg '([^']+)'.*?received '([^']*)' but current is '([^']*)'", text)
            what = (f"its {m.group(1)} is '{m.group(3)}', the contract needs '{m.group(2)}'" if m
                    else _scrub(text))
            found = {"arg": m.group(1), "current": m.group(3), "expected": m.group(2)} if m else {}
            out.append(_finding(
                "exchange", FAIL, f"'{contract.EXCHANGE}' exists but {what} (406 PRECONDITION_FAILED; nothing changed)",
                diagnosis="Exchange robot-shop has the wrong type or properties",
                cause=(f"'{contract.EXCHANGE}' was declared by hand or by another tool as {what}; every declare by "
                       "dispatch and by payment now fails with 406 PRECONDITION_FAILED, so no order flows"),
                fix=(f"stop payment and dispatch, delete the exchange (rabbitmqadmin -V {vhost_q} delete exchange "
                     f"name={contract.EXCHANGE}, or the management UI), then: dispatchctl check-rabbitmq --declare "
                     "(a durable direct exchange, per the contract) and start them again"),
                data=found, elapsed_ms=elapsed))
        else:
            out.append(_finding("exchange", FAIL, f"declare refused: {code} {_scrub(text)}",
                                diagnosis="Exchange robot-shop cannot be verified", cause=_scrub(text),
                                fix=_permissions_fix(amqp), elapsed_ms=elapsed))

    # the queue: counts from a passive declare, then an identical active declare to compare
    progress["step"] = "queue"
    started = time.monotonic()
    code, text, ok = broker.attempt(lambda ch: ch.queue_declare(queue=contract.QUEUE, passive=True))
    counts: Optional[Tuple[int, int]] = None
    if code == 0:
        counts = (ok.method.message_count, ok.method.consumer_count)
    if code == 404:
        out.append(_finding(
            "queue", FAIL, f"queue '{contract.QUEUE}' does not exist: orders published now are dropped",
            diagnosis="Queue orders missing: orders published now are dropped",
            cause=("payment declares only the exchange; until dispatch (or --declare) declares and binds "
                   f"'{contract.QUEUE}', every order payment publishes is unroutable and silently dropped"),
            fix="start dispatch (it declares and binds the queue on connect), or: dispatchctl check-rabbitmq --declare",
            elapsed_ms=(time.monotonic() - started) * 1000))
    elif code != 0:
        out.append(_finding("queue", FAIL, f"passive declare refused: {code} {_scrub(text)}",
                            diagnosis="Queue orders cannot be inspected", cause=_scrub(text),
                            fix=_permissions_fix(amqp)))
    elif contract.QUEUE not in can_configure:
        out.append(_finding(
            "queue", WARN, f"'{contract.QUEUE}' exists; its properties cannot be compared without configure "
            "permission on it", diagnosis="Queue orders not verified",
            cause="comparing needs a declare, which needs the configure permission", fix=_permissions_fix(amqp),
            elapsed_ms=(time.monotonic() - started) * 1000))
    else:
        def compare_queue(ch: Any) -> Any:
            contract.declare_queue(ch)  # the contract's exact declare: a no-op when it matches
            return ch.queue_declare(queue=contract.QUEUE, passive=True)

        code, text, ok = broker.attempt(compare_queue)
        elapsed = (time.monotonic() - started) * 1000
        if code == 0:
            counts = (ok.method.message_count, ok.method.consumer_count)
            out.append(_finding("queue", OK, f"'{contract.QUEUE}' exists: durable, not exclusive, not auto-delete, "
                                "no arguments", elapsed_ms=elapsed))
        elif code == 406:
            out.append(_finding(
                "queue", FAIL, f"'{contract.QUEUE}' exists with other properties: {_scrub(text)} (nothing changed)",
                diagnosis="Queue orders declared differently from the contract",
                cause=(f"'{contract.QUEUE}' has arguments or flags the contract does not have (it must be durable, "
                       "with no x-arguments): dispatch's declare fails with 406 PRECONDITION_FAILED"),
                fix=(f"drain it, delete it (rabbitmqctl delete_queue -p {vhost_q} {contract.QUEUE}), then "
                     "dispatchctl check-rabbitmq --declare"), elapsed_ms=elapsed))
        elif code == 405:
            out.append(_finding(
                "queue", FAIL, f"'{contract.QUEUE}' is an exclusive queue of another connection (405 RESOURCE_LOCKED)",
                diagnosis="Queue orders locked by another connection",
                cause="another client declared it exclusive: dispatch cannot use it",
                fix="stop that client (rabbitmqctl list_queues -p VHOST name owner_pid exclusive)",
                elapsed_ms=elapsed))
        else:
            out.append(_finding("queue", FAIL, f"declare refused: {code} {_scrub(text)}",
                                diagnosis="Queue orders cannot be verified", cause=_scrub(text),
                                fix=_permissions_fix(amqp), elapsed_ms=elapsed))

    # the binding: a mandatory, expiration-0 probe, only when nobody consumes orders
    progress["step"] = "binding"
    started = time.monotonic()
    if counts is None:
        out.append(_finding("binding", SKIP, f"not checked: queue '{contract.QUEUE}' is missing or not readable"))
    elif not exchange_exists:
        out.append(_finding(
            "binding", FAIL, f"'{contract.EXCHANGE}' does not exist, so '{contract.QUEUE}' is not bound to it",
            diagnosis="Queue orders not bound: orders published now are dropped",
            cause="without the exchange and the binding, payment's orders cannot reach the queue",
            fix="start dispatch (it declares and binds on connect), or: dispatchctl check-rabbitmq --declare"))
    elif counts[1] > 0:
        out.append(_finding(
            "binding", OK, f"not probed: '{contract.QUEUE}' has {counts[1]} consumer(s), which a probe message "
            "would reach (dispatch binds the queue every time it connects)", data={"probed": False}))
    elif not exchange_ok:
        out.append(_finding("binding", SKIP, f"not probed: exchange '{contract.EXCHANGE}' is not verified as a "
                            "direct exchange, so routing by key cannot be tested"))
    else:
        def probe(ch: Any) -> str:
            ch.confirm_delivery()
            try:
                ch.basic_publish(
                    exchange=contract.EXCHANGE, routing_key=contract.ROUTING_KEY, body=b"",
                    properties=pika.BasicProperties(expiration="0", type="dispatchctl.probe",
                                                    headers={"x-dispatchctl-probe": "binding"}),
                    mandatory=True)
            except pe.UnroutableError:
                return "unroutable"
            return "routed"

        code, text, result = broker.attempt(probe)
        elapsed = (time.monotonic() - started) * 1000
        if code == 403:
            out.append(_finding(
                "binding", WARN, f"not probed: no write permission on '{contract.EXCHANGE}' for the probe "
                "(payment needs it to publish orders)", diagnosis="Binding not verified",
                cause=_scrub(text), fix=_permissions_fix(amqp), elapsed_ms=elapsed))
        elif code != 0:
            out.append(_finding("binding", FAIL, f"probe refused: {code} {_scrub(text)}",
                                diagnosis="Binding not verified", cause=_scrub(text), fix="", elapsed_ms=elapsed))
        elif result == "unroutable":
            out.append(_finding(
                "binding", FAIL, f"'{contract.EXCHANGE}' does not route key '{contract.ROUTING_KEY}' to any queue: "
                "orders published now are dropped",
                diagnosis="Queue orders not bound: orders published now are dropped",
                cause=(f"'{contract.QUEUE}' exists but is not bound to '{contract.EXCHANGE}' with key "
                       f"'{contract.ROUTING_KEY}': payment's orders are unroutable and silently dropped"),
                fix="start dispatch (it binds on connect), or: dispatchctl check-rabbitmq --declare",
                data={"probed": True}, elapsed_ms=elapsed))
        else:
            out.append(_finding("binding", OK, f"'{contract.EXCHANGE}' routes key '{contract.ROUTING_KEY}' "
                                "(probe with expiration 0 and no consumer: discarded by the broker)",
                                data={"probed": True}, elapsed_ms=elapsed))

    # counts
    progress["step"] = "counts"
    if counts is None:
        out.append(_finding("counts", SKIP, f"not checked: queue '{contract.QUEUE}' is missing"))
    else:
        messages, consumers = counts
        data: Dict[str, Any] = {"messages": messages, "consumers": consumers}
        if consumers == 0:
            out.append(_finding(
                "counts", WARN, f"{messages} message(s) waiting, no consumer",
                diagnosis="No consumer on orders: dispatch is not connected",
                cause=("dispatch is not running or cannot reach this broker/vhost: orders accumulate "
                       f"({messages} waiting)"),
                fix="dispatchctl status; dispatchctl check (on the dispatch host)", data=data))
        else:
            out.append(_finding("counts", OK, f"{messages} message(s) waiting, {consumers} consumer(s)", data=data))

    # round-trip latency: three synchronous RPCs on one channel
    progress["step"] = "latency"
    samples: List[float] = []
    ch = broker.conn.channel()
    try:
        for _ in range(3):
            t0 = time.monotonic()
            ch.basic_qos(prefetch_count=0)
            samples.append((time.monotonic() - t0) * 1000)
    finally:
        if ch.is_open:
            ch.close()
    samples.sort()
    median = samples[len(samples) // 2]
    data = {"median_ms": round(median, 2), "samples_ms": [round(s, 2) for s in samples]}
    if median > SLOW_RTT_MS:
        out.append(_finding("latency", WARN, f"{median:.1f} ms per round trip",
                            diagnosis="Slow broker", cause="the broker or the network is slow: dispatch's acks lag",
                            fix="check the broker's load (rabbitmq-diagnostics status) and the network path",
                            data=data))
    else:
        out.append(_finding("latency", OK, f"{median:.2f} ms per round trip (median of 3)", data=data))
    progress["step"] = "done"


# -- the host ----------------------------------------------------------------------------------

UNIT_PROPERTIES = (
    "LoadState", "ActiveState", "SubState", "Result", "UnitFileState", "MainPID", "NRestarts", "User",
    "ExecStart", "EnvironmentFiles", "FragmentPath", "Type", "ExecMainStatus", "ExecMainCode",
)


def exec_argv(exec_start: str) -> List[str]:
    """The argv of ``systemctl show -p ExecStart`` (``{ path=... ; argv[]=... ; ... }``)."""
    m = re.search(r"argv\[\]=([^;]*)", exec_start)
    if m:
        return m.group(1).split()
    return exec_start.split()


def binary_from_unit(props: Mapping[str, str], default: Path) -> Path:
    """The dispatch program the unit runs: the ExecStart argument named ``dispatch`` (the bundled
    flavour runs ``python3 /app/dispatch``, the go flavour ``/app/dispatch``), else ``default``."""
    argv = exec_argv(props.get("ExecStart", ""))
    for arg in argv:
        if Path(arg).name == "dispatch":
            return Path(arg)
    return default


def env_file_from_unit(props: Mapping[str, str], default: Path) -> Path:
    value = props.get("EnvironmentFiles", "").strip()
    if value:
        return Path(value.split(" (", 1)[0].lstrip("-"))
    return default


def flavour_of(path: Path) -> Optional[str]:
    """``go`` (an ELF executable), ``bundled`` (a zipapp: ``#!`` or zip magic) or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    if head == b"\x7fELF":
        return "go"
    if head.startswith(b"#!") or head.startswith(b"PK"):
        return "bundled"
    return "unknown"


def read_env_file(path: Path) -> Dict[str, str]:
    from . import envfile

    return envfile.parse(path.read_text(encoding="utf-8"))


def _can_access(path: Path, user: str, want: int) -> Optional[bool]:
    """Whether ``user`` has the ``want`` bits (4 read, 1 exec) on ``path`` (None: unknown user)."""
    import grp
    import pwd
    import stat as st

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    if pw.pw_uid == 0:
        return True
    try:
        info = path.stat()
    except OSError:
        return False
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if info.st_uid == pw.pw_uid:
        bits = (info.st_mode >> 6) & 7
    elif info.st_gid in groups:
        bits = (info.st_mode >> 3) & 7
    else:
        bits = info.st_mode & 7
    if not st.S_ISREG(info.st_mode):
        return False
    return bits & want == want


def _host_finding(name: str, title: str, status: str, summary: str, **kw: Any) -> Finding:
    return Finding(name=name, title=title, status=status, summary=summary, **kw)


def check_host(
    *,
    service_user: str = "roboshop",
    app_dir: Path = Path("/app"),
    env_file: Optional[Path] = None,
    rabbitmq: bool = True,
    log_lines: int = 10,
    runner: Any = None,
    budget: float = DEFAULT_BUDGET_S,
) -> Tuple[Report, Callable[[str], str]]:
    """Every check of ``dispatchctl check``; returns the report and the masker for its password."""
    import pwd

    from .host import HostFacts, Runner
    from .settings import ENV_FILE
    from .systemd import Systemd

    started = time.monotonic()
    report = Report()
    mask: Callable[[str], str] = masker(())
    facts = HostFacts.gather()
    runner = runner or Runner(timeout=30)
    systemd = Systemd(runner)

    # OS family
    if facts.family is None:
        report.add(_host_finding(
            "os", "Supported OS", FAIL, f"{facts.os_name or facts.os_id or 'unknown OS'} is not supported",
            diagnosis="Unsupported OS", cause="dispatchctl supports the RHEL family (dnf) and Debian family (apt-get)",
            fix="run dispatch on RHEL 9 or a RHEL-compatible host (Rocky, Alma, CentOS Stream)"))
    else:
        report.add(_host_finding("os", "Supported OS", OK, f"{facts.os_name or facts.os_id} ({facts.family} family)"))

    # root
    if facts.is_root:
        report.add(_host_finding("root", "Running as root", OK, "yes"))
    else:
        report.add(_host_finding(
            "root", "Running as root", FAIL, "no: the environment file (mode 0600) and the service cannot be checked",
            diagnosis="Not root", cause="the checks read root-only files", fix="sudo dispatchctl check"))

    # systemd
    if facts.systemd_pid1:
        report.add(_host_finding("systemd", "systemd is PID 1", OK, "yes"))
    else:
        report.add(_host_finding(
            "systemd", "systemd is PID 1", FAIL, "no /run/systemd/system: this host is not booted with systemd",
            diagnosis="No systemd", cause="dispatch runs as a systemd service",
            fix="run dispatch on a host booted with systemd"))

    props: Dict[str, str] = systemd.show(UNIT_PROPERTIES) if facts.systemd_pid1 else {}
    installed = props.get("LoadState", "") not in ("", "not-found")

    # the service user
    try:
        pw = pwd.getpwnam(service_user)
        report.add(_host_finding("user", "Service user", OK, f"{service_user} (uid {pw.pw_uid}, shell {pw.pw_shell})"))
    except KeyError:
        report.add(_host_finding(
            "user", "Service user", FAIL, f"user '{service_user}' does not exist",
            diagnosis="Service user missing", cause="the unit's User= cannot be resolved: systemd refuses to start it",
            fix=f"dispatchctl install ... (creates it), or: useradd --system --shell /sbin/nologin {service_user}",
            issue=PERMISSION_DENIED))

    # the binary
    binary = binary_from_unit(props, app_dir / "dispatch")
    flavour = flavour_of(binary)
    if not binary.exists():
        report.add(_host_finding(
            "binary", "Binary", FAIL, f"{binary} does not exist", diagnosis="Binary not found: run the build",
            cause=f"the build was not run (or {binary} was removed): ExecStart fails with 203/EXEC",
            fix="dispatchctl build   (or the whole procedure: dispatchctl install --amqp-host HOST)",
            issue=BINARY_NOT_FOUND, data={"path": str(binary)}))
    elif not binary.is_file() or not os.stat(binary).st_mode & 0o111:
        report.add(_host_finding(
            "binary", "Binary", FAIL, f"{binary} is not an executable file",
            diagnosis="Binary not found: run the build",
            cause=f"{binary} exists but is not executable: systemd cannot run it", fix="dispatchctl build",
            issue=BINARY_NOT_FOUND, data={"path": str(binary)}))
    else:
        argv = exec_argv(props.get("ExecStart", ""))
        interpreter = Path(argv[0]) if argv and Path(argv[0]) != binary else None
        readable = _can_access(binary, service_user, 4 if interpreter else 5)
        if interpreter is not None and not interpreter.exists():
            report.add(_host_finding(
                "binary", "Binary", FAIL, f"{binary} is there but its interpreter {interpreter} is not",
                diagnosis="Binary not found: the interpreter is missing",
                cause=f"ExecStart runs {interpreter}, which is not installed",
                fix="dispatchctl install (packages step)",
                issue=BINARY_NOT_FOUND, data={"path": str(binary)}))
        elif readable is False:
            report.add(_host_finding(
                "binary", "Binary", FAIL, f"user '{service_user}' cannot read/execute {binary}",
                diagnosis="Permission denied: the service user cannot run the binary",
                cause=f"{binary}'s owner or mode keeps '{service_user}' out", fix="dispatchctl build (mode 0755)",
                issue=PERMISSION_DENIED, data={"path": str(binary)}))
        else:
            report.add(_host_finding("binary", "Binary", OK, f"{binary} ({flavour or 'unknown'} flavour)",
                                     data={"path": str(binary), "flavour": flavour}))

    # the unit
    unit_path = Path(props.get("FragmentPath") or "/etc/systemd/system/dispatch.service")
    if not facts.systemd_pid1 and not unit_path.exists():
        report.add(_host_finding("unit", "Unit file", SKIP, "not checked: no systemd"))
    elif not installed or not unit_path.exists():
        report.add(_host_finding(
            "unit", "Unit file", FAIL, f"{systemd.unit} is not installed",
            diagnosis="Service not installed", cause="dispatchctl install has not run on this host (or uninstall did)",
            fix="dispatchctl install --amqp-host HOST --amqp-pass-file FILE"))
    else:
        verify = systemd.verify(unit_path)
        stderr = str(verify["stderr"]).strip()
        if verify["returncode"] != 0:
            report.add(_host_finding(
                "unit", "Unit file", FAIL,
                f"systemd-analyze verify {unit_path}: {stderr.splitlines()[-1] if stderr else 'failed'}",
                diagnosis="Unit file invalid", cause=stderr, fix="dispatchctl configure (rewrites the unit)",
                issue=SERVICE_NOT_STARTING))
        elif stderr:
            report.add(_host_finding(
                "unit", "Unit file", WARN, f"{unit_path}: systemd-analyze verify warns: {stderr.splitlines()[0]}",
                diagnosis="Unit file warnings", cause=stderr, fix="dispatchctl configure (rewrites the unit)"))
        else:
            report.add(_host_finding("unit", "Unit file", OK, f"{unit_path} passes systemd-analyze verify"))

    # the environment file
    env_path = env_file or env_file_from_unit(props, ENV_FILE)
    env: Dict[str, str] = {}
    if not env_path.exists():
        report.add(_host_finding(
            "envfile", "Environment file", FAIL, f"{env_path} does not exist",
            diagnosis="Configuration missing", cause="the service has no AMQP settings",
            fix="dispatchctl configure --amqp-host HOST --amqp-pass-file FILE", issue=SERVICE_NOT_STARTING))
    else:
        info = env_path.stat()
        mode = info.st_mode & 0o7777
        try:
            env = read_env_file(env_path)
            mask = masker([env.get("AMQP_PASS", "")])
            readable_env = True
        except (OSError, UnicodeDecodeError) as exc:
            readable_env = False
            reason = getattr(exc, "strerror", None) or str(exc)
        if mode & 0o077 or info.st_uid != 0:
            report.add(_host_finding(
                "envfile", "Environment file", FAIL,
                f"{env_path} is mode {mode:04o}, owner uid {info.st_uid}: the AMQP password is exposed",
                diagnosis="Password exposed", cause="the environment file holds AMQP_PASS and must be root-only",
                fix=f"chown root:root {env_path} && chmod 600 {env_path}   (or: dispatchctl configure)"))
        elif not readable_env:
            report.add(_host_finding("envfile", "Environment file", FAIL, f"cannot read {env_path}: {reason}",
                                     diagnosis="Configuration unreadable", cause=reason, fix="sudo dispatchctl check"))
        elif not env.get("AMQP_HOST") or not env.get("AMQP_PASS"):
            missing = [k for k in ("AMQP_HOST", "AMQP_PASS") if not env.get(k)]
            report.add(_host_finding(
                "envfile", "Environment file", FAIL, f"{env_path} lacks {', '.join(missing)}",
                diagnosis="Configuration incomplete", cause="the consumer exits at once without them",
                fix="dispatchctl configure --amqp-host HOST --amqp-pass-file FILE", issue=SERVICE_NOT_STARTING))
        else:
            report.add(_host_finding("envfile", "Environment file", OK,
                                     f"{env_path}: mode 0600, root; AMQP_HOST={env.get('AMQP_HOST')}"))

    # User= and the running process
    if installed:
        unit_user = props.get("User", "")
        pid = int(props.get("MainPID", "0") or 0)
        proc_user = None
        if pid:
            try:
                import psutil

                proc_user = psutil.Process(pid).username()
            except Exception:
                proc_user = None
        if unit_user in ("", "root", "0") or proc_user == "root":
            shown = unit_user or "(none: root)"
            report.add(_host_finding(
                "unit-user", "Runs as the service user", FAIL,
                f"User={shown}" + (f"; the process {pid} runs as {proc_user}" if proc_user else ""),
                diagnosis=f"Permission denied: wrong user — ensure User={service_user}",
                cause=("the service runs as root (User= missing or root): a compromised consumer owns the host, and "
                       "files it creates become unreadable to the service user"),
                fix=f"dispatchctl configure ... (writes User={service_user}); check: systemctl show -p User dispatch",
                issue=PERMISSION_DENIED, data={"unit_user": unit_user, "process_user": proc_user}))
        elif unit_user != service_user:
            report.add(_host_finding(
                "unit-user", "Runs as the service user", FAIL, f"User={unit_user}, expected {service_user}",
                diagnosis=f"Permission denied: wrong user — ensure User={service_user}",
                cause=f"the unit runs dispatch as '{unit_user}', not the service user '{service_user}'",
                fix=f"dispatchctl configure --user {service_user} ...", issue=PERMISSION_DENIED,
                data={"unit_user": unit_user, "process_user": proc_user}))
        else:
            report.add(_host_finding(
                "unit-user", "Runs as the service user", OK,
                f"User={unit_user}" + (f"; process {pid} runs as {proc_user}" if proc_user else "")))

    # the service state
    if installed:
        active = props.get("ActiveState", "")
        sub = props.get("SubState", "")
        restarts = props.get("NRestarts", "0")
        if active == "active":
            report.add(_host_finding("service", "Service active", OK,
                                     f"active ({sub}), MainPID {props.get('MainPID')}, {restarts} restart(s)"))
        else:
            lines = [mask(ln) for ln in systemd.journal_lines(log_lines)]
            host = env.get("AMQP_HOST", "?")
            stopped = active == "inactive" and props.get("Result") == "success" and restarts in ("", "0")
            state = f"{active} ({sub}), result {props.get('Result', '?')}, {restarts} restart(s)"
            if stopped:
                report.add(_host_finding(
                    "service", "Service active", FAIL, f"{state}: stopped",
                    diagnosis="Service stopped", cause="dispatch was stopped (or never started)",
                    fix="dispatchctl start   (or: systemctl start dispatch)", data={"log": lines}))
            else:
                report.add(_host_finding(
                    "service", "Service active", FAIL, f"{state}; AMQP_HOST={host}",
                    diagnosis="Service not starting: verify AMQP_HOST",
                    cause=(f"dispatch does not reach the running state (AMQP_HOST={host}); last log lines:\n"
                           + "\n".join(lines[-log_lines:])),
                    fix=("verify AMQP_HOST and the credentials (dispatchctl check-rabbitmq, below), fix them with "
                         "dispatchctl configure, then: systemctl restart dispatch; full log: dispatchctl logs -n 100"),
                    issue=SERVICE_NOT_STARTING, data={"log": lines, "amqp_host": host}))

    # SELinux
    if facts.family == "rhel":
        mode_s = facts.selinux or "not present"
        label = ""
        if binary.exists():
            try:
                label = str(os.getxattr(str(binary), "security.selinux"), "utf-8", "replace").rstrip("\x00")
            except OSError:
                label = ""
        bad_types = (":default_t:", ":user_home_t:", ":tmp_t:")
        bad_label = facts.selinux == "enforcing" and any(t in label for t in bad_types)
        if bad_label:
            report.add(_host_finding(
                "selinux", "SELinux", WARN, f"enforcing; {binary} is labelled {label}",
                diagnosis="Permission denied: SELinux label",
                cause=f"{binary} carries {label}, which systemd may not execute",
                fix=f"restorecon -Rv {binary.parent}   (or: chcon -t bin_t {binary})", issue=PERMISSION_DENIED))
        else:
            report.add(_host_finding("selinux", "SELinux", OK, mode_s + (f"; {binary}: {label}" if label else "")))
    else:
        report.add(_host_finding("selinux", "SELinux", SKIP, "not a RHEL-family host"))

    # RabbitMQ with the installed settings
    if rabbitmq:
        amqp: Optional[AmqpSettings] = None
        if env.get("AMQP_HOST"):
            try:
                amqp = amqp_from_environment(env, source=str(env_path))
            except SettingsError as exc:
                report.add(_host_finding("rabbitmq", "RabbitMQ", FAIL, f"{env_path}: {exc}",
                                         diagnosis="Configuration invalid", cause=str(exc),
                                         fix="dispatchctl configure --amqp-host HOST --amqp-pass-file FILE",
                                         issue=SERVICE_NOT_STARTING))
        else:
            report.add(_host_finding("rabbitmq", "RabbitMQ", SKIP, "not checked: no installed AMQP settings"))
        if amqp is not None:
            left = max(0.5, budget - (time.monotonic() - started))
            rabbit = check_rabbitmq(amqp, budget=min(DEFAULT_BUDGET_S, left))
            for f in rabbit.findings:
                f.name = "rabbitmq." + f.name
                f.title = "RabbitMQ: " + f.title
                report.add(f)
    report.elapsed_s = time.monotonic() - started
    return report, mask
