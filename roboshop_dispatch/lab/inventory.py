"""The lab's hosts as an Ansible inventory (INI), rendered from the state: pure.

Every host is ``127.0.0.1`` on its own ssh port, root with the lab's key; ssh checks the hosts'
keys against the lab's own known_hosts file (written by ``lab up`` from the hosts' keys), so the
operator's ``~/.ssh/known_hosts`` is never read for them nor written. The broker's password is not
in the inventory: ``amqp_pass_file`` names the 0600 file that holds it.
"""

from __future__ import annotations

from pathlib import Path

from .state import LabState

GROUP = "dispatch"


def render(state: LabState, *, key_path: Path, known_hosts: Path, password_file: Path) -> str:
    ssh_args = (f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes "
                "-o GlobalKnownHostsFile=/dev/null")
    lines = [
        f"# dispatchctl lab: {len(state.hosts)} host(s), `dispatchctl lab status`; regenerate with "
        "`dispatchctl lab inventory`",
        f"# the broker password is not here: it is in {password_file} (root, 0600)",
        f"[{GROUP}]",
    ]
    lines += [f"{h.name} ansible_host=127.0.0.1 ansible_port={h.ssh_port}" for h in state.hosts]
    lines += [
        "",
        f"[{GROUP}:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key_path}",
        "ansible_python_interpreter=/usr/bin/python3",
        f"ansible_ssh_common_args='{ssh_args}'",
    ]
    if state.broker is not None:
        lines += ["amqp_host=127.0.0.1", f"amqp_port={state.broker.port}", f"amqp_user={state.broker.user}",
                  f"amqp_pass_file={password_file}"]
    return "\n".join(lines) + "\n"
