"""N lab hosts and the ansible-playbook that drives them (tests and bench/fleet.py).

``Fleet`` is a lab (``roboshop_dispatch.lab.session.Lab``) brought up without dispatchctl inside:
each host is a booted ``Container`` with sshd on its own loopback port, root logs in with the lab's
ed25519 key, and ``inventory()`` is the lab's standard INI inventory (what ``dispatchctl lab
inventory`` prints) for Ansible's own ssh connection plugin, with the role's variables.

``run_playbook`` runs the real ``ansible-playbook`` of this virtualenv with everything Ansible
writes (ANSIBLE_HOME, local temp, ssh control sockets) under a private temp dir, never /root/.ansible,
and returns a ``PlayRun``: the output, the play stats and every task's result per host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from roboshop_dispatch.lab.broker import Broker
from roboshop_dispatch.lab.nspawn import Container
from roboshop_dispatch.lab.session import Lab

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"


class Fleet:
    """``hosts`` lab hosts (``roboshop_dispatch.lab.session.Lab``, ``lab up --no-install``: booted,
    sshd on a loopback port each, the lab's key and known_hosts, the lab's own RabbitMQ) in a state
    dir of their own, so a fleet never meets an operator's lab or another fleet."""

    def __init__(self, state_dir: Optional[Path] = None) -> None:
        self.lab = Lab(state_dir or Path(f"/run/dispatchctl-fleet-{uuid.uuid4().hex[:8]}"))
        self.hosts: Dict[str, Container] = {}

    def up(self, hosts: int = 3) -> Fleet:
        try:
            self.lab.up(hosts=hosts, install=False)
            self.hosts = {h.name: h.container for h in self.lab.hosts()}
        except BaseException:
            self.down()
            raise
        return self

    @property
    def dir(self) -> Path:
        """The lab's state dir (0711, root's): removed with everything in it by ``down()``."""
        return self.lab.dir

    @property
    def broker(self) -> Broker:
        return self.lab.broker

    def inventory(self, host_vars: Optional[Dict[str, Dict[str, str]]] = None, **group_vars: str) -> str:
        return self.lab.inventory(host_vars, **group_vars)

    def write_inventory(self, text: str) -> Path:
        path = self.dir / "inventory.ini"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def down(self) -> None:
        self.hosts = {}
        self.lab.down()


CALLBACKS = Path(__file__).resolve().parent / "ansible_callbacks"


def ansible_env(private_dir: Path) -> Dict[str, str]:
    """ansible-playbook's environment: C.UTF-8, this repository's role, nothing under /root/.ansible,
    and every task's result recorded in ``private_dir/results.json`` (tests/support/ansible_callbacks).
    ``HOME`` is ``private_dir/home``, made empty here: Ansible's own files go to ``ansible-home``
    (the variables below), so whatever still lands in that HOME is a write the variables missed,
    and it never reaches the operator's home."""
    home = private_dir / "ansible-home"
    for sub in ("tmp", "cp"):
        (home / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    (private_dir / "home").mkdir(exist_ok=True, mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["HOME"] = str(private_dir / "home")
    # the role's tasks delegated to localhost use the remote temp of the local user (~root's
    # .ansible/tmp): a private one too (the hosts, volatile, get it at that path)
    env.update(ANSIBLE_REMOTE_TEMP=str(home / "remote-tmp"), LC_ALL="C.UTF-8", LANG="C.UTF-8",
               ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
               ANSIBLE_HOME=str(home), ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(home / "cp"), ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"),
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_RETRY_FILES_ENABLED="False", TMPDIR=str(home / "tmp"),
               ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="fleet_results",
               FLEET_RESULTS=str(private_dir / "results.json"))
    return env


class PlayRun:
    """One ansible-playbook run: its process result, and what every task did on every host."""

    def __init__(self, proc: subprocess.CompletedProcess, results: Dict[str, Any], seconds: float) -> None:
        self.proc = proc
        self.returncode = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.stats: Dict[str, Dict[str, int]] = results.get("stats", {})
        self.tasks: Dict[str, Dict[str, dict]] = results.get("tasks", {})
        self.seconds = seconds

    def task(self, prefix: str) -> Dict[str, dict]:
        """host -> {"status", "result"} of the task whose name starts with ``prefix``."""
        return {host: entry for host, tasks in self.tasks.items() for name, entry in tasks.items()
                if name.startswith(prefix)}

    def module(self) -> Dict[str, dict]:
        """host -> the dispatchctl module's result (the role's task "Dispatch is ...")."""
        return {host: entry["result"] for host, entry in self.task("Dispatch is").items()}

    def changed(self) -> Dict[str, int]:
        return {host: s["changed"] for host, s in self.stats.items()}

    def tail(self) -> str:
        return self.output[-6000:]


def run_playbook(inventory: Path, playbook: Path, *args: str, extra_env: Optional[Dict[str, str]] = None,
                 timeout: float = 600) -> PlayRun:
    env = ansible_env(inventory.parent)
    env.update(extra_env or {})
    results = Path(env["FLEET_RESULTS"])
    results.unlink(missing_ok=True)
    binary = str(Path(sys.executable).parent / "ansible-playbook")
    started = time.monotonic()
    proc = subprocess.run([binary, "-i", str(inventory), str(playbook), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=str(playbook.parent))
    seconds = time.monotonic() - started
    return PlayRun(proc, json.loads(results.read_text()) if results.exists() else {}, seconds)


def changed_steps(result: dict) -> List[str]:
    return [s["name"] for s in result.get("steps", []) if s.get("changed")]
