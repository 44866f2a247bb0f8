"""systemd EnvironmentFile= quoting: render values so they round-trip exactly, and parse them back.

systemd (env-file.c) reads a double-quoted value literally except that a backslash escapes
one of ``" \\ ` $`` (and a backslash-newline continues the line). It does no ``$VAR`` or ``%``
specifier expansion in EnvironmentFile=. So every value is written double-quoted with those four
characters escaped; spaces, ``#``, ``'``, ``%`` and non-ASCII need nothing. A newline cannot be
represented safely and is rejected by the settings validators before we get here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Dict

_NEEDS_ESCAPE = '"\\`$'
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(value: str) -> str:
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError("a newline or NUL cannot be written to an EnvironmentFile")
    return '"' + "".join("\\" + c if c in _NEEDS_ESCAPE else c for c in value) + '"'


def render(values: Mapping[str, str], header: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in values.items():
        if not _KEY.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        lines.append(f"{key}={quote(value)}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> Dict[str, str]:
    """Parse an EnvironmentFile the way systemd does (the subset: quoting, escapes, comments)."""
    result: Dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, rest = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        result[key] = _unquote(rest.lstrip())
    return result


def _unquote(rest: str) -> str:
    out = []
    i = 0
    state = "plain"
    while i < len(rest):
        c = rest[i]
        if state == "plain":
            if c == "'":
                state = "single"
            elif c == '"':
                state = "double"
            elif c == "\\" and i + 1 < len(rest):
                i += 1
                out.append(rest[i])
            else:
                out.append(c)
        elif state == "single":
            if c == "'":
                state = "plain"
            else:
                out.append(c)
        else:  # double
            if c == '"':
                state = "plain"
            elif c == "\\" and i + 1 < len(rest):
                nxt = rest[i + 1]
                if nxt in _NEEDS_ESCAPE:
                    out.append(nxt)
                else:
                    out.append(c + nxt)
                i += 1
            else:
                out.append(c)
        i += 1
    value = "".join(out)
    return value.rstrip() if state == "plain" and not rest.rstrip().endswith(("'", '"')) else value
