"""The Ansible role and module against 3 real systemd hosts, with the real ``ansible-playbook``.

Each host is a booted systemd-nspawn container reached by Ansible's own ssh connection plugin
(sshd inside on a loopback port of its own, root with a key made for this run); the service
consumes from the lab's real RabbitMQ. The hosts start WITHOUT dispatchctl on PATH: the role's
defaults copy the pyz that scripts/build-dist left in the checkout's dist/ (the session's ``dist``),
checked on each host against dist/SHA256SUMS. The hosts are shared by the tests of this module, in
order: first run (-vvv, command lines watched), second run, --check --diff on uninstalled hosts
then the real run, one host with a wrong password, a tampered pyz, an index install refused
unless pinned with hashes, then allowed.
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

from tests.support.dist import sha256_of
from tests.support.fleet import ANSIBLE_DIR, Fleet, changed_steps, run_playbook
from tests.support.payment import PaymentPublisher, make_order, parameters

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

SITE = ANSIBLE_DIR / "site.yml"
HOSTS = ("lab-1", "lab-2", "lab-3")
# what a run may leave behind: the check run must change none of it
TOOL = "/usr/local/bin/dispatchctl"
WATCHED = ("/etc/systemd/system", "/etc/roboshop", "/app", "/var/lib/dispatchctl", "/var/log/dispatchctl")


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


def inventory(fleet, host_vars=None) -> Path:
    """The lab's own inventory (`dispatchctl lab inventory`): the role's defaults for the rest."""
    return fleet.write_inventory(fleet.inventory(host_vars))


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
        fleet, broker, account, dist):
    """Runs before the first real run (file order): the hosts have no dispatchctl yet."""
    paths = (*WATCHED, "/opt", "/usr/local/bin", "/var/cache/dispatchctl")
    before = {name: host.listing(*paths) for name, host in fleet.hosts.items()}
    run = run_playbook(inventory(fleet), SITE, "--check", "--diff")
    assert run.returncode == 0, run.tail()
    assert {name: host.listing(*paths) for name, host in fleet.hosts.items()} == before
    for name in HOSTS:
        assert run.stats[name]["changed"] == 2 and run.stats[name]["failures"] == 0, run.stats
        assert run.task("Copy dispatchctl to the host")[name]["status"] == "changed"  # it would copy the pyz
        result = run.module()[name]
        assert "dispatchctl is not installed" in result["msg"] and "steps" not in result, result


@pytest.fixture(scope="module")
def first_run(fleet, broker, account, dist):
    """The role's first run on hosts without dispatchctl, at -vvv, with every command line watched."""
    for name, host in fleet.hosts.items():
        found = host.run(["sh", "-c", "command -v dispatchctl"], check=False)
        assert found.returncode != 0, f"{name} already has dispatchctl on PATH: {found.stdout}"
    inv = inventory(fleet)
    with CommandLineWatch(account["password"]) as watch:
        run = run_playbook(inv, SITE, "-vvv")
    print(f"\nfirst run of the role on {len(HOSTS)} hosts: {run.seconds:.1f}s")
    return run, watch


def test_first_run_installs_dispatchctl_and_dispatch_on_every_host(first_run, fleet, broker, account, dist):
    run, _ = first_run
    assert run.returncode == 0, run.tail()
    assert set(run.stats) == set(HOSTS), run.tail()
    for name in HOSTS:
        stats = run.stats[name]
        assert stats["changed"] > 0 and stats["failures"] == 0 and stats["unreachable"] == 0, run.stats
        assert run.task("Copy dispatchctl to the host")[name]["status"] == "changed"
        assert changed_steps(run.module()[name]) == ["user", "appdir", "build", "config", "service"]
        host = fleet.hosts[name]
        # the role's defaults: the checkout's pyz (dist/), checked against dist/SHA256SUMS; no index, no pip
        assert host.run(["stat", "-c", "%F %U %a", TOOL]).stdout.strip() == "regular file root 755"
        assert sha256_of(host.path(TOOL)) == dist.sha256()[dist.pyz.name] == sha256_of(dist.pyz)
        assert not host.path("/opt/dispatchctl").exists()
        assert host.run(["systemctl", "is-active", "dispatch.service"], check=False).stdout.strip() == "active"
    assert not [line for line in run.output.splitlines() if "pip install" in line or "/bin/pip" in line]
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


def test_second_run_changes_nothing_and_restarts_nothing(first_run, fleet, broker, account, dist):
    pids = main_pids(fleet)
    run = run_playbook(inventory(fleet), SITE)
    assert run.returncode == 0, run.tail()
    assert run.changed() == {name: 0 for name in HOSTS}, run.stats
    assert {name: changed_steps(r) for name, r in run.module().items()} == {name: [] for name in HOSTS}
    copies = run.task("Copy dispatchctl to the host")  # the host's pyz is the controller's: left alone
    assert {name: e["status"] for name, e in copies.items()} == {name: "ok" for name in HOSTS}
    print(f"\nsecond run of the role on {len(HOSTS)} hosts: {run.seconds:.1f}s")
    assert main_pids(fleet) == pids and all(pids.values())


def test_check_diff_predicts_exactly_what_the_real_run_does(first_run, fleet, broker, account, dist):
    # fresh for the service (dispatchctl itself stays): the role with state=absent, the same
    # inventory (whose AMQP variables uninstall does not take: dropped, not refused)
    inv = inventory(fleet)
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
                                                                        dist):
    wrong = f"Wrong-{uuid.uuid4().hex}"
    pids = main_pids(fleet)
    inv = inventory(fleet, {"lab-2": {"dispatch_amqp_password": wrong}})
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
    # rolled back there: lab-2 runs again with the password that works (restarted: a new MainPID)
    assert failed["rolled_back"] is True and failed["rollback"]["units"] == ["dispatch.service"], failed
    assert fleet.hosts["lab-2"].run(["systemctl", "is-active", "dispatch.service"], check=False).stdout.strip() \
        == "active"
    assert fleet.hosts["lab-2"].main_pid() != pids["lab-2"]
    fleet.hosts["lab-2"].wait_for(lambda: consumers(broker, account) == 3, timeout=20, what="3 consumers")
    # so the right password again changes nothing anywhere
    run = run_playbook(inventory(fleet), SITE)
    assert run.returncode == 0, run.tail()
    assert run.changed() == {"lab-1": 0, "lab-2": 0, "lab-3": 0}, run.stats

    # a fleet a host at a time (site.yml's serial, max_fail_percentage 0): the first host's failed
    # change stops the play there; the others never run it
    inv = inventory(fleet, {"lab-1": {"dispatch_amqp_password": wrong}})
    run = run_playbook(inv, SITE, "-e", "dispatch_serial=1")
    assert run.returncode != 0
    assert set(run.task("Dispatch is")) == {"lab-1"} and run.module()["lab-1"]["rolled_back"] is True, run.tail()


def test_a_tampered_pyz_is_refused_on_the_host_and_the_old_dispatchctl_stays(first_run, fleet, dist, tmp_path):
    """A pyz that is not the one SHA256SUMS names (one bit flipped, the published sums beside it):
    the host checks it before anything is replaced, refuses it, and keeps its dispatchctl."""
    host = fleet.hosts["lab-1"]
    good, pid = sha256_of(host.path(TOOL)), host.main_pid()
    data = bytearray(dist.pyz.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / dist.pyz.name
    tampered.write_bytes(bytes(data))
    shutil.copy(dist.sums, tmp_path / "SHA256SUMS")
    before = host.listing("/usr/local/bin")
    run = run_playbook(inventory(fleet), SITE, "--limit", "lab-1", "-e", f"dispatchctl_pyz={tampered}")
    assert run.returncode != 0, run.tail()
    copy = run.task("Copy dispatchctl to the host")["lab-1"]
    assert copy["status"] == "failed" and "failed to validate" in copy["result"]["msg"], copy
    assert run.task("Dispatch is") == {}  # nothing ran after the refusal
    assert sha256_of(host.path(TOOL)) == good and host.listing("/usr/local/bin") == before
    assert host.main_pid() == pid
    # a pyz with no sha256 to check it against is refused on the controller, before any copy
    (tmp_path / "SHA256SUMS").unlink()
    run = run_playbook(inventory(fleet), SITE, "--limit", "lab-1", "-e", f"dispatchctl_pyz={tampered}")
    assert run.returncode != 0 and run.task("Copy dispatchctl to the host") == {}, run.tail()
    assert "no sha256 for" in run.task("The pyz is on the controller")["lab-1"]["result"]["msg"]
    assert sha256_of(host.path(TOOL)) == good


def test_an_index_install_is_refused_unless_pinned_with_every_hash(first_run, fleet, tmp_path):
    host = fleet.hosts["lab-1"]
    before = host.listing("/opt", "/usr/local/bin", "/var/cache/dispatchctl")
    unhashed = tmp_path / "requirements.txt"
    unhashed.write_text("roboshop-dispatch==0.4.0\n")
    for extra in ([], ["-e", "dispatchctl_index_version=0.4.0", "-e", f"dispatchctl_index_requirements={unhashed}"]):
        run = run_playbook(inventory(fleet), SITE, "--limit", "lab-1", "-e", "dispatchctl_source=index", *extra)
        assert run.returncode != 0, run.tail()
        refusal = run.task("An index install is explicit")["lab-1"]
        assert refusal["status"] == "failed", refusal
        assert "refusing to install dispatchctl from a package index by name" in refusal["result"]["msg"]
    assert host.listing("/opt", "/usr/local/bin", "/var/cache/dispatchctl") == before


@pytest.fixture(scope="module")
def index_wheels(dist, tmp_path_factory) -> List[Path]:
    """dispatchctl's wheel (scripts/build-dist's) and its dependencies' for the hosts' python3."""
    out = tmp_path_factory.mktemp("index-wheels")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), str(dist.wheel)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return sorted(out.glob("*.whl"))


def test_an_index_install_pinned_with_hashes_then_back_to_the_pyz(first_run, fleet, index_wheels, dist, tmp_path):
    """Asked for explicitly, pinned, hashed: pip --require-hashes from a package index (one of
    ours, on loopback) into /opt/dispatchctl. That dispatchctl finds the host as the pyz left it
    (the same zipapp: nothing changes); the defaults then put the pyz back, again changing nothing."""
    from roboshop_dispatch import __version__
    from tests.support.pyindex import hashed_requirements, make_index, serving

    host = fleet.hosts["lab-3"]
    pid = host.main_pid()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(hashed_requirements(index_wheels))
    with serving(make_index(index_wheels, tmp_path / "index")) as url:
        run = run_playbook(inventory(fleet), SITE, "--limit", "lab-3", "-e", "dispatchctl_source=index",
                           "-e", f"dispatchctl_index_version={__version__}",
                           "-e", f"dispatchctl_index_requirements={requirements}", "-e", f"dispatchctl_index_url={url}")
    assert run.returncode == 0, run.tail()
    assert run.task("Install exactly the pinned")["lab-3"]["status"] == "changed"
    assert host.run(["readlink", "-f", TOOL]).stdout.strip() == "/opt/dispatchctl/bin/dispatchctl"
    assert changed_steps(run.module()["lab-3"]) == [], run.module()["lab-3"]
    run = run_playbook(inventory(fleet), SITE, "--limit", "lab-3")
    assert run.returncode == 0, run.tail()
    assert run.task("Copy dispatchctl to the host")["lab-3"]["status"] == "changed"
    assert changed_steps(run.module()["lab-3"]) == []
    assert host.run(["stat", "-c", "%F", TOOL]).stdout.strip() == "regular file"
    assert sha256_of(host.path(TOOL)) == sha256_of(dist.pyz)
    assert host.main_pid() == pid


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
