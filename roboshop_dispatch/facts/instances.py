"""The dispatch units on the host, read once: ``dispatch.service`` and every ``dispatch@N.service``
(``--instances N``), their unit files, the recorded count (layout.INSTANCES_FILE) and each one's
state from one ``systemctl show``. Decisions (the service step, ``check``, ``status``) derive from
:class:`InstanceFacts`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from .. import layout
from ..systemd import RUNNING_STATES, Systemd
from .paths import lstat

ENABLED_STATES = ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias")
_INSTANCE_NAME = re.compile(r"^dispatch@([1-9][0-9]{0,5})\.service$")


@dataclass(frozen=True)
class InstanceInfo:
    """One dispatch unit as ``systemctl show`` answers: ``dispatch.service`` or ``dispatch@N.service``."""

    unit: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    enabled: str = ""  # UnitFileState
    main_pid: int = 0
    status_text: str = ""
    need_reload: bool = False
    result: str = ""

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING_STATES

    @property
    def is_enabled(self) -> bool:
        return self.enabled in ENABLED_STATES

    @property
    def number(self) -> int:
        """N of dispatch@N.service; 0 for dispatch.service."""
        m = _INSTANCE_NAME.match(self.unit)
        return int(m.group(1)) if m else 0

    @classmethod
    def from_show(cls, values: Mapping[str, str]) -> InstanceInfo:
        """One unit's block of ``systemctl show`` (:func:`roboshop_dispatch.systemd.parse_show`)."""
        pid = values.get("MainPID", "")
        return cls(unit=values.get("Id", ""), load_state=values.get("LoadState", ""),
                   active_state=values.get("ActiveState", ""), sub_state=values.get("SubState", ""),
                   enabled=values.get("UnitFileState", ""), main_pid=int(pid) if pid.isdigit() else 0,
                   status_text=values.get("StatusText", ""), need_reload=values.get("NeedDaemonReload") == "yes",
                   result=values.get("Result", ""))


@dataclass(frozen=True)
class InstanceFacts:
    """The dispatch units on the host, read once: which unit files exist, how many instances are
    configured (layout.INSTANCES_FILE), and every dispatch unit systemd knows (enabled by a link
    or loaded) with its state. Decisions (the service step, ``check``, ``status``) derive from it."""

    legacy_file: bool = False  # dispatch.service
    template_file: bool = False  # dispatch@.service
    recorded: int = 0  # the count in layout.INSTANCES_FILE (0: none recorded)
    legacy: InstanceInfo = InstanceInfo(layout.UNIT_NAME)
    units: Tuple[InstanceInfo, ...] = ()  # dispatch@N.service, by N

    def __post_init__(self) -> None:  # from a JSON record: the nested dicts become InstanceInfo
        if isinstance(self.legacy, Mapping):
            object.__setattr__(self, "legacy", InstanceInfo(**self.legacy))
        object.__setattr__(self, "units", tuple(InstanceInfo(**u) if isinstance(u, Mapping) else u
                                                for u in self.units))

    @property
    def configured(self) -> int:
        """How many instances this host is set up to run (0: nothing installed)."""
        if self.recorded:
            return self.recorded
        if self.template_file:
            return max(1, sum(1 for u in self.units if u.is_enabled))
        return 1 if self.legacy_file else 0

    @property
    def uses_template(self) -> bool:
        return self.configured > 1

    def wanted_units(self, count: int) -> List[str]:
        return [layout.UNIT_NAME] if count == 1 else [instance_unit(i) for i in range(1, count + 1)]

    def info(self, unit: str) -> InstanceInfo:
        if unit == layout.UNIT_NAME:
            return self.legacy
        return next((u for u in self.units if u.unit == unit), InstanceInfo(unit))

    def every_unit(self) -> List[InstanceInfo]:
        return [self.legacy, *self.units]

    def running(self) -> List[InstanceInfo]:
        return [u for u in self.every_unit() if u.running]


def instance_unit(number: int) -> str:
    return f"{layout.INSTANCE_PREFIX}{number}.service"


def read_instances(runner: Any, *, systemd_pid1: bool, unit_dir: Path = layout.UNIT_DIR,
                   instances_file: Path = layout.INSTANCES_FILE) -> InstanceFacts:
    """Every dispatch unit on the host: the unit files, the recorded count, the instances enabled
    (links in ``*.wants``) or loaded (``systemctl list-units``), each one's state from one
    ``systemctl show``. Without systemd only the files are read."""
    linked = set(_enabled_instances(unit_dir))
    numbers = set(linked)
    if systemd_pid1:
        res = runner.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager",
                          layout.INSTANCE_PREFIX + "*"], check=False, timeout=30)
        numbers |= set(parse_instance_list(res.stdout))
    names = [instance_unit(n) for n in sorted(numbers)]
    states: Dict[str, InstanceInfo] = {}
    if systemd_pid1:
        shown = Systemd(runner).show_units([layout.UNIT_NAME, *names])
        states = {info.unit: info for info in map(InstanceInfo.from_show, shown) if info.unit}
    return InstanceFacts(
        legacy_file=lstat(unit_dir / layout.UNIT_NAME).exists,
        template_file=lstat(unit_dir / layout.TEMPLATE_NAME).exists,
        recorded=recorded_instances(instances_file),
        legacy=states.get(layout.UNIT_NAME, InstanceInfo(layout.UNIT_NAME)),
        # without systemd's answer, a link in a .wants directory is what enabled means
        units=tuple(states.get(name, InstanceInfo(name, enabled="enabled" if n in linked else ""))
                    for n, name in zip(sorted(numbers), names)),
    )


def recorded_instances(path: Path) -> int:
    """The instance count recorded in ``path`` (0: absent or not a sane number)."""
    if lstat(path).kind != "file":
        return 0
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return 0
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= layout.MAX_INSTANCES:
        return 0
    return int(text)


def _enabled_instances(unit_dir: Path) -> List[int]:
    """N of every ``dispatch@N.service`` link in a ``*.wants``/``*.requires`` directory."""
    found: List[int] = []
    try:
        dirs = [d for d in unit_dir.iterdir() if d.name.endswith((".wants", ".requires")) and d.is_dir()]
    except OSError:
        return found
    for directory in dirs:
        try:
            found += [InstanceInfo(e.name).number for e in directory.iterdir() if _INSTANCE_NAME.match(e.name)]
        except OSError:
            continue
    return found


def parse_instance_list(text: str) -> List[int]:
    """N of every ``dispatch@N.service`` in ``systemctl list-units --plain --no-legend`` output."""
    out: List[int] = []
    for line in text.splitlines():
        words = [w for w in line.split() if w not in ("\u25cf", "*")]  # a failed unit's marker
        name = words[0] if words else ""
        if _INSTANCE_NAME.match(name):
            out.append(InstanceInfo(name).number)
    return out
