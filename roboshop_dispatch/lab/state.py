"""The lab's state: what ``dispatchctl lab up`` made, recorded in one small JSON file so that any
later ``lab`` command (another process) can find, drive and remove it.

Everything the lab makes outside the rootfs cache lives under the state dir
(``/run/dispatchctl-lab`` or ``$DISPATCHCTL_LAB_STATE``): this file, the broker's data and logs,
the hosts' boot logs, the ssh key, the known_hosts file and the broker password (0600). /run is a
tmpfs, so a reboot forgets the lab; state whose processes are gone is stale and cleaned up.

Parsing is strict (:func:`parse`): a state file that is not exactly what this module writes is an
error naming the file, never half-trusted (its pids are signalled by ``lab down``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import DispatchctlError

STATE_ENV = "DISPATCHCTL_LAB_STATE"
DEFAULT_STATE_DIR = Path("/run/dispatchctl-lab")
STATE_FILE = "state.json"
FORMAT = 1
MAX_HOSTS = 8
# the state dir's path goes into ssh options and an Ansible inventory: plain characters only
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")
NODE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}@localhost$")
HOST_NAME = re.compile(r"^lab-[0-9]{1,2}$")


class LabStateError(DispatchctlError):
    """The state file or state dir cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class HostRecord:
    name: str          # lab-1, lab-2, ...: the machine name (hostname inside) and inventory name
    nspawn_pid: int
    leader_pid: int    # the host's PID 1 (systemd) as seen from here: nsenter's target
    ssh_port: int


@dataclass(frozen=True)
class BrokerRecord:
    node: str
    dir: str
    port: int
    dist_port: int
    pid: int
    user: str
    epmd_started: bool  # epmd was not running before: lab down stops it when no node is left


@dataclass(frozen=True)
class LabState:
    rootfs: str
    installed: bool
    created: float  # time.time() when lab up finished
    broker: Optional[BrokerRecord] = None
    hosts: List[HostRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2, sort_keys=True) + "\n"


def state_dir(environ: Optional[Dict[str, str]] = None) -> Path:
    """The state dir: $DISPATCHCTL_LAB_STATE, else /run/dispatchctl-lab. Raises LabStateError for a
    relative path or one with characters that ssh options or an inventory would need quoted."""
    env = os.environ if environ is None else environ
    raw = env.get(STATE_ENV) or str(DEFAULT_STATE_DIR)
    return checked_dir(raw, STATE_ENV if env.get(STATE_ENV) else "state dir")


def checked_dir(raw: str, what: str) -> Path:
    if not SAFE_PATH.match(raw) or "/../" in raw + "/" or "/./" in raw + "/" or raw.rstrip("/") == "":
        raise LabStateError(f"{what}: {raw!r} must be an absolute path of letters, digits and ._+-/ "
                            "(no .. and no spaces: it goes into ssh options and the inventory)")
    return Path(raw.rstrip("/") or "/")


def _int(doc: Dict[str, Any], key: str, low: int = 0, high: int = 2**31) -> int:
    value = doc.get(key)
    if type(value) is not int or not low <= value <= high:
        raise LabStateError(f"{key}: expected an integer in {low}..{high}, got {value!r}")
    return value


def _str(doc: Dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise LabStateError(f"{key}: unexpected value {value!r}")
    return value


def _object(value: Any, keys: List[str], what: str) -> Dict[str, Any]:
    if not isinstance(value, dict) or sorted(value) != sorted(keys):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise LabStateError(f"{what}: expected the keys {', '.join(sorted(keys))}, got {got}")
    return value


def _host(value: Any) -> HostRecord:
    doc = _object(value, ["name", "nspawn_pid", "leader_pid", "ssh_port"], "a host")
    return HostRecord(name=_str(doc, "name", HOST_NAME), nspawn_pid=_int(doc, "nspawn_pid", 2),
                      leader_pid=_int(doc, "leader_pid", 2), ssh_port=_int(doc, "ssh_port", 1, 65535))


def _broker(value: Any) -> Optional[BrokerRecord]:
    if value is None:
        return None
    doc = _object(value, ["node", "dir", "port", "dist_port", "pid", "user", "epmd_started"], "broker")
    if type(doc["epmd_started"]) is not bool:
        raise LabStateError("epmd_started: expected true or false")
    return BrokerRecord(node=_str(doc, "node", NODE_NAME), dir=_str(doc, "dir", SAFE_PATH),
                        port=_int(doc, "port", 1, 65535), dist_port=_int(doc, "dist_port", 1, 65535),
                        pid=_int(doc, "pid"), user=_str(doc, "user", re.compile(r"^[A-Za-z0-9_.-]{1,64}$")),
                        epmd_started=doc["epmd_started"])


def parse(text: str) -> LabState:
    """The state in ``text`` (as :meth:`LabState.to_json` writes it). Raises LabStateError."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LabStateError(f"not JSON: {exc}") from None
    doc = _object(doc, ["format", "rootfs", "installed", "created", "broker", "hosts"], "the state")
    if doc["format"] != FORMAT:
        raise LabStateError(f"format {doc['format']!r}: this dispatchctl reads format {FORMAT}")
    if type(doc["installed"]) is not bool or type(doc["created"]) not in (int, float) or doc["created"] < 0:
        raise LabStateError("installed/created: expected a boolean and a time")
    if not isinstance(doc["hosts"], list) or len(doc["hosts"]) > MAX_HOSTS:
        raise LabStateError(f"hosts: expected a list of at most {MAX_HOSTS}")
    hosts = [_host(h) for h in doc["hosts"]]
    if len({h.name for h in hosts}) != len(hosts) or len({h.ssh_port for h in hosts}) != len(hosts):
        raise LabStateError("hosts: a name or an ssh port appears twice")
    return LabState(rootfs=_str(doc, "rootfs", SAFE_PATH), installed=doc["installed"], created=float(doc["created"]),
                    broker=_broker(doc["broker"]), hosts=hosts)
