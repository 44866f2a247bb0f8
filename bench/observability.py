#!/usr/bin/env python3
"""What tracing and metrics cost the consumer, measured against the consumer without them in the
same run, on a real RabbitMQ with a real OTLP receiver (tests/support/otlp.py) and /metrics
scraped every second as Prometheus would.

The consumer runs as on the hosts: the zipapp (with its pure-Python protobuf) under ``--python``
in isolated mode. For each workload N payment-shaped orders carrying payment's Instana headers are preloaded into
a fresh vhost and drained (timed from the "consuming" line to the N-th order line):

  off: the bundled consumer as installed by default (nothing imported);
  on:  OTEL_EXPORTER_OTLP_ENDPOINT (SDK defaults: 2,048-span queue, 512-span batches, 5 s) and
       DISPATCH_METRICS_LISTEN set.

Workloads: the default simulated work (42-83 ms twice per order, what a real dispatch does) and
none (the drain rate: every order's CPU cost, spans included). Off and on alternate, ``--rounds``
each, the best of each counts. Prints rates, ``ratio=on/off`` per workload (goal >= 0.8 with the
default work), the peak RSS with tracing on (goal <= 60 MB), the spans exported and dropped, then
the zipapp's size and its start-up time and RSS with everything off, with and without the
observability packages inside (built the same way, same run).

    .venv/bin/python bench/observability.py [--orders N] [--rounds R]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, Optional
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from consumer_throughput import Bench, vm_hwm_kb  # noqa: E402

from roboshop_dispatch import bundle  # noqa: E402
from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from tests.support.otlp import Receiver, free_port  # noqa: E402

DEFAULT_WORK = None  # the consumer's own default: 42-83 ms twice


class Observed(Bench):
    """The throughput bench's broker, preload and checks; the consumer with extra settings."""

    def __init__(self, broker: Broker, orders: int, receiver: Receiver, argv: list) -> None:
        super().__init__(broker, orders)
        self.receiver = receiver
        self.argv = argv  # how the consumer runs: the zipapp on the hosts' interpreter
        self.extra: Dict[str, str] = {}
        self.dropped = 0

    def preload(self, vhost: str) -> None:
        import json

        import pika

        from roboshop_dispatch import amqp
        from tests.support.payment import EXCHANGE, ROUTING_KEY, make_order

        conn = pika.BlockingConnection(self.params(vhost))
        ch = conn.channel()
        amqp.declare_topology(ch)
        for i in range(self.orders):
            headers = {"X-INSTANA-T": f"{i + 1:016x}", "X-INSTANA-S": f"{i + 7:016x}", "X-INSTANA-L": "1"}
            ch.basic_publish(EXCHANGE, ROUTING_KEY, json.dumps(make_order(i)).encode(),
                             pika.BasicProperties(headers=headers))
        while ch.queue_declare(amqp.QUEUE, passive=True).method.message_count < self.orders:
            time.sleep(0.05)
        conn.close()

    def consumer(self, vhost: str, processing: Optional[str]) -> Dict[str, float]:
        """The throughput bench's own timing window (``Bench.window``), with /metrics scraped."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AMQP_", "DISPATCH_", "OTEL_", "NOTIFY_"))}
        b = self.broker
        env.update(AMQP_HOST=b.host, AMQP_PORT=str(b.port), AMQP_VHOST=vhost, AMQP_USER=b.user,
                   AMQP_PASS=b.password, PYTHONPATH=str(ROOT), **self.extra)
        if processing is not None:
            env["DISPATCH_PROCESSING_MS"] = processing
        self.dropped = 0
        stop = threading.Event()
        scraper = threading.Thread(target=self._scrape, args=(stop,), daemon=True)
        scraper.start()
        try:
            return self.window("the consumer", self.argv, env, b" consuming orders ", (b"INFO order ", b"ERROR order "),
                               self.orders)
        finally:
            stop.set()
            scraper.join(5)

    def _scrape(self, stop: threading.Event) -> None:
        """As Prometheus would, every second; keeps the dropped-spans counter's last value."""
        listen = self.extra.get("DISPATCH_METRICS_LISTEN")
        while listen and not stop.wait(1.0):
            with contextlib.suppress(OSError):  # a scrape that fails is Prometheus's problem, not ours
                text = urllib.request.urlopen(f"http://{listen}/metrics", timeout=2).read().decode()
                for line in text.splitlines():
                    if line.startswith("dispatch_trace_spans_dropped_total "):
                        self.dropped = int(float(line.split()[1]))


def throughput(bench: Observed, rounds: int, work: Optional[str], label: str) -> Dict[str, float]:
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": bench.receiver.endpoint, "DISPATCH_METRICS_LISTEN": f"127.0.0.1:{free_port()}"}
    best: Dict[str, Dict[str, float]] = {}
    for _ in range(rounds):
        for mode in ("off", "on"):
            bench.extra = on if mode == "on" else {}
            before = len(bench.receiver.spans)
            result = bench.run("consumer", work)
            result["spans"] = len(bench.receiver.spans) - before
            result["dropped"] = bench.dropped
            print(f"  {label} {mode}: {result['rate']:,.0f} orders/s, peak RSS {result['peak_mb']:.1f} MB"
                  + (f", spans exported {result['spans']:,}, dropped {result['dropped']:,} (last scrape)"
                     if mode == "on" else ""),
                  flush=True)
            if mode not in best or result["rate"] > best[mode]["rate"]:
                best[mode] = result
    ratio = best["on"]["rate"] / best["off"]["rate"]
    print(f"{label}: off {best['off']['rate']:,.0f}/s, on {best['on']['rate']:,.0f}/s, ratio={ratio:.2f}; "
          f"peak RSS on {best['on']['peak_mb']:.1f} MB (off {best['off']['peak_mb']:.1f} MB)", flush=True)
    return {"ratio": ratio, "peak_on": best["on"]["peak_mb"]}


def zipapps(python: str, runs: int = 7) -> None:
    """The zipapp's size, start-up time (exec to the consuming line) and RSS, everything off,
    with and without the observability packages (the same build, one with them left out)."""
    with mock.patch.object(bundle, "observability_sources", lambda: {}):
        without = bundle.build_zipapp(python)
    with_them = bundle.build_zipapp(python)
    print(f"zipapp: {len(without):,} bytes without the observability packages, {len(with_them):,} with them")
    broker = Broker().start()
    try:
        broker.ctl("add_vhost", "zip")
        broker.ctl("set_permissions", "-p", "zip", broker.user, ".*", ".*", ".*")
        with tempfile.TemporaryDirectory() as tmp:
            times: Dict[str, list] = {"without": [], "with": []}
            rss: Dict[str, list] = {"without": [], "with": []}
            for name, data in (("without", without), ("with", with_them)):
                (Path(tmp) / name).write_bytes(data)
            for _ in range(runs):
                for name in ("without", "with"):
                    seconds, kb = _start_once(python, Path(tmp) / name, broker)
                    times[name].append(seconds)
                    rss[name].append(kb)
        for name in ("without", "with"):
            print(f"  {name}: start-up {statistics.median(times[name]) * 1000:.0f} ms, "
                  f"RSS {statistics.median(rss[name]) / 1024:.1f} MB (medians of {runs})")
    finally:
        broker.stop()


def _start_once(python: str, app: Path, broker: Broker) -> tuple:
    env = {"PATH": "/usr/bin:/bin", "AMQP_HOST": broker.host, "AMQP_PORT": str(broker.port), "AMQP_VHOST": "zip",
           "AMQP_USER": broker.user, "AMQP_PASS": broker.password}
    start = time.monotonic()
    proc = subprocess.Popen([python, "-I", str(app)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if b" consuming orders " in line:
            break
    seconds = time.monotonic() - start
    kb = vm_hwm_kb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=20)
    return seconds, kb


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20_000, help="orders per run (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of off and on each; the best counts (3)")
    parser.add_argument("--python", default="/usr/bin/python3", help="the interpreter the zipapp runs on")
    args = parser.parse_args(argv)
    broker = Broker().start()
    try:
        with Receiver() as receiver, tempfile.TemporaryDirectory() as tmp:
            app = Path(tmp) / "dispatch"
            app.write_bytes(bundle.build_zipapp(args.python))
            bench = Observed(broker, args.orders, receiver, [args.python, "-I", str(app)])
            version = subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip()
            print(f"{args.orders:,} orders per run, best of {args.rounds}: the zipapp on {version}", flush=True)
            work = throughput(bench, args.rounds, DEFAULT_WORK, "default work (42-83 ms x2)")
            drain = throughput(bench, args.rounds, "0", "no simulated work")
    finally:
        broker.stop()
    zipapps(args.python)
    print(f"ratio={work['ratio']:.2f} (default work; goal >= 0.8) drain_ratio={drain['ratio']:.2f} "
          f"peak_rss_on={max(work['peak_on'], drain['peak_on']):.1f}MB (goal <= 60)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
