#!/usr/bin/env python3
"""Failover of dispatch on a real 3-node RabbitMQ cluster with a quorum ``orders`` (run by hand).

Starts its own cluster (tests/support/cluster.py: nodes on 127.0.0.1-3, one AMQP port), declares
the topology with ``x-queue-type: quorum`` from node 1 and runs two real consumer processes
(``python -m roboshop_dispatch.consumer``, DISPATCH_QUEUE_TYPE=quorum, default simulated work)
on two nodes that do not lead the queue. A publisher sends payment-shaped orders with publisher
confirms at a steady rate (persistent, mandatory, retried until confirmed) from a third node list.

1. kill -9 the node consumer 1 is on (not the leader): consumer 1 reconnects to the next node of
   its AMQP_HOST list, which is the leader's; seconds from the kill to its next dispatched order.
   That node is then restarted: with it still down, killing the leader in step 2 would leave one
   of three members, no majority, and no quorum queue can elect a leader then (Raft).
2. kill -9 the queue leader (consumer 1 is now connected to it): a new leader is elected, consumer
   1 reconnects, consumer 2 (whose node stays up) keeps its connection; seconds from the kill to
   each one's next dispatched order.
3. restart the leader's node; the publisher stops after a few more seconds.

The baseline, in the same run and the same failures: a bare pika consumer (tests' payment
helpers aside, nothing of dispatch) on the same queue with consumer 1's host list, that
reconnects at once to the next host whenever its connection is lost and acks each order on
receipt: the least any consumer must do to fail over. It is killed with consumer 1 each time, and
its resume is measured the same way; ``resume_ratio`` = consumer 1's / the baseline's per step.

Then every confirmed order must have been handled at least once (lost=0, counting the
baseline's share); orders dispatched twice (redelivered after a connection loss) are counted; the
consumers must never have exited. The last line is ``lost=N duplicates=N
resume_s=NODE,LEADER1,LEADER2``, the one before it the baseline's times and the ratios. Exit 1
when an order was lost or a consumer exited.

    .venv/bin/python bench/failover.py [--rate 200] [--settle 4]
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional, Set

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from roboshop_dispatch import amqp  # noqa: E402
from tests.support.cluster import Cluster, Node  # noqa: E402
from tests.support.consumer import Consumer, consumer_env, order_id  # noqa: E402
from tests.support.payment import ConfirmingPublisher, make_order, parameters  # noqa: E402

VHOST = "failover"
# the baseline consumer: bare pika, at once to the next host on any loss, ack on receipt; its lines
# look like dispatch's ("consuming orders on HOST:PORT", "INFO order ID dispatched") for TimedConsumer
BASELINE = r"""
import json, os, signal, sys
import pika
import pika.exceptions
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
hosts, port = os.environ["AMQP_HOST"].split(","), int(os.environ["AMQP_PORT"])
creds = pika.PlainCredentials(os.environ["AMQP_USER"], os.environ["AMQP_PASS"])
def on_message(channel, method, properties, body):
    print(f"INFO order {json.loads(body)['orderid']} dispatched (baseline)", flush=True)
    channel.basic_ack(method.delivery_tag)
attempt = 0
while True:
    host = hosts[attempt % len(hosts)]
    attempt += 1
    try:
        conn = pika.BlockingConnection(pika.ConnectionParameters(host, port, os.environ["AMQP_VHOST"], creds))
        channel = conn.channel()
        channel.basic_qos(prefetch_count=100)
        channel.basic_consume("orders", on_message)
        print(f"INFO consuming orders on {host}:{port} (baseline)", flush=True)
        channel.start_consuming()
    except (pika.exceptions.AMQPError, OSError) as exc:
        print(f"WARNING baseline: lost {host}: {type(exc).__name__}", flush=True)
"""


def params(cluster: Cluster, nodes: List[Node]) -> List[pika.ConnectionParameters]:
    return [parameters(n.address, cluster.port, VHOST, cluster.user, cluster.password) for n in nodes]


class SteadyPublisher(threading.Thread):
    """Publishes one order every 1/rate s (confirmed, retried through failover) until stopped."""

    def __init__(self, publisher: ConfirmingPublisher, rate: float) -> None:
        super().__init__(daemon=True)
        self.publisher = publisher
        self.interval = 1.0 / rate
        self.halt = threading.Event()
        self.failure: Optional[BaseException] = None
        self.longest_wait = 0.0  # the longest publish (until confirmed), seconds

    def run(self) -> None:
        i = 0
        next_at = time.monotonic()
        try:
            while not self.halt.is_set():
                started = time.monotonic()
                self.publisher.publish(make_order(i))
                self.longest_wait = max(self.longest_wait, time.monotonic() - started)
                i += 1
                next_at = max(next_at + self.interval, time.monotonic() - 1.0)
                time.sleep(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # reported by main
            self.failure = exc


class TimedConsumer(Consumer):
    """A consumer whose output lines carry the monotonic time they were read at."""

    def __init__(self, env, argv) -> None:
        self.times: List[float] = []
        super().__init__(env, argv)

    def _take(self, line: str) -> None:
        self.times.append(time.monotonic())
        super()._take(line)


def _resumed_at(consumer: TimedConsumer, mark: int, reconnect: bool, before: Set[str]) -> Optional[float]:
    """When the first order confirmed after the kill (not in ``before``) was logged after line
    ``mark`` (and after a new "consuming" line): orders already in flight at the kill do not count."""
    start = mark
    if reconnect:
        starts = [i for i in range(mark, len(consumer.lines)) if " consuming orders on " in consumer.lines[i]]
        if not starts:
            return None
        start = starts[0]
    for i in range(start, len(consumer.lines)):
        orderid = order_id(consumer.lines[i])
        if orderid is not None and orderid not in before:
            return consumer.times[i]
    return None


def resumed(consumer: TimedConsumer, killed_at: float, mark: int, reconnect: bool, before: Set[str],
            timeout: float = 120) -> float:
    """Seconds from ``killed_at`` until ``consumer`` logged an order confirmed after the kill (not in
    ``before``) after line ``mark`` (and, with ``reconnect``, after a new "consuming" line), by the
    time each line was read."""
    consumer.wait(lambda: _resumed_at(consumer, mark, reconnect, before) is not None, timeout,
                  "the consumer to dispatch again")
    with consumer.cond:
        at = _resumed_at(consumer, mark, reconnect, before)
    assert at is not None
    return at - killed_at


def on(cluster: Cluster, consumer: TimedConsumer) -> Node:
    line = [ln for ln in consumer.lines if " consuming orders on " in ln][-1]
    return cluster.node_at(line.split(" consuming orders on ", 1)[1].split()[0].rsplit(":", 1)[0])


def start_consumer(cluster: Cluster, order: List[Node], number: int) -> TimedConsumer:
    env = consumer_env(cluster, VHOST, AMQP_HOST=",".join(n.address for n in order), DISPATCH_QUEUE_TYPE="quorum")
    consumer = TimedConsumer(env, [sys.executable, "-m", "roboshop_dispatch.consumer"])
    consumer.wait_consuming(timeout=60)
    print(f"consumer {number} (pid {consumer.proc.pid}) consuming on {on(cluster, consumer).name}", flush=True)
    return consumer


def start_baseline(cluster: Cluster, order: List[Node]) -> TimedConsumer:
    env = consumer_env(cluster, VHOST, AMQP_HOST=",".join(n.address for n in order))
    baseline = TimedConsumer(env, [sys.executable, "-c", BASELINE])
    baseline.wait_consuming(timeout=60)
    print(f"baseline (pid {baseline.proc.pid}) consuming on {on(cluster, baseline).name}", flush=True)
    return baseline


def scenario(cluster: Cluster, rate: float, settle: float) -> int:
    cluster.add_vhost(VHOST)
    conn = pika.BlockingConnection(params(cluster, [cluster.nodes[0]]))
    amqp.declare_topology(conn.channel(), queue_type=amqp.QUORUM)
    conn.close()
    leader = cluster.leader(VHOST)
    a, b = [n for n in cluster.nodes if n is not leader]
    print(f"quorum orders: leader {leader.name}, members {cluster.queue_info(VHOST).get('members')}", flush=True)
    c1 = start_consumer(cluster, [a, leader, b], 1)
    c2 = start_consumer(cluster, [b, a, leader], 2)
    base = start_baseline(cluster, [a, leader, b])  # on consumer 1's node, with its host list
    publisher = ConfirmingPublisher(params(cluster, [b, a, leader]), give_up_after=120)  # type: ignore[arg-type]
    pub = SteadyPublisher(publisher, rate)
    pub.start()
    time.sleep(settle)

    print(f"1. kill {a.name} (consumer 1's node, not the leader)", flush=True)
    mark, base_mark = len(c1.lines), len(base.lines)
    killed_at, before = time.monotonic(), set(publisher.confirmed)
    a.kill()
    node_s = resumed(c1, killed_at, mark, reconnect=True, before=before)
    base_node_s = resumed(base, killed_at, base_mark, reconnect=True, before=before)
    print(f"   consumer 1 resumed on {on(cluster, c1).name} after {node_s:.2f}s (baseline: {base_node_s:.2f}s); "
          f"restarting {a.name}", flush=True)
    a.restart()
    time.sleep(settle)

    leader = cluster.leader(VHOST)
    was_on = (on(cluster, c1), on(cluster, c2), on(cluster, base))
    print(f"2. kill the leader {leader.name} (consumers on {was_on[0].name}, {was_on[1].name}; baseline on "
          f"{was_on[2].name})", flush=True)
    marks = (len(c1.lines), len(c2.lines), len(base.lines))
    killed_at, before = time.monotonic(), set(publisher.confirmed)
    leader.kill()
    new = cluster.wait_leader(VHOST, not_on=leader)
    elected_s = time.monotonic() - killed_at
    leader1_s = resumed(c1, killed_at, marks[0], reconnect=was_on[0] is leader, before=before)
    leader2_s = resumed(c2, killed_at, marks[1], reconnect=was_on[1] is leader, before=before)
    base_leader_s = resumed(base, killed_at, marks[2], reconnect=was_on[2] is leader, before=before)
    print(f"   new leader {new.name} seen by rabbitmqctl within {elected_s:.2f}s; consumers resumed after "
          f"{leader1_s:.2f}s and {leader2_s:.2f}s (baseline: {base_leader_s:.2f}s)", flush=True)

    print(f"3. restart {leader.name}", flush=True)
    leader.restart()
    time.sleep(settle)
    return finish(pub, publisher, (c1, c2, base), (node_s, leader1_s, leader2_s), (base_node_s, base_leader_s))


def finish(pub: SteadyPublisher, publisher: ConfirmingPublisher, consumers: tuple, resume: tuple,
           base_resume: tuple) -> int:
    """Stop publishing, wait for every confirmed order, count the lost and the duplicates, print."""
    c1, c2, base = consumers
    node_s, leader1_s, leader2_s = resume
    base_node_s, base_leader_s = base_resume
    pub.halt.set()
    pub.join(180)
    publisher.close()
    if pub.failure is not None:
        print(f"the publisher gave up: {type(pub.failure).__name__}: {pub.failure}", flush=True)
    confirmed = set(publisher.confirmed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not confirmed <= (set(c1.orders) | set(c2.orders) | set(base.orders)):
        time.sleep(0.2)
    alive = all(c.proc.poll() is None for c in (c1, c2, base))
    everything = collections.Counter(c1.orders) + collections.Counter(c2.orders)
    lost = len(confirmed - set(everything) - set(base.orders))
    duplicates = sum(n - 1 for n in everything.values())
    codes = [c.stop()[0] for c in (c1, c2, base)]
    print(f"published {publisher.attempts} times for {len(confirmed)} confirmed orders "
          f"({publisher.reconnects} publisher reconnects, longest publish {pub.longest_wait:.2f}s); "
          f"dispatched {sum(everything.values())} ({len(c1.orders)} + {len(c2.orders)} distinct; the baseline took "
          f"{len(base.orders)}); consumers {'never exited' if alive else 'EXITED'}, stopped with {codes}", flush=True)
    print(f"baseline_resume_s={base_node_s:.2f},{base_leader_s:.2f} resume_ratio=node:{node_s / base_node_s:.2f} "
          f"leader:{leader1_s / base_leader_s:.2f}   (consumer 1 / bare pika, same kills)", flush=True)
    print(f"lost={lost} duplicates={duplicates} resume_s={node_s:.2f},{leader1_s:.2f},{leader2_s:.2f}", flush=True)
    return 0 if lost == 0 and alive and pub.failure is None else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second (default 200)")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds of steady traffic between steps")
    args = parser.parse_args()
    started = time.monotonic()
    cluster = Cluster()
    try:
        cluster.start()
        print(f"cluster of 3 up in {time.monotonic() - started:.1f}s (AMQP port {cluster.port})", flush=True)
        return scenario(cluster, args.rate, args.settle)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
