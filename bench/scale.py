#!/usr/bin/env python3
"""Throughput of 1, 2 and 4 dispatch consumer processes on one host against one broker (by hand),
and of as many bare pika consumers: the baseline, in the same run.

Starts its own throwaway RabbitMQ node (roboshop_dispatch/lab/broker.py). For each count K (1, 2, 4, in
the same run, alternated over ``--rounds``), preloads N payment-shaped orders into a fresh vhost,
starts K real consumers (``python -m roboshop_dispatch.consumer``, simulated work off: the CPU is
what is measured) competing on ``orders``, and times from the first one's "consuming" line to the
N-th order line over all of them (each writes to a file, counted incrementally). Then the same
with K baseline processes: bare pika (BlockingConnection, ack per message, prefetch 100, as in
bench/consumer_throughput.py) writing one line per order, flushed every 10 ms (dispatch writes a
line per order too); the two alternate which goes first, round by round.

Prints, per K, both rates, ours / baseline, and each one's ratio to its own K=1 (what adding
processes gains). The last lines are ``ratios 1:1.00 2:R2 4:R4`` (ours against our K=1),
``baseline_ratios ...`` (bare pika against its K=1) and ``vs_baseline 1:.. 2:.. 4:..`` (ours /
baseline at each K). The broker shares the machine's cores with the consumers, so on a 2-core
machine the ratios are what they are: printed, not judged.

    .venv/bin/python bench/scale.py [--orders 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from roboshop_dispatch import amqp  # noqa: E402
from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from tests.support.consumer import consumer_env  # noqa: E402
from tests.support.payment import EXCHANGE, ROUTING_KEY, make_order  # noqa: E402

COUNTS = (1, 2, 4)
BASELINE = r"""
import os, signal, sys
import pika
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
conn = pika.BlockingConnection(pika.ConnectionParameters(
    os.environ["AMQP_HOST"], int(os.environ["AMQP_PORT"]), os.environ["AMQP_VHOST"],
    pika.PlainCredentials(os.environ["AMQP_USER"], os.environ["AMQP_PASS"])))
ch = conn.channel()
ch.basic_qos(prefetch_count=100)
out = sys.stdout
def on_message(channel, method, properties, body):
    channel.basic_ack(method.delivery_tag)
    out.write("INFO order - dispatched user=baseline\n")
def flush():
    out.flush()
    conn.call_later(0.01, flush)
ch.basic_consume("orders", on_message)
print(f"INFO baseline consuming orders on {os.environ['AMQP_HOST']}", flush=True)
conn.call_later(0.01, flush)
ch.start_consuming()
"""


def preload(broker: Broker, vhost: str, orders: int) -> None:
    conn = pika.BlockingConnection(amqp.parameters([broker.host], broker.port, vhost, broker.user,
                                                   broker.password)[0])
    ch = conn.channel()
    amqp.declare_topology(ch)  # as a consumer that ran once would have
    props = pika.BasicProperties(headers={})
    for i in range(orders):
        ch.basic_publish(EXCHANGE, ROUTING_KEY, json.dumps(make_order(i)).encode(), props)
    deadline = time.monotonic() + 120
    while ch.queue_declare(amqp.QUEUE, passive=True).method.message_count < orders:
        if time.monotonic() > deadline:
            raise RuntimeError("preload: the queue never reached its depth")
        time.sleep(0.05)
    conn.close()


class OutputCounter:
    """A consumer's output in a file, its order lines counted incrementally (the bench reads bytes,
    not lines through a pipe, so that it is not the bottleneck it measures)."""

    MARK = b" dispatched user="

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "rb")  # noqa: SIM115 (read while the consumer writes it)
        self.count = 0
        self.tail = b""

    def poll(self) -> int:
        data = self.handle.read()
        if data:
            chunk = self.tail + data
            self.count += chunk.count(self.MARK)
            keep = len(self.MARK) - 1
            self.tail = chunk[-keep:] if len(chunk) >= keep else chunk
            self.count -= self.tail.count(self.MARK)  # counted again with the next chunk
        return self.count

    def consuming(self) -> bool:
        return b" consuming orders on " in self.path.read_bytes()


def run(broker: Broker, vhost: str, count: int, orders: int, workdir: Path, baseline: bool = False) -> float:
    """Orders per second of ``count`` consumers (dispatch's, or the baseline's) draining ``orders``
    preloaded orders."""
    preload(broker, vhost, orders)
    env = consumer_env(broker, vhost, DISPATCH_PROCESSING_MS="0")
    argv = [sys.executable, "-c", BASELINE] if baseline else [sys.executable, "-m", "roboshop_dispatch.consumer"]
    procs: List[subprocess.Popen] = []
    counters: List[OutputCounter] = []
    try:
        for i in range(count):
            path = workdir / f"{vhost}-{i}.log"
            with open(path, "wb") as out:
                procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL))
            counters.append(OutputCounter(path))
        deadline = time.monotonic() + 60
        while not any(c.consuming() for c in counters):  # the drain starts with the first consumer
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("no consumer got to consuming")
            time.sleep(0.005)
        started = time.monotonic()
        deadline = started + 600
        while sum(c.poll() for c in counters) < orders:
            if time.monotonic() > deadline:
                raise RuntimeError("the drain did not finish within 600 s")
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        busy = sum(1 for c in counters if c.count)
        if busy < count:
            print(f"   note: only {busy} of {count} consumers got orders", flush=True)
        return orders / elapsed
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for c in counters:
            c.handle.close()


def one(broker: Broker, count: int, orders: int, workdir: Path, runs: int, baseline: bool) -> float:
    vhost = f"scale-{runs}"
    broker.ctl("add_vhost", vhost)
    broker.ctl("set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*")
    rate = run(broker, vhost, count, orders, workdir, baseline)
    broker.ctl("delete_vhost", vhost)
    print(f"{count} {'baseline' if baseline else 'dispatch'} consumer(s): {rate:,.0f} orders/s", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2, help="runs per count; the best is kept (shared machine)")
    args = parser.parse_args()
    broker = Broker()
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-scale-"))
    try:
        broker.start()
        best: Dict[bool, Dict[int, float]] = {False: {}, True: {}}  # baseline? -> count -> best rate
        runs = 0
        for r in range(args.rounds):
            for count in COUNTS:
                for baseline in ((False, True) if (r + count) % 2 == 0 else (True, False)):
                    runs += 1
                    rate = one(broker, count, args.orders, workdir, runs, baseline)
                    best[baseline][count] = max(best[baseline].get(count, 0.0), rate)
        ours, base = best[False], best[True]
        print(f"cpu cores: {os.cpu_count()}; best of {args.rounds} per count, {args.orders} orders each")
        for count in COUNTS:
            print(f"{count} consumer(s): dispatch {ours[count]:,.0f} orders/s (x{ours[count] / ours[1]:.2f}), "
                  f"bare pika {base[count]:,.0f} orders/s (x{base[count] / base[1]:.2f}), "
                  f"dispatch / bare pika {ours[count] / base[count]:.2f}")
        print("ratios " + " ".join(f"{c}:{ours[c] / ours[1]:.2f}" for c in COUNTS))
        print("baseline_ratios " + " ".join(f"{c}:{base[c] / base[1]:.2f}" for c in COUNTS))
        print("vs_baseline " + " ".join(f"{c}:{ours[c] / base[c]:.2f}" for c in COUNTS), flush=True)
        return 0
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
