"""Benchmark: a fleet of 3 fresh systemd hosts driven by ansible-playbook over ssh, our role
(ansible/site.yml) against the course's role (../shared/baselines/course/ansible/, run unmodified),
in the same run on the same kind of hosts.

- ours: 3 fresh hosts WITHOUT dispatchctl; the first run installs it (a venv from a wheelhouse
  built here with this machine's pip, copied from the controller) and then the service
  (`dispatchctl install`, bundled flavour) against a real RabbitMQ; then the re-run.
- the course's: 3 other fresh hosts; its dispatch.yml as it is (facts, package, user, /app wiped
  and re-made, unarchive of the zip served on loopback exactly as bench/provision.py serves the
  course's fixture, `go mod init/get/build`, template, `state: restarted`), then its re-run. Its
  only input from here is ``-e dispatch_zip_url=<the loopback URL>``.

Both use ansible/ansible.cfg (ssh pipelining) and Ansible's ssh connection to each host's sshd on
a loopback port (tests/support/fleet.py). Printed: the wall time of each ansible-playbook run,
the changed count per host, and ``first_ratio`` / ``rerun_ratio`` = ours / course's (below 1: ours
is faster). Run as root: ``.venv/bin/python bench/fleet.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.provision import COURSE_DIR, serve_artifact  # noqa: E402
from roboshop_dispatch.lab.nspawn import ensure_rootfs  # noqa: E402
from tests.support.fleet import ANSIBLE_DIR, Fleet, PlayRun, run_playbook  # noqa: E402

HOSTS = 3


def build_wheelhouse(out: Path) -> None:
    """dispatchctl and its dependencies as wheels, made with this machine's own configured pip."""
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise SystemExit(f"pip wheel failed:\n{res.stderr[-3000:]}")


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


def report(label: str, runs: List[PlayRun]) -> Tuple[float, float]:
    for name, run in zip(("first", "rerun", "service_first"), runs):
        changed = ",".join(str(c) for _, c in sorted(run.changed().items()))
        print(f"{label}_{name}_s={run.seconds:.2f}   changed per host: {changed}")
    return runs[0].seconds, runs[1].seconds


def main() -> int:
    ensure_rootfs(log=lambda m: print(m, file=sys.stderr))
    url, httpd = serve_artifact()
    try:
        with tempfile.TemporaryDirectory(prefix="dispatch-bench-wheels-") as wheels:
            build_wheelhouse(Path(wheels))
            os.chmod(wheels, 0o755)
            ours = runs_on_fresh_hosts(ANSIBLE_DIR / "site.yml", {"dispatchctl_wheelhouse": wheels},
                                       service_again=True)
        course = runs_on_fresh_hosts(COURSE_DIR / "ansible/dispatch.yml", {}, "-e", f"dispatch_zip_url={url}")
    finally:
        httpd.shutdown()  # type: ignore[attr-defined]
    print(f"fleet of {HOSTS} fresh systemd-nspawn hosts, ansible-playbook over ssh (pipelining), same run:")
    ours_first, ours_rerun = report("ours", ours)
    course_first, course_rerun = report("course", course)
    module = [e["result"] for e in ours[1].task("Dispatch is").values()]
    restarted = [s["name"] for r in module for s in r.get("steps", []) if s.get("changed")]
    print(f"ours re-run: steps changed {restarted or 'none'} (course's role restarts dispatch on every run)")
    print(f"first_ratio={ours_first / course_first:.2f}   (ours / course's role, first run; ours includes "
          "installing dispatchctl itself)")
    print(f"service_first_ratio={ours[2].seconds / course_first:.2f}   (ours with dispatchctl already on the hosts / "
          "course's role, first run)")
    print(f"rerun_ratio={ours_rerun / course_rerun:.2f}   (ours / course's role, re-run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
