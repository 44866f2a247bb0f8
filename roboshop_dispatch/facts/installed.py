"""The installed dispatch, read once: every fact ``status``, ``check`` and ``check-rabbitmq`` need.

"Facts first": :func:`read` asks the host once (one ``systemctl show``, one read of each file,
``lstat`` for every mode and owner, never following a symlink under the app directory) and
returns a plain, immutable :class:`InstalledState`. Everything downstream is a pure function of
it, and it records to JSON and back (:meth:`InstalledState.to_json`, :func:`from_json`), so each
check is unit-tested from recorded facts.

- The environment file is read by the one parser, :mod:`roboshop_dispatch.envfile`.
- The consumer's settings are interpreted by the consumer's own code
  (:func:`roboshop_dispatch.consumer.config.load`): the defaults the running service uses.
- The password comes from the unit's ``LoadCredential=`` (read from the unit file and its drop-ins:
  systemd 252's ``systemctl show`` prints that property as ``[unprintable]``) or, on the go flavour
  and systemd < 247, from ``AMQP_PASS`` in the 0600 environment file. It is held only as a
  :class:`~roboshop_dispatch.settings.Secret` and never recorded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import envfile, layout
from ..consumer.secretfile import strip_final_newline
from ..redact import HEADER_KEYS
from ..settings import MASK, AmqpSettings, Secret, SettingsError
from .host import HostFacts, systemd_version
from .instances import InstanceFacts, instance_unit, read_instances
from .paths import FileInfo, UserInfo, chains, flavour_of, lstat, read_stamp, selinux_label, user_info
from .unitfile import (
    binary_from_unit,
    env_file_from_unit,
    exec_argv,
    load_credentials,
    unit_binary,
    unit_settings,
    unit_texts,
)

PASSWORD_KEY = "AMQP_PASS"
AMQP_KEYS = ("AMQP_HOST", "AMQP_PORT", "AMQP_VHOST", "AMQP_USER")


@dataclass(frozen=True)
class ConsumerSettings:
    """The consumer's settings as the consumer itself reads them (the password left out)."""

    hosts: Tuple[str, ...]
    port: int
    vhost: str
    user: str
    error_percent: float = 0.0


@dataclass(frozen=True)
class InstalledState:
    """Every fact about the installed dispatch. Immutable; records to JSON without the password."""

    unit: str = layout.UNIT_NAME
    properties: Mapping[str, str] = field(default_factory=dict)  # one `systemctl show`
    host: HostFacts = HostFacts()  # the OS, root, systemd (and its version when read), SELinux
    unit_file: FileInfo = FileInfo(str(layout.UNIT_PATH))
    credentials: Tuple[Tuple[str, str], ...] = ()  # the unit's LoadCredential= (name, path)
    env_file: FileInfo = FileInfo(str(layout.ENV_FILE))
    environment: Mapping[str, str] = field(default_factory=dict)  # without AMQP_PASS
    env_has_password: bool = False
    env_error: str = ""
    credential_file: Optional[FileInfo] = None  # the file LoadCredential= names for amqp-pass
    credential_error: str = ""
    password: Optional[Secret] = field(default=None, compare=False)
    password_source: str = ""  # credential | environment file | ""
    # a stale AMQP_PASS in the environment file while the credential wins: masked like the password
    shadowed_password: Optional[Secret] = field(default=None, compare=False)
    # the OTLP exporter's headers (secrets): the credential otlp-headers first (as the consumer reads
    # them), then OTEL_EXPORTER_OTLP_(TRACES_)HEADERS of the environment file (kept out of ``environment``)
    otlp_headers: Tuple[Secret, ...] = field(default=(), compare=False)
    otlp_headers_file: Optional[FileInfo] = None  # the file LoadCredential=otlp-headers names
    otlp_headers_error: str = ""
    consumer: Optional[ConsumerSettings] = None
    config_error: str = ""
    service_user: UserInfo = UserInfo(layout.SERVICE_USER)
    app_dir: FileInfo = FileInfo(str(layout.APP_DIR))
    binary: FileInfo = FileInfo(str(layout.APP_DIR / layout.BINARY_NAME))
    flavour: Optional[str] = None  # go | bundled | unknown | None
    interpreter: Optional[FileInfo] = None  # python3 for the bundled flavour
    build_stamp: Mapping[str, Any] = field(default_factory=dict)
    binary_label: str = ""  # its SELinux label
    process_user: Optional[str] = None
    journal: Tuple[str, ...] = ()
    unit_verify: Optional[Mapping[str, Any]] = None  # {"returncode": n, "stderr": text}
    # the unit file's own [Service] User=, ExecStart=, EnvironmentFile= (read without systemctl)
    unit_values: Mapping[str, str] = field(default_factory=dict)
    instance_facts: Optional[InstanceFacts] = None  # every dispatch unit (read when systemd runs)
    # what the running instances report (check): each one's /metrics, the collector's TCP connect
    telemetry: Optional[Mapping[str, Any]] = None
    # lstat of the app dir, /etc/roboshop and every directory above them (roboshop_dispatch.trust judges them)
    trust_dirs: Tuple[FileInfo, ...] = ()
    # the other loaded service units whose User= is the service user (None: not read; check reads it)
    same_user_units: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        for name in ("properties", "environment", "build_stamp", "unit_verify", "unit_values", "telemetry"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    # -- derived facts ------------------------------------------------------------------------
    def prop(self, name: str, default: str = "") -> str:
        return self.properties.get(name, default)

    @property
    def installed(self) -> bool:
        return self.prop("LoadState") not in ("", "not-found")

    @property
    def active(self) -> bool:
        return self.prop("ActiveState") == "active"

    @property
    def main_pid(self) -> int:
        pid = self.prop("MainPID")
        return int(pid) if pid.isdigit() else 0

    @property
    def loads_credential(self) -> bool:
        return any(name == layout.CREDENTIAL_NAME for name, _ in self.credentials)

    @property
    def could_use_credential(self) -> bool:
        """systemd >= 247 and the bundled flavour: the password belongs in a credential."""
        version = self.host.systemd_version
        recent = version is not None and version >= layout.CREDENTIALS_MIN_SYSTEMD
        return recent and self.flavour == "bundled"

    def amqp_settings(self) -> AmqpSettings:
        """The settings dispatch uses, for check-rabbitmq. Raises SettingsError naming the key."""
        if self.consumer is None:
            raise SettingsError(self.config_error.split(" ", 1)[0] or "AMQP_HOST",
                                self.config_error or f"no settings in {self.env_file.path}")
        return AmqpSettings(hosts=self.consumer.hosts, port=self.consumer.port, vhost=self.consumer.vhost,
                            user=self.consumer.user, password=self.password or Secret(""))

    def env_unreadable(self) -> str:
        """Why the environment file cannot be used, for a message ('' when it can)."""
        path = self.env_file.path
        if not self.env_error:
            return ""
        if self.env_file.kind == "missing":
            return f"there is no installed configuration ({path} does not exist)"
        if self.env_error == os.strerror(13):
            return f"{path} is not readable (run as root, or give --amqp-host and --amqp-pass-file)"
        return f"{path} cannot be read: {self.env_error}"

    def amqp_values(self) -> Dict[str, str]:
        """AMQP_HOST, AMQP_PORT, AMQP_VHOST, AMQP_USER as the consumer reads them (its defaults), or
        the raw values (the consumer's defaults for those not set) when the consumer would refuse
        them; never the password. Empty when the environment file cannot be read."""
        if self.consumer is None:
            if self.env_error or not self.env_file.exists:
                return {}
            values = {**consumer_defaults(), **self.environment}
            return {k: values[k] for k in AMQP_KEYS if k in values}
        c = self.consumer
        return {"AMQP_HOST": ",".join(c.hosts), "AMQP_PORT": str(c.port), "AMQP_VHOST": c.vhost, "AMQP_USER": c.user}

    def unit_value(self, key: str) -> str:
        """``User``, ``ExecStart``: systemd's answer when it gave one, else the unit file's line."""
        return self.prop(key) or self.unit_values.get(key, "")

    def secrets(self) -> List[str]:
        """Every password and exporter header this installation holds, for masking what is shown."""
        from ..consumer.telemetry_settings import header_secrets

        headers = [h.reveal() for h in self.otlp_headers]
        return [p.reveal() for p in (self.password, self.shadowed_password) if p] + headers + \
            [value for text in headers for value in header_secrets(text)]

    # -- recording ----------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready record of every fact; the password only as ``********``."""
        doc: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (FileInfo, UserInfo, ConsumerSettings, InstanceFacts, HostFacts)):
                value = asdict(value)
            elif name_is_infos(f.name):
                value = [asdict(v) for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            doc[f.name] = value
        doc["password"] = MASK if self.password else None
        doc["shadowed_password"] = MASK if self.shadowed_password else None
        doc["otlp_headers"] = [MASK for _ in self.otlp_headers]
        return json.loads(json.dumps(doc))


_NESTED = {"unit_file": FileInfo, "env_file": FileInfo, "credential_file": FileInfo, "app_dir": FileInfo,
           "otlp_headers_file": FileInfo,
           "binary": FileInfo, "interpreter": FileInfo, "service_user": UserInfo, "consumer": ConsumerSettings,
           "instance_facts": InstanceFacts, "host": HostFacts}


def name_is_infos(name: str) -> bool:
    """The fields that hold a tuple of FileInfo."""
    return name == "trust_dirs"


def from_json(doc: Mapping[str, Any], password: Optional[str] = None) -> InstalledState:
    """The facts :meth:`InstalledState.to_json` recorded (the password given separately)."""
    known = {f.name for f in fields(InstalledState)}
    values: Dict[str, Any] = {}
    for key, value in doc.items():
        if key not in known or key in ("password", "shadowed_password", "otlp_headers"):
            continue
        kind = _NESTED.get(key)
        if name_is_infos(key):
            value = tuple(FileInfo(**v) for v in value)
        elif kind is not None and value is not None:
            value = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        elif key in ("credentials", "journal", "same_user_units") and value is not None:
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        values[key] = value
    return InstalledState(password=Secret(password) if password else None, **values)


def loads(text: str, password: Optional[str] = None) -> InstalledState:
    return from_json(json.loads(text), password)


# -- reading the host ----------------------------------------------------------------------------


def read(
    *,
    env_file: Optional[Path] = None,
    service_user: str = layout.SERVICE_USER,
    app_dir: Path = layout.APP_DIR,
    runner: Any = None,
    verify_unit: bool = False,
    journal_lines: int = 0,
    process: bool = False,
    version: bool = True,
    interpret: bool = True,
    telemetry: bool = False,
) -> InstalledState:
    """Read the installed dispatch once. Never raises for a missing or broken installation: what
    cannot be read is recorded as such. ``verify_unit`` runs ``systemd-analyze verify``,
    ``journal_lines`` reads that many log lines when the service is not active, ``process`` asks
    which user the main process runs as (psutil or /proc), ``telemetry`` scrapes the running instances
    /metrics and connects to the OTLP collector (each costs time, so only ``check`` asks);
    ``version=False`` leaves systemd's version out (one process less, for ``status``);
    ``interpret=False`` leaves the consumer's reading of the settings to the caller
    (:func:`consumer_settings`: it imports pika, which ``status`` does in a child process)."""
    from ..host import Runner
    from ..systemd import Systemd

    host = HostFacts.gather()
    systemd = Systemd(runner or Runner(timeout=30))
    instances = read_instances(systemd.runner, systemd_pid1=host.systemd_pid1)
    if instances.uses_template:  # the instances share one template: dispatch@1 stands for them all
        systemd = Systemd(systemd.runner, unit=instance_unit(1))
    props = systemd.show() if host.systemd_pid1 else {}
    unit_file = lstat(Path(props.get("FragmentPath") or layout.UNIT_PATH))
    texts = unit_texts(unit_file, props.get("DropInPaths", ""))
    credentials = load_credentials(texts)
    env_path = env_file or env_file_from_unit(props, layout.ENV_FILE)
    env_facts = _read_env(env_path)
    env_facts.update(_read_headers(credentials, env_facts))
    secret = _read_credential(credentials)  # the credential's password wins over AMQP_PASS
    state = InstalledState(
        unit=systemd.unit, properties=props,
        host=replace(host, systemd_version=systemd_version()) if host.systemd_pid1 and version else host,
        unit_file=unit_file, credentials=credentials, unit_values=unit_settings(texts),
        service_user=user_info(service_user), app_dir=lstat(app_dir),
        trust_dirs=chains([app_dir, layout.CONFIG_DIR]),
        **_passwords(env_facts, secret), **_read_binary(props, app_dir, host.family == "rhel"),
        instance_facts=instances,
    )
    if interpret:
        state = replace(state, **consumer_settings(state, env_path))
    state = replace(state, **_slow_facts(state, systemd, verify_unit, journal_lines, process))
    return replace(state, telemetry=_telemetry(state)) if telemetry else state


def _telemetry(state: InstalledState) -> Optional[Dict[str, Any]]:
    from .telemetry import read as read_telemetry

    facts = state.instance_facts
    if state.env_error or facts is None:
        return None
    return read_telemetry(state.environment, facts.configured, [u.unit for u in facts.running()])


def read_settings(env_file: Path = layout.ENV_FILE, *, interpret: bool = True) -> InstalledState:
    """Only the installed settings, as the consumer reads them: the environment file, the
    credential the unit file (and its drop-ins, at their places in :mod:`layout`) names, the unit
    file's User= and ExecStart= and the flavour of the binary it runs; no ``systemctl``. For
    ``check-rabbitmq`` and the remembered settings of ``install``/``configure``/``build``/``start``
    (:func:`remembered`), which need nothing else of the host."""
    unit_file = lstat(layout.UNIT_PATH)
    if not unit_file.exists and lstat(layout.TEMPLATE_PATH).exists:  # several instances: the template
        unit_file = lstat(layout.TEMPLATE_PATH)
    texts = unit_texts(unit_file, "")
    credentials = load_credentials(texts)
    unit_values = unit_settings(texts)
    binary = unit_binary(unit_values.get("ExecStart", ""))
    info = lstat(binary) if binary is not None else FileInfo(str(layout.APP_DIR / layout.BINARY_NAME))
    stamp = read_stamp(binary.parent / layout.BUILD_STAMP_NAME) if binary is not None else {}
    env_facts = _read_env(env_file)
    env_facts.update(_read_headers(credentials, env_facts))
    state = InstalledState(unit_file=unit_file, credentials=credentials, unit_values=unit_values, binary=info,
                           flavour=flavour_of(binary) if binary is not None and info.kind == "file" else None,
                           build_stamp=stamp, **_passwords(env_facts, _read_credential(credentials)))
    # interpret=False: only the files (``logs`` needs the passwords to mask, not pika's import)
    return replace(state, **consumer_settings(state, env_file)) if interpret else state


def _passwords(env_facts: Dict[str, Any], credential: Dict[str, Any]) -> Dict[str, Any]:
    """The environment file's facts and the credential's: the credential's password wins, a stale
    AMQP_PASS beside it is kept as ``shadowed_password`` (never used, always masked)."""
    merged = {**env_facts, **credential}
    if "password" in env_facts and "password" in credential:
        merged["shadowed_password"] = env_facts["password"]
    return merged


def _read_env(path: Path) -> Dict[str, Any]:
    info = lstat(path)
    try:
        env = envfile.read(path)
    except OSError as exc:
        return {"env_file": info, "env_error": "not present" if isinstance(exc, FileNotFoundError)
                else (exc.strerror or str(exc))}
    except UnicodeDecodeError as exc:
        return {"env_file": info, "env_error": f"not UTF-8 text ({exc.reason})"}
    password = env.pop(PASSWORD_KEY, None)
    headers = tuple(Secret(env.pop(k)) for k in reversed(HEADER_KEYS) if k in env)  # as the consumer prefers
    out: Dict[str, Any] = {"env_file": info, "environment": env, "env_has_password": password is not None,
                           "otlp_headers": tuple(h for h in headers if h)}
    if password:
        out.update(password=Secret(password), password_source="environment file")
    return out


def _credential(credentials: Sequence[Tuple[str, str]], name: str) -> Optional[Tuple[FileInfo, str, str]]:
    """(the file the unit's LoadCredential=NAME:PATH names, its text as the consumer reads it,
    why it cannot be used: '' when it can), or None when the unit loads no such credential."""
    path = next((p for n, p in credentials if n == name), None)
    if path is None:
        return None
    target = Path(path) if path.startswith("/") else _credstore(path)
    try:
        text = strip_final_newline(target.read_bytes().decode("utf-8"))  # as the consumer reads it
    except OSError as exc:
        return lstat(target), "", exc.strerror or str(exc)
    except UnicodeDecodeError:
        return lstat(target), "", "not UTF-8 text"
    return lstat(target), text, "" if text else "empty"


def _read_credential(credentials: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
    """The password from the file the unit's LoadCredential=amqp-pass:PATH names (it wins over
    AMQP_PASS in the environment file, as the consumer prefers $CREDENTIALS_DIRECTORY)."""
    found = _credential(credentials, layout.CREDENTIAL_NAME)
    if found is None:
        return {}
    info, text, error = found
    if error:
        return {"credential_file": info, "credential_error": error}
    return {"credential_file": info, "password": Secret(text), "password_source": "credential"}


def _read_headers(credentials: Sequence[Tuple[str, str]], env_facts: Dict[str, Any]) -> Dict[str, Any]:
    """The exporter's headers from the file the unit's LoadCredential=otlp-headers:PATH names
    (before those of the environment file, as the consumer reads them)."""
    found = _credential(credentials, layout.OTLP_HEADERS_CREDENTIAL)
    if found is None:
        return {}
    info, text, error = found
    if error:
        return {"otlp_headers_file": info, "otlp_headers_error": error}
    return {"otlp_headers_file": info, "otlp_headers": (Secret(text), *env_facts.get("otlp_headers", ()))}


def _credstore(name: str) -> Path:
    """Where systemd looks for ``LoadCredential=ID`` without an absolute path."""
    for directory in layout.CREDSTORE_DIRS:
        if lstat(directory / name).exists:
            return directory / name
    return layout.CREDSTORE_DIRS[0] / name


def consumer_settings(state: InstalledState, env_path: Path) -> Dict[str, Any]:
    """The consumer's reading of the installed environment (and the credential), or why it fails."""
    from ..pikaload import load

    load()  # consumer.config imports the contract, which imports pika: without its asyncio adapter
    from ..consumer import config

    if state.env_error:
        return {"config_error": f"{env_path}: {state.env_error}"}
    env = dict(state.environment)
    if state.password:
        env[PASSWORD_KEY] = state.password.reveal()
    elif state.credential_error:
        where = state.credential_file.path if state.credential_file else "the credential"
        return {"config_error": f"{PASSWORD_KEY} cannot be read from {where}: {state.credential_error}"}
    try:
        cfg = config.load(env)
    except config.ConfigError as exc:
        return {"config_error": str(exc)}
    return {"consumer": ConsumerSettings(cfg.hosts, cfg.port, cfg.vhost, cfg.user, cfg.error_percent)}


def _read_binary(props: Mapping[str, str], app_dir: Path, selinux_host: bool) -> Dict[str, Any]:
    path = binary_from_unit(props, app_dir / layout.BINARY_NAME)
    info = lstat(path)
    argv = exec_argv(props.get("ExecStart", ""))
    interpreter = lstat(Path(argv[0])) if argv and Path(argv[0]) != path else None
    if interpreter is not None and interpreter.kind == "symlink":  # /usr/bin/python3 -> python3.11
        interpreter = replace(interpreter, kind="file" if Path(interpreter.path).is_file() else "missing")
    return {
        "binary": info, "interpreter": interpreter,
        "flavour": flavour_of(path) if info.kind == "file" else None,
        "build_stamp": read_stamp(path.parent / layout.BUILD_STAMP_NAME),
        "binary_label": selinux_label(path) if selinux_host and info.kind == "file" else "",
    }


def _slow_facts(state: InstalledState, systemd: Any, verify: bool, lines: int, process: bool) -> Dict[str, Any]:
    from ..redact import Redactor

    out: Dict[str, Any] = {}
    mask = Redactor(state.secrets()).text  # what systemd-analyze and the journal say is quoted: masked
    if verify and state.installed and state.unit_file.exists:
        res = systemd.verify(Path(state.unit_file.path))
        out["unit_verify"] = {"returncode": res["returncode"], "stderr": mask(str(res["stderr"]))}
    if lines > 0 and state.installed and not state.active:
        out["journal"] = tuple(mask(line) for line in systemd.journal_lines(lines))
    if process and state.main_pid:
        out["process_user"] = process_user(state.main_pid)
    if process and state.host.systemd_pid1 and state.service_user.exists:
        out["same_user_units"] = tuple(sorted(
            unit for unit, user in systemd.service_users().items()
            if user in (state.service_user.name, str(state.service_user.uid))
            and unit != layout.UNIT_NAME and not unit.startswith(layout.INSTANCE_PREFIX)))
    return out


def process_user(pid: int) -> Optional[str]:
    from ..procinfo import process_user as user  # psutil when the host has it, else /proc

    return user(pid)


def consumer_defaults() -> Dict[str, str]:
    """The consumer's default for each variable it reads (consumer/config.py), as text: the value
    the service uses when the environment file does not set it. (Not the password: it has none.)"""
    from ..pikaload import load

    load()  # consumer.config imports the contract, which imports pika: without its asyncio adapter
    from ..consumer import config

    return {name: default for name, default, _ in config.VARIABLES if name != PASSWORD_KEY}
