"""Every setting, declared once: its option, its ``DISPATCHCTL_*`` variable, how its text is
validated, its default, where an installation remembers it, its help, the commands that take it
and the Ansible module's name and type for it.

Everything else is derived from this table: the typer options of install, configure, build,
start, check-rabbitmq, check and uninstall (:mod:`roboshop_dispatch.cli.options`), the precedence
option > variable > installed > default (:func:`roboshop_dispatch.sources.resolve`), the
Settings built from the values (:meth:`roboshop_dispatch.settings.Settings.build`), and
``docs/reference/options.md`` (``scripts/options-reference``). The Ansible module runs alone on
the managed hosts, so it keeps a copy of its part (option names, types, choices, the commands
that take each), which tests/test_ansible_module.py holds equal to this table.

Adding a setting: one :class:`Knob` row here, its field on Settings (named like the row), its use,
and the Ansible module's copy (the test names what differs); then ``scripts/options-reference``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from .consumer.delivery import MAX_BODY, MAX_BODY_LIMIT, MIN_BODY_LIMIT
from .layout import APP_DIR, MAX_INSTANCES, READY_TIMEOUT_PER_HOST_S, READY_TIMEOUT_S, SERVICE_USER
from .validate import (
    FLAVOURS,
    PRIVILEGED_GROUPS,
    QUEUE_TYPES,
    SettingsError,
    join_headers,
    parse_int,
    validate_allowed_groups,
    validate_app_dir,
    validate_artifact,
    validate_flavour,
    validate_hosts,
    validate_instances,
    validate_max_body,
    validate_metrics_listen,
    validate_otlp_endpoint,
    validate_otlp_headers,
    validate_percent,
    validate_port,
    validate_queue_type,
    validate_ready_timeout,
    validate_sha256,
    validate_text,
    validate_user_name,
)

ENV_PREFIX = "DISPATCHCTL_"
# the defaults (as values; a row's default is their text)
DEFAULT_PORT = 5672
DEFAULT_VHOST = "/"
DEFAULT_AMQP_USER = "roboshop"
DEFAULT_FLAVOUR = FLAVOURS[0]
DEFAULT_ARTIFACT = "https://roboshop-artifacts.s3.amazonaws.com/dispatch.zip"
DEFAULT_QUEUE_TYPE = QUEUE_TYPES[0]

# the commands whose options are settings
PROVISION = ("install", "configure", "build", "start")
# the commands that restart dispatch and wait for it (their options: the health gate's)
RESTARTING = (*PROVISION, "restart", "rollback")
COMMANDS = (*PROVISION, "restart", "rollback", "check-rabbitmq", "check", "uninstall")


def _port(label: str, text: str) -> int:
    return validate_port(label, parse_int(label, text))


def _max_body(label: str, text: str) -> int:
    return validate_max_body(label, parse_int(label, text))


def _percent(label: str, text: str) -> int:
    return validate_percent(label, parse_int(label, text))


def _artifact(label: str, text: str) -> str:
    return validate_artifact(label, text, insecure=True)  # http:// is checked against --insecure later


def _flag(label: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(label, f"{text!r} is not a yes/no value (1, true, yes, on / 0, false, no, off)")


def _sha256(label: str, text: str) -> Optional[str]:
    return validate_sha256(label, text)


def _password_text(label: str, text: str) -> str:
    return text  # the password's own rules: validate.validate_password (sources.password_given)


@dataclass(frozen=True)
class Knob:
    """One setting. ``default`` is text, validated like every other source (None: no default;
    then the setting is required unless ``optional``). ``installed`` names the installed value
    (:func:`roboshop_dispatch.sources.remembered`) it is remembered from ('': never remembered).

    ``commands`` take its option (remembered: option > variable > installed > default);
    ``read_by`` resolve it the same way without offering the option (``start`` runs what is
    configured); ``plain`` take the option with its default only (``check``, ``uninstall``).
    ``ansible`` is the Ansible module's option for it, of type ``ansible_type``."""

    name: str
    option: str
    parse: Callable[[str, str], Any]
    default: Optional[str]
    help: str
    metavar: str = ""
    installed: str = ""
    optional: bool = False
    commands: Tuple[str, ...] = ()
    read_by: Tuple[str, ...] = ()
    plain: Tuple[str, ...] = ()
    ansible: str = ""
    ansible_type: str = "str"
    choices: Tuple[str, ...] = ()
    flag: bool = False  # an on/off option without a value (--insecure)
    secret: bool = False
    # a repeatable option (--otlp-header): its values joined into the one text the validator reads
    join: Optional[Callable[[Sequence[str]], str]] = None

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.option.lstrip("-").upper().replace("-", "_")


AMQP = ("install", "configure", "check-rabbitmq")

# the one table of remembered settings, in the order the options are shown
KNOBS: Tuple[Knob, ...] = (
    Knob("amqp_hosts", "--amqp-host", validate_hosts, None, "RabbitMQ host: an IP, an RFC 1123 name, or a "
         "comma-separated cluster list (tried in turn).", "HOST[,HOST...]", "AMQP_HOST", commands=AMQP,
         ansible="amqp_host", ansible_type="list"),
    Knob("amqp_port", "--amqp-port", _port, str(DEFAULT_PORT), "RabbitMQ port.", "PORT", "AMQP_PORT",
         commands=AMQP, ansible="amqp_port", ansible_type="int"),
    Knob("amqp_vhost", "--amqp-vhost", validate_text, DEFAULT_VHOST, "RabbitMQ virtual host.", "VHOST",
         "AMQP_VHOST", commands=AMQP, ansible="amqp_vhost"),
    Knob("amqp_user", "--amqp-user", validate_text, DEFAULT_AMQP_USER, "RabbitMQ user.", "USER", "AMQP_USER",
         commands=AMQP, ansible="amqp_user"),
    Knob("service_user", "--user", validate_user_name, SERVICE_USER, "The service user (a system account, "
         "never root; install creates it when missing).", "USER", "service_user",
         commands=("install", "configure"), read_by=("build", "start"), plain=("check", "uninstall"),
         ansible="user"),
    Knob("allow_groups", "--allow-group", validate_allowed_groups, "", "Accept a service user in these privileged "
         f"groups ({', '.join(PRIVILEGED_GROUPS)}), which the service then gets: refused otherwise.",
         "GROUP[,GROUP...]", commands=("install", "configure"), ansible="allow_groups", ansible_type="list"),
    Knob("app_dir", "--app-dir", validate_app_dir, str(APP_DIR), "Where dispatch lives (DIR/dispatch).", "DIR",
         "app_dir", commands=("install", "configure", "build"), read_by=("start",), plain=("check", "uninstall"),
         ansible="app_dir", ansible_type="path"),
    Knob("flavour", "--flavour", validate_flavour, DEFAULT_FLAVOUR, "bundled: a self-contained python zipapp "
         "(offline); go: the manual's go build.", "|".join(FLAVOURS), "flavour",
         commands=("install", "configure", "build"), read_by=("start",), ansible="flavour", choices=FLAVOURS),
    Knob("artifact", "--artifact", _artifact, DEFAULT_ARTIFACT, "The go flavour's source zip (a URL or a local "
         "path).", "URL|PATH", "artifact", commands=("install", "build"), ansible="artifact"),
    Knob("artifact_sha256", "--sha256", _sha256, None, "The artifact's expected SHA-256 (64 hex digits): "
         "refused when it differs.", "HEX", optional=True, commands=("install", "build"),  # a pin: never remembered
         ansible="sha256"),
    Knob("insecure", "--insecure", _flag, "0", "Allow an http:// artifact (no transport security).",
         installed="insecure", commands=("install", "build"), ansible="insecure", ansible_type="bool", flag=True),
    Knob("error_percent", "--error-percent", _percent, "0", "Share of orders logged as failed "
         "(DISPATCH_ERROR_PERCENT, for demos).", "0..100", "DISPATCH_ERROR_PERCENT",
         commands=("install", "configure"), ansible="error_percent", ansible_type="int"),
    Knob("instances", "--instances", validate_instances, "1", "Consumers on this host: 1 runs dispatch.service; "
         "N > 1 runs dispatch@1..N from the template dispatch@.service. A change starts/stops only the "
         "difference.", f"1..{MAX_INSTANCES}", "instances", commands=("install", "configure"), read_by=("start",),
         ansible="instances", ansible_type="int"),
    Knob("queue_type", "--queue-type", validate_queue_type, DEFAULT_QUEUE_TYPE, "The orders queue's type "
         "(DISPATCH_QUEUE_TYPE): classic is the contract; quorum survives the loss of a cluster node (bundled "
         "flavour only; check-rabbitmq --declare declares it so when it is absent).", "|".join(QUEUE_TYPES),
         "DISPATCH_QUEUE_TYPE", commands=("install", "configure", "check-rabbitmq"), ansible="queue_type",
         choices=QUEUE_TYPES),
    Knob("max_body", "--max-body", _max_body, str(MAX_BODY), "The largest message body the consumer parses as an "
         f"order (DISPATCH_MAX_BODY, bytes, {MIN_BODY_LIMIT}..{MAX_BODY_LIMIT}): a larger one is quarantined "
         "unparsed (bundled flavour).", "BYTES", "DISPATCH_MAX_BODY", commands=("install", "configure"),
         ansible="max_body", ansible_type="int"),
    Knob("ready_timeout", "--ready-timeout", validate_ready_timeout, None, "Seconds a started or restarted instance "
         "has to report ready (READY=1, sent once it consumes); a change whose restart does not is rolled "
         f"back (default {READY_TIMEOUT_S}, plus {READY_TIMEOUT_PER_HOST_S} for each further AMQP host).", "SECONDS",
         optional=True, commands=RESTARTING, ansible="ready_timeout", ansible_type="int"),  # never remembered
    Knob("no_rollback", "--no-rollback", _flag, "0", "Keep the new state when a restarted instance does not "
         "become ready (`dispatchctl rollback` can still return to the last good generation).",
         commands=PROVISION, ansible="no_rollback", ansible_type="bool", flag=True),  # never remembered
    # tracing and metrics: the bundled consumer's (the go flavour has neither)
    Knob("otlp_endpoint", "--otlp-endpoint", validate_otlp_endpoint, "none", "Send a span per order "
         "(OpenTelemetry, OTLP/HTTP) to this collector's base URL (OTEL_EXPORTER_OTLP_ENDPOINT; spans go to "
         "URL/v1/traces); none: tracing off. Bundled flavour only.", "URL|none", "otlp_endpoint",
         commands=("install", "configure"), ansible="otlp_endpoint"),
    Knob("metrics_listen", "--metrics-listen", validate_metrics_listen, "none", "Serve Prometheus metrics on "
         "http://HOST:PORT/metrics (DISPATCH_METRICS_LISTEN; with --instances N, instance i on PORT+i-1); "
         "none: off. No authentication: keep it on 127.0.0.1 unless a firewall guards the port. Bundled "
         "flavour only.", "HOST:PORT|none", "metrics_listen", commands=("install", "configure"),
         ansible="metrics_listen"),
    Knob("otlp_headers", "--otlp-header", validate_otlp_headers, "none", "A header sent to the collector, "
         "e.g. authorization=Bearer TOKEN (repeatable): a secret, kept in a root-only systemd credential "
         "and never shown; none removes them.", "KEY=VALUE", "otlp_headers", commands=("install", "configure"),
         ansible="otlp_headers", ansible_type="dict", secret=True, join=join_headers),
)
KNOB: Dict[str, Knob] = {k.name: k for k in KNOBS}
TELEMETRY = ("otlp_endpoint", "metrics_listen", "otlp_headers")  # what the go flavour cannot have
GO_ONLY = ("artifact", "artifact_sha256", "insecure")  # what only the go flavour reads (its build)

# the password: two options (a file, or the value itself), never remembered as text
PASSWORD = "amqp_pass"  # its name among the sources (sources.Resolved.document)
PASSWORD_KNOBS: Tuple[Knob, ...] = (
    Knob("amqp_pass_file", "--amqp-pass-file", _password_text, None, "File holding the RabbitMQ password.",
         "FILE", commands=AMQP, ansible="amqp_password_file", ansible_type="path"),
    Knob("amqp_pass", "--amqp-pass", _password_text, None, "The RabbitMQ password on the command line: visible in "
         "`ps`, prefer --amqp-pass-file.", "PASSWORD", commands=AMQP, ansible="amqp_password", secret=True),
)
PASS_FILE_ENV = PASSWORD_KNOBS[0].envvar  # DISPATCHCTL_AMQP_PASS_FILE
PASSWORD_ENV = PASSWORD_KNOBS[1].envvar  # DISPATCHCTL_AMQP_PASS
PASSWORD_REQUIRED_BY = ("install", "configure")  # check-rabbitmq asks for it only at its login check


def no_password_error(why_not_installed: str = "") -> SettingsError:
    why = f" ({why_not_installed})" if why_not_installed else ""
    return SettingsError("--amqp-pass-file", f"no AMQP password: give --amqp-pass-file FILE, set {PASSWORD_ENV} "
                         f"or {PASS_FILE_ENV}, or run on a terminal to be asked{why}")

# every option a command takes, in the order shown
OPTIONS: Tuple[Knob, ...] = (*KNOBS[:4], *PASSWORD_KNOBS, *KNOBS[4:])

# the settings each command resolves (its options, its DISPATCHCTL_* variables, its installed values)
COMMAND_KNOBS: Dict[str, Tuple[str, ...]] = {
    command: tuple(k.name for k in KNOBS if command in k.commands or command in k.read_by)
    for command in (*RESTARTING, "stop", "check-rabbitmq")
}


def options_of(command: str) -> Tuple[Knob, ...]:
    """The settings whose option ``command`` takes, in the order shown."""
    return tuple(k for k in OPTIONS if command in k.commands or command in k.plain)


def cross_check(values: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """What one setting allows depends on another: plain http:// needs --insecure, a quorum queue
    the bundled flavour. ``labels`` names where each value came from."""
    if values.get("artifact") and values["artifact"].startswith("http://") and not values.get("insecure"):
        validate_artifact(labels["artifact"], values["artifact"], insecure=False)
    if "queue_type" in values and "flavour" in values:
        validate_queue_type(labels["queue_type"], values["queue_type"], values["flavour"])
    _cross_check_telemetry(values, labels)


def _cross_check_telemetry(values: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """Tracing and metrics are the bundled consumer's (the Go binary has neither), and each
    instance's metrics port (PORT + i - 1) must be a port."""
    for name in TELEMETRY:
        if values.get(name) is not None and values.get("flavour") == "go":
            what = "metrics" if name == "metrics_listen" else "tracing"
            raise SettingsError(labels[name], f"the go flavour has no {what} (the Go binary reads none of it): "
                                f"give {KNOB[name].option} none, or --flavour bundled")
    listen, count = values.get("metrics_listen"), values.get("instances") or 1
    if listen is not None:
        from .consumer.telemetry_settings import parse_listen

        port = parse_listen(listen)[1]
        if port + count - 1 > 65535:
            raise SettingsError(labels["metrics_listen"], f"port {port} leaves no room for {count} instances "
                                f"(instance {count} listens on port {port + count - 1}): give a port up to "
                                f"{65536 - count}")
