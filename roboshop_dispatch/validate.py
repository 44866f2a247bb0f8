"""Every validator of a setting's value: each takes the name of where the value came from (an
option, a DISPATCHCTL_* variable, an installed file and key) and the value, and returns it
normalised or raises :class:`SettingsError` naming that source. The CLI turns that into exit 2,
before anything is touched. Which validator each setting uses is declared in :mod:`.knobs`."""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .consumer.delivery import MAX_BODY_LIMIT, MIN_BODY_LIMIT
from .consumer.secretfile import strip_final_newline
from .errors import DispatchctlError, ErrorKind
from .layout import MAX_INSTANCES
from .redact import Secret

FLAVOURS = ("bundled", "go")
# the `orders` queue's type (DISPATCH_QUEUE_TYPE): classic is the contract (no x-arguments)
QUEUE_TYPES = ("classic", "quorum")

# Top-level system directories: none of them, and none of their direct children (``/usr/bin``,
# ``/etc/ssh``, ``/home/alice``), is ever an app directory: install would chmod it and
# ``uninstall --purge`` would remove it. /opt, /srv and /mnt hold application directories, so
# their children are allowed (they themselves are not).
SYSTEM_DIRS = frozenset({
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/lost+found", "/media",
    "/proc", "/root", "/run", "/sbin", "/snap", "/sys", "/tmp", "/usr", "/var",
})
APP_PARENTS = frozenset({"/opt", "/srv", "/mnt"})
# nothing at any depth below these: kernel and runtime file systems, the system's own files, and
# world-writable trees where another user could have made (and so control) a directory on the way
NO_APP_BELOW = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/boot", "/etc", "/root", "/bin", "/sbin",
                "/lib", "/lib32", "/lib64", "/libx32", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32",
                "/usr/lib64", "/usr/libx32", "/usr/libexec", "/usr/share", "/usr/include")

# groups that give their members a way to root, the system's logs or its secrets: systemd hands a
# service user's supplementary groups to the service, so a user in one is refused unless allowed
PRIVILEGED_GROUPS = ("docker", "lxd", "disk", "sudo", "wheel", "adm", "systemd-journal", "kvm", "shadow")
# the course's own broker password (its README, every copy of its recipe): anyone may guess it
WELL_KNOWN_PASSWORDS = ("roboshop123",)
MIN_PASSWORD_LENGTH = 12

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}\$?$")


class SettingsError(DispatchctlError):
    """A value that failed validation; ``option`` names the CLI option or variable."""

    kind = ErrorKind.USAGE

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


# -- validators: each returns the normalised value or raises SettingsError -------------------


def validate_host(option: str, value: str) -> str:
    """An IPv4/IPv6 address or an RFC 1123 host name."""
    host = value.strip()
    if not host:
        raise SettingsError(option, "empty host name")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host.strip("[]")
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in name.split(".")):
        raise SettingsError(option, f"{value!r} is neither an IP address nor an RFC 1123 host name")
    if re.fullmatch(r"[0-9.]+", name):
        raise SettingsError(option, f"{value!r} is not a valid IPv4 address")
    return host


def validate_hosts(option: str, value: str) -> Tuple[str, ...]:
    """A host or a comma-separated list of hosts (a RabbitMQ cluster), tried in turn."""
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise SettingsError(option, f"empty host name in {value!r}")
    hosts = tuple(validate_host(option, p) for p in parts)
    if len(set(hosts)) != len(hosts):
        raise SettingsError(option, f"duplicate host in {value!r}")
    return hosts


def parse_int(option: str, value: str) -> int:
    """A whole number given as text (an option or an installed setting)."""
    try:
        return int(value.strip())
    except ValueError:
        raise SettingsError(option, f"{value!r} is not a whole number") from None


def validate_port(option: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise SettingsError(option, f"port {value} is outside 1..65535")
    return value


def validate_max_body(option: str, value: int) -> int:
    if not MIN_BODY_LIMIT <= value <= MAX_BODY_LIMIT:
        raise SettingsError(option, f"{value} is outside {MIN_BODY_LIMIT}..{MAX_BODY_LIMIT} bytes")
    return value


def validate_allowed_groups(option: str, value: str) -> Tuple[str, ...]:
    """Comma-separated names of :data:`PRIVILEGED_GROUPS` (empty: none); anything else is a typo."""
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [name for name in names if name not in PRIVILEGED_GROUPS]
    if unknown:
        raise SettingsError(option, f"{', '.join(map(repr, unknown))}: only a privileged group is ever refused, "
                            f"so only one can be allowed ({', '.join(PRIVILEGED_GROUPS)})")
    return names


def validate_percent(option: str, value: int) -> int:
    if not 0 <= value <= 100:
        raise SettingsError(option, f"{value} is outside 0..100")
    return value


def validate_text(option: str, value: str, *, allow_empty: bool = False) -> str:
    """Free text that ends up in a systemd environment file, a unit or a credential: valid
    Unicode (no lone surrogate: what a byte that is not UTF-8 becomes in argv or the environment),
    no newline, no NUL, no other control character (tab excepted), no unassigned noncharacter.
    Everything else is carried exactly by the env-file quoting (see envfile.quote)."""
    if not value and not allow_empty:
        raise SettingsError(option, "must not be empty")
    if "\n" in value or "\r" in value:
        raise SettingsError(option, "must not contain a newline")
    if "\x00" in value:
        raise SettingsError(option, "must not contain a NUL byte")
    for index, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cs":
            raise SettingsError(option, f"is not valid UTF-8 (an undecodable byte at character {index + 1}): "
                                "give UTF-8 text")
        if category == "Cc" and char != "\t":
            raise SettingsError(option, f"must not contain the control character U+{ord(char):04X} "
                                f"(at character {index + 1})")
        if category == "Cn" and (ord(char) & 0xFFFE == 0xFFFE or 0xFDD0 <= ord(char) <= 0xFDEF):
            raise SettingsError(option, f"must not contain the noncharacter U+{ord(char):04X}")
    return value


def validate_user_name(option: str, value: str) -> str:
    if not _POSIX_USER.fullmatch(value):
        raise SettingsError(option, f"{value!r} is not a valid user name (lower case, digits, _ and -)")
    if value == "root":
        raise SettingsError(option, "the service must not run as root")
    return value


def refuse_system_dir(option: str, value: str, resolved: str) -> None:
    """Neither ``value`` as spelt (slashes collapsed) nor ``resolved`` (symlinks followed: /bin/x
    may be /usr/bin/x) may be /, a top-level system directory, a direct child of one, /opt, /srv
    or /mnt themselves, or anything below a kernel, runtime or world-writable tree."""
    spelt = "/" + "/".join(part for part in value.split("/") if part)
    for path in dict.fromkeys((spelt, resolved)):
        shown = value if value == path else f"{value!r} (that is {path})"
        parent = os.path.dirname(path)
        if path == "/" or path in SYSTEM_DIRS or path in APP_PARENTS:
            raise SettingsError(option, f"{shown} is a system directory: refusing to manage or remove it")
        if parent in SYSTEM_DIRS:
            raise SettingsError(option, f"{shown} is a direct child of the system directory {parent}: "
                                "refusing to manage or remove it")
        below = next((top for top in NO_APP_BELOW if path.startswith(top + "/")), None)
        if below is not None:
            raise SettingsError(option, f"{shown} is inside {below}: not a place for an application "
                                "(a system directory, or one that other users can write to)")


def validate_app_dir(option: str, value: str) -> Path:
    """An absolute path of plain characters, resolved (``//``, symlinks): never a system directory
    or a direct child of one (:func:`refuse_system_dir`). The resolved path is what is used."""
    validate_text(option, value)
    if not value.startswith("/"):
        raise SettingsError(option, f"{value!r} is not an absolute path")
    if any(part in ("..", ".") for part in value.split("/")):
        raise SettingsError(option, f"{value!r} must not contain '.' or '..'")
    if not re.fullmatch(r"[A-Za-z0-9._/@+-]+", value):
        raise SettingsError(option, f"{value!r} may contain only letters, digits and . _ / @ + -")
    resolved = os.path.realpath(value)
    refuse_system_dir(option, value, resolved)
    if not re.fullmatch(r"[A-Za-z0-9._/@+-]+", resolved):
        raise SettingsError(option, f"{value!r} resolves to {resolved!r}, which has other characters")
    return Path(resolved)


def validate_flavour(option: str, value: str) -> str:
    if value not in FLAVOURS:
        raise SettingsError(option, f"{value!r} is not one of {', '.join(FLAVOURS)}")
    return value


MAX_READY_TIMEOUT_S = 3600


def _bounded_number(option: str, value: str, top: int, unit: str = "") -> int:
    """Plain ASCII digits in 1..``top`` (``int()`` alone would take ``1_0``, ``+3`` or non-ASCII digits)."""
    text = value.strip()
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise SettingsError(option, f"{value!r} is not a whole number (1..{top}{unit})")
    number = int(text)
    if not 1 <= number <= top:
        raise SettingsError(option, f"{number} is outside 1..{top}{unit}")
    return number


def validate_ready_timeout(option: str, value: str) -> int:
    """Seconds a restarted instance has to report ready: 1..3600."""
    return _bounded_number(option, value, MAX_READY_TIMEOUT_S, " seconds")


def validate_instances(option: str, value: Optional[str]) -> Optional[int]:
    """How many consumers to run on this host: 1..MAX_INSTANCES. None: keep what is installed."""
    return None if value is None else _bounded_number(option, value, MAX_INSTANCES)


def validate_queue_type(option: str, value: str, flavour: str = "bundled") -> str:
    if value not in QUEUE_TYPES:
        raise SettingsError(option, f"{value!r} is not one of {', '.join(QUEUE_TYPES)}")
    if value != "classic" and flavour == "go":
        raise SettingsError(option, "the go flavour declares `orders` as a classic queue only "
                            "(it reads no DISPATCH_QUEUE_TYPE): use --flavour bundled for a quorum queue")
    return value


def validate_artifact(option: str, value: str, *, insecure: bool = False) -> str:
    """A URL (https; http with --insecure; file) or an absolute path, checked as the fetch will
    check it (artifact.source_of: the scheme, no credentials in it, a valid host and port), when
    the option is read: a bad one is a usage error before any step runs. Every message shows the
    URL without its credentials or query (artifact.shown)."""
    validate_text(option, value)
    from .artifact import ArtifactError, is_masked, shown, source_of

    if is_masked(value):  # a build stamp's record: its secret (a signature, a token) was never kept
        raise SettingsError(option, f"{value!r} was recorded with its secret masked (***): give the full "
                            "address with --artifact")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) and not value.lower().startswith(
            ("http://", "https://", "file://")):
        raise SettingsError(option, f"{shown(value)}: only http, https and file URLs are supported")
    if value.lower().startswith("http://") and not insecure:
        raise SettingsError(option, f"{shown(value)} is plain http (anyone on the path can change it): use https, "
                            "or add --insecure (best with --sha256)")
    try:
        source_of(value, allow_http=True)
    except ArtifactError as exc:
        raise SettingsError(option, str(exc)) from None
    return value


def validate_sha256(option: str, value: Optional[str]) -> Optional[str]:
    """64 hex digits (either case; kept in lower case), or None."""
    if value is None:
        return None
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", value):
        raise SettingsError(option, "must be 64 hexadecimal digits (the artifact's SHA-256)")
    return value.lower()


def validate_password(option: str, value: str) -> Secret:
    if value == "":
        raise SettingsError(option, "empty password: the RabbitMQ user's password is needed")
    validate_text(option, value)
    return Secret(value)


def weak_password(password: str, user: str) -> List[str]:
    """Why ``password`` is weak (empty: it is not): the AMQP user's name, the course's well-known
    default, shorter than :data:`MIN_PASSWORD_LENGTH`. Warned about, never refused."""
    reasons = []
    if password == user:
        reasons.append("it is the AMQP user's name")
    if password in WELL_KNOWN_PASSWORDS:
        reasons.append("it is the course's well-known default password")
    if len(password) < MIN_PASSWORD_LENGTH:
        reasons.append(f"it is shorter than {MIN_PASSWORD_LENGTH} characters")
    return reasons


def read_password_file(path: str, label: str = "--amqp-pass-file") -> Secret:
    """The password in the file at ``path``: UTF-8 text, one trailing newline (``\\n`` or ``\\r\\n``)
    being the file's, not the password's."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(label, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(label, f"{path} is not UTF-8 text") from None
    return validate_password(label, strip_final_newline(text))


# -- tracing and metrics (--otlp-endpoint, --metrics-listen, --otlp-header) -------------------
# read as the consumer reads them (consumer/telemetry_settings.py); "none" (or "off", the
# consumer's word for unset) switches each off

OFF_WORDS = ("none", "off", "")


def validate_otlp_endpoint(option: str, value: str) -> Optional[str]:
    """A collector's base URL (http or https, a host) without user info, query or fragment (the
    consumer appends /v1/traces; a token goes in --otlp-header), or None for none/off."""
    from urllib.parse import urlsplit

    from .consumer.telemetry_settings import check_endpoint, shown

    text = value.strip()
    if text.lower() in OFF_WORDS:
        return None
    try:
        check_endpoint(text)
    except ValueError as exc:
        raise SettingsError(option, f"{exc}: give the collector's base URL, e.g. http://127.0.0.1:4318, "
                                    "or none") from None
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        raise SettingsError(option, f"{shown(text)}: no user info in the URL (it would be shown and logged): "
                                    "give it as a header, --otlp-header authorization=...")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise SettingsError(option, f"{shown(text)}: a base URL has no query or fragment (spans go to "
                                    "URL/v1/traces); a token goes in --otlp-header")
    return text


def validate_metrics_listen(option: str, value: str) -> Optional[str]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` for /metrics, or None for none/off."""
    from .consumer.telemetry_settings import address, parse_listen

    text = value.strip()
    if text.lower() in OFF_WORDS:
        return None
    try:
        host, port = parse_listen(text)
    except ValueError as exc:
        raise SettingsError(option, f"{text[:80]!r} {exc}") from None
    validate_host(option, host)
    return address(host, port)


def validate_otlp_headers(option: str, value: str) -> Optional[Secret]:
    """The exporter's headers in the OpenTelemetry text (``name=value,...``, values URL-encoded:
    what --otlp-header KEY=VALUE options become), normalised; None for none/off/empty. A message
    never shows a value (a token): only the header's name or its position."""
    from .consumer.telemetry_settings import format_headers, parse_headers, valid_header

    if value.strip().lower() in OFF_WORDS:
        return None
    parts = [part for part in value.split(",") if part.strip()]
    pairs = parse_headers(value)  # one pair per part, in order
    for index, part in enumerate(parts, 1):
        name, header = pairs[index - 1]
        if "=" not in part or not name:
            raise SettingsError(option, f"header {index} is not KEY=VALUE (none alone removes them all)")
        if not valid_header(name, "") or len(name) > 100:  # not shown: a mistyped token may be in it
            raise SettingsError(option, f"header {index}: its name is not an HTTP header name (letters, digits, "
                                        "!#$%&'*+-.^_`|~)")
        if not header:
            raise SettingsError(option, f"header {name!r} has an empty value")
        validate_text(f"{option}: header {name!r}", header)  # its messages never show the value
        if not valid_header(name, header):
            raise SettingsError(option, f"header {name!r}: its value holds a control character")
        if name in dict(pairs[:index - 1]):
            raise SettingsError(option, f"header {name!r} is given twice")
    return Secret(format_headers(pairs))


def join_headers(items: Sequence[str]) -> str:
    """The ``--otlp-header KEY=VALUE`` options (each value as it is sent) as the one text
    :func:`validate_otlp_headers` reads: OpenTelemetry's ``key=value,...``, values URL-encoded. An
    item without ``=`` is kept as it is, for the validator to refuse; ``none`` alone stays ``none``."""
    from .consumer.telemetry_settings import format_headers

    if len(items) == 1 and items[0].strip().lower() in OFF_WORDS:
        return items[0]
    return ",".join(format_headers([(item.partition("=")[0].strip(), item.partition("=")[2].strip())])
                    if "=" in item else item.replace(",", " ") for item in items)
