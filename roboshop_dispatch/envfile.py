"""systemd EnvironmentFile= quoting: render values so they round-trip exactly, and parse them back
exactly as systemd 252 (RHEL 9, Debian 12) does. The one parser every part of dispatchctl uses.

systemd's rules (src/basic/env-file.c, ``parse_env_file_internal``; then ``strv_env_clean`` when a
unit's environment is built), which :func:`parse` follows character by character:

- a line whose first non-blank character is ``#`` or ``;`` is a comment; a comment ending in a
  backslash also swallows the next line (systemd < 254);
- ``KEY=VALUE``: blanks around the key are dropped; a line without ``=`` is ignored;
- a value may mix unquoted, ``'single'`` and ``"double"`` quoted parts; quotes are special only
  where a value (part) starts: ``A=x "y"`` is the literal ``x "y"``;
- unquoted: leading blanks dropped, trailing blanks dropped, ``\\X`` is ``X``, a backslash before the
  newline continues the value on the next line;
- single quotes: everything literal up to the next ``'`` (newlines included);
- double quotes: a backslash escapes only ``" \\ ` $`` (other backslashes stay), backslash-newline
  continues the line;
- ``\\r`` ends a line like ``\\n``; a NUL ends the file;
- no ``$VAR`` or ``%`` expansion; a later assignment replaces an earlier one;
- a key that is not a valid variable name is dropped: **``export KEY=VALUE`` is ignored**
  (the key would be ``export KEY``), it does not set KEY;
- invalid UTF-8 makes systemd refuse the file (here: :class:`UnicodeDecodeError` when reading).

:func:`render` writes every value double-quoted with those four characters escaped; spaces, ``#``,
``'``, ``%`` and non-ASCII need nothing. A newline cannot be written safely and is rejected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_NEEDS_ESCAPE = '"\\`$'
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NEWLINE = "\n\r"
_BLANK = " \t\n\r"
_COMMENT = "#;"


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


def is_valid_name(key: str) -> bool:
    """systemd's env_name_is_valid(): letters, digits and ``_``, not starting with a digit."""
    return bool(_KEY.match(key))


def read(path: Path) -> Dict[str, str]:
    """The variables an EnvironmentFile at ``path`` gives a unit (OSError, UnicodeDecodeError)."""
    return parse(path.read_bytes().decode("utf-8"))


def parse(text: str) -> Dict[str, str]:
    """The variables ``text`` gives a unit, exactly as systemd reads an EnvironmentFile."""
    result: Dict[str, str] = {}
    for key, value in assignments(text):
        if is_valid_name(key):
            result[key] = value
    return result


class _Scan:
    """The state of systemd's env-file scanner (one key, one value, the blanks to chomp)."""

    def __init__(self) -> None:
        self.state = "pre_key"
        self.key: List[str] = []
        self.value: List[str] = []
        self.key_blank: Optional[int] = None  # where the key's trailing blanks start
        self.value_blank: Optional[int] = None  # where the unquoted value's trailing blanks start
        self.out: List[Tuple[str, str]] = []
        self.pos = 0  # the index of the character being read
        self.start = 0  # where the value being read starts (just after its ``=``)
        self.spans: List[Tuple[str, int, int]] = []  # (key, start, end) of each value, as written

    def push(self, chomp: bool) -> None:
        value = self.value[: self.value_blank] if chomp and self.value_blank is not None else self.value
        key = self.key[: self.key_blank] if self.key_blank is not None else self.key
        self.out.append(("".join(key), "".join(value)))
        self.spans.append(("".join(key), self.start, self.pos))
        self.key, self.value = [], []
        self.state = "pre_key"


def _scan(text: str) -> _Scan:
    s = _Scan()
    body = text.split("\x00", 1)[0]
    for s.pos, c in enumerate(body):
        _STEP[s.state](s, c)
    s.pos = len(body)
    if s.state in ("pre_value", "value", "value_escape", "single", "double", "double_escape"):
        s.push(chomp=s.state == "value")
    return s


def assignments(text: str) -> List[Tuple[str, str]]:
    """Every (key, value) systemd's scanner yields from ``text``, in order, names not yet checked."""
    return _scan(text).out


def value_spans(text: str) -> List[Tuple[str, int, int]]:
    """Where each value is written in ``text``: (key as written, start, end), ``text[start:end]``
    being everything from just after the ``=`` to the end of the value's last line (a quoted or
    continued value may span lines). What masks a secret's value masks all of it."""
    return _scan(text).spans


def _pre_key(s: _Scan, c: str) -> None:
    if c in _COMMENT:
        s.state = "comment"
    elif c not in _BLANK:
        s.state, s.key_blank, s.key = "key", None, [c]


def _key(s: _Scan, c: str) -> None:
    if c in _NEWLINE:
        s.state, s.key = "pre_key", []
    elif c == "=":
        s.state, s.value_blank, s.value, s.start = "pre_value", None, [], s.pos + 1
    else:
        if c not in _BLANK:
            s.key_blank = None
        elif s.key_blank is None:
            s.key_blank = len(s.key)
        s.key.append(c)


def _pre_value(s: _Scan, c: str) -> None:
    if c in _NEWLINE:
        s.push(chomp=False)
    elif c == "'":
        s.state = "single"
    elif c == '"':
        s.state = "double"
    elif c == "\\":
        s.state = "value_escape"
    elif c not in _BLANK:
        s.state = "value"
        s.value.append(c)


def _value(s: _Scan, c: str) -> None:
    if c in _NEWLINE:
        s.push(chomp=True)
    elif c == "\\":
        s.state, s.value_blank = "value_escape", None
    else:
        if c not in _BLANK:
            s.value_blank = None
        elif s.value_blank is None:
            s.value_blank = len(s.value)
        s.value.append(c)


def _value_escape(s: _Scan, c: str) -> None:
    s.state = "value"
    if c not in _NEWLINE:  # backslash-newline: the value goes on on the next line
        s.value.append(c)


def _single(s: _Scan, c: str) -> None:
    if c == "'":
        s.state = "pre_value"
    else:
        s.value.append(c)


def _double(s: _Scan, c: str) -> None:
    if c == '"':
        s.state = "pre_value"
    elif c == "\\":
        s.state = "double_escape"
    else:
        s.value.append(c)


def _double_escape(s: _Scan, c: str) -> None:
    s.state = "double"
    if c in _NEEDS_ESCAPE:
        s.value.append(c)
    elif c != "\n":
        s.value.extend(("\\", c))


def _comment(s: _Scan, c: str) -> None:
    if c == "\\":
        s.state = "comment_escape"
    elif c in _NEWLINE:
        s.state = "pre_key"


def _comment_escape(s: _Scan, c: str) -> None:
    s.state = "comment"  # systemd 252: whatever follows, newline included, stays in the comment


_STEP = {
    "pre_key": _pre_key, "key": _key, "pre_value": _pre_value, "value": _value,
    "value_escape": _value_escape, "single": _single, "double": _double,
    "double_escape": _double_escape, "comment": _comment, "comment_escape": _comment_escape,
}
