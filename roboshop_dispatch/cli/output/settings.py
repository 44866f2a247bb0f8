"""The "settings" block a ``--dry-run`` prints before the steps: each value this run uses and where
it came from (the option, a DISPATCHCTL_* variable, the installed files, the default), the password
masked."""

from __future__ import annotations

from typing import Any

from ...sources import Resolved


def settings_text(resolved: Resolved) -> str:
    rows = [(name, _shown(item["value"]), f"{item['source']} ({item['from']})"
             if item["from"] not in (item["source"], "") else item["source"])
            for name, item in resolved.document().items()]
    width = max((len(r[0]) for r in rows), default=0)
    vwidth = min(40, max((len(r[1]) for r in rows), default=0))
    lines = ["settings:"] + [f"  {n.ljust(width)}  {v.ljust(vwidth)}  {s}" for n, v, s in rows]
    return "\n".join(lines) + "\n"


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)
