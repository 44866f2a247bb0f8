"""The first two checks of check-rabbitmq: the names of AMQP_HOST resolve, the port answers.
Probes (bounded in time, every host of a cluster at once) return plain dicts; the findings are
pure functions of them."""

from __future__ import annotations

import functools
import socket
import time
from typing import Any, Dict, List, Sequence, Tuple

from .bounded import Clock, run_all
from .catalog import finding, host_label
from .report import FAIL, OK, SERVICE_NOT_STARTING, WARN, Finding

Address = Tuple[int, Tuple[Any, ...]]


# -- probes --------------------------------------------------------------------------------------


def resolve(host: str, port: int) -> Dict[str, Any]:
    """{"host", "addresses": [(family, sockaddr)...]} or {"host", "error"}."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return {"host": host, "error": exc.strerror or str(exc)}
    seen: List[Address] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    return {"host": host, "addresses": seen}


def resolve_all(hosts: Sequence[str], port: int, timeout: float) -> List[Dict[str, Any]]:
    futures = run_all([functools.partial(resolve, h, port) for h in hosts], timeout)
    out = []
    for host, future in zip(hosts, futures):
        if not future.done():
            out.append({"host": host, "error": f"the resolver did not answer within {timeout:.1f}s", "timeout": True})
        elif future.exception() is not None:
            out.append({"host": host, "error": str(future.exception())})
        else:
            out.append(future.result())
    return out


def connect(addresses: Sequence[Address], timeout: float) -> Dict[str, Any]:
    """Connect to each address in turn, within ``timeout`` in total; the first that answers wins."""
    clock = Clock(timeout)
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


def connect_all(resolved: Sequence[Dict[str, Any]], timeout: float) -> List[Dict[str, Any]]:
    futures = run_all([functools.partial(connect, r["addresses"], timeout) for r in resolved], timeout + 0.3)
    return [dict(f.result() if f.done() and f.exception() is None
                 else {"ok": False, "kind": "timeout", "errors": ["no answer"]}, host=r["host"])
            for f, r in zip(futures, resolved)]


# -- findings ------------------------------------------------------------------------------------


def resolve_finding(hosts: Sequence[str], resolved: Sequence[Dict[str, Any]], elapsed_ms: float) -> Finding:
    bad = [r for r in resolved if "error" in r]
    good = [r for r in resolved if "error" not in r]
    data: Dict[str, Any] = {"hosts": {r["host"]: ([a[1][0] for a in r["addresses"]] if "addresses" in r
                                                  else r["error"]) for r in resolved}}
    if not good:
        return finding(
            "resolve", FAIL, "; ".join(f"{r['host']}: {r['error']}" for r in bad),
            diagnosis="Name does not resolve: verify AMQP_HOST",
            cause=(f"AMQP_HOST {', '.join(hosts)} has no address (no DNS or /etc/hosts entry, a typo, or a resolver "
                   "that does not answer): dispatch cannot find RabbitMQ"),
            fix=("verify AMQP_HOST: use the RabbitMQ server's IP or a name this host resolves "
                 "(check with: getent hosts NAME); to change it: dispatchctl configure --amqp-host IP"),
            issue=SERVICE_NOT_STARTING, data=data, elapsed_ms=elapsed_ms)
    if bad:
        return finding(
            "resolve", WARN, "; ".join(f"{r['host']}: {r['error']}" for r in bad)
            + f" (resolved: {', '.join(r['host'] for r in good)})",
            diagnosis="A cluster member does not resolve",
            cause="dispatch skips the members it cannot resolve; the cluster has less redundancy",
            fix="correct or remove the name in AMQP_HOST (dispatchctl configure --amqp-host ...)",
            data=data, elapsed_ms=elapsed_ms)
    shown = "; ".join(f"{r['host']} -> {', '.join(dict.fromkeys(a[1][0] for a in r['addresses']))}" for r in good)
    return finding("resolve", OK, shown, data=data, elapsed_ms=elapsed_ms)


def _unreachable(tcp: Sequence[Dict[str, Any]], port: int, timeout: float) -> Tuple[str, str, str]:
    """(diagnosis, cause, fix) when no host answers."""
    kinds = {t["kind"] for t in tcp}
    where = ", ".join(host_label(t["host"], port) for t in tcp)
    if kinds == {"refused"}:
        return (f"Service not starting: nothing listens on port {port} — verify AMQP_HOST and AMQP_PORT",
                f"nothing listens on {where} (connection refused): AMQP_HOST points at a host that "
                f"is not the RabbitMQ server, port {port} is not its AMQP port, or RabbitMQ is stopped",
                f"verify that AMQP_HOST and AMQP_PORT ({port}) name the RabbitMQ server and its AMQP port: "
                "dispatchctl configure --amqp-host IP --amqp-port PORT; on the broker: systemctl status "
                "rabbitmq-server")
    if "timeout" in kinds:
        return (f"Service not starting: RabbitMQ does not answer on port {port} — verify AMQP_HOST and the "
                "firewall",
                f"no answer from {where} within {timeout:.1f}s: packets are dropped on the way (a "
                "firewall or security group), or AMQP_HOST is an address nobody answers at",
                f"verify AMQP_HOST (dispatchctl configure --amqp-host IP) and open {port}/tcp on the broker: "
                f"firewall-cmd --permanent --add-port={port}/tcp && firewall-cmd --reload "
                "(and the cloud security group)")
    detail = "; ".join(e for t in tcp for e in t["errors"])
    return ("Service not starting: no route to RabbitMQ — verify AMQP_HOST",
            f"{where} is unreachable from this host ({detail})",
            "verify AMQP_HOST and this host's network (ip route get ADDRESS)")


def tcp_finding(tcp: Sequence[Dict[str, Any]], port: int, timeout: float, elapsed_ms: float) -> Finding:
    reachable = [t for t in tcp if t["ok"]]
    data = {"port": port, "hosts": {t["host"]: ("open" if t["ok"] else t["kind"]) for t in tcp}}
    if not reachable:
        diagnosis, cause, fix = _unreachable(tcp, port, timeout)
        return finding("tcp", FAIL, "; ".join(e for t in tcp for e in t["errors"]), diagnosis=diagnosis,
                       cause=cause, fix=fix, issue=SERVICE_NOT_STARTING, data=data, elapsed_ms=elapsed_ms)
    target = reachable[0]
    rtt = f"connected to {host_label(target['address'], port)} in {target['rtt_ms']:.1f} ms"
    if len(reachable) < len(tcp):
        down = [t for t in tcp if not t["ok"]]
        return finding(
            "tcp", WARN, rtt + "; unreachable: " + "; ".join(e for t in down for e in t["errors"]),
            diagnosis="A cluster member is unreachable",
            cause="dispatch fails over to the members that answer; the cluster has less redundancy",
            fix="check RabbitMQ on the unreachable members, or remove them from AMQP_HOST",
            data=data, elapsed_ms=elapsed_ms)
    return finding("tcp", OK, rtt, data=data, elapsed_ms=elapsed_ms)
