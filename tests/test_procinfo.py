"""A process's facts with and without psutil (roboshop_dispatch/procinfo.py): /proc gives what
psutil gives, so ``status`` and ``check`` lose nothing on a host without python3-psutil (the
single-file dispatchctl carries none). Real processes, real /proc; psutil hidden by making its
import fail, as on a host that lacks it."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time

import psutil
import pytest

from roboshop_dispatch import procinfo, status
from roboshop_dispatch.facts import installed

KEYS = {"pid", "user", "rss_bytes", "cpu_percent", "cpu_seconds", "threads", "uptime_s", "started", "cmdline", "source"}


@pytest.fixture
def busy():
    """A child that used some CPU and runs 3 threads."""
    code = ("import threading, time\nsum(i * i for i in range(2_000_000))\n"
            "[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() for _ in range(2)]\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "marker-arg"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def no_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError


def test_proc_gives_what_psutil_gives(busy):
    with_psutil = procinfo.process_info(busy.pid)
    from_proc = procinfo._from_proc(busy.pid, procinfo.Path("/proc"))
    assert with_psutil["source"] == "psutil" and from_proc["source"] == "/proc"
    ps = psutil.Process(busy.pid)
    assert from_proc["user"] == with_psutil["user"] == ps.username()
    assert from_proc["threads"] == with_psutil["threads"] == 3
    assert from_proc["cmdline"] == with_psutil["cmdline"] == ps.cmdline()
    assert from_proc["cmdline"][-1] == "marker-arg"
    assert abs(from_proc["rss_bytes"] - ps.memory_info().rss) <= 256 * 1024
    assert abs(from_proc["created"] - ps.create_time()) < 0.05
    cpu = ps.cpu_times()
    assert from_proc["cpu"] > 0.05 and abs(from_proc["cpu"] - (cpu.user + cpu.system)) < 0.05


def test_without_psutil_status_and_check_read_proc(busy, no_psutil):
    info = status.process_info(busy.pid)
    assert set(info) == KEYS and info["source"] == "/proc", info
    assert info["user"] == pwd.getpwuid(os.getuid()).pw_name  # the child runs as this test
    assert info["threads"] == 3 and info["cmdline"][-1] == "marker-arg"
    assert 0 < info["uptime_s"] < 60 and info["cpu_seconds"] > 0.05
    assert time.strptime(info["started"], "%Y-%m-%d %H:%M:%S %Z")
    assert installed.process_user(busy.pid) == info["user"]


def test_with_psutil_the_same_keys(busy):
    assert set(status.process_info(busy.pid)) == KEYS


def test_a_process_that_is_gone_is_an_error_not_an_exception(no_psutil):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    info = status.process_info(proc.pid)
    assert info["pid"] == proc.pid and "error" in info
    assert installed.process_user(proc.pid) is None


def test_a_uid_without_a_name_is_its_number(tmp_path, no_psutil):
    """A fake /proc tree: the facts of a process whose uid has no passwd entry."""
    pid = tmp_path / "42"
    pid.mkdir()
    fields = ["S"] + ["0"] * 50
    fields[procinfo._UTIME], fields[procinfo._STIME], fields[procinfo._THREADS] = "100", "50", "4"
    fields[procinfo._STARTTIME] = str(30 * os.sysconf("SC_CLK_TCK"))
    (pid / "stat").write_text("42 (dis) patch) " + " ".join(fields) + "\n")  # a ')' in the name, too
    (pid / "statm").write_text("1000 256 0 0 0 0 0\n")
    (pid / "status").write_text("Name:\tdispatch\nUid:\t54321\t54321\t54321\t54321\n")
    (pid / "cmdline").write_bytes(b"/usr/bin/python3\0-I\0/app/dispatch\0")
    (tmp_path / "stat").write_text(f"cpu 1 2 3\nbtime {int(time.time()) - 100}\n")
    info = procinfo.process_info(42, tmp_path)
    assert info["user"] == "54321" and info["threads"] == 4
    assert info["rss_bytes"] == 256 * os.sysconf("SC_PAGE_SIZE")
    assert info["cmdline"] == ["/usr/bin/python3", "-I", "/app/dispatch"]
    assert info["cpu_seconds"] == round(150 / os.sysconf("SC_CLK_TCK"), 2)
    assert 60 < info["uptime_s"] < 80
    assert procinfo.process_user(42, tmp_path) == "54321"
