"""Secrets never print. Masking is by field, never by searching dispatchctl's own text for a
secret: a password that happens to be the service user's name (``roboshop``) leaves ``User=roboshop``
and ``/etc/roboshop/dispatch.env`` as they are.

- :class:`Secret` holds one secret value: it shows as ``********`` wherever it is printed, logged
  or repr'd, so every field that holds one (the password, the OTLP headers) is masked where it is
  formatted.
- ``Redactor(secrets).text(s)`` replaces each secret value, raw and URL-encoded, by ``********``
  in text that does not come from dispatchctl: a command's output (it can echo anything), the
  journal, an exception's message.
- ``Redactor(secrets).assignments(text)`` masks the files that hold secrets (an environment file,
  a unit's ``Environment=`` lines) by key: the whole value of every secret key, whatever its
  quoting, an ``export`` prefix or the lines it spans; the other assignments are fields and stay;
  a free line (a comment, a stray word) of a file dispatchctl did not write is masked by value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, List, Set, Tuple

from . import envfile

MASK = "********"
# an assignment (KEY=, export KEY=, a unit's Key=) or a unit's [Section]: a field, not free text
_FIELD = re.compile(r"^\s*(?:(?:export\s+)?[A-Za-z_][A-Za-z0-9_-]*\s*=|\[[^\]]*\]\s*$)")
# the variables whose values are secrets: the password, and the OTLP exporter's headers (a token)
HEADER_KEYS: Tuple[str, ...] = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
SECRET_KEYS: Tuple[str, ...] = ("AMQP_PASS", *HEADER_KEYS)


class Secret:
    """A string that shows as ``********`` wherever it is printed, logged or repr'd."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class Redactor:
    """Masks every given secret (and its URL-encoded forms) wherever it appears."""

    def __init__(self, secrets: Iterable[str], keys: Iterable[str] = SECRET_KEYS) -> None:
        values: List[str] = []
        for secret in secrets:
            if not secret:
                continue
            from urllib.parse import quote  # only when there is something to mask

            # surrogatepass: a secret read from a non-UTF-8 environment is masked, never a crash
            quoted = [quote(secret, safe=safe, errors="surrogatepass") for safe in ("", "/")]
            for form in (secret, *quoted):
                if form and form not in values:
                    values.append(form)
        values.sort(key=len, reverse=True)  # a longer form first: never leave a tail of one
        self._values = tuple(values)
        names = "|".join(re.escape(k) for k in keys)
        # KEY=..., export KEY=..., Environment=KEY=..., Environment="KEY=... OTHER=...", # KEY=...
        self._assignment = re.compile(rf"^([^\n]*?\b(?:{names})\s*=)[^\n]*$") if names else None
        self._keys = frozenset(keys)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, s: str) -> str:
        for value in self._values:
            if value in s:
                s = s.replace(value, MASK)
        return s

    def document(self, obj: Any) -> Any:
        """``obj`` (JSON-like) with every string, key or value, passed through :meth:`text`."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.text(k) if isinstance(k, str) else k: self.document(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.document(v) for v in obj]
        return obj

    def assignments(self, text: str, label: str = MASK, ours: Iterable[str] = ()) -> str:
        """``text`` (an environment file or a unit) with the value of every secret key replaced by
        ``label``, all of it (a quoted or continued value spans lines); the other assignments as
        they are (fields, never secrets); every other line (a comment, a continuation) with the
        known secret values masked, unless it is one of ``ours`` (a line dispatchctl writes)."""
        for key, start, end in reversed(envfile.value_spans(text)):
            if key.split() and key.split()[-1] in self._keys:
                prefix = text[text.rfind("\n", 0, start) + 1:start]
                text = text[:start] + self._shown(prefix, label) + text[end:]
        own = set(ours)
        return "\n".join(self._line(line, label, own) for line in text.split("\n"))

    def _line(self, line: str, label: str, ours: Set[str]) -> str:
        match = self._assignment.match(line) if self._assignment is not None else None
        if match is not None:
            return match.group(1) + self._shown(match.group(1), label)
        return line if _FIELD.match(line) or line in ours else self.text(line)

    @staticmethod
    def _shown(prefix: str, label: str) -> str:
        # an environment file's own line (KEY= or export KEY=) shows the mask as it quotes values
        bare = re.fullmatch(r"\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=", prefix)
        return f'"{label}"' if bare else label
