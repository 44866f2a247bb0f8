"""The Ansible role and module against 3 real systemd hosts, with the real ``ansible-playbook``.

Each host is a booted systemd-nspawn container reached by Ansible's own ssh connection plugin
(sshd inside on a loopback port of its own, root with a key made for this run); the service
consumes from the session's real RabbitMQ. The hosts start WITHOUT dispatchctl on PATH: the role
installs it from a wheelhouse built with this machine's pip (``wheelhouse`` of
test_install_path_systemd, plus dispatchctl's own wheel). The hosts are shared by the tests of
this module, in order: first run (-vvv, command lines watched), second run, --check --diff on
uninstalled hosts then the real run, one host with a wrong password.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List

import pika
import pytest

from tests.support.fleet import ANSIBLE_DIR, REPO, Fleet, changed_steps, run_playbook
from tests.support.payment import PaymentPublisher, make_order, parameters
from tests.test_install_path_systemd import wheelhouse  # noqa: F401  (the fixture, reused)

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

SITE = ANSIBLE_DIR / "site.yml"
HOSTS = ("lab-1", "lab-2", "lab-3")
# what a run may leave behind: the check run must change none of it
WATCHED = ("/etc/systemd/system", "/etc/roboshop", "/app", "/var/lib/dispatchctl", "/var/log/dispatchctl")


@pytest.fixture(scope="module")
def fleet_wheelhouse(wheelhouse, tmp_path_factory) -> Path:  # noqa: F811
    """The dependencies' wheelhouse plus dispatchctl's own wheel (what an operator ships)."""
    out = tmp_path_factory.mktemp("fleet-wheels")
    for wheel in wheelhouse.glob("*.whl"):
        shutil.copy(wheel, out)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def fleet(systemd_rootfs):
    """3 lab hosts (`dispatchctl lab up --hosts 3 --no-install`) with the lab's own broker."""
    hosts = Fleet()
    try:
        hosts.up(len(HOSTS))
    except Exception as exc:
        pytest.fail(f"cannot bring up the fleet: {exc}", pytrace=False)
    yield hosts
    hosts.down()


@pytest.fixture(scope="module")
def broker(fleet):
    """The lab's RabbitMQ (this module's; the session's test broker is not used here)."""
    return fleet.broker


@pytest.fixture(scope="module")
def account(broker):
    """The lab's account, as its inventory gives it to the role (the password through a lookup of
    the lab's 0600 file: a random string, easy to look for)."""
    return {"vhost": "/", "user": broker.user, "password": broker.password}


def inventory(fleet, broker, account, wheels, host_vars=None) -> Path:
    """The lab's own inventory (`dispatchctl lab inventory`), plus where the wheels are."""
    return fleet.write_inventory(fleet.inventory(host_vars, dispatchctl_wheelhouse=str(wheels)))


class CommandLineWatch:
    """Every process's command line, read from /proc while a play runs (the containers' processes
    are this machine's processes): which ones held ``needle``, and which ran dispatchctl."""

    def __init__(self, needle: str) -> None:
        self.needle = needle.encode()
        self.leaks: List[str] = []
        self.dispatchctl_runs: set = set()
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if self.needle in cmdline:
                    self.leaks.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
                if b"dispatchctl\0install\0" in cmdline:
                    self.dispatchctl_runs.add(proc.name)
            self.scans += 1

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main_pids(fleet) -> Dict[str, int]:
    return {name: host.main_pid() for name, host in fleet.hosts.items()}


def consumers(broker, account) -> int:
    params = parameters(broker.host, broker.port, account["vhost"], account["user"], account["password"])
    conn = pika.BlockingConnection(params)
    try:
        return conn.channel().queue_declare("orders", passive=True).method.consumer_count
    finally:
        conn.close()


def test_check_mode_on_hosts_without_dispatchctl_predicts_its_install_and_touches_nothing(
        fleet, broker, account, fleet_wheelhouse):
    """Runs before the first real run (file order): the hosts have no dispatchctl yet."""
    paths = (*WATCHED, "/opt", "/usr/local/bin", "/var/cache/dispatchctl")
    before = {name: host.listing(*paths) for name, host in fleet.hosts.items()}
    run = run_playbook(inventory(fleet, broker, account, fleet_wheelhouse), SITE, "--check", "--diff")
    assert run.returncode == 0, run.tail()
    assert {name: host.listing(*paths) for name, host in fleet.hosts.items()} == before
    for name in HOSTS:
        assert run.stats[name]["changed"] == 2 and run.stats[name]["failures"] == 0, run.stats
        assert run.task("Install dispatchctl (check mode")[name]["status"] == "changed"
        result = run.module()[name]
        assert "dispatchctl is not installed" in result["msg"] and "steps" not in result, result


@pytest.fixture(scope="module")
def first_run(fleet, broker, account, fleet_wheelhouse):
    """The role's first run on hosts without dispatchctl, at -vvv, with every command line watched."""
    for name, host in fleet.hosts.items():
        found = host.run(["sh", "-c", "command -v dispatchctl"], check=False)
        assert found.returncode != 0, f"{name} already has dispatchctl on PATH: {found.stdout}"
    inv = inventory(fleet, broker, account, fleet_wheelhouse)
    with CommandLineWatch(account["password"]) as watch:
        run = run_playbook(inv, SITE, "-vvv")
    print(f"\nfirst run of the role on {len(HOSTS)} hosts: {run.seconds:.1f}s")
    return run, watch


def test_first_run_installs_dispatchctl_and_dispatch_on_every_host(first_run, fleet, broker, account):
    run, _ = first_run
    assert run.returncode == 0, run.tail()
    assert set(run.stats) == set(HOSTS), run.tail()
    for name in HOSTS:
        stats = run.stats[name]
        assert stats["changed"] > 0 and stats["failures"] == 0 and stats["unreachable"] == 0, run.stats
        assert run.task("Install dispatchctl into it")[name]["status"] == "changed"
        assert changed_steps(run.module()[name]) == ["user", "appdir", "build", "config", "service"]
        host = fleet.hosts[name]
        assert host.run(["readlink", "-f", "/usr/local/bin/dispatchctl"]).stdout.strip() == \
            "/opt/dispatchctl/bin/dispatchctl"
        # installed by the distribution's pip wheel (Debian's python3-venv has one): no pip in the venv
        assert run.task("Install dispatchctl into it")[name]["result"]["cmd"][1].startswith(
            "/usr/share/python-wheels/pip-"), run.task("Install dispatchctl into it")[name]
        assert not host.path("/opt/dispatchctl/bin/pip").exists()
        assert host.run(["systemctl", "is-active", "dispatch.service"], check=False).stdout.strip() == "active"
    deadline = time.monotonic() + 30
    while consumers(broker, account) < len(HOSTS) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert consumers(broker, account) == len(HOSTS)
    # real orders, as payment sends them, are dispatched by the fleet
    params = parameters(broker.host, broker.port, account["vhost"], account["user"], account["password"])
    ids = []
    with PaymentPublisher(params) as payment:
        for i in range(12):
            order = make_order(i)
            ids.append(order["orderid"])
            payment.publish(order)

    def dispatched() -> int:
        logs = "".join(host.journal() for host in fleet.hosts.values())
        return sum(f"order {oid} dispatched" in logs for oid in ids)

    fleet.hosts["lab-1"].wait_for(lambda: dispatched() == len(ids), timeout=30, what="12 orders dispatched")


def test_the_password_is_in_no_output_even_at_vvv_and_on_no_command_line(first_run, account):
    run, watch = first_run
    assert "ESTABLISH SSH CONNECTION" in run.output  # -vvv really was on
    assert account["password"] not in run.output
    assert watch.scans > 10 and len(watch.dispatchctl_runs) >= len(HOSTS), \
        (watch.scans, watch.dispatchctl_runs)  # the watch saw each host's dispatchctl install run
    assert watch.leaks == []


def test_second_run_changes_nothing_and_restarts_nothing(first_run, fleet, broker, account, fleet_wheelhouse):
    pids = main_pids(fleet)
    run = run_playbook(inventory(fleet, broker, account, fleet_wheelhouse), SITE)
    assert run.returncode == 0, run.tail()
    assert run.changed() == {name: 0 for name in HOSTS}, run.stats
    assert {name: changed_steps(r) for name, r in run.module().items()} == {name: [] for name in HOSTS}
    installs = run.task("Install dispatchctl (only when missing)")
    assert {name: e["status"] for name, e in installs.items()} == {name: "skipped" for name in HOSTS}
    print(f"\nsecond run of the role on {len(HOSTS)} hosts: {run.seconds:.1f}s")
    assert main_pids(fleet) == pids and all(pids.values())


def test_check_diff_predicts_exactly_what_the_real_run_does(first_run, fleet, broker, account, fleet_wheelhouse):
    # fresh for the service (dispatchctl itself stays): the role with state=absent, the same
    # inventory (whose AMQP variables uninstall does not take: dropped, not refused)
    inv = inventory(fleet, broker, account, fleet_wheelhouse)
    gone = run_playbook(inv, SITE, "-e", "dispatch_state=absent", "-e", "dispatch_purge=true")
    assert gone.returncode == 0, gone.tail()
    for name in HOSTS:
        assert gone.module()[name]["changed"] is True and "amqp_host" in gone.module()[name]["ignored"]
        assert not fleet.hosts[name].path("/etc/systemd/system/dispatch.service").exists()
    before = {name: host.listing(*WATCHED) for name, host in fleet.hosts.items()}
    check = run_playbook(inv, SITE, "--check", "--diff")
    assert check.returncode == 0, check.tail()
    assert {name: host.listing(*WATCHED) for name, host in fleet.hosts.items()} == before  # nothing touched
    assert account["password"] not in check.output
    assert "+++ b/etc/roboshop/dispatch.env" in check.output  # the diff is shown
    predicted = check.module()
    for name in HOSTS:
        assert predicted[name]["dry_run"] is True and predicted[name]["changed"] is True
        files = {d["after_header"]: d["prepared"] for d in predicted[name]["diff"]}
        assert f"AMQP_USER=\"{account['user']}\"" in files["/etc/roboshop/dispatch.env"]
        assert "+********" in files["/etc/roboshop/dispatch.amqp-pass"]  # masked
        assert fleet.hosts[name].run(["systemctl", "is-active", "dispatch.service"], check=False).stdout.strip() \
            != "active"
    real = run_playbook(inv, SITE)
    assert real.returncode == 0, real.tail()
    done = real.module()
    assert {n: changed_steps(done[n]) for n in HOSTS} == {n: changed_steps(predicted[n]) for n in HOSTS}
    assert all(changed_steps(done[n]) for n in HOSTS)


def test_a_wrong_password_fails_that_host_alone_with_the_auth_diagnosis(first_run, fleet, broker, account,
                                                                        fleet_wheelhouse):
    wrong = f"Wrong-{uuid.uuid4().hex}"
    pids = main_pids(fleet)
    inv = inventory(fleet, broker, account, fleet_wheelhouse, {"lab-2": {"dispatch_amqp_password": wrong}})
    run = run_playbook(inv, SITE)
    assert run.returncode != 0
    stats = run.stats
    assert stats["lab-2"]["failures"] == 1, stats
    for name in ("lab-1", "lab-3"):
        assert stats[name]["failures"] == 0 and stats[name]["changed"] == 0, stats
    assert run.task("Dispatch is")["lab-2"]["status"] == "failed"
    failed = run.module()["lab-2"]
    print(f"\nthe failed host's result: msg={failed['msg']!r} next_action={failed['next_action']!r}")
    assert failed["step"] == "service" and failed["rc"] == 1, failed
    assert "ACCESS_REFUSED" in failed["msg"] or "login refused" in failed["msg"].lower(), failed["msg"]
    assert "dispatchctl check" in failed["next_action"], failed
    assert wrong not in run.output and account["password"] not in run.output
    assert failed["msg"] in run.output  # the operator sees dispatchctl's message
    for name in ("lab-1", "lab-3"):
        assert fleet.hosts[name].main_pid() == pids[name]
    # the right password again repairs that host alone
    run = run_playbook(inventory(fleet, broker, account, fleet_wheelhouse), SITE)
    assert run.returncode == 0, run.tail()
    assert run.changed() == {"lab-1": 0, "lab-2": 1, "lab-3": 0}, run.stats
    assert fleet.hosts["lab-2"].run(["systemctl", "is-active", "dispatch.service"], check=False).stdout.strip() \
        == "active"


def test_the_example_inventory_parses_as_standard_ini(fleet):
    """ansible-inventory reads the shipped example as the three-host group it claims to be."""
    from tests.support.fleet import ansible_env

    res = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i",
                          str(ANSIBLE_DIR / "inventory.example.ini"), "--list"], capture_output=True, text=True,
                         env=ansible_env(fleet.dir), timeout=120)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert listed["dispatch"]["hosts"] == ["dispatch-1", "dispatch-2", "dispatch-3"]


def test_the_plays_wrote_nothing_under_the_operators_home(fleet):
    """Last in this file: every play ran with Ansible's home, temp dirs (local and, for the tasks
    delegated to localhost, remote) and ssh control sockets in a private dir, not ~/.ansible.
    The plays' HOME was an empty private directory: anything Ansible wrote under ``~`` despite
    those settings would be there (and the operator's own home was never theirs to write)."""
    from tests.support.fleet import ansible_env

    home = Path(ansible_env(fleet.dir)["HOME"])
    assert home.is_dir() and home != Path.home()
    assert (fleet.dir / "results.json").exists(), "no play ran with this environment"
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
