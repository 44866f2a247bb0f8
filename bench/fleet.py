"""Benchmark: a fleet of 3 fresh systemd hosts driven by ansible-playbook over ssh, our role
(ansible/site.yml) against the course's role (../shared/baselines/course/ansible/, run unmodified),
in the same run on the same kind of hosts.

- ours: 3 fresh hosts WITHOUT dispatchctl; the first run installs it (the role's default: the pyz
  of scripts/build-dist, built here, copied and checked against its sha256 on each host) and then
  the service (`dispatchctl install`, bundled flavour) against a real RabbitMQ; then the re-run;
  then, after `dispatchctl uninstall --purge` on each host, a first install of the service on hosts
  that already have dispatchctl.
- the course's: 3 other fresh hosts; its dispatch.yml as it is (facts, package, user, /app wiped
  and re-made, unarchive of the zip served on loopback exactly as bench/provision.py serves the
  course's fixture, `go mod init/get/build`, template, `state: restarted`), then its re-run. Its
  only input from here is ``-e dispatch_zip_url=<the loopback URL>``.

The two alternate which goes first, round after round (``--rounds``, default 2), as
bench/provision.py's go comparison does, so the machine's load hits both alike. Both use
ansible/ansible.cfg (ssh pipelining) and Ansible's ssh connection to each host's sshd on a loopback
port (tests/support/fleet.py). Printed: the wall time of each ansible-playbook run, the changed
count per host, and the ratios of the medians ``first_ratio`` / ``rerun_ratio`` = ours / course's
(below 1: ours is faster; goal for the first run: <= 0.5). Run as root: ``.venv/bin/python bench/fleet.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.provision import COURSE_DIR, serve_artifact  # noqa: E402
from roboshop_dispatch.lab.nspawn import ensure_rootfs  # noqa: E402
from tests.support.dist import build_dist  # noqa: E402
from tests.support.fleet import ANSIBLE_DIR, Fleet, PlayRun, run_playbook  # noqa: E402

HOSTS = 3


def build_pyz(out: Path) -> Path:
    """The single-file dispatchctl and its SHA256SUMS, built by scripts/build-dist from this checkout."""
    res = build_dist(out, "--pyz-only")
    if res.returncode != 0:
        raise SystemExit(f"scripts/build-dist failed:\n{res.stderr[-3000:]}")
    return next(out.glob("dispatchctl-*.pyz"))


def runs_on_fresh_hosts(playbook: Path, group_vars: Dict[str, str], *args: str,
                        service_again: bool = False) -> List[PlayRun]:
    """The first run and the re-run on 3 fresh hosts; with ``service_again``, the service is then
    uninstalled (``dispatchctl uninstall --purge``: dispatchctl itself stays) and the play run a
    third time: a first install on hosts that already have dispatchctl."""
    fleet = Fleet().up(HOSTS)  # a lab of its own: hosts, ssh, and the lab's broker (its inventory's vars)
    try:
        inventory = fleet.write_inventory(fleet.inventory(**group_vars))
        runs = [run_playbook(inventory, playbook, *args) for _ in range(2)]
        if service_again:
            for host in fleet.hosts.values():
                host.run(["/usr/local/bin/dispatchctl", "uninstall", "--purge", "--yes", "--json"])
            runs.append(run_playbook(inventory, playbook, *args))
        for n, run in enumerate(runs, 1):
            if run.returncode != 0 or len(run.stats) != HOSTS:
                raise SystemExit(f"{playbook} run {n} failed (exit {run.returncode}):\n{run.tail()}")
        return runs
    finally:
        fleet.down()


def report(label: str, rounds: List[List[PlayRun]]) -> List[float]:
    """Each round's runs, then the median of each run over the rounds."""
    names = ("first", "rerun", "service_first")
    for n, runs in enumerate(rounds, 1):
        for name, run in zip(names, runs):
            changed = ",".join(str(c) for _, c in sorted(run.changed().items()))
            print(f"round {n}: {label}_{name}_s={run.seconds:.2f}   changed per host: {changed}")
    medians = [statistics.median(runs[i].seconds for runs in rounds) for i in range(len(rounds[0]))]
    print("  ".join(f"{label}_{name}_median_s={value:.2f}" for name, value in zip(names, medians)))
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ensure_rootfs(log=lambda m: print(m, file=sys.stderr))
    url, httpd = serve_artifact()
    ours: List[List[PlayRun]] = []
    course: List[List[PlayRun]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dispatch-bench-pyz-") as tmp:
            pyz = build_pyz(Path(tmp))
            for i in range(args.rounds):  # interleaved, alternating who goes first
                pair = [lambda: ours.append(runs_on_fresh_hosts(ANSIBLE_DIR / "site.yml", {"dispatchctl_pyz": str(pyz)},
                                                                service_again=True)),
                        lambda: course.append(runs_on_fresh_hosts(COURSE_DIR / "ansible/dispatch.yml", {},
                                                                  "-e", f"dispatch_zip_url={url}"))]
                for run in (pair if i % 2 == 0 else reversed(pair)):
                    run()
    finally:
        httpd.shutdown()  # type: ignore[attr-defined]
    print(f"fleet of {HOSTS} fresh systemd-nspawn hosts, ansible-playbook over ssh (pipelining), "
          f"{args.rounds} rounds alternating who goes first:")
    ours_first, ours_rerun, ours_service = report("ours", ours)
    course_first, course_rerun = report("course", course)
    module = [e["result"] for e in ours[-1][1].task("Dispatch is").values()]
    restarted = [s["name"] for r in module for s in r.get("steps", []) if s.get("changed")]
    print(f"ours re-run: steps changed {restarted or 'none'} (course's role restarts dispatch on every run)")
    print("first_ratio_per_round=" + ",".join(f"{o[0].seconds / c[0].seconds:.2f}" for o, c in zip(ours, course)))
    print(f"first_ratio={ours_first / course_first:.2f}   (ours / course's role, first run, medians; ours includes "
          "installing dispatchctl itself; goal <= 0.5)")
    print(f"service_first_ratio={ours_service / course_first:.2f}   (ours with dispatchctl already on the hosts / "
          "course's role, first run)")
    print(f"rerun_ratio={ours_rerun / course_rerun:.2f}   (ours / course's role, re-run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
