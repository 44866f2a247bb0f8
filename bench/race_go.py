#!/usr/bin/env python3
"""The race against the original Go dispatch: one broker, the same orders, the same clock.

Starts its own throwaway RabbitMQ node; each run fills ``orders`` with N payment-shaped orders
(default 20,000), starts one consumer as a real subprocess writing to a file, and times it from
its spawn (its start-up counts) to the line of its N-th order, read by one loop for every row:

  go      the Go original, run unmodified from ``--go-binary`` (auto-ack: it loses orders on a
          crash); its N-th ``Order {...}`` line, which it writes as it takes each delivery;
  fast    the bundled consumer, default delivery path (manual acks; each order's line is
          written before its ack), simulated processing off (DISPATCH_PROCESSING_MS=0);
  pika    the same with DISPATCH_FASTPATH=0 (pika's own delivery path);
  bare    bare pika: BlockingConnection, ack each, prefetch 100; one line after its N-th ack.

After each run the consumer is stopped and the queue must be empty (nothing unacked came back).
Also printed per row: when the broker's ``orders`` first showed no ready message (the Go
original, auto-acking, has every order moved into its own memory long before it logs them: the
broker's view of "drained" is not the orders handled), peak RSS (VmHWM) and CPU seconds.
Rows alternate in each round; the best of ``--rounds`` counts (the machine is shared).

The Go binary is an optional, documented build (../shared/baselines/go-dispatch/README.md);
without ``--go-binary`` the bench says so and races the rest. The original connects to port 5672
only (it has no port setting), so with it the broker listens on 5672 of a loopback address that
has that port free (127.0.0.1 first).

    .venv/bin/python bench/race_go.py [--go-binary /tmp/anchor-go/dispatch] [--orders N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import pika  # noqa: E402
from consumer_throughput import cpu_seconds, vm_hwm_kb  # noqa: E402

from roboshop_dispatch import amqp  # noqa: E402
from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from roboshop_dispatch.lab.orders import EXCHANGE, ROUTING_KEY, make_order  # noqa: E402

GO_PORT = 5672  # the original's only port
BARE = r"""
import sys
import pika
host, port, user, password, n = sys.argv[1:6]
conn = pika.BlockingConnection(pika.ConnectionParameters(host, int(port), "/", pika.PlainCredentials(user, password)))
ch = conn.channel()
ch.basic_qos(prefetch_count=100)
left = int(n)
def on_message(channel, method, properties, body):
    global left
    channel.basic_ack(method.delivery_tag)
    left -= 1
    if left == 0:
        print("bare done", flush=True)
        channel.stop_consuming()
ch.basic_consume("orders", on_message)
ch.start_consuming()
conn.close()
"""
ROWS = {  # name -> label
    "go": "the Go original (auto-ack)",
    "fast": "bundled, fast path (manual acks)",
    "pika": "bundled, pika path (manual acks)",
    "bare": "bare pika, ack each, qos 100",
}


def go_address() -> str:
    """A loopback address whose port 5672 is free (the Go original connects to 5672 only)."""
    for host in ("127.0.0.1", *(f"127.0.56.{n}" for n in range(1, 60))):
        with socket.socket() as s:
            try:
                s.bind((host, GO_PORT))
                return host
            except OSError:
                continue
    raise RuntimeError("no loopback address has port 5672 free")


def is_end(name: str, line: bytes) -> bool:
    if name == "go":
        return b" Order {" in line  # log.Printf("Order %s\n", d.Body): one per delivery taken
    if name == "bare":
        return line.startswith(b"bare done")
    return line.startswith((b"INFO order ", b"ERROR order "))


class Race:
    def __init__(self, broker: Broker, orders: int, go_binary: Optional[str]) -> None:
        self.broker = broker
        self.orders = orders
        self.go_binary = go_binary
        self.params = pika.ConnectionParameters(broker.host, broker.port, "/", pika.PlainCredentials(
            broker.user, broker.password))

    def fill(self) -> None:
        """A fresh ``orders`` holding N orders exactly as payment publishes them."""
        conn = pika.BlockingConnection(self.params)
        ch = conn.channel()
        ch.queue_delete(amqp.QUEUE)
        amqp.declare_topology(ch)
        props = pika.BasicProperties(headers={})
        for i in range(self.orders):
            ch.basic_publish(EXCHANGE, ROUTING_KEY, json.dumps(make_order(i)).encode(), props)
        while ch.queue_declare(amqp.QUEUE, passive=True).method.message_count < self.orders:
            time.sleep(0.02)
        conn.close()

    def argv_env(self, name: str) -> Tuple[List[str], Dict[str, str], int]:
        b = self.broker
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AMQP_", "DISPATCH_", "OTEL_", "NOTIFY_"))}
        env.update(AMQP_HOST=b.host, AMQP_PORT=str(b.port), AMQP_USER=b.user, AMQP_PASS=b.password)
        if name == "go":
            return [str(self.go_binary)], env, self.orders
        if name == "bare":
            return [sys.executable, "-c", BARE, b.host, str(b.port), b.user, b.password, str(self.orders)], env, 1
        env.update(DISPATCH_PROCESSING_MS="0", DISPATCH_FASTPATH="1" if name == "fast" else "0",
                   PYTHONPATH=str(ROOT.parent))
        return [sys.executable, "-m", "roboshop_dispatch.consumer"], env, self.orders

    def run(self, name: str) -> Dict[str, float]:
        self.fill()
        argv, env, ends = self.argv_env(name)
        probe = pika.BlockingConnection(self.params)
        channel = probe.channel()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.log"
            with open(path, "ab") as sink:
                start = time.perf_counter()
                proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp)
            end: Optional[float] = None
            try:
                end, empty = self._watch(name, proc, path, channel, start, ends)
                peak, cpu = vm_hwm_kb(proc.pid) / 1024.0, cpu_seconds(proc.pid)
            finally:
                if (name != "bare" or end is None) and proc.poll() is None:  # bare pika exits by itself
                    proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=30)
            if name != "go" and code != 0:  # the original has no SIGTERM handler: it dies of it
                raise RuntimeError(f"{name} exited {code}: {path.read_text()[-2000:]}")
        left = channel.queue_declare(amqp.QUEUE, passive=True).method.message_count
        probe.close()
        if left:
            raise RuntimeError(f"{name}: {left} orders back in the queue after the run")
        return {"rate": self.orders / (end - start), "seconds": end - start, "empty": empty - start,
                "peak_mb": peak, "cpu": cpu}

    def _watch(self, name: str, proc: subprocess.Popen, path: Path, channel: object, start: float,
               ends: int) -> Tuple[float, float]:
        """Until the ``ends``-th end line: (when it was read, when ``orders`` first had no ready message)."""
        seen = 0
        tail = b""
        empty = 0.0
        next_probe = start
        with open(path, "rb") as out:
            while True:
                chunk = out.read()
                now = time.perf_counter()
                if chunk:
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()
                    seen += sum(1 for line in lines if is_end(name, line))
                    if seen >= ends:
                        return now, empty or now
                elif proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early ({proc.returncode}): {path.read_text()[-2000:]}")
                elif now - start > 120:
                    raise RuntimeError(f"{name} stalled after {seen} of {ends} lines")
                if not empty and now >= next_probe:  # the broker's view, every 10 ms at most
                    if channel.queue_declare(amqp.QUEUE, passive=True).method.message_count == 0:  # type: ignore
                        empty = time.perf_counter()
                    next_probe = time.perf_counter() + 0.01
                time.sleep(0.001)


def report(best: Dict[str, Dict[str, float]], orders: int) -> None:
    go = best.get("go", {}).get("rate")
    bare = best["bare"]["rate"]
    print(f"\n{orders:,} orders, best of the rounds; time from spawn to the N-th order's line:")
    print(f"{'consumer':36} {'orders/s':>9} {'seconds':>8} {'vs Go':>6} {'vs bare':>8} "
          f"{'peak RSS':>9} {'CPU s':>6} {'queue ready=0 at':>17}")
    for name, r in best.items():
        vs_go = f"{r['rate'] / go:.2f}x" if go else "-"
        print(f"{ROWS[name]:36} {r['rate']:9,.0f} {r['seconds']:8.3f} {vs_go:>6} {r['rate'] / bare:7.2f}x "
              f"{r['peak_mb']:6.1f} MB {r['cpu']:6.2f} {r['empty']:15.3f} s")
    if go:
        print(f"fast_vs_go={best['fast']['rate'] / go:.2f} pika_vs_go={best['pika']['rate'] / go:.2f} "
              f"fast_peak_rss_mb={best['fast']['peak_mb']:.1f}")
    else:
        print("the Go original was not raced (no --go-binary): build it unmodified as "
              "../shared/baselines/go-dispatch/README.md says, then pass --go-binary PATH")
    print(f"fast_vs_bare={best['fast']['rate'] / bare:.2f} pika_vs_bare={best['pika']['rate'] / bare:.2f}")


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--go-binary", help="the Go original, built unmodified (optional)")
    parser.add_argument("--orders", type=int, default=20_000, help="orders per run (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each row; the best counts (3)")
    args = parser.parse_args(argv)
    names = ["fast", "pika", "bare"]
    if args.go_binary:
        if not os.access(args.go_binary, os.X_OK):
            parser.error(f"--go-binary {args.go_binary}: not an executable file")
        names.insert(0, "go")
    else:
        print("no --go-binary: racing the bundled consumer and bare pika only", flush=True)
    # byte-compile this checkout first, so no run compiles it (PYTHONDONTWRITEBYTECODE may be set)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT.parent / "roboshop_dispatch")], check=True,
                   stdout=subprocess.DEVNULL)
    broker = Broker(GO_PORT, host=go_address()) if args.go_binary else Broker()
    try:
        broker.start()
        race = Race(broker, args.orders, args.go_binary)
        print(f"orders={args.orders} rounds={args.rounds} broker={broker.host}:{broker.port} "
              f"python={sys.version.split()[0]} pika={pika.__version__} cpus={os.cpu_count()} "
              f"load={os.getloadavg()[0]:.1f}", flush=True)
        best: Dict[str, Dict[str, float]] = {}
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]  # who goes first rotates
            for name in order:
                r = race.run(name)
                print(f"  round {round_ + 1} {name:4}: {r['rate']:7,.0f} orders/s ({r['seconds']:.3f} s, queue "
                      f"ready=0 at {r['empty']:.3f} s), peak RSS {r['peak_mb']:.1f} MB, CPU {r['cpu']:.2f} s",
                      flush=True)
                if name not in best or r["rate"] > best[name]["rate"]:
                    best[name] = r
        report({n: best[n] for n in names}, args.orders)
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
