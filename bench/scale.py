#!/usr/bin/env python3
"""Throughput of 1, 2 and 4 dispatch consumer processes on one host against one broker (by hand).

Starts its own throwaway RabbitMQ node (tests/support/broker.py). For each count K (1, 2, 4, in
the same run, alternated over ``--rounds``), preloads N payment-shaped orders into a fresh vhost,
starts K real consumers (``python -m roboshop_dispatch.consumer``, simulated work off: the CPU is
what is measured) competing on ``orders``, and times from the moment all K are consuming to the
N-th order line over all of them. Prints each rate and its ratio to K=1; the last line is
``ratios 1:1.00 2:R2 4:R4``. The broker shares the machine's cores with the consumers, so on a
2-core machine the ratio is what it is: it is printed, not judged.

    .venv/bin/python bench/scale.py [--orders 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from roboshop_dispatch import amqp  # noqa: E402
from tests.support.broker import Broker  # noqa: E402
from tests.support.consumer import Consumer, consumer_env  # noqa: E402
from tests.support.payment import EXCHANGE, ROUTING_KEY, make_order  # noqa: E402

COUNTS = (1, 2, 4)


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


def run(broker: Broker, vhost: str, count: int, orders: int) -> float:
    """Orders per second of ``count`` consumers draining ``orders`` preloaded orders."""
    preload(broker, vhost, orders)
    env = consumer_env(broker, vhost, DISPATCH_PROCESSING_MS="0")
    consumers: List[Consumer] = []
    try:
        for _ in range(count):
            consumers.append(Consumer(env, [sys.executable, "-m", "roboshop_dispatch.consumer"]))
        # the first consumer starts draining at once: time from the first "consuming" line
        consumers[0].wait_consuming(timeout=60)
        started = time.monotonic()
        deadline = started + 600
        while sum(sum(c.orders.values()) for c in consumers) < orders:
            if time.monotonic() > deadline:
                raise RuntimeError("the drain did not finish within 600 s")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        busy = sum(1 for c in consumers if c.orders)
        if busy < count:
            print(f"   note: only {busy} of {count} consumers got orders", flush=True)
        return orders / elapsed
    finally:
        for c in consumers:
            c.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2, help="runs per count; the best is kept (shared machine)")
    args = parser.parse_args()
    broker = Broker()
    try:
        broker.start()
        best: Dict[int, float] = {}
        runs = 0
        for _ in range(args.rounds):
            for count in COUNTS:
                runs += 1
                vhost = f"scale-{runs}"
                broker.ctl("add_vhost", vhost)
                broker.ctl("set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*")
                rate = run(broker, vhost, count, args.orders)
                broker.ctl("delete_vhost", vhost)
                print(f"{count} consumer(s): {rate:,.0f} orders/s", flush=True)
                best[count] = max(best.get(count, 0.0), rate)
        print(f"cpu cores: {os.cpu_count()}; best of {args.rounds} per count, {args.orders} orders each")
        for count in COUNTS:
            print(f"{count} consumer(s): {best[count]:,.0f} orders/s  x{best[count] / best[1]:.2f}")
        print("ratios " + " ".join(f"{c}:{best[c] / best[1]:.2f}" for c in COUNTS), flush=True)
        return 0
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
