#!/usr/bin/env python3
"""How long good orders wait behind hostile ones (issue 19), against a baseline measured in the
same run, on a real RabbitMQ (its own throwaway node, roboshop_dispatch/lab/broker.py).

For each delivery path (fast, pika) and body limit (the default 256 KiB, and 1 MiB so that the
digit rule alone stops the bodies), with the consumer's simulated work off:

  baseline: 20 good orders into an idle consumer, timed from the first publish to the 20th
            order line;
  hostile:  60 digit-heavy bodies of 1 MiB (valid JSON: an order holding a thousand 999-digit
            numbers), then the same 20 good orders, timed the same way.

Prints each time and ``ratio=<hostile/baseline>`` per case; the product promise (docs/design/threat-model.md)
is the hostile time under 10 s, tested in tests/test_consumer_hostile.py.

    .venv/bin/python bench/hostile_orders.py [--rounds R]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from tests.support.consumer import start_consumer  # noqa: E402
from tests.support.payment import EXCHANGE, ROUTING_KEY, PaymentPublisher, make_order, parameters  # noqa: E402
from tests.test_consumer_hostile import digit_heavy  # noqa: E402


def one(broker: Broker, path: str, limit: str, hostile: int) -> float:
    vhost = f"bench-{uuid.uuid4().hex[:8]}"
    broker.ctl("add_vhost", vhost)
    broker.ctl("set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*")
    consumer = start_consumer(broker, vhost, DISPATCH_FASTPATH=path, DISPATCH_PROCESSING_MS="0",
                              DISPATCH_MAX_BODY=limit or None)
    try:
        consumer.wait_consuming()
        params = parameters(broker.host, broker.port, vhost, broker.user, broker.password)
        good = [make_order(i) for i in range(20)]
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        started = time.monotonic()
        for i in range(hostile):
            ch.basic_publish(EXCHANGE, ROUTING_KEY, digit_heavy(i), pika.BasicProperties(headers={}))
        conn.close()
        with PaymentPublisher(params) as payment:
            for order in good:
                payment.publish(order)
        consumer.wait_orders([str(o["orderid"]) for o in good], timeout=300)
        return time.monotonic() - started
    finally:
        consumer.kill()
        broker.ctl("delete_vhost", vhost, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="runs of each measurement; the best is kept")
    args = parser.parse_args()
    broker = Broker()
    broker.start()
    try:
        for path, limit in (("1", ""), ("1", str(1024 * 1024)), ("0", ""), ("0", str(1024 * 1024))):
            base: List[float] = []
            hostile: List[float] = []
            for _ in range(args.rounds):
                base.append(one(broker, path, limit, 0))
                hostile.append(one(broker, path, limit, 60))
            name = f"{'fast' if path == '1' else 'pika'} path, body limit {limit or 'default (262144)'}"
            print(f"{name}: 20 good orders {min(base):.2f} s alone, {min(hostile):.2f} s behind 60 digit-heavy "
                  f"1 MiB bodies; ratio={min(hostile) / min(base):.1f}")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
