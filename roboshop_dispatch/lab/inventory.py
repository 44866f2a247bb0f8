"""The lab's hosts as an Ansible inventory (INI), rendered from the state: pure.

Every host is ``127.0.0.1`` on its own ssh port, root with the lab's key; ssh checks the hosts'
keys against the lab's own known_hosts file (written by ``lab up`` from the hosts' keys), so the
operator's ``~/.ssh/known_hosts`` is never read for them nor written. The variables are the ones
the role in ``ansible/roles/dispatchctl`` reads, so ``ansible-playbook -i <this> ansible/site.yml``
installs dispatch on the lab's hosts against the lab's broker. The broker's password is not in the
inventory: ``dispatch_amqp_password`` is a lookup of the 0600 file that holds it, read on the
controller (this machine) when the play needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional

from .state import LabState

GROUP = "dispatch"


def _pairs(values: Mapping[str, str]) -> str:
    return "".join(f" {k}={v}" for k, v in values.items())


def render(state: LabState, *, key_path: Path, known_hosts: Path, password_file: Path,
           host_vars: Optional[Mapping[str, Mapping[str, str]]] = None,
           group_vars: Optional[Mapping[str, str]] = None) -> str:
    """``host_vars`` (per host name) and ``group_vars`` add to, or override, what the lab sets."""
    ssh_args = (f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes "
                "-o GlobalKnownHostsFile=/dev/null")
    lines = [
        f"# dispatchctl lab: {len(state.hosts)} host(s), `dispatchctl lab status`; regenerate with "
        "`dispatchctl lab inventory`",
        f"# the broker password is not here: it is in {password_file} (root, 0600)",
        f"[{GROUP}]",
    ]
    lines += [f"{h.name} ansible_host=127.0.0.1 ansible_port={h.ssh_port}{_pairs((host_vars or {}).get(h.name, {}))}"
              for h in state.hosts]
    values: Dict[str, str] = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key_path),
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": f"'{ssh_args}'",
    }
    if state.broker is not None:
        values.update(dispatch_amqp_host="127.0.0.1", dispatch_amqp_port=str(state.broker.port),
                      dispatch_amqp_user=state.broker.user,
                      dispatch_amqp_password=f"\"{{{{ lookup('ansible.builtin.file', '{password_file}') }}}}\"")
    values.update(group_vars or {})
    lines += ["", f"[{GROUP}:vars]", *(f"{k}={v}" for k, v in values.items())]
    return "\n".join(lines) + "\n"
