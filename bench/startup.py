"""Benchmark: the single-file dispatchctl (the pyz of scripts/build-dist) against a virtualenv
install of the same checkout, started the same way in the same run: ``--version`` and ``status``.

In one booted systemd-nspawn host (Debian 12, its own /usr/bin/python3, no psutil) against a real
RabbitMQ node, with dispatch installed and running:

- the pyz at /usr/local/bin/dispatchctl (it runs from its unpacked copy in
  /var/cache/dispatchctl/pyz: the first run unpacks it, timed apart as ``pyz_first_run_s``);
- a virtualenv made there with the host's python3 and ``pip install`` from a wheelhouse built here
  with this machine's pip (offline inside), ``/opt/dispatchctl/bin/dispatchctl``.

Each command is timed inside the host (a python3 loop around subprocess.run, so no nsenter in the
figures), the two installs alternating which goes first, after a warm-up run of each (compiled-code
caches written). Printed: the medians, ``version_ratio`` and ``status_ratio`` = pyz / virtualenv
(goal <= 1.5), and the pyz run straight from its zip (DISPATCHCTL_PYZ_UNPACK=0) for comparison.
Run as root: ``.venv/bin/python bench/startup.py [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roboshop_dispatch.lab.broker import Broker  # noqa: E402
from roboshop_dispatch.lab.nspawn import Container, ensure_rootfs  # noqa: E402
from tests.support.dist import build_dist  # noqa: E402

VENV = "/opt/dispatchctl"
PYZ = "/usr/local/bin/dispatchctl"
TIMER = """
import json, subprocess, sys, time
commands, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
times = {name: [] for name in commands}
for i in range(rounds):
    for name in (list(commands) if i % 2 == 0 else list(reversed(list(commands)))):
        started = time.perf_counter()
        subprocess.run(commands[name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times[name].append(time.perf_counter() - started)
print(json.dumps(times))
"""


def wheelhouse(out: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"pip wheel failed:\n{res.stderr[-3000:]}")
    out.chmod(0o755)


def prepare(host: Container, pyz: Path, broker: Broker) -> float:
    """The virtualenv and the pyz on the host, dispatch installed (by the pyz); the pyz's first run."""
    host.run(["python3", "-m", "venv", VENV])
    host.run([f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/wheels", "roboshop-dispatch"],
             timeout=600)
    host.path(PYZ).write_bytes(pyz.read_bytes())
    host.path(PYZ).chmod(0o755)
    started = time.perf_counter()
    host.run([PYZ, "--help"])
    first = time.perf_counter() - started
    host.write("/root/amqp.pass", broker.password + "\n")
    host.run([PYZ, "install", "--amqp-host", broker.host, "--amqp-port", str(broker.port),
              "--amqp-user", broker.user, "--amqp-pass-file", "/root/amqp.pass"])
    host.wait_for(lambda: broker.queue_counts().get("orders", (0, 0))[1] == 1, timeout=30, what="dispatch consuming")
    return first


def measure(host: Container, rounds: int) -> Dict[str, List[float]]:
    commands = {
        "pyz --version": [PYZ, "--version"], "venv --version": [f"{VENV}/bin/dispatchctl", "--version"],
        "pyz status": [PYZ, "status"], "venv status": [f"{VENV}/bin/dispatchctl", "status"],
        "pyz status (from its zip)": ["env", "DISPATCHCTL_PYZ_UNPACK=0", PYZ, "status"],
    }
    host.run(["python3", "-c", TIMER, json.dumps(commands), "2"])  # warm-up: caches written
    out = host.run(["python3", "-c", TIMER, json.dumps(commands), str(rounds)], timeout=1200).stdout
    return dict(json.loads(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rootfs = ensure_rootfs(log=lambda m: print(m, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-startup-") as tmp:
        res = build_dist(Path(tmp) / "dist", "--pyz-only")
        if res.returncode != 0:
            raise SystemExit(f"scripts/build-dist failed:\n{res.stderr}")
        pyz = next((Path(tmp) / "dist").glob("dispatchctl-*.pyz"))
        size = pyz.stat().st_size
        wheelhouse(Path(tmp) / "wheels")
        broker = Broker().start()
        host = Container(rootfs, extra_args=[f"--bind-ro={tmp}/wheels:/wheels"])
        try:
            host.boot()
            first = prepare(host, pyz, broker)
            times = measure(host, args.rounds)
        finally:
            host.poweroff()
            broker.stop()
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"pyz {size / 1024:.0f} KiB; in a Debian 12 systemd-nspawn host (python3 "
          f"{host_python(rootfs)}), median of {args.rounds} each, alternating:")
    for name, value in median.items():
        print(f"  {name:28} {value * 1000:7.1f} ms")
    print(f"pyz_first_run_s={first:.2f}   (unpacking into /var/cache/dispatchctl/pyz, then `--help`)")
    print(f"version_ratio={median['pyz --version'] / median['venv --version']:.2f}   (pyz / virtualenv, goal <= 1.5)")
    print(f"status_ratio={median['pyz status'] / median['venv status']:.2f}   (pyz / virtualenv, goal <= 1.5)")
    print(f"status_from_zip_ratio={median['pyz status (from its zip)'] / median['venv status']:.2f}   "
          "(the pyz without its unpacked copy)")
    return 0


def host_python(rootfs: Path) -> str:
    return (rootfs / "usr/bin/python3").resolve().name.removeprefix("python")


if __name__ == "__main__":
    sys.exit(main())
