"""One process's facts for ``status`` and ``check``: its user, memory, CPU time, threads, start
time and command line. psutil when the host has it (``python3-psutil``); otherwise the same
figures straight from ``/proc`` (Linux), as psutil reads them there. dispatchctl never needs
psutil: the single-file dispatchctl and the RPM carry none.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

# /proc/PID/stat after the command's ")": state is field 3 of proc(5), so field N is at N - 3
_UTIME, _STIME, _THREADS, _STARTTIME = 14 - 3, 15 - 3, 20 - 3, 22 - 3


def process_info(pid: int, proc_root: Path = Path("/proc")) -> Dict[str, Any]:
    """``pid, user, rss_bytes, cpu_percent, cpu_seconds, threads, uptime_s, started, cmdline`` and
    ``source`` (``psutil`` or ``/proc``), or ``{"pid", "error"}`` (the process ended meanwhile)."""
    try:
        facts = _from_psutil(pid) if proc_root == Path("/proc") and _have_psutil() else _from_proc(pid, proc_root)
    except Exception as exc:  # the process ended in between, or it cannot be seen
        return {"pid": pid, "error": f"{type(exc).__name__}: {exc}"}
    created, cpu = facts.pop("created"), facts.pop("cpu")
    uptime = max(0.001, time.time() - created)
    facts.update(pid=pid, cpu_percent=round(cpu / uptime * 100, 2), cpu_seconds=round(cpu, 2),
                 uptime_s=round(uptime, 1), started=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(created)))
    return facts


def process_user(pid: int, proc_root: Path = Path("/proc")) -> Optional[str]:
    """The name of the user ``pid`` runs as (its real uid), or None when it cannot be told."""
    try:
        if proc_root == Path("/proc") and _have_psutil():
            import psutil

            return str(psutil.Process(pid).username())
        return _user_name(_real_uid(pid, proc_root))
    except Exception:  # the process ended in between, or it cannot be seen
        return None


def _have_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def _from_psutil(pid: int) -> Dict[str, Any]:
    import psutil

    proc = psutil.Process(pid)
    with proc.oneshot():
        cpu = proc.cpu_times()
        return {"user": proc.username(), "rss_bytes": proc.memory_info().rss, "cpu": cpu.user + cpu.system,
                "threads": proc.num_threads(), "created": proc.create_time(), "cmdline": proc.cmdline(),
                "source": "psutil"}


def _from_proc(pid: int, proc_root: Path) -> Dict[str, Any]:
    base = proc_root / str(pid)
    text = (base / "stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss_pages = int((base / "statm").read_text().split()[1])
    return {
        "user": _user_name(_real_uid(pid, proc_root)),
        "rss_bytes": rss_pages * os.sysconf("SC_PAGE_SIZE"),
        "cpu": (int(fields[_UTIME]) + int(fields[_STIME])) / ticks,
        "threads": int(fields[_THREADS]),
        "created": _boot_time(proc_root) + int(fields[_STARTTIME]) / ticks,
        "cmdline": _cmdline((base / "cmdline").read_bytes()),
        "source": "/proc",
    }


def _real_uid(pid: int, proc_root: Path) -> int:
    for line in (proc_root / str(pid) / "status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError(f"no Uid: line in {proc_root}/{pid}/status")


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name: psutil says the number too
        return str(uid)


def _boot_time(proc_root: Path) -> float:
    for line in (proc_root / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError(f"no btime in {proc_root}/stat")


def _cmdline(raw: bytes) -> List[str]:
    args = raw.decode(errors="replace").split("\0")
    return args[:-1] if args and args[-1] == "" else args
