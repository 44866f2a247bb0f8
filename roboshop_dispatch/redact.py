"""Secrets never print: :class:`Secret` holds one (it shows as ``********`` wherever it is printed,
logged or repr'd), and one redaction helper masks them in everything dispatchctl prints: tables,
JSON, diffs, logs.

``Redactor(secrets)`` is built from the secret values (``Secret.reveal()``, the passwords found in
an old environment file or unit); ``.text(s)`` replaces each value, raw and URL-encoded, by
``********``; ``.document(obj)`` does that to every string of a JSON-like object. For files that
*assign* secrets (an environment file, a unit's ``Environment=`` lines) ``.assignments(text)`` also
masks the value of every secret key whatever its quoting or an ``export`` prefix, so a value the
parser cannot reproduce exactly is still never shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, List, Tuple

MASK = "********"
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
        self._assignment = re.compile(rf"(?m)^([^\n]*?\b(?:{names})\s*=)[^\n]*$") if names else None

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

    def assignments(self, text: str, label: str = MASK) -> str:
        """``text`` with the rest of every line that assigns a secret key replaced by ``label``,
        then every known secret value masked too."""
        if self._assignment is not None:
            text = self._assignment.sub(lambda m: m.group(1) + self._shown(m.group(1), label), text)
        return self.text(text)

    @staticmethod
    def _shown(prefix: str, label: str) -> str:
        # an environment file's own line (KEY= or export KEY=) shows the mask as it quotes values
        bare = re.fullmatch(r"\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=", prefix)
        return f'"{label}"' if bare else label
