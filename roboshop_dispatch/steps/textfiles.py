"""The text files the steps write or put back (the unit, the environment file, the credential):
what is wanted, what is there, and their diff with every secret masked, by field (redact.py):
the secret keys' values and the credentials; the user, the paths and the other settings shown as
they are. Shared by the config step and the rollback's restore step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from .. import envfile
from ..consumer.telemetry_settings import header_secrets
from ..files import lstat_regular, unified_diff
from ..redact import HEADER_KEYS, SECRET_KEYS, Redactor

CREDENTIAL = "credential"
HEADERS = "otlp-headers"  # the OTLP exporter's headers as a credential (--otlp-header)
WHOLE_SECRETS = (CREDENTIAL, HEADERS)  # files that are a secret through and through


class _Unreadable:
    """A file we may not read (a dry run without root)."""


UNREADABLE = _Unreadable()
Current = Union[None, str, _Unreadable]


@dataclass(frozen=True)
class WantedFile:
    mark: str  # what the service step reacts to: unit, envfile, credential
    path: Path  # as on the host
    text: Optional[str]  # None: the file must not exist
    mode: int
    secret: bool = False  # a diff shows its secret keys masked
    note: str = ""  # said with its write/update action


def read_current(path: Path) -> Current:
    """The file's text (never through a link), None when absent, UNREADABLE without permission."""
    try:
        if lstat_regular(path) is None:
            return None
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except PermissionError:
        return UNREADABLE
    except UnicodeDecodeError:
        return "\ufffd"  # not text we wrote: differs


def old_secrets(text: Optional[str]) -> List[str]:
    """The secret values an old environment file or unit holds, in every form it may spell them."""
    if not text:
        return []
    pairs = list(envfile.parse(text).items())
    for line in text.splitlines():  # a unit's Environment=KEY=value / Environment="KEY=value"
        body = line.strip()
        if body.startswith("Environment="):
            pairs += list(envfile.parse(body[len("Environment="):].strip('"')).items())
    values = [v for k, v in pairs if k in SECRET_KEYS and v]
    return values + [h for k, v in pairs if k in HEADER_KEYS for h in header_secrets(v)]


def changed_keys(old: str, new: str) -> List[str]:
    before, after = envfile.parse(old), envfile.parse(new)
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def file_diff(want: WantedFile, old: Current, redactor: Redactor) -> str:
    previous = None if isinstance(old, _Unreadable) else old
    if want.mark in WHOLE_SECRETS:  # the whole file is the secret
        return unified_diff(None if previous is None else "********\n",
                            None if want.text is None else "******** (changed)\n" if previous else "********\n",
                            str(want.path))
    secret_changed = (previous is not None and want.text is not None and want.secret
                      and any(k in changed_keys(previous, want.text) for k in SECRET_KEYS))
    new_label = "******** (changed)" if secret_changed else "********"
    ours = (want.text or "").split("\n")  # what dispatchctl writes: fields and its own comments, never masked
    return unified_diff(None if previous is None else redactor.assignments(previous, ours=ours),
                        None if want.text is None else redactor.assignments(want.text, new_label, ours=ours),
                        str(want.path))
