"""The one reader of dispatch's unit file and its drop-ins, and of what ``systemctl show`` says
the unit runs: ``ExecStart=`` (the program and its argv), ``EnvironmentFile=``, ``User=`` and the
``LoadCredential=`` lines (systemd 252's ``systemctl show`` prints that property as
``[unprintable]``, so they are read from the files)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .. import layout
from .paths import FileInfo


def exec_argv(exec_start: str) -> List[str]:
    """The argv of ``systemctl show -p ExecStart`` (``{ path=... ; argv[]=... ; ... }``)."""
    m = re.search(r"argv\[\]=([^;]*)", exec_start)
    if m:
        return m.group(1).split()
    return exec_start.split()


def binary_from_unit(props: Mapping[str, str], default: Path) -> Path:
    """The dispatch program the unit runs: the ExecStart argument named ``dispatch`` (the bundled
    flavour runs ``python3 /app/dispatch``, the go flavour ``/app/dispatch``), else ``default``."""
    for arg in exec_argv(props.get("ExecStart", "")):
        if Path(arg).name == layout.BINARY_NAME:
            return Path(arg)
    return default


def unit_binary(exec_start: str) -> Optional[Path]:
    """The dispatch program an ExecStart= runs (systemd's form or the unit file's), or None."""
    found = binary_from_unit({"ExecStart": exec_start}, Path())
    return found if found != Path() and found.is_absolute() else None


def env_file_from_unit(props: Mapping[str, str], default: Path) -> Path:
    value = props.get("EnvironmentFiles", "").strip()
    if value:
        return Path(value.split(" (", 1)[0].lstrip("-"))
    return default


def unit_texts(unit_file: FileInfo, drop_ins: str) -> List[str]:
    """The unit file's text and its drop-ins' (systemd's DropInPaths, else the unit's .d directory)."""
    paths = drop_ins.split() if drop_ins else sorted(
        str(p) for p in Path(unit_file.path).with_name(Path(unit_file.path).name + ".d").glob("*.conf"))
    texts = []
    for path in [unit_file.path, *paths]:
        try:
            texts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return texts


def _service_assignments(texts: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """Each ``KEY=VALUE`` of the ``[Service]`` section of a unit file and its drop-ins, in order
    (key and value stripped; an empty value is an assignment that clears, as in systemd)."""
    for text in texts:
        section = ""
        for line in _logical_lines(text):
            if line.startswith("["):
                section = line.strip()
                continue
            key, sep, value = line.partition("=")
            if section == "[Service]" and sep:
                yield key.strip(), value.strip()


def load_credentials(texts: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """The ``LoadCredential=ID[:PATH]`` of the ``[Service]`` section of a unit file and its drop-ins,
    in order (an empty assignment clears the list, as in systemd)."""
    found: Dict[str, str] = {}
    for key, value in _service_assignments(texts):
        if key != "LoadCredential":
            continue
        if not value:
            found.clear()
            continue
        name, _, path = value.partition(":")
        found[name] = path or name
    return tuple(found.items())


def unit_settings(texts: Sequence[str]) -> Dict[str, str]:
    """The last ``User=``, ``ExecStart=`` and ``EnvironmentFile=`` of the ``[Service]`` section of a
    unit file and its drop-ins (an empty assignment clears it, as in systemd)."""
    found: Dict[str, str] = {}
    for key, value in _service_assignments(texts):
        if key not in ("User", "ExecStart", "EnvironmentFile"):
            continue
        if value:
            found[key] = value
        else:
            found.pop(key, None)
    return found


def _logical_lines(text: str) -> List[str]:
    lines: List[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending)
    return lines
