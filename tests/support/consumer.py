"""A dispatch consumer run as a real subprocess, and what it printed (tests and benches)."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import pytest

from roboshop_dispatch.lab.orders import ORDER_LINE  # the one pattern of a handled order's line

ROOT = Path(__file__).resolve().parent.parent.parent


def order_id(line: str):
    """The order id a dispatched/failed line reports (JSON-quoted when it is not plain), or None."""
    m = ORDER_LINE.match(line)
    if m is None:
        return None
    return json.loads(m.group(1)) if m.group(1).startswith('"') else m.group(1)


class Consumer:
    def __init__(self, env: Dict[str, str], argv: List[str]) -> None:
        self.env = env
        self.lines: List[str] = []
        self.orders: collections.Counter = collections.Counter()
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
            with self.cond:
                self._take(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _take(self, line: str) -> None:
        """One line of output (under the lock): kept, and counted when it reports an order."""
        self.lines.append(line)
        orderid = order_id(line)
        if orderid is not None:
            self.orders[orderid] += 1

    @property
    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def count(self, text: str) -> int:
        with self.cond:
            return sum(text in line for line in self.lines)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: Union[str, Callable[[], str]]) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    tail = "\n".join(self.lines[-30:])
                    state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
                    said = what() if callable(what) else what
                    pytest.fail(f"timed out waiting for {said} ({state}); output tail:\n{tail}")
                self.cond.wait(min(left, 0.5))

    def wait_line(self, text: str, timeout: float = 30, count: int = 1) -> None:
        self.wait(lambda: sum(text in ln for ln in self.lines) >= count, timeout, f"{count}x {text!r}")

    def wait_consuming(self, count: int = 1, timeout: float = 30) -> None:
        self.wait_line(" consuming orders ", timeout, count)

    def wait_orders(self, ids, timeout: float = 60, state: Optional[Callable[[], str]] = None) -> None:
        """Until every order of ``ids`` was dispatched; on a timeout, what is missing (and
        ``state()``: e.g. the broker's view of the queue, to tell a lost order from a stuck one)."""
        wanted = set(ids)

        def said() -> str:
            missing = sorted(wanted - set(self.orders))
            return (f"{len(wanted)} orders (have {len(wanted) - len(missing)}, missing {missing[:10]})"
                    + (f"; {state()}" if state is not None else ""))
        self.wait(lambda: wanted.issubset(self.orders), timeout, said)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple:
        """Send ``sig``; returns (exit code, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the consumer did not exit within {timeout}s of {signal.Signals(sig).name}:\n"
                        + self.output[-3000:])
        self.reader.join(5)
        return code, time.monotonic() - start

    def assert_no_password(self) -> None:
        password = self.env.get("AMQP_PASS")
        if password:
            out = self.output
            for form in {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)}:
                assert form not in out, "the password appears in the consumer's output"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# DISPATCH_TEST_PYTHONPATH: where another pika is (e.g. the oldest release of the pinned range)
PYTHONPATH_ROOT = ":".join(filter(None, [str(ROOT), __import__("os").environ.get("DISPATCH_TEST_PYTHONPATH")]))


def consumer_env(broker, vhost: str, **overrides) -> Dict[str, str]:
    """The environment of a consumer subprocess talking to ``broker`` in ``vhost``."""
    import os

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AMQP_", "DISPATCH_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM",
                                "CREDENTIALS_DIRECTORY", "OTEL_"))}
    env.update(AMQP_HOST=broker.host, AMQP_PORT=str(broker.port), AMQP_VHOST=vhost, AMQP_USER=broker.user,
               AMQP_PASS=broker.password, PYTHONPATH=PYTHONPATH_ROOT)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def start_consumer(broker, vhost: str, **overrides) -> Consumer:
    """``python -m roboshop_dispatch.consumer`` under this interpreter, as a real subprocess."""
    import sys

    return Consumer(consumer_env(broker, vhost, **overrides),
                    [sys.executable, "-m", "roboshop_dispatch.consumer"])


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM, KiB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/PID/status")
