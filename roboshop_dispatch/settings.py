"""Validated, immutable settings for dispatchctl, and a Secret type that never prints.

Everything a command needs is checked here, before any step touches the host: a bad value
raises :class:`SettingsError` naming the option, and the CLI turns that into exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

DEFAULT_ARTIFACT = "https://roboshop-artifacts.s3.amazonaws.com/dispatch.zip"
FLAVOURS = ("bundled", "go")
PASSWORD_ENV = "DISPATCHCTL_AMQP_PASS"
MASK = "********"

UNIT_NAME = "dispatch.service"
UNIT_DIR = Path("/etc/systemd/system")
CONFIG_DIR = Path("/etc/roboshop")
ENV_FILE = CONFIG_DIR / "dispatch.env"

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}\$?$")


class SettingsError(ValueError):
    """A value that failed validation; ``option`` names the CLI option or variable."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


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


def validate_percent(option: str, value: int) -> int:
    if not 0 <= value <= 100:
        raise SettingsError(option, f"{value} is outside 0..100")
    return value


def validate_text(option: str, value: str, *, allow_empty: bool = False) -> str:
    """Free text that ends up in a systemd environment file: no newline, no NUL."""
    if not value and not allow_empty:
        raise SettingsError(option, "must not be empty")
    if "\n" in value or "\r" in value:
        raise SettingsError(option, "must not contain a newline")
    if "\x00" in value:
        raise SettingsError(option, "must not contain a NUL byte")
    return value


def validate_user_name(option: str, value: str) -> str:
    if not _POSIX_USER.match(value):
        raise SettingsError(option, f"{value!r} is not a valid user name (lower case, digits, _ and -)")
    if value == "root":
        raise SettingsError(option, "the service must not run as root")
    return value


def validate_app_dir(option: str, value: str) -> Path:
    validate_text(option, value)
    path = Path(value)
    if not path.is_absolute():
        raise SettingsError(option, f"{value!r} is not an absolute path")
    if any(part in ("..", ".") for part in value.split("/")):
        raise SettingsError(option, f"{value!r} must not contain '.' or '..'")
    if not re.fullmatch(r"[A-Za-z0-9._/@+-]+", value):
        raise SettingsError(option, f"{value!r} may contain only letters, digits and . _ / @ + -")
    if path in (Path("/"), Path("/etc"), Path("/usr"), Path("/bin"), Path("/var"), Path("/home")):
        raise SettingsError(option, f"{value!r} is a system directory")
    return path


def validate_flavour(option: str, value: str) -> str:
    if value not in FLAVOURS:
        raise SettingsError(option, f"{value!r} is not one of {', '.join(FLAVOURS)}")
    return value


def validate_artifact(option: str, value: str) -> str:
    validate_text(option, value)
    if re.match(r"^[a-z][a-z0-9+.-]*://", value):
        if not value.startswith(("http://", "https://", "file://")):
            raise SettingsError(option, f"{value!r}: only http, https and file URLs are supported")
        return value
    if not Path(value).is_absolute():
        raise SettingsError(option, f"{value!r}: give a URL or an absolute path")
    return value


def validate_password(option: str, value: str) -> Secret:
    if value == "":
        raise SettingsError(option, "the password is empty")
    validate_text(option, value)
    return Secret(value)


def read_password(
    *,
    pass_file: Optional[str],
    pass_value: Optional[str] = None,
    environ: Optional[dict] = None,
    prompt: Optional[object] = None,
) -> Optional[Secret]:
    """The AMQP password from, in order: --amqp-pass-file, --amqp-pass, $DISPATCHCTL_AMQP_PASS,
    or ``prompt()`` (a hidden TTY prompt supplied by the CLI). None when there is none."""
    env = os.environ if environ is None else environ
    if pass_file is not None:
        try:
            text = Path(pass_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError("--amqp-pass-file", f"cannot read {pass_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError("--amqp-pass-file", f"{pass_file} is not UTF-8 text") from None
        # one trailing newline is the file's, not the password's
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        return validate_password("--amqp-pass-file", text)
    if pass_value is not None:
        return validate_password("--amqp-pass", pass_value)
    if env.get(PASSWORD_ENV) is not None:
        return validate_password(PASSWORD_ENV, env[PASSWORD_ENV])
    if prompt is not None:
        value = prompt()  # type: ignore[operator]
        return validate_password("password prompt", value)
    return None


@dataclass(frozen=True)
class AmqpSettings:
    """Where and how the consumer reaches RabbitMQ."""

    hosts: Tuple[str, ...]
    port: int = 5672
    vhost: str = "/"
    user: str = "roboshop"
    password: Secret = field(default_factory=lambda: Secret(""), repr=True)

    @classmethod
    def placeholder(cls) -> AmqpSettings:
        """For commands that never write the AMQP settings (build, start) and for validating the
        other options before the password is asked for."""
        return cls(hosts=("localhost",), password=Secret("unused"))

    @classmethod
    def build(
        cls, *, hosts: str, port: int = 5672, vhost: str = "/", user: str = "roboshop",
        password: Optional[Secret] = None,
    ) -> AmqpSettings:
        if password is None:
            raise SettingsError(
                "--amqp-pass-file",
                f"no AMQP password: give --amqp-pass-file FILE, set {PASSWORD_ENV}, or run on a TTY",
            )
        return cls(
            hosts=validate_hosts("--amqp-host", hosts),
            port=validate_port("--amqp-port", port),
            vhost=validate_text("--amqp-vhost", vhost),
            user=validate_text("--amqp-user", user),
            password=password,
        )

    def masked(self) -> dict:
        return {
            "hosts": list(self.hosts), "port": self.port, "vhost": self.vhost,
            "user": self.user, "password": MASK,
        }


@dataclass(frozen=True)
class Settings:
    """Everything ``install`` and its parts need, validated."""

    amqp: AmqpSettings
    service_user: str = "roboshop"
    app_dir: Path = Path("/app")
    flavour: str = "bundled"
    artifact: str = DEFAULT_ARTIFACT
    error_percent: int = 0
    unit_dir: Path = UNIT_DIR
    env_file: Path = ENV_FILE

    @classmethod
    def build(
        cls, *, amqp: AmqpSettings, service_user: str = "roboshop", app_dir: str = "/app",
        flavour: str = "bundled", artifact: str = DEFAULT_ARTIFACT, error_percent: int = 0,
    ) -> Settings:
        return cls(
            amqp=amqp,
            service_user=validate_user_name("--user", service_user),
            app_dir=validate_app_dir("--app-dir", app_dir),
            flavour=validate_flavour("--flavour", flavour),
            artifact=validate_artifact("--artifact", artifact),
            error_percent=validate_percent("--error-percent", error_percent),
        )

    @property
    def binary(self) -> Path:
        return self.app_dir / "dispatch"

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / UNIT_NAME

    def environment(self) -> dict:
        """The consumer's environment, as written to the EnvironmentFile (password included)."""
        return {
            "AMQP_HOST": ",".join(self.amqp.hosts),
            "AMQP_PORT": str(self.amqp.port),
            "AMQP_VHOST": self.amqp.vhost,
            "AMQP_USER": self.amqp.user,
            "AMQP_PASS": self.amqp.password.reveal(),
            "DISPATCH_ERROR_PERCENT": str(self.error_percent),
        }

    def masked(self) -> dict:
        return {
            "amqp": self.amqp.masked(), "service_user": self.service_user,
            "app_dir": str(self.app_dir), "flavour": self.flavour, "artifact": self.artifact,
            "error_percent": self.error_percent, "unit": str(self.unit_path),
            "env_file": str(self.env_file),
        }
