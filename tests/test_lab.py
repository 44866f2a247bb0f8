"""``dispatchctl lab`` for real: a RabbitMQ node and booted systemd hosts on this machine, through
the real CLI (and the Python API the Ansible tests use). The lab runs with a state dir of its own
(``DISPATCHCTL_LAB_STATE``: never the machine's /run/dispatchctl-lab) and free ports, so it cannot
clash with the test session's broker or another run's containers.

One lab per module (booting it is the cost): the tests run in order, the first brings it up and
the last takes it down, then a second lab proves the cache is reused and stale state is cleaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Set

import pytest

from roboshop_dispatch.lab.nspawn import READY_MARK, pid_running, rootfs_path
from roboshop_dispatch.lab.session import Lab
from tests.test_json_output import one_document

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")
TOKEN = uuid.uuid4().hex[:8]
STATE = Path(f"/run/dispatchctl-lab-test-{TOKEN}")
# what a leftover of the lab would be called (a state dir, nspawn's per-machine dirs, the broker)
MARKERS = (TOKEN, "dispatchlab", "nspawn-volatile", "/lab-1", "/lab-2")


def lab(*args: str, state: Path = STATE, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISPATCHCTL_LAB_STATE": str(state)}
    env.pop("DISPATCHCTL_AMQP_PASS", None)
    return subprocess.run([DISPATCHCTL, "lab", *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def listing() -> Set[str]:
    """Paths under /run (4 levels), /tmp and /var/tmp (2 levels)."""
    out: Set[str] = set()
    for root, depth in (("/run", 4), ("/tmp", 2), ("/var/tmp", 2)):
        base = root.count("/")
        for dirpath, dirnames, filenames in os.walk(root):
            out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
            if dirpath.count("/") - base >= depth - 1:
                dirnames[:] = []
    return out


def mounts() -> Set[str]:
    return set(Path("/proc/self/mountinfo").read_text().splitlines())


def descendants(roots: List[int]) -> Set[int]:
    """``roots`` and every process below them (sshd, the service, beam's helpers)."""
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def every_cmdline() -> str:
    text = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                text.append((entry / "cmdline").read_bytes().decode(errors="replace"))
    return "\n".join(text)


@pytest.fixture(scope="module")
def before():
    rootfs = rootfs_path()
    st = rootfs.stat() if rootfs.exists() else None
    snapshot = {"files": listing(), "mounts": mounts(), "rootfs": (st.st_ino, st.st_mtime_ns) if st else None,
                "started": time.time()}
    yield snapshot
    Lab(STATE).down()  # a failed test leaves nothing behind either


@pytest.fixture(scope="module")
def up(before):
    started = time.monotonic()
    res = lab("up", "--hosts", "2", "--json")
    assert res.returncode == 0, (res.stdout, res.stderr)
    doc = one_document(res)
    doc["elapsed_s"] = time.monotonic() - started
    doc["stderr"] = res.stderr
    return doc


def test_lab_up_boots_two_hosts_installs_and_dispatches_orders(up, before):
    phases = {p["name"]: p for p in up["phases"]}
    assert list(phases) == ["rootfs", "broker", "hosts", "install", "orders", "status"]
    assert up["changed"] is True and up["installed"] is True and len(up["hosts"]) == 2
    # the image of an earlier run is reused; without one, this lab up builds it
    assert phases["rootfs"]["outcome"] == ("cached" if before["rootfs"] is not None else f"built {rootfs_path().name}")
    assert phases["orders"]["outcome"] == "5 published, 5 dispatched"
    assert "orders handled" in up["status"] and "active (running)" in up["status"]
    for name in phases:  # each phase was printed as it finished (on stderr with --json)
        assert f"\n{name} " in "\n" + up["stderr"]
    print(f"lab up --hosts 2: {up['elapsed_s']:.1f} s; " +
          ", ".join(f"{p['name']} {p['duration_s']:.1f} s" for p in up["phases"]), file=sys.stderr)


def test_lab_status_and_shell_show_the_orders_handled(up):
    res = lab("status", "--json")
    assert res.returncode == 0, res.stderr
    doc = one_document(res)
    assert doc["up"] is True and [h["name"] for h in doc["hosts"]] == ["lab-1", "lab-2"]
    assert all(h["running"] for h in doc["hosts"]) and doc["broker"]["running"] is True
    shell = lab("shell", "2", "--", "dispatchctl", "status")
    assert shell.returncode == 0, shell.stderr
    assert "active (running)" in shell.stdout and " orders handled" in shell.stdout
    assert lab("shell", "lab-1", "--", "sh", "-c", "exit 7").returncode == 7
    assert lab("shell", "--", "hostname").stdout.strip() == "lab-1"


def test_ssh_reaches_every_host_with_the_lab_key_and_host_keys(up, tmp_path):
    key, known = STATE / "ssh" / "id_ed25519", STATE / "ssh" / "known_hosts"
    assert (key.stat().st_mode & 0o777) == 0o600
    for host in up["hosts"]:
        res = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(host["ssh_port"]),
                              "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}",
                              "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                              "root@127.0.0.1", "hostname; systemctl is-active dispatch"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                             env={**os.environ, "HOME": str(tmp_path)})
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [host["name"], "active"]
    assert not (tmp_path / ".ssh" / "known_hosts").exists()
    # issue 19: each host made its own host keys (the image has none): no two share one
    by_host: Dict[str, Set[str]] = {}
    for line in known.read_text().splitlines():
        if line.strip():
            where, _kind, blob = line.split()[:3]
            by_host.setdefault(where, set()).add(blob)
    assert len(by_host) == len(up["hosts"]) and not set.intersection(*by_host.values()), by_host
    from roboshop_dispatch.lab.nspawn import rootfs_path

    assert not list((rootfs_path() / "etc/ssh").glob("ssh_host_*")), "the cached image holds host keys"


def test_the_inventory_names_every_host_and_never_the_password(up):
    res = lab("inventory")
    assert res.returncode == 0, res.stderr
    password = (STATE / "amqp.pass").read_text().strip()
    assert ((STATE / "amqp.pass").stat().st_mode & 0o777) == 0o600 and len(password) >= 24
    for host in up["hosts"]:
        assert f"{host['name']} ansible_host=127.0.0.1 ansible_port={host['ssh_port']}" in res.stdout
    assert f"dispatch_amqp_port={up['broker']['port']}" in res.stdout
    assert f"lookup('ansible.builtin.file', '{STATE}/amqp.pass')" in res.stdout
    # the password is nowhere but its 0600 files: not in output, state, inventory or any process's argv
    state_text = (STATE / "state.json").read_text()
    for text in (res.stdout, state_text, json.dumps(up), every_cmdline()):
        assert password not in text
    assert password != "roboshop123"
    # the files of the state dir that hold it are 0600 (amqp.pass, the node's rabbitmq.conf)
    holding = [p for p in STATE.rglob("*")
               if p.is_file() and not p.is_symlink() and password.encode() in p.read_bytes()]
    assert {p.name for p in holding} >= {"amqp.pass", "rabbitmq.conf"}, holding
    assert all(p.stat().st_mode & 0o077 == 0 for p in holding), [(p, oct(p.stat().st_mode)) for p in holding]
    # the broker knows that one user only: no guest (loopback_users = none would let anyone local in)
    users = Lab(STATE).broker.ctl("list_users", "--no-table-headers").stdout.split()
    assert "roboshop" in users and "guest" not in users, users


def test_lab_up_again_changes_nothing_and_another_size_is_refused(up):
    again = lab("up", "--hosts", "2")
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout and "nothing to do" in again.stdout
    assert "rootfs" not in again.stdout and "broker  started" not in again.stdout
    bigger = lab("up", "--hosts", "3", "--json")
    assert bigger.returncode == 1
    assert "dispatchctl lab down" in one_document(bigger)["error"]["message"]
    status = one_document(lab("status", "--json"))
    assert [(h["nspawn_pid"], h["leader_pid"]) for h in status["hosts"]] == \
        [(h["nspawn_pid"], h["leader_pid"]) for h in up["hosts"]]
    assert status["broker"]["running"] and len(status["hosts"]) == 2


def test_lab_down_leaves_no_mounts_processes_or_files(up, before):
    ours = descendants([h["nspawn_pid"] for h in up["hosts"]] + [up["broker"]["pid"]])
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in ours if pid_running(p)}
    assert {"systemd-nspawn", "beam.smp", "sshd"} <= names, names  # what is to go, seen before it goes
    started = time.monotonic()
    res = lab("down", "--json")
    took = time.monotonic() - started
    assert res.returncode == 0 and one_document(res)["changed"] is True, res.stderr
    assert not STATE.exists()
    left = [p for p in ours if pid_running(p)]  # a zombie waiting for this machine's PID 1 to reap it is gone
    assert not left, [(p, Path(f"/proc/{p}/cmdline").read_bytes()) for p in left]
    assert not mounts() - before["mounts"], mounts() - before["mounts"]
    new = {p for p in listing() - before["files"] if any(m in p for m in MARKERS)}
    assert not new, sorted(new)
    again = lab("down")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    print(f"lab down: {took:.1f} s", file=sys.stderr)


def test_a_second_lab_reuses_the_cache_and_stale_state_is_cleaned(before):
    """The API the Ansible tests use: up without install (ssh only), then its processes die (as
    after a reboot): status says stale, up cleans it and makes a fresh lab."""
    rootfs = rootfs_path()
    identity = (rootfs.stat().st_ino, rootfs.stat().st_mtime_ns)
    session = Lab(STATE)
    report = session.up(hosts=1, install=False)
    try:
        assert [p.name for p in report.phases] == ["rootfs", "broker", "hosts"]
        # cached: the image is used as it is (same inode and mtime), and finding it takes a small
        # part of what building it took (recorded in its ready mark): no absolute bound
        built_s = json.loads((rootfs / READY_MARK).read_text())["built_s"]
        assert report.phases[0].outcome == "cached" and report.phases[0].seconds < built_s / 10, \
            (report.phases[0].seconds, built_s)
        assert (rootfs.stat().st_ino, rootfs.stat().st_mtime_ns) == identity
        if before["rootfs"] is not None:  # the image of an earlier run, untouched all along
            assert identity == before["rootfs"]
        else:  # the image this module's first lab up built, not another one
            assert (rootfs / READY_MARK).stat().st_mtime >= before["started"]
        host = session.hosts()[0]
        assert host.name == "lab-1" and host.ssh_port == report.state.hosts[0].ssh_port
        probe = host.container.run(["sh", "-c", "command -v dispatchctl; systemctl cat dispatch.service"], check=False)
        assert probe.returncode != 0 and "dispatchctl" not in probe.stdout  # --no-install: nothing installed
        assert session.broker.queue_counts() == {}  # a working broker, nothing declared yet
        # everything dies at once, as at a reboot
        for pid in (host.container.leader, host.container.nspawn_pid, session.broker.pid()):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (pid_running(host.container.nspawn_pid) or pid_running(report.state.broker.pid)) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        stale = lab("status", "--json")
        assert stale.returncode == 1 and one_document(stale)["stale"] is True
        res = lab("up", "--no-install", "--json")
        assert res.returncode == 0, res.stderr
        doc = one_document(res)
        assert doc["cleaned_stale"] is True and doc["changed"] is True
        assert one_document(lab("status", "--json"))["up"] is True
    finally:
        assert session.down() is True
    assert not STATE.exists() and session.down() is False


def test_lab_up_killed_with_sigterm_removes_what_it_made(before):
    """SIGTERM (or SIGHUP) while `lab up` boots: like Ctrl-C, what it made is removed, no stale lab
    is left for the next `lab up` to mistake for a complete one."""
    state = Path(f"/run/dispatchctl-lab-test-{TOKEN}-term")
    env = {**os.environ, "DISPATCHCTL_LAB_STATE": str(state)}
    proc = subprocess.Popen([DISPATCHCTL, "lab", "up", "--hosts", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        seen = ""
        for line in proc.stdout:  # the broker phase done: a node and its data exist now
            seen += line
            if line.startswith("broker"):
                break
        assert "broker" in seen, (seen, proc.stderr.read() if proc.stderr else "")
        broker_pid = int((state / "broker" / "node.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        Lab(state).down()
    assert proc.returncode == 1, (out, err)
    assert "interrupted by SIGTERM" in err, err
    assert not state.exists()
    deadline = time.monotonic() + 30
    while pid_running(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_running(broker_pid)
