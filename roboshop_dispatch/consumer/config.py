"""Configuration of the consumer, from the environment (the original's variables plus a few).

Every variable is read on its own: an unset variable takes its documented default and never
changes another one (the original silently reused a value when ``AMQP_PASS`` was unset). An
invalid value raises :class:`ConfigError`, whose message is one line that names the variable and
never contains the password.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

from .. import amqp
from .delivery import MAX_BODY, MAX_BODY_LIMIT, MIN_BODY_LIMIT
from .errors import ConsumerError
from .secretfile import MAX_SIZE, strip_final_newline
from .telemetry_settings import tracing_state

CREDENTIAL_NAME = "amqp-pass"  # LoadCredential=amqp-pass:... in the unit; read from $CREDENTIALS_DIRECTORY
PASSWORD_FROM_CREDENTIAL = "credential"
PASSWORD_FROM_ENVIRONMENT = "environment"
PASSWORD_MISSING = "missing"
MAX_CREDENTIAL = MAX_SIZE
DEFAULT_HOST = "rabbitmq"  # the original binary's default (the broker's name in RoboShop's compose file)
DEFAULT_USER = "guest"  # the original binary's default
DEFAULT_PREFETCH = 500
DEFAULT_PROCESSING_MS = (42, 83)  # the original sleeps 42..83 ms, twice, per order
MAX_PROCESSING_MS = 60_000
MAX_PREFETCH = 65535  # basic.qos prefetch_count is an unsigned short; 0 (unlimited) is refused
DEFAULT_QUARANTINE_LOG_S = 60
HEADERS_CREDENTIAL = "otlp-headers"  # LoadCredential=otlp-headers:...: OTEL_EXPORTER_OTLP_HEADERS, kept secret

# name -> (default shown in --help, one-line description); docs/reference/consumer-environment.md is generated from it.
VARIABLES: Tuple[Tuple[str, str, str], ...] = (
    ("AMQP_HOST", DEFAULT_HOST, "broker host name or address; a comma-separated list of cluster nodes "
     "is tried in turn"),
    ("AMQP_PORT", str(amqp.DEFAULT_PORT), "broker AMQP port (1..65535)"),
    ("AMQP_VHOST", amqp.DEFAULT_VHOST, "virtual host"),
    ("AMQP_USER", DEFAULT_USER, "user name (any characters)"),
    ("AMQP_PASS", "none, required", "password (any characters; never logged); the systemd credential "
     f"{CREDENTIAL_NAME!r} ($CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}) takes precedence"),
    ("DISPATCH_ERROR_PERCENT", "0", "share of orders logged as failed, 0..100 (demo of error tracing)"),
    ("DISPATCH_PREFETCH", str(DEFAULT_PREFETCH), "orders in flight at most (basic.qos prefetch), 1..65535"),
    ("DISPATCH_PROCESSING_MS", "42-83", "simulated work per order, slept twice: 'MIN-MAX' or 'N' ms; "
     "0 turns it off"),
    ("DISPATCH_MAX_BODY", str(MAX_BODY), f"largest message body parsed as an order, in bytes ({MIN_BODY_LIMIT}.."
     f"{MAX_BODY_LIMIT}; payment sends a few KiB): a larger one is quarantined as its first bytes, on either "
     "delivery path"),
    ("DISPATCH_FASTPATH", "1", "1: decode deliveries with the lean frame path (fastpath.py); 0: pika's own "
     "path (slower, for ruling the fast path out)"),
    ("DISPATCH_METRICS_LISTEN", "off", "HOST:PORT ([V6]:PORT) to serve Prometheus metrics on /metrics; a bad value or "
     "a port in use is logged once and the consumer runs without metrics"),
    ("DISPATCH_INSTANCE", "none", "the instance number N that dispatch@N.service sets (--instances): its "
     "metrics port is DISPATCH_METRICS_LISTEN's + N - 1"),
    ("DISPATCH_QUARANTINE_LOG_S", str(DEFAULT_QUARANTINE_LOG_S), "seconds between the summary lines of bad "
     "messages quarantined (the first of each reason is logged at once), 1..3600"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "off", "OTLP/HTTP collector base URL (spans go to /v1/traces): tracing on; "
     "also OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (full URL), OTEL_SERVICE_NAME (dispatch), OTEL_RESOURCE_ATTRIBUTES, "
     "OTEL_TRACES_SAMPLER(_ARG), OTEL_SDK_DISABLED, OTEL_EXPORTER_OTLP_HEADERS (secret: the systemd credential "
     f"{HEADERS_CREDENTIAL!r} takes precedence)"),
    ("DISPATCH_QUEUE_TYPE", amqp.CLASSIC, "type 'orders' is declared with: classic (the contract: no arguments) "
     "or quorum (x-queue-type, replicated over a cluster); an existing queue of the other type is used as it "
     "is, never deleted"),
)


class ConfigError(ConsumerError):
    """An invalid setting: ``str(err)`` is one line naming the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(variable + ("" if message.startswith("=") else " ") + message)
        self.variable = variable


@dataclass(frozen=True)
class Config:
    hosts: Tuple[str, ...]
    port: int
    vhost: str
    user: str
    password: str = field(repr=False)
    error_percent: float = 0.0
    prefetch: int = DEFAULT_PREFETCH
    processing_ms: Optional[Tuple[int, int]] = DEFAULT_PROCESSING_MS  # None: no simulated work
    fast_path: bool = True  # decode deliveries with fastpath.DispatchConnection when pika allows
    password_source: str = PASSWORD_FROM_ENVIRONMENT  # credential, environment or missing
    queue_type: str = amqp.CLASSIC  # amqp.CLASSIC or amqp.QUORUM: how orders is declared
    tracing: str = "off"  # TRACING_ON, or "off" with the reason: telemetry.py imports OpenTelemetry only when on
    metrics_listen: Optional[str] = None  # DISPATCH_METRICS_LISTEN as given: metrics.py parses it (never fatal)
    instance: Optional[str] = None  # DISPATCH_INSTANCE as given (dispatch@N sets it): the metrics port's offset
    quarantine_log_s: int = DEFAULT_QUARANTINE_LOG_S
    max_body: int = MAX_BODY  # bytes: a larger body is quarantined unparsed

    def describe(self) -> str:
        """One line for the start-up log. Never includes the password."""
        if self.processing_ms is None:
            work = "off"
        elif self.processing_ms[0] == self.processing_ms[1]:
            work = f"{self.processing_ms[0]}ms x2"
        else:
            work = f"{self.processing_ms[0]}-{self.processing_ms[1]}ms x2"
        return (
            f"hosts={','.join(self.hosts)} port={self.port} vhost={self.vhost} user={self.user!r} "
            f"prefetch={self.prefetch} processing={work} error_percent={self.error_percent:g} "
            f"fastpath={'on' if self.fast_path else 'off'} queue_type={self.queue_type} max_body={self.max_body} "
            f"password={self.password_source} tracing={self.tracing} "
            f"metrics={'off' if self.metrics_listen is None else _show(self.metrics_listen)}"
            + ("" if self.instance is None else f" instance={_show(self.instance)}")
        )


def _show(value: str, limit: int = 40) -> str:
    """A setting's value, quoted, short and on one line, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int, what: str) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        raise ConfigError(name, f"={_show(raw)} is not {what} ({low}..{high})")
    value = int(text)
    if not low <= value <= high:
        raise ConfigError(name, f"={_show(raw)} is out of range: {what} must be {low}..{high}")
    return value


def _hosts(env: Mapping[str, str]) -> Tuple[str, ...]:
    raw = env.get("AMQP_HOST")
    if raw is None:
        return (DEFAULT_HOST,)
    if not raw.strip():
        raise ConfigError("AMQP_HOST", "is empty: set it to the RabbitMQ host (or a comma-separated list)")
    hosts = tuple(part.strip() for part in raw.split(","))
    for host in hosts:
        if not host:
            raise ConfigError("AMQP_HOST", f"={_show(raw)} has an empty entry in its comma-separated list")
        if any(ch.isspace() for ch in host) or "/" in host or "@" in host:
            raise ConfigError("AMQP_HOST", f"={_show(raw)}: {_show(host)} is not a host name or address")
    return hosts


def _text(env: Mapping[str, str], name: str, default: Optional[str], *, secret: bool = False) -> str:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(name, "is not set: it is required (the broker password for AMQP_USER), or the "
                                    f"systemd credential {CREDENTIAL_NAME!r} in $CREDENTIALS_DIRECTORY")
        return default
    if raw == "":
        raise ConfigError(name, "is empty")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        shown = "" if secret else f"={_show(raw)}"
        raise ConfigError(name, f"{shown} is not valid UTF-8") from None
    return raw


def _error_percent(env: Mapping[str, str]) -> float:
    raw = env.get("DISPATCH_ERROR_PERCENT")
    if raw is None:
        return 0.0
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError("DISPATCH_ERROR_PERCENT", f"={_show(raw)} is not a number (0..100)") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise ConfigError("DISPATCH_ERROR_PERCENT", f"={_show(raw)} is out of range: must be 0..100")
    return value


def _processing(env: Mapping[str, str]) -> Optional[Tuple[int, int]]:
    raw = env.get("DISPATCH_PROCESSING_MS")
    if raw is None:
        return DEFAULT_PROCESSING_MS
    text = raw.strip()
    low_s, sep, high_s = text.partition("-")
    parts = [low_s.strip(), high_s.strip()] if sep else [low_s.strip()]
    if not all(p.isdigit() and p.isascii() for p in parts):
        raise ConfigError(
            "DISPATCH_PROCESSING_MS", f"={_show(raw)} is not 'MIN-MAX' or 'N' milliseconds (0 turns it off)"
        )
    low, high = int(parts[0]), int(parts[-1])
    if low > high or high > MAX_PROCESSING_MS:
        raise ConfigError(
            "DISPATCH_PROCESSING_MS", f"={_show(raw)} is out of range: need MIN <= MAX <= {MAX_PROCESSING_MS}"
        )
    if high == 0:
        return None
    return (low, high)


def _queue_type(env: Mapping[str, str]) -> str:
    raw = env.get("DISPATCH_QUEUE_TYPE")
    if raw is None:
        return amqp.CLASSIC
    text = raw.strip().lower()
    if text not in amqp.QUEUE_TYPES:
        raise ConfigError("DISPATCH_QUEUE_TYPE", f"={_show(raw)} is not a queue type: "
                                                 f"{' or '.join(amqp.QUEUE_TYPES)}")
    return text


def tracing(env: Mapping[str, str]) -> str:
    """``on`` when an OTLP endpoint is set and OpenTelemetry is not disabled; else ``off`` (why)."""
    return tracing_state(env)


def read_credential(env: Mapping[str, str], directory: Optional[str], name: str = CREDENTIAL_NAME) -> Optional[str]:
    """The systemd credential ``name`` (one trailing newline stripped), or None when there is none."""
    where = directory if directory is not None else env.get("CREDENTIALS_DIRECTORY")
    if not where:
        return None
    path = os.path.join(where, name)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CREDENTIAL + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError("CREDENTIALS_DIRECTORY", f"credential {name!r} cannot be read: "
                                                   f"{exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_CREDENTIAL:
        raise ConfigError("CREDENTIALS_DIRECTORY", f"credential {name!r} is over {MAX_CREDENTIAL} bytes")
    try:
        text = strip_final_newline(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("CREDENTIALS_DIRECTORY", f"credential {name!r} is not valid UTF-8") from None
    if not text:
        raise ConfigError("CREDENTIALS_DIRECTORY", f"credential {name!r} is empty")
    return text


def _password(env: Mapping[str, str], directory: Optional[str], require: bool) -> Tuple[str, str]:
    from_credential = read_credential(env, directory)
    if from_credential is not None:
        return from_credential, PASSWORD_FROM_CREDENTIAL
    if env.get("AMQP_PASS") is None and not require:
        return "", PASSWORD_MISSING
    return _text(env, "AMQP_PASS", None, secret=True), PASSWORD_FROM_ENVIRONMENT


def load(env: Mapping[str, str], *, credentials_directory: Optional[str] = None,
         require_password: bool = True) -> Config:
    """Parse and validate the settings; raises ConfigError on the first invalid one.

    The password is the systemd credential ``amqp-pass`` when ``credentials_directory`` (default:
    ``env["CREDENTIALS_DIRECTORY"]``) holds that file (one trailing newline stripped), else
    ``AMQP_PASS``. With ``require_password=False`` a missing password is no error (for showing the
    installed settings): ``password`` is then ``""`` and ``password_source`` ``"missing"``.
    """
    hosts = _hosts(env)
    port = _int(env, "AMQP_PORT", amqp.DEFAULT_PORT, 1, 65535, "a TCP port")
    vhost = _text(env, "AMQP_VHOST", amqp.DEFAULT_VHOST)
    user = _text(env, "AMQP_USER", DEFAULT_USER)
    password, source = _password(env, credentials_directory, require_password)
    return Config(
        hosts=hosts,
        port=port,
        vhost=vhost,
        user=user,
        password=password,
        error_percent=_error_percent(env),
        prefetch=_int(env, "DISPATCH_PREFETCH", DEFAULT_PREFETCH, 1, MAX_PREFETCH, "a number of orders"),
        processing_ms=_processing(env),
        fast_path=bool(_int(env, "DISPATCH_FASTPATH", 1, 0, 1, "0 or 1")),
        password_source=source,
        queue_type=_queue_type(env),
        tracing=tracing(env),
        metrics_listen=env.get("DISPATCH_METRICS_LISTEN") or None,
        instance=env.get("DISPATCH_INSTANCE") or None,
        quarantine_log_s=_int(env, "DISPATCH_QUARANTINE_LOG_S", DEFAULT_QUARANTINE_LOG_S, 1, 3600, "seconds"),
        max_body=_int(env, "DISPATCH_MAX_BODY", MAX_BODY, MIN_BODY_LIMIT, MAX_BODY_LIMIT, "a number of bytes"),
    )
