"""Where each setting comes from: the option > ``DISPATCHCTL_<OPTION>`` > what is installed > the default.

Each setting is declared once, in :mod:`roboshop_dispatch.knobs` (its option, variable, validator,
default and the installed value it is remembered from). :func:`resolve` is pure: (the options
given, the environment, the installed values) -> the values and where each came from. The
installed values are :func:`remembered` from the installed state
(:mod:`roboshop_dispatch.facts.installed`, the one reader of it). Every value, whatever its
source, is validated by its knob's validator, and an error names its source:
``DISPATCHCTL_AMQP_PORT: 'x' is not a whole number``, or
``/etc/roboshop/dispatch.env: AMQP_PORT: ...: give --amqp-port``. The password has an order of its
own (:func:`password`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from . import layout
from .knobs import (
    COMMAND_KNOBS,
    GO_ONLY,
    KNOB,
    PASS_FILE_ENV,
    PASSWORD,
    PASSWORD_ENV,
    Knob,
    cross_check,
    no_password_error,
)
from .redact import MASK, Secret
from .settings import Settings
from .validate import SettingsError, read_password_file, validate_password

if TYPE_CHECKING:
    from .facts.installed import InstalledState

__all__ = ["COMMAND_KNOBS", "KNOB", "Remembered", "Resolved", "Source", "password", "remembered", "resolve"]

OPTION, ENVIRONMENT, INSTALLED, DEFAULT, PROMPT = "option", "environment", "installed", "default", "prompt"


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


@dataclass(frozen=True)
class Resolved:
    """The validated values (by row name) and where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, Source]
    password: Optional[Secret] = None
    password_source: Optional[Source] = None

    def document(self) -> Dict[str, Dict[str, Any]]:
        """``{name: {"value", "source", "from"}}`` for --dry-run: the password masked, the
        artifact's URL without its secrets (artifact.shown), and the go flavour's own settings
        only for the go flavour (a bundled run reads none of them)."""
        from .artifact import shown as url_shown

        doc: Dict[str, Dict[str, Any]] = {}
        for name, value in self.values.items():
            if name in GO_ONLY and self.values.get("flavour", "go") != "go":
                continue
            shown = [str(v) for v in value] if isinstance(value, tuple) else value
            shown = str(shown) if isinstance(shown, (Path, Secret)) else shown  # a Secret shows as its mask
            shown = url_shown(shown) if name == "artifact" and isinstance(shown, str) else shown
            doc[name] = {"value": shown, "source": self.sources[name].kind, "from": self.sources[name].where}
        if self.password_source is not None:
            doc[PASSWORD] = {"value": MASK if self.password else None, "source": self.password_source.kind,
                             "from": self.password_source.where}
        return doc


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
    cross_check(values, {name: source.where for name, source in sources.items()})
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
        if "DISPATCH_MAX_BODY" not in out:  # written only when set (Settings.environment): no pika import
            from .consumer.delivery import MAX_BODY

            out["DISPATCH_MAX_BODY"] = Remembered(str(MAX_BODY), f"{env_path}: DISPATCH_MAX_BODY (not set: the "
                                                                 "consumer's default)")
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
    out.update(_remembered_telemetry(state, env_path))
    if env_path is not None:  # installed: the count recorded for N > 1, else the one dispatch.service
        count = recorded_instances(layout.INSTANCES_FILE)
        out["instances"] = Remembered(str(count), str(layout.INSTANCES_FILE)) if count \
            else Remembered("1", f"{env_path} (one instance: no {layout.INSTANCES_FILE})")
    return RememberedValues(out, env_path)


def _remembered_telemetry(state: InstalledState, env_path: Optional[str]) -> Dict[str, Remembered]:
    """Tracing and metrics as installed: the collector's URL and the metrics address from the
    environment file, the exporter's headers (a secret) from their credential, else the file."""
    out: Dict[str, Remembered] = {}
    for name, key in (("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"), ("metrics_listen", "DISPATCH_METRICS_LISTEN")):
        if env_path is not None and state.environment.get(key):
            out[name] = Remembered(state.environment[key], f"{env_path}: {key}")
    if state.otlp_headers:
        where = state.otlp_headers_file.path if state.otlp_headers_file is not None and not state.otlp_headers_error \
            else f"{state.env_file.path}: OTEL_EXPORTER_OTLP_HEADERS"
        out["otlp_headers"] = Remembered(state.otlp_headers[0].reveal(), where)
    return out


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


def password(pass_file: Optional[str], pass_value: Optional[str], environ: Mapping[str, str],
             installed: Mapping[str, Remembered], ask: Optional[Callable[[], Optional[str]]],
             why_not_installed: str = "") -> LazyPassword:
    """The password, in order: --amqp-pass-file, --amqp-pass, $DISPATCHCTL_AMQP_PASS_FILE,
    $DISPATCHCTL_AMQP_PASS, the installed one, ``ask()`` (a hidden prompt on a terminal); each
    validated under the name of its source. Asked for only when the LazyPassword is called."""
    secret, source = password_given(pass_file, pass_value, environ)
    if secret is None:
        secret, source = installed_password(installed)
    return LazyPassword(secret, source, ask, why_not_installed)


def password_given(pass_file: Optional[str], pass_value: Optional[str],
                   environ: Mapping[str, str]) -> Tuple[Optional[Secret], Optional[Source]]:
    """The password from what the user gave, in order: --amqp-pass-file, --amqp-pass,
    $DISPATCHCTL_AMQP_PASS_FILE, $DISPATCHCTL_AMQP_PASS; (None, None) when none was given."""
    if pass_file is not None:
        return read_password_file(pass_file), Source(OPTION, "--amqp-pass-file")
    if pass_value is not None:
        return validate_password("--amqp-pass", pass_value), Source(OPTION, "--amqp-pass")
    if environ.get(PASS_FILE_ENV) is not None:
        return read_password_file(environ[PASS_FILE_ENV], PASS_FILE_ENV), Source(ENVIRONMENT, PASS_FILE_ENV)
    if environ.get(PASSWORD_ENV) is not None:
        return validate_password(PASSWORD_ENV, environ[PASSWORD_ENV]), Source(ENVIRONMENT, PASSWORD_ENV)
    return None, None


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
    """The Settings the plan runs with (Settings.of: the resolved values, the rest the defaults)."""
    return Settings.of(resolved.values, resolved.password)


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
            if text is not None:  # Enter alone: an empty password, refused as such
                self.value, self.source = validate_password("password prompt", text), Source(PROMPT, PROMPT)
        if self.value is None:
            raise no_password_error(self._why)
        return self.value
