"""What ``dispatchctl status`` shows: the unit's state, the process (psutil or /proc), the binary, the
configuration (password masked), tracing and metrics (each instance's URL), the ``orders`` queue
when the broker answers, the last log lines.

Exit codes follow ``systemctl is-active``: 0 running, 3 not running, 4 not installed. The slow
parts (the journal and the broker) run side by side, each bounded in time.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import ErrorKind, ExitStatus
from .settings import MASK

BROKER_TIMEOUT_S = 1.5


def queue_counts(amqp: Any, timeout: float = BROKER_TIMEOUT_S) -> Dict[str, Any]:
    """``{"messages": n, "consumers": n, "broker": "host:port"}`` of ``orders`` by a passive
    ``queue.declare`` (reads, never creates or changes anything), or ``{"error": reason}``; the
    hosts of a cluster in turn, never longer than ``timeout`` in all."""
    from .pikaload import load

    pika = load()
    import pika.exceptions as pe

    from . import amqp as contract

    deadline = time.monotonic() + timeout
    last = "no broker answered"
    for host in amqp.hosts:
        left = deadline - time.monotonic()
        if left <= 0.05:
            break
        params = contract.parameters([host], amqp.port, amqp.vhost, amqp.user, amqp.password.reveal(),
                                     heartbeat=0, socket_timeout=left, blocked_connection_timeout=None,
                                     client_name="dispatchctl status")[0]
        try:
            conn = pika.BlockingConnection(params)
        except (pe.AMQPError, OSError) as exc:
            kind = contract.classify_error(exc)
            if kind == contract.AUTH:
                return {"error": "Auth failure: check AMQP user/pass (ACCESS_REFUSED)"}
            if kind == contract.VHOST:
                return {"error": contract.describe_error(exc)}
            last = f"{host}:{amqp.port}: {contract.describe_error(exc)}"
            continue
        try:
            ok = conn.channel().queue_declare(contract.QUEUE, passive=True)
            return {"messages": ok.method.message_count, "consumers": ok.method.consumer_count,
                    "broker": f"{host}:{amqp.port}"}
        except pe.ChannelClosedByBroker as exc:
            return {"error": f"{exc.reply_code} {exc.reply_text}"}
        except (pe.AMQPError, OSError) as exc:
            last = f"{host}:{amqp.port}: {contract.describe_error(exc)}"
        finally:
            with contextlib.suppress(Exception):
                conn.close()
    return {"error": last}


def run_in_child(fn: Callable[[], Dict[str, Any]], timeout: float = BROKER_TIMEOUT_S) -> Callable[[], Dict[str, Any]]:
    """Start ``fn`` (returning a JSON-ready dict) in a forked child and return a function that waits
    for its answer, at most ``timeout`` + 2 s.

    ``status`` is CPU-bound (the imports of typer, rich, psutil and pika), and a thread shares one
    core through the GIL; a child uses the machine's other core, so pika's import and the round
    trip cost no wall time. Call it before starting any thread (fork copies only the caller)."""
    import json
    import os

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer on the pipe, then leave without running any exit handler
        code = 0
        try:
            os.close(read_fd)
            try:
                answer = fn()
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(answer).encode()
            while data:
                data = data[os.write(write_fd, data):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    return lambda: _child_answer(pid, read_fd, timeout + 2.0)


def _child_answer(pid: int, read_fd: int, limit: float) -> Dict[str, Any]:
    import json
    import os
    import select

    chunks: List[bytes] = []
    deadline = time.monotonic() + limit
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, 9)
                return {"error": f"no answer within {limit:.1f}s"}
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    try:
        return dict(json.loads(b"".join(chunks)))
    except ValueError:
        return {"error": "the broker query ended without an answer"}


def settings_and_queue(state: Any, broker: bool, timeout: float = BROKER_TIMEOUT_S) -> Dict[str, Any]:
    """The consumer's reading of the installed settings (``config``, as status shows it) and, when
    they are complete and ``broker``, the ``orders`` queue's counts (``queue``). Run in the child:
    the consumer's config module imports pika."""
    from dataclasses import replace

    from .facts import installed

    state = replace(state, **installed.consumer_settings(state, Path(state.env_file.path)))
    queue = None
    if broker and state.consumer is not None and state.password:
        queue = queue_counts(state.amqp_settings(), timeout)
    return {"config": config_of(state), "queue": queue}


def prefetch(*loaders: Callable[[], Any]) -> None:
    """Run ``loaders`` (imports) in a background thread: the main thread spends its first tens of
    milliseconds waiting on systemctl and journalctl, which leaves the interpreter free for them."""
    import threading

    def run() -> None:
        for loader in loaders:
            with contextlib.suppress(ImportError):
                loader()

    threading.Thread(target=run, name="dispatchctl-prefetch", daemon=True).start()


def _import_psutil() -> None:
    import psutil  # noqa: F401


DELIVERY_PATH = re.compile(r"\(delivery path: ([A-Za-z0-9_-]+)\)")


def delivery_path(status_text: str) -> Optional[str]:
    """The consumer's delivery path (``fast`` or ``pika``) from the unit's StatusText, which the
    bundled consumer ends with ``(delivery path: NAME)``; None when it does not say (the go flavour,
    a consumer still connecting)."""
    m = DELIVERY_PATH.search(status_text or "")
    return m.group(1) if m else None


def config_of(state: Any) -> Dict[str, Any]:
    """The configuration as ``status`` shows it: the consumer's own reading of the installed
    environment (its defaults), the password masked; when the consumer would refuse it, the raw
    values with the consumer's defaults for those not set (sources.remembered: the one reading)."""
    doc: Dict[str, Any] = {"path": state.env_file.path}
    if state.env_error:
        doc["error"] = state.env_error
        return doc
    from .sources import remembered

    cfg = state.consumer
    raw = {key: found.text for key, found in remembered(state).items()}
    doc.update({
        "hosts": list(cfg.hosts) if cfg else [h.strip() for h in raw.get("AMQP_HOST", "").split(",") if h.strip()],
        "port": str(cfg.port) if cfg else raw.get("AMQP_PORT", ""),
        "vhost": cfg.vhost if cfg else raw.get("AMQP_VHOST", ""),
        "user": cfg.user if cfg else raw.get("AMQP_USER", ""),
        "password": MASK if state.password else "(not set)",
        "password_source": state.password_source or None,
        "error_percent": f"{cfg.error_percent:g}" if cfg else raw.get("DISPATCH_ERROR_PERCENT", ""),
    })
    if state.config_error:
        doc["error"] = state.config_error
    return doc


def process_info(pid: int) -> Dict[str, Any]:
    """The main process (user, memory, CPU, uptime): psutil's figures, or /proc's without it."""
    from .procinfo import process_info as info

    return info(pid)


ORDERS_HANDLED = re.compile(r"\b([0-9]{1,15}) orders? (?:handled|dispatched)\b")


def orders_handled(status_text: str) -> Optional[int]:
    """The orders an instance handled, when its sd_notify STATUS says ``N orders handled``; None when
    it does not say."""
    m = ORDERS_HANDLED.search(status_text or "")
    return int(m.group(1)) if m else None


def queue_type_of(state: Any) -> str:
    """The orders queue's type the installed consumer declares (DISPATCH_QUEUE_TYPE; classic when unset)."""
    return str(state.environment.get("DISPATCH_QUEUE_TYPE") or "classic")


def instances_doc(state: Any) -> List[Dict[str, Any]]:
    """One row per dispatch unit that is configured or runs: its state, pid, RSS, orders handled."""
    facts = state.instance_facts
    if facts is None or (facts.configured == 0 and not facts.running()):
        return []
    wanted = facts.wanted_units(facts.configured) if facts.configured else []
    rows = []
    for info in [facts.info(u) for u in wanted] + [u for u in facts.running() if u.unit not in wanted]:
        rss = None
        if info.main_pid:
            proc = process_info(info.main_pid)
            rss = proc.get("rss_bytes")
        rows.append({"unit": info.unit, "configured": info.unit in wanted, "active_state": info.active_state or
                     "inactive", "sub_state": info.sub_state, "enabled": info.enabled, "main_pid": info.main_pid,
                     "rss_bytes": rss, "orders_handled": orders_handled(info.status_text),
                     "status_text": info.status_text})
    return rows


def unit_doc(state: Any) -> Dict[str, Any]:
    """The unit's part of ``status``: its states, PID, restarts, user, StatusText, delivery path."""
    status_text = state.prop("StatusText")
    return {
        "unit": state.unit,
        "installed": state.installed,
        "load_state": state.prop("LoadState") or "unknown",
        "active_state": state.prop("ActiveState") or "unknown",
        "sub_state": state.prop("SubState"),
        "result": state.prop("Result"),
        "enabled": state.prop("UnitFileState"),
        "main_pid": state.main_pid,
        "restarts": int(state.prop("NRestarts", "0") or 0),
        "unit_user": state.prop("User"),
        "unit_file": state.prop("FragmentPath"),
        "status_text": status_text,
        "delivery_path": delivery_path(status_text),
    }


def systemd_running(root: Path = Path("/")) -> bool:
    """systemd is PID 1 here (what sd_booted() checks: /run/systemd/system exists)."""
    return (root / "run/systemd/system").is_dir()


def pid1_name(root: Path = Path("/")) -> str:
    try:
        return (root / "proc/1/comm").read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"


def no_systemd_doc(root: Path = Path("/")) -> Dict[str, Any]:
    """``status`` on a host whose PID 1 is not systemd: says so, and whether a unit file is there."""
    from .layout import UNIT_NAME, UNIT_PATH

    pid1 = pid1_name(root)
    return {
        "unit": UNIT_NAME, "systemd": False, "pid1": pid1, "installed": False, "running": False,
        "unit_file_present": (root / UNIT_PATH.relative_to("/")).exists(),
        "error": {"kind": ErrorKind.NO_SYSTEMD, "message": f"this host does not run systemd (PID 1 is {pid1}): "
                  "the service cannot run here; dispatch needs a systemd host"},
    }


def gather(*, lines: int = 10, env_file: Optional[Path] = None, broker: bool = True,
           runner: Any = None, preload: Sequence[Callable[[], Any]] = ()) -> Dict[str, Any]:
    """Everything ``status`` shows, as a JSON-ready dict (the password masked). ``preload``:
    imports the caller needs afterwards, run in the background meanwhile."""
    from .diagnostics.bounded import start
    from .facts import installed
    from .host import Runner
    from .redact import Redactor
    from .systemd import Systemd

    systemd = Systemd(runner or Runner(timeout=15))
    state = installed.read(env_file=env_file, runner=systemd.runner, version=False, interpret=False)
    pid = state.main_pid
    doc = unit_doc(state)
    mask: Callable[[str], str] = Redactor(state.secrets()).text

    # the settings (the consumer's reading of them) and the queue: worked out by a child process on
    # the other core while this one gathers the rest (forked before any thread of ours starts)
    child_answer = run_in_child(lambda: settings_and_queue(state, broker)) if not state.env_error else None
    prefetch(_import_psutil, *preload)

    # the journal in the background while the rest is gathered
    unit_journal = Systemd(systemd.runner, unit=state.unit)  # dispatch@1 when the instances run
    journal = start(lambda: unit_journal.journal_lines(lines)) if state.installed and lines > 0 else None

    # the process
    process = process_info(pid) if pid else None
    doc["process"] = process
    doc["uptime_s"] = process.get("uptime_s") if process else None
    doc["instances"] = instances_doc(state)
    doc["configured_instances"] = state.instance_facts.configured if state.instance_facts else None

    # the binary
    doc["binary"] = {"path": state.binary.path, "exists": state.binary.exists, "flavour": state.flavour}
    answer = child_answer() if child_answer is not None else {"config": config_of(state), "queue": None}
    doc["config"] = answer.get("config") or {"path": state.env_file.path, "error": answer.get("error", "?")}
    if "error" not in doc["config"]:
        doc["config"]["queue_type"] = queue_type_of(state)
    doc["queue"] = answer.get("queue")
    doc.update(telemetry_docs(state))

    try:
        logs = journal.result(timeout=10) if journal is not None else []
    except Exception:  # journalctl too slow or failing: status shows the rest
        logs = []
    doc["logs"] = [mask(line) for line in logs]
    # several instances: running while any of them runs (`check` fails when fewer run than configured)
    doc["running"] = state.installed and (state.active or any(r["active_state"] == "active"
                                                              for r in doc["instances"]))
    doc["systemd"] = True
    return doc


def telemetry_docs(state: Any) -> Dict[str, Any]:
    """``tracing`` (on, the collector's URL without user info or query, headers "set") and
    ``metrics`` (on, each instance's URL); None when the environment file cannot be read."""
    from .facts.telemetry import metrics_doc, tracing_doc

    if state.env_error or not state.env_file.exists:
        return {"tracing": None, "metrics": None}
    configured = state.instance_facts.configured if state.instance_facts else 1
    return {"tracing": tracing_doc(state.environment, bool(state.otlp_headers)),
            "metrics": metrics_doc(state.environment, configured)}


def exit_code(doc: Dict[str, Any]) -> int:
    if doc.get("systemd") is False:
        return ExitStatus.NO_SYSTEMD
    if not doc["installed"]:
        return ExitStatus.NOT_INSTALLED
    return ExitStatus.OK if doc["running"] else ExitStatus.NOT_RUNNING
