#!/usr/bin/env python3
"""Throughput of the bundled dispatch consumer against a bare pika baseline, on a real RabbitMQ.

Starts its own throwaway RabbitMQ node (roboshop_dispatch/lab/broker.py), then for each run preloads N
payment-shaped orders (default 20,000) into a fresh vhost and times the drain:

  (a) the bundled consumer, ``python -m roboshop_dispatch.consumer``, simulated processing off;
  (b) a bare pika baseline: BlockingConnection, manual ack per message, prefetch 100;
  (c) the bundled consumer with its default simulated processing (42-83 ms, twice, per order).

Each runs as a real subprocess writing to a file, and each drain is timed the same way, from
outside, by one loop (``Bench.window``) reading that file: from the line that says it consumes
(after its basic.consume was answered) to the line of its N-th order (the consumer writes each
order's line before that order's ack; the baseline writes one line after its N-th ack). Afterwards
the queue must be empty. Prints each rate, the peak RSS of (a) (VmHWM), and last ``ratio=<a/b>``.

    .venv/bin/python bench/consumer_throughput.py [--orders N] [--rounds R]

With ``--rounds R`` (a) and (b) are each run R times, alternately, and the best rate of each is
kept (the machine is shared: the best run is the one least disturbed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from roboshop_dispatch import amqp  # noqa: E402
from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from tests.support.payment import EXCHANGE, ROUTING_KEY, make_order  # noqa: E402

BASELINE = r"""
import json, sys, time
import pika
host, port, vhost, user, password, n = sys.argv[1:7]
n = int(n)
conn = pika.BlockingConnection(pika.ConnectionParameters(
    host=host, port=int(port), virtual_host=vhost, credentials=pika.PlainCredentials(user, password)))
ch = conn.channel()
ch.basic_qos(prefetch_count=100)
count = 0
def on_message(channel, method, properties, body):
    global count
    channel.basic_ack(method.delivery_tag)
    count += 1
    if count >= n:
        channel.stop_consuming()
ch.basic_consume("orders", on_message)
print("baseline consuming orders", flush=True)  # the bench's window opens when it reads this
start = time.perf_counter()
ch.start_consuming()
elapsed = time.perf_counter() - start
print(f"baseline done {count}", flush=True)  # ... and closes when it reads this
conn.close()
print(json.dumps({"count": count, "seconds_inside": elapsed}), flush=True)
"""
BASELINE_END = (b"baseline done ",)


class Bench:
    def __init__(self, broker: Broker, orders: int, fastpath: str = "1") -> None:
        self.broker = broker
        self.orders = orders
        self.fastpath = fastpath
        self.runs = 0

    def params(self, vhost: str) -> pika.ConnectionParameters:
        return amqp.parameters([self.broker.host], self.broker.port, vhost, self.broker.user,
                               self.broker.password)[0]

    def fresh_vhost(self) -> str:
        self.runs += 1
        name = f"bench-{self.runs}"
        self.broker.ctl("add_vhost", name)
        self.broker.ctl("set_permissions", "-p", name, self.broker.user, ".*", ".*", ".*")
        return name

    def preload(self, vhost: str) -> None:
        """N orders exactly as payment publishes them, into a queue the consumer declared before."""
        conn = pika.BlockingConnection(self.params(vhost))
        ch = conn.channel()
        amqp.declare_topology(ch)  # as a consumer that ran once would have
        props = pika.BasicProperties(headers={})
        for i in range(self.orders):
            ch.basic_publish(EXCHANGE, ROUTING_KEY, json.dumps(make_order(i)).encode(), props)
        deadline = time.monotonic() + 120
        while ch.queue_declare(amqp.QUEUE, passive=True).method.message_count < self.orders:
            if time.monotonic() > deadline:
                raise RuntimeError("preload: the queue never reached its depth")
            time.sleep(0.05)
        conn.close()

    def remaining(self, vhost: str) -> Tuple[int, int]:
        """(ready, consumers) of ``orders``, after a run (no consumer: unacked count as ready)."""
        conn = pika.BlockingConnection(self.params(vhost))
        ok = conn.channel().queue_declare(amqp.QUEUE, passive=True).method
        conn.close()
        return ok.message_count, ok.consumer_count

    def consumer(self, vhost: str, processing: Optional[str]) -> Dict[str, float]:
        env = dict(os.environ)
        for key in list(env):
            if key.startswith(("AMQP_", "DISPATCH_", "NOTIFY_", "WATCHDOG_")):
                del env[key]
        env.update(AMQP_HOST=self.broker.host, AMQP_PORT=str(self.broker.port), AMQP_VHOST=vhost,
                   AMQP_USER=self.broker.user, AMQP_PASS=self.broker.password,
                   PYTHONPATH=str(ROOT))
        if processing is not None:
            env["DISPATCH_PROCESSING_MS"] = processing
        env["DISPATCH_FASTPATH"] = self.fastpath
        argv = [sys.executable, "-m", "roboshop_dispatch.consumer"]
        return self.window("the consumer", argv, env, b" consuming orders ", (b"INFO order ", b"ERROR order "),
                           self.orders)

    def baseline(self, vhost: str) -> Dict[str, float]:
        b = self.broker
        argv = [sys.executable, "-c", BASELINE, b.host, str(b.port), vhost, b.user, b.password, str(self.orders)]
        return self.window("the baseline", argv, dict(os.environ), b"baseline consuming orders", BASELINE_END, 1)

    def window(self, name: str, argv: list, env: Dict[str, str], start_mark: bytes, end_marks: tuple,
               ends: int) -> Dict[str, float]:
        """Run ``argv`` with its output in a file and time, from here, the window from reading
        its ``start_mark`` line to reading the ``ends``-th line starting with one of ``end_marks``:
        the same loop (and the same polling) for the consumer and the baseline. Then the consumer
        gets SIGTERM; the baseline exits by itself. Either must exit 0."""
        # the process appends to its own file description; we read through another one (a shared
        # one would share the offset, and our seeks would move its writes)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.log"
            with open(path, "ab") as sink:
                proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
            start = end = None
            seen = 0
            tail = b""
            stalled_after = 30.0  # seconds without a new line: something is wrong, say so
            last_progress = time.monotonic()
            with open(path, "rb") as out:
                while end is None:
                    chunk = out.read()
                    if not chunk:
                        if proc.poll() is not None:
                            raise RuntimeError(f"{name} exited early ({proc.returncode}): {path.read_text()[-2000:]}")
                        if time.monotonic() - last_progress > stalled_after:
                            proc.kill()
                            raise RuntimeError(f"{name} stalled after {seen} of {ends} lines")
                        time.sleep(0.002)
                        continue
                    last_progress = time.monotonic()
                    now = time.perf_counter()
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()
                    for line in lines:
                        if start is None and start_mark in line:
                            start = now
                        elif line.startswith(end_marks):
                            seen += 1
                    if seen >= ends:
                        end = now
            peak_kb = vm_hwm_kb(proc.pid) if proc.poll() is None else 0.0
            cpu = cpu_seconds(proc.pid) if proc.poll() is None else 0.0
            if end_marks != BASELINE_END:  # the baseline closes its connection and exits by itself
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=15)
            if code != 0:
                raise RuntimeError(f"{name} exited {code}: {path.read_text()[-2000:]}")
        assert start is not None and end is not None
        return {"rate": self.orders / (end - start), "seconds": end - start, "peak_mb": peak_kb / 1024.0,
                "cpu": cpu}

    def run(self, what: str, processing: Optional[str] = None) -> Dict[str, float]:
        vhost = self.fresh_vhost()
        self.preload(vhost)
        result = self.baseline(vhost) if what == "baseline" else self.consumer(vhost, processing)
        ready, consumers = self.remaining(vhost)
        if ready or consumers:
            raise RuntimeError(f"{what}: {ready} orders left in the queue after the drain")
        self.broker.ctl("delete_vhost", vhost, check=False)
        return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (start-up included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_kb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    raise RuntimeError("no VmHWM in /proc status")


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20_000, help="orders to preload per run (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of (a) and (b) each; the best counts (3)")
    parser.add_argument("--fastpath", choices=("1", "0"), default="1",
                        help="the consumer's DISPATCH_FASTPATH: 1 the frame path (default), 0 pika's own")
    args = parser.parse_args(argv)

    broker = Broker()
    try:
        broker.start()
        bench = Bench(broker, args.orders, args.fastpath)
        version = broker.ctl("eval", "rabbit_misc:version().", check=False).stdout.strip().strip('"')
        print(f"orders={args.orders} rounds={args.rounds} broker=RabbitMQ {version or '?'} "
              f"python={sys.version.split()[0]} pika={pika.__version__} cpus={os.cpu_count()} "
              f"fastpath={args.fastpath}", flush=True)
        best_a: Optional[Dict[str, float]] = None
        best_b: Optional[Dict[str, float]] = None
        peak = 0.0
        for _ in range(args.rounds):
            a = bench.run("consumer", "0")
            print(f"  run (a): {a['rate']:.0f} orders/s, peak RSS {a['peak_mb']:.1f} MB, "
                  f"consumer CPU {a['cpu']:.2f} s", flush=True)
            peak = max(peak, a["peak_mb"])
            b = bench.run("baseline")
            print(f"  run (b): {b['rate']:.0f} orders/s", flush=True)
            if best_a is None or a["rate"] > best_a["rate"]:
                best_a = a
            if best_b is None or b["rate"] > best_b["rate"]:
                best_b = b
        c = bench.run("consumer", None)
        assert best_a is not None and best_b is not None
        print(f"(a) bundled consumer, processing off:       {best_a['rate']:8.0f} orders/s "
              f"({best_a['seconds']:.2f} s)")
        print(f"(b) bare pika baseline (ack each, qos 100): {best_b['rate']:8.0f} orders/s "
              f"({best_b['seconds']:.2f} s)")
        print(f"(c) bundled consumer, default delays:       {c['rate']:8.0f} orders/s ({c['seconds']:.2f} s)")
        print(f"peak RSS of (a): {peak:.1f} MB")
        print(f"ratio={best_a['rate'] / best_b['rate']:.2f}")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
