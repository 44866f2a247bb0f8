"""Validated, immutable settings for dispatchctl: where and how the consumer reaches RabbitMQ
(:class:`AmqpSettings`) and everything ``install`` and its parts need (:class:`Settings`).

Each setting is declared once, in :mod:`roboshop_dispatch.knobs` (its option, validator and
default); a value reaches these classes validated, from the command line through
:func:`roboshop_dispatch.sources.resolve`, or from typed values through :meth:`Settings.build`
(the same validators). A bad value raises :class:`~roboshop_dispatch.validate.SettingsError`
naming the option, and the CLI turns that into exit code 2 before any step touches the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple

from . import knobs
from .layout import (
    APP_DIR,
    BINARY_NAME,
    CREDENTIAL_FILE,
    ENV_FILE,
    INSTANCES_FILE,
    OTLP_HEADERS_FILE,
    SERVICE_USER,
    TEMPLATE_NAME,
    UNIT_DIR,
    UNIT_NAME,
)
from .redact import MASK, Secret
from .validate import SettingsError

if TYPE_CHECKING:
    from .redact import Redactor

__all__ = ["MASK", "AmqpSettings", "Secret", "Settings", "SettingsError"]


def validated(given: Mapping[str, Any]) -> Dict[str, Any]:
    """Typed values by setting name (None: not given), each validated by its knob under its
    option's name, and the settings that depend on each other checked together."""
    values: Dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        knob = knobs.KNOB[name]
        text = ("1" if value else "0") if isinstance(value, bool) else \
            value.reveal() if isinstance(value, Secret) else str(value)
        values[name] = knob.parse(knob.option, text)
    knobs.cross_check({"flavour": knobs.DEFAULT_FLAVOUR, **values}, {k.name: k.option for k in knobs.KNOBS})
    return values


@dataclass(frozen=True)
class AmqpSettings:
    """Where and how the consumer reaches RabbitMQ."""

    hosts: Tuple[str, ...]
    port: int = knobs.DEFAULT_PORT
    vhost: str = knobs.DEFAULT_VHOST
    user: str = knobs.DEFAULT_AMQP_USER
    password: Secret = field(default_factory=lambda: Secret(""), repr=True)

    @classmethod
    def placeholder(cls) -> AmqpSettings:
        """For commands that never write the AMQP settings (build, start) and for validating the
        other options before the password is asked for."""
        return cls(hosts=("localhost",), password=Secret("unused"))

    @classmethod
    def build(cls, *, hosts: str, password: Optional[Secret], port: Optional[int] = None,
              vhost: Optional[str] = None, user: Optional[str] = None) -> AmqpSettings:
        """From typed values, each validated by its knob (the defaults for those not given)."""
        if password is None:
            raise knobs.no_password_error()
        values = validated({"amqp_hosts": hosts, "amqp_port": port, "amqp_vhost": vhost, "amqp_user": user})
        return cls(password=password, **{name[len("amqp_"):]: value for name, value in values.items()})

    def masked(self) -> dict:
        return {
            "hosts": list(self.hosts), "port": self.port, "vhost": self.vhost,
            "user": self.user, "password": MASK,
        }


@dataclass(frozen=True)
class Settings:
    """Everything ``install`` and its parts need, validated."""

    amqp: AmqpSettings
    service_user: str = SERVICE_USER
    app_dir: Path = APP_DIR
    flavour: str = knobs.DEFAULT_FLAVOUR
    artifact: str = knobs.DEFAULT_ARTIFACT
    error_percent: int = 0
    unit_dir: Path = UNIT_DIR
    env_file: Path = ENV_FILE
    credential_file: Path = CREDENTIAL_FILE
    # the go artifact's expected SHA-256 (lower-case hex) and whether http:// is allowed
    artifact_sha256: Optional[str] = None
    insecure: bool = False
    # consumers on this host (None: as installed, 1 on a fresh host) and the orders queue's type
    instances: Optional[int] = None
    queue_type: str = knobs.DEFAULT_QUEUE_TYPE
    # tracing and metrics (None: off); the exporter's headers, a secret, in OpenTelemetry's text
    otlp_endpoint: Optional[str] = None
    metrics_listen: Optional[str] = None
    otlp_headers: Optional[Secret] = None
    otlp_headers_file: Path = OTLP_HEADERS_FILE
    # the health gate of a restart: seconds to READY (None: layout's default for the host list),
    # and whether a restart that fails it keeps the new state instead of rolling back
    ready_timeout: Optional[int] = None
    no_rollback: bool = False
    # privileged groups the service user may be in (--allow-group); the consumer's body limit
    allow_groups: Tuple[str, ...] = ()
    max_body: int = knobs.MAX_BODY

    @classmethod
    def build(cls, *, amqp: AmqpSettings, **given: Any) -> Settings:
        """From typed values by setting name (``service_user="roboshop"``, ``error_percent=5``,
        ``insecure=True``...), each validated by its knob; the defaults for those not given."""
        return cls(amqp=amqp, **validated(given))

    @classmethod
    def of(cls, values: Mapping[str, Any], password: Optional[Secret] = None) -> Settings:
        """From values already validated (:func:`roboshop_dispatch.sources.resolve`), by setting
        name: the ``amqp_*`` ones in AmqpSettings (AmqpSettings.placeholder() when there is none:
        build and start), the rest the defaults."""
        amqp_values = {k[len("amqp_"):]: v for k, v in values.items() if k.startswith("amqp_")}
        rest = {k: v for k, v in values.items() if not k.startswith("amqp_")}
        amqp = AmqpSettings(**amqp_values, password=password or Secret("")) if amqp_values \
            else AmqpSettings.placeholder()
        return cls(amqp=amqp, **rest)

    @property
    def binary(self) -> Path:
        return self.app_dir / BINARY_NAME

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / UNIT_NAME

    @property
    def template_path(self) -> Path:
        """The template unit the instances run from (--instances N > 1)."""
        return self.unit_dir / TEMPLATE_NAME

    @property
    def instances_file(self) -> Path:
        return INSTANCES_FILE

    def environment(self, *, with_password: bool = True) -> dict:
        """The consumer's environment, as written to the EnvironmentFile (the password and the
        exporter's headers only when they are not delivered as systemd credentials)."""
        values = {
            "AMQP_HOST": ",".join(self.amqp.hosts),
            "AMQP_PORT": str(self.amqp.port),
            "AMQP_VHOST": self.amqp.vhost,
            "AMQP_USER": self.amqp.user,
            "AMQP_PASS": self.amqp.password.reveal(),
            "DISPATCH_ERROR_PERCENT": str(self.error_percent),
            "DISPATCH_QUEUE_TYPE": self.queue_type,
        }
        values.update(self.telemetry_environment(with_secrets=with_password))
        if self.max_body != knobs.MAX_BODY:  # only when set: an upgrade rewrites (restarts) nothing
            values["DISPATCH_MAX_BODY"] = str(self.max_body)
        if not with_password:
            del values["AMQP_PASS"]
        return values

    def telemetry_environment(self, *, with_secrets: bool) -> dict:
        """The tracing and metrics variables set (the headers only when not a credential)."""
        values = {}
        if self.otlp_endpoint is not None:
            values["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        if self.metrics_listen is not None:
            values["DISPATCH_METRICS_LISTEN"] = self.metrics_listen
        if self.otlp_headers is not None and with_secrets:
            values["OTEL_EXPORTER_OTLP_HEADERS"] = self.otlp_headers.reveal()
        return values

    def secrets(self) -> list:
        """Every secret value of these settings, in each form it may be shown in."""
        from .consumer.telemetry_settings import header_secrets

        headers = self.otlp_headers.reveal() if self.otlp_headers is not None else ""
        return [self.amqp.password.reveal(), *([headers, *header_secrets(headers)] if headers else [])]

    def redactor(self) -> Redactor:
        """Masks this run's secrets in everything printed."""
        from .redact import Redactor

        return Redactor(self.secrets())

    def masked(self) -> dict:
        return {
            "amqp": self.amqp.masked(), "service_user": self.service_user,
            "app_dir": str(self.app_dir), "flavour": self.flavour, "artifact": self.artifact,
            "error_percent": self.error_percent, "unit": str(self.unit_path),
            "env_file": str(self.env_file), "sha256": self.artifact_sha256, "insecure": self.insecure,
            "instances": self.instances, "queue_type": self.queue_type,
            "otlp_endpoint": self.otlp_endpoint, "metrics_listen": self.metrics_listen,
            "otlp_headers": MASK if self.otlp_headers else None,
            "allow_groups": list(self.allow_groups), "max_body": self.max_body,
        }
