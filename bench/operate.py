"""Benchmark: ``dispatchctl status`` and ``dispatchctl check-rabbitmq`` on a healthy host.

Starts a throwaway RabbitMQ node and boots a real systemd host (systemd-nspawn, as the tests do),
installs dispatch there, then runs each command N times (default 10) inside the host, interleaved
with a baseline measured in the same run:

- ``status`` against ``systemctl status dispatch`` (what the on-call engineer would type instead);
- ``check-rabbitmq`` against a bare pika client (import pika, connect, passively declare
  ``orders``, close): the least any Python check of the broker costs.

Prints the median wall time of each, the ratio to its baseline, the median CPU time (user+sys,
less sensitive to a busy machine) and, last, ``status_ms=<median> check_rabbitmq_ms=<median>``.
Target on this machine: under 400 ms each. Run as root: ``.venv/bin/python bench/operate.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from roboshop_dispatch.lab.nspawn import Container, ensure_rootfs, venv_bin  # noqa: E402

TARGET_MS = 400.0


def timed(host: Container, argv: Sequence[str], expect_rc: int = 0) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children) of one run inside the host."""
    before = os.times()
    started = time.monotonic()
    res = host.run(argv, check=False, timeout=60)
    wall = time.monotonic() - started
    after = os.times()
    if res.returncode != expect_rc:
        raise SystemExit(f"{' '.join(argv)} exited {res.returncode}, expected {expect_rc}:\n{res.stdout}\n{res.stderr}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def median_ms(values: List[float]) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    # byte-compile this checkout first: inside the host it is mounted read-only, so a stale .pyc
    # would be recompiled on every run and measured with the command
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "roboshop_dispatch")], check=True,
                   stdout=subprocess.DEVNULL)
    broker = Broker().start()
    host = Container(ensure_rootfs())
    try:
        host.boot()
        host.write("/root/amqp.pass", broker.password + "\n")
        res = host.dispatchctl("install", "--amqp-host", broker.host, "--amqp-port", str(broker.port),
                               "--amqp-pass-file", "/root/amqp.pass")
        if res.returncode != 0:
            raise SystemExit(f"install failed:\n{res.stdout}\n{res.stderr}")
        host.wait_for(lambda: broker.queue_counts().get("orders", (0, 0))[1] == 1, timeout=30,
                      what="dispatch consuming")

        python = venv_bin("python")
        bare_pika = (
            "import pika\n"
            f"c = pika.BlockingConnection(pika.ConnectionParameters({broker.host!r}, {broker.port}, '/', "
            f"pika.PlainCredentials({broker.user!r}, open('/root/amqp.pass').read().strip())))\n"
            "c.channel().queue_declare('orders', passive=True)\n"
            "c.close()\n"
        )
        cases = {
            "status": ([venv_bin("dispatchctl"), "status"], ["systemctl", "status", "dispatch", "--no-pager"],
                       "systemctl status dispatch"),
            "check-rabbitmq": ([venv_bin("dispatchctl"), "check-rabbitmq"], [python, "-c", bare_pika],
                               "bare pika connect + passive declare"),
        }
        results = {}
        nsenter = [timed(host, ["true"])[0] for _ in range(5)]
        for name, (command, baseline, _label) in cases.items():
            for _ in range(2):  # warm the page cache
                timed(host, command)
                timed(host, baseline)
            walls, cpus, base_walls, base_cpus = [], [], [], []
            for _ in range(args.runs):  # interleaved: a busy moment hits both alike
                wall, cpu = timed(host, command)
                walls.append(wall)
                cpus.append(cpu)
                wall, cpu = timed(host, baseline)
                base_walls.append(wall)
                base_cpus.append(cpu)
            results[name] = (median_ms(walls), median_ms(cpus), median_ms(base_walls), median_ms(base_cpus))

        print(f"dispatchctl operate benchmark: {args.runs} runs each, inside a systemd-nspawn host "
              f"(nsenter overhead {median_ms(nsenter):.0f} ms, included in every figure)")
        print(f"{'command':<28}{'median':>10}{'cpu':>9}   {'baseline':<40}{'median':>10}{'cpu':>9}{'ratio':>8}")
        for name, (wall, cpu, base_wall, base_cpu) in results.items():
            label = cases[name][2]
            print(f"dispatchctl {name:<16}{wall:>8.0f}ms{cpu:>7.0f}ms   {label:<40}{base_wall:>8.0f}ms"
                  f"{base_cpu:>7.0f}ms{wall / base_wall:>7.1f}x")
        for name, (wall, *_rest) in results.items():
            verdict = "met" if wall < TARGET_MS else "NOT met"
            print(f"target {name} < {TARGET_MS:.0f} ms: {verdict} ({wall:.0f} ms)")
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"status_ms={results['status'][0]:.0f} check_rabbitmq_ms={results['check-rabbitmq'][0]:.0f}")
        return 0
    finally:
        host.poweroff()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
