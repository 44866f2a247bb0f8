"""Where each setting comes from: the option > ``DISPATCHCTL_<OPTION>`` > what is installed > the default.

:data:`KNOBS` is the one table of remembered settings: one row per setting (its option, how its
text is validated, its default, which installed value it is remembered from). Adding a setting is
one row here (plus its field on :class:`~roboshop_dispatch.settings.Settings`, named like the row,
and its option on the commands that take it). A row's name is the Settings field it fills;
``amqp_*`` rows fill :class:`~roboshop_dispatch.settings.AmqpSettings` (``amqp_port`` -> ``port``).

:func:`resolve` is pure: (the options given, the environment, the installed values) -> the values
and where each came from. The installed values are :func:`remembered` from the installed state
(:mod:`roboshop_dispatch.facts.installed`, the one reader of it). Every
value, whatever its source, is validated by the row's validator, and an error names its source:
``DISPATCHCTL_AMQP_PORT: 'x' is not a whole number``, or
``/etc/roboshop/dispatch.env: AMQP_PORT: ...: give --amqp-port``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from . import layout
from .settings import (
    DEFAULT_ARTIFACT,
    MASK,
    PASSWORD_ENV,
    AmqpSettings,
    Secret,
    Settings,
    SettingsError,
    parse_int,
    validate_app_dir,
    validate_artifact,
    validate_flavour,
    validate_hosts,
    validate_instances,
    validate_password,
    validate_percent,
    validate_port,
    validate_queue_type,
    validate_sha256,
    validate_text,
    validate_user_name,
)

if TYPE_CHECKING:
    from .facts.installed import InstalledState

ENV_PREFIX = "DISPATCHCTL_"
OPTION, ENVIRONMENT, INSTALLED, DEFAULT, PROMPT = "option", "environment", "installed", "default", "prompt"
PASSWORD = "amqp_pass"  # the password's name in the sources (it is not a row: it has two options)
PASS_FILE_ENV = "DISPATCHCTL_AMQP_PASS_FILE"


@dataclass(frozen=True)
class Remembered:
    """One installed value as text, and where it was read (``/etc/roboshop/dispatch.env: AMQP_PORT``)."""

    text: str
    where: str


@dataclass(frozen=True)
class Source:
    """Where a value came from: ``kind`` is option | environment | installed | default | prompt,
    ``where`` the option, the variable, the file and key, or ``default``."""

    kind: str
    where: str


def _port(label: str, text: str) -> int:
    return validate_port(label, parse_int(label, text))


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


@dataclass(frozen=True)
class Knob:
    """One remembered setting. ``default`` is text, validated like every other source (None: no
    default; then the row is required unless ``optional``). ``installed`` names the value in
    :func:`installed.remembered` it is remembered from ('' : never remembered)."""

    name: str
    option: str
    parse: Callable[[str, str], Any]
    default: Optional[str] = None
    installed: str = ""
    optional: bool = False

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.option.lstrip("-").upper().replace("-", "_")


# the one table: name (the Settings field), option, validator, default, installed value
KNOBS: Tuple[Knob, ...] = (
    Knob("amqp_hosts", "--amqp-host", validate_hosts, None, "AMQP_HOST"),
    Knob("amqp_port", "--amqp-port", _port, "5672", "AMQP_PORT"),
    Knob("amqp_vhost", "--amqp-vhost", validate_text, "/", "AMQP_VHOST"),
    Knob("amqp_user", "--amqp-user", validate_text, "roboshop", "AMQP_USER"),
    Knob("service_user", "--user", validate_user_name, "roboshop", "service_user"),
    Knob("app_dir", "--app-dir", validate_app_dir, "/app", "app_dir"),
    Knob("flavour", "--flavour", validate_flavour, "bundled", "flavour"),
    Knob("artifact", "--artifact", _artifact, DEFAULT_ARTIFACT, "artifact"),
    Knob("artifact_sha256", "--sha256", _sha256, None, optional=True),  # a pin: never remembered
    Knob("insecure", "--insecure", _flag, "0", "insecure"),
    Knob("error_percent", "--error-percent", _percent, "0", "DISPATCH_ERROR_PERCENT"),
    Knob("instances", "--instances", validate_instances, "1", "instances"),
    Knob("queue_type", "--queue-type", validate_queue_type, "classic", "DISPATCH_QUEUE_TYPE"),
)
KNOB = {k.name: k for k in KNOBS}
AMQP_KNOBS = ("amqp_hosts", "amqp_port", "amqp_vhost", "amqp_user")

# the settings each command takes (its options, its DISPATCHCTL_* variables, its installed values)
COMMAND_KNOBS: Dict[str, Tuple[str, ...]] = {
    "install": tuple(KNOB),
    "configure": (*AMQP_KNOBS, "service_user", "app_dir", "flavour", "error_percent", "instances", "queue_type"),
    "build": ("service_user", "app_dir", "flavour", "artifact", "artifact_sha256", "insecure"),
    "start": ("service_user", "app_dir", "flavour", "instances"),
    "check-rabbitmq": AMQP_KNOBS,
}
NEEDS_PASSWORD = ("install", "configure")


@dataclass(frozen=True)
class Resolved:
    """The validated values (by row name) and where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, Source]
    password: Optional[Secret] = None
    password_source: Optional[Source] = None
    notes: Tuple[str, ...] = field(default=())

    def document(self) -> Dict[str, Dict[str, Any]]:
        """``{name: {"value", "source", "from"}}`` for --dry-run, the password masked."""
        doc: Dict[str, Dict[str, Any]] = {}
        for name, value in self.values.items():
            shown = [str(v) for v in value] if isinstance(value, tuple) else value
            shown = str(shown) if isinstance(shown, Path) else shown
            doc[name] = {"value": shown, "source": self.sources[name].kind, "from": self.sources[name].where}
        if self.password_source is not None:
            doc[PASSWORD] = {"value": MASK if self.password else None, "source": self.password_source.kind,
                             "from": self.password_source.where}
        return doc


def env_name(option: str) -> str:
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


def resolve(
    names: Tuple[str, ...],
    given: Mapping[str, Optional[str]],
    environ: Mapping[str, str],
    installed: Mapping[str, Remembered],
    *,
    installed_missing: str = "",
) -> Resolved:
    """The value of each row in ``names``: the option given (``given[name]`` not None), else its
    ``DISPATCHCTL_*`` variable, else its installed value, else its default, each validated by the
    row's validator under the name of its source. ``installed_missing`` says why nothing installed
    could be read (for the error of a required setting). Raises SettingsError naming the source."""
    values: Dict[str, Any] = {}
    sources: Dict[str, Source] = {}
    missing = []
    for name in names:  # every value found is validated before a missing one is reported
        knob = KNOB[name]
        text, source = _pick(knob, given, environ, installed)
        if text is None:
            if not knob.optional:
                missing.append(knob)
            values[name], sources[name] = None, Source(DEFAULT, DEFAULT)
            continue
        values[name] = _validate(knob, text, source)
        sources[name] = source
    if missing:
        knob = missing[0]
        why = f"; {installed_missing}" if installed_missing else ""
        raise SettingsError(knob.option, f"is required: give {knob.option} or set {knob.envvar}{why}")
    if "artifact" in values:
        _refuse_plain_http(values, sources)
    if "queue_type" in values and "flavour" in values:  # a quorum queue needs the bundled consumer
        validate_queue_type(sources["queue_type"].where, values["queue_type"], values["flavour"])
    return Resolved(values=values, sources=sources)


def _pick(knob: Knob, given: Mapping[str, Optional[str]], environ: Mapping[str, str],
          installed: Mapping[str, Remembered]) -> Tuple[Optional[str], Source]:
    if given.get(knob.name) is not None:
        return given[knob.name], Source(OPTION, knob.option)
    if environ.get(knob.envvar) is not None:
        return environ[knob.envvar], Source(ENVIRONMENT, knob.envvar)
    if knob.installed and knob.installed in installed:
        found = installed[knob.installed]
        return found.text, Source(INSTALLED, found.where)
    return knob.default, Source(DEFAULT, DEFAULT)


def _validate(knob: Knob, text: str, source: Source) -> Any:
    if source.kind != INSTALLED:
        return knob.parse(source.where, text)
    try:
        return knob.parse(source.where, text)
    except SettingsError as exc:
        raise SettingsError(source.where, f"{exc.message}: give {knob.option}") from None


def _refuse_plain_http(values: Mapping[str, Any], sources: Mapping[str, Source]) -> None:
    if values["artifact"].startswith("http://") and not values.get("insecure"):
        validate_artifact(sources["artifact"].where, values["artifact"], insecure=False)


# -- the installed values ----------------------------------------------------------------------


class RememberedValues(Mapping[str, "Remembered"]):
    """The installed values (:func:`remembered`): a variable the environment file does not set is
    the consumer's default, looked up only when asked for (it imports pika, which a re-run of
    ``install`` on a complete installation never needs)."""

    def __init__(self, found: Dict[str, Remembered], env_path: Optional[str]) -> None:
        self._found = found
        self._env_path = env_path  # None: no environment file read, so no consumer defaults either
        self._defaults: Optional[Dict[str, str]] = None

    def _default(self, key: str) -> Optional[Remembered]:
        if self._env_path is None or not key.isupper():
            return None
        if self._defaults is None:
            from .facts.installed import consumer_defaults

            self._defaults = consumer_defaults()
        if key not in self._defaults:
            return None
        return Remembered(self._defaults[key], f"{self._env_path}: {key} (not set: the consumer's default)")

    def __getitem__(self, key: str) -> Remembered:
        found = self._found.get(key) or self._default(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._found or self._default(key) is not None)

    def __iter__(self) -> Iterator[str]:
        """Every value, the consumer's defaults included (this loads them)."""
        keys = list(self._found)
        if self._env_path is not None:
            if self._defaults is None:
                from .facts.installed import consumer_defaults

                self._defaults = consumer_defaults()
            keys += [k for k in self._defaults if k not in self._found]
        return iter(keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def remembered(state: InstalledState) -> RememberedValues:
    """Every installed setting as text with where it was read, for the settings a command is not
    given (:func:`resolve`): each variable of the environment file (the consumer's
    default for those it does not set), ``amqp_pass`` (the credential, else AMQP_PASS),
    ``service_user`` (the unit's User=), ``app_dir`` (the directory of the dispatch its ExecStart=
    runs) and ``flavour`` (of that binary). Nothing for what is not installed or cannot be read."""
    from .facts.installed import PASSWORD_KEY
    from .facts.instances import recorded_instances
    from .facts.unitfile import unit_binary

    out: Dict[str, Remembered] = {}
    env_path: Optional[str] = None
    if not state.env_error and state.env_file.exists:
        env_path = state.env_file.path
        for key, value in state.environment.items():
            out[key] = Remembered(value, f"{env_path}: {key}")
    if state.password:
        where = state.credential_file.path if state.password_source == "credential" and state.credential_file \
            else f"{state.env_file.path}: {PASSWORD_KEY}"
        out[PASSWORD] = Remembered(state.password.reveal(), where)
    unit = state.unit_file.path
    if state.unit_value("User"):
        out["service_user"] = Remembered(state.unit_value("User"), f"{unit}: User=")
    binary = unit_binary(state.unit_value("ExecStart"))
    if binary is not None:
        out["app_dir"] = Remembered(str(binary.parent), f"{unit}: ExecStart=")
        if state.flavour and Path(state.binary.path) == binary:
            out["flavour"] = Remembered(state.flavour, f"{binary} (the installed binary)")
        out.update(_remembered_build(state.build_stamp, binary.parent / layout.BUILD_STAMP_NAME))
    if env_path is not None:  # installed: the count recorded for N > 1, else the one dispatch.service
        count = recorded_instances(layout.INSTANCES_FILE)
        out["instances"] = Remembered(str(count), str(layout.INSTANCES_FILE)) if count \
            else Remembered("1", f"{env_path} (one instance: no {layout.INSTANCES_FILE})")
    return RememberedValues(out, env_path)


def _remembered_build(stamp: Mapping[str, Any], path: Path) -> Dict[str, Remembered]:
    """The go build's artifact and its SHA-256 from the stamp beside the binary (a plain http://
    artifact was allowed with --insecure: that is remembered too)."""

    artifact, sha256 = stamp.get("artifact"), stamp.get("artifact_sha256")
    if not isinstance(artifact, str) or not artifact:
        return {}
    out = {"artifact": Remembered(artifact, f"{path}: artifact")}
    if isinstance(sha256, str) and sha256:
        out["artifact_sha256"] = Remembered(sha256, f"{path}: artifact_sha256")
    if artifact.startswith("http://"):
        out["insecure"] = Remembered("1", f"{path}: artifact (http://, allowed with --insecure)")
    return out


# -- the password ---------------------------------------------------------------------------------


def password_given(pass_file: Optional[str], pass_value: Optional[str],
                   environ: Mapping[str, str]) -> Tuple[Optional[Secret], Optional[Source]]:
    """The password from what the user gave, in order: --amqp-pass-file, --amqp-pass,
    $DISPATCHCTL_AMQP_PASS_FILE, $DISPATCHCTL_AMQP_PASS; (None, None) when none was given."""
    from .settings import read_password

    if pass_file is not None:
        return read_password(pass_file=pass_file, environ={}), Source(OPTION, "--amqp-pass-file")
    if pass_value is not None:
        return validate_password("--amqp-pass", pass_value), Source(OPTION, "--amqp-pass")
    if environ.get(PASS_FILE_ENV) is not None:
        try:
            return read_password(pass_file=environ[PASS_FILE_ENV], environ={}), Source(ENVIRONMENT, PASS_FILE_ENV)
        except SettingsError as exc:
            raise SettingsError(PASS_FILE_ENV, exc.message) from None
    if environ.get(PASSWORD_ENV) is not None:
        return validate_password(PASSWORD_ENV, environ[PASSWORD_ENV]), Source(ENVIRONMENT, PASSWORD_ENV)
    return None, None


def no_password_error(why_not_installed: str = "") -> SettingsError:
    why = f" ({why_not_installed})" if why_not_installed else ""
    return SettingsError("--amqp-pass-file", f"no AMQP password: give --amqp-pass-file FILE, set {PASSWORD_ENV} "
                         f"or {PASS_FILE_ENV}, or run on a terminal to be asked{why}")


def installed_password(installed: Mapping[str, Remembered]) -> Tuple[Optional[Secret], Optional[Source]]:
    """The installed password (the credential, else AMQP_PASS), validated like --amqp-pass-file."""
    found = installed.get(PASSWORD)
    if found is None:
        return None, None
    try:
        return validate_password(found.where, found.text), Source(INSTALLED, found.where)
    except SettingsError as exc:
        raise SettingsError(found.where, f"{exc.message}: give --amqp-pass-file") from None


# -- Settings from the resolved values -------------------------------------------------------------


def build_settings(resolved: Resolved) -> Settings:
    """The Settings the plan runs with: each row's value in the field of its name (``amqp_*`` in
    AmqpSettings), the rest Settings' defaults; AmqpSettings.placeholder() when no AMQP row is
    resolved (build, start)."""
    amqp_values = {k[len("amqp_"):]: v for k, v in resolved.values.items() if k.startswith("amqp_")}
    rest = {k: v for k, v in resolved.values.items() if not k.startswith("amqp_")}
    if amqp_values:
        amqp = AmqpSettings(**amqp_values, password=resolved.password or Secret(""))
    else:
        amqp = AmqpSettings.placeholder()
    return Settings(amqp=amqp, **rest)


class LazyPassword:
    """The password, asked for only when it is needed (``check-rabbitmq`` at its login check): the
    one known (given or installed), else ``ask()`` once (a hidden prompt on a terminal: None when
    there is none), else SettingsError saying how to give one. Call it for the Secret."""

    def __init__(self, known: Optional[Secret], source: Optional[Source],
                 ask: Optional[Callable[[], Optional[str]]], why_not_installed: str = "") -> None:
        self.value, self.source = known, source
        self._ask, self._why = ask, why_not_installed
        self.asked = 0

    def __call__(self) -> Secret:
        if self.value is None and self._ask is not None and not self.asked:
            self.asked += 1
            text = self._ask()
            if text:
                self.value, self.source = validate_password("password prompt", text), Source(PROMPT, PROMPT)
        if self.value is None:
            raise no_password_error(self._why)
        return self.value
