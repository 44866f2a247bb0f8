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
import re
import stat
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import envfile, layout
from .settings import MASK, AmqpSettings, Secret, SettingsError
from .sources import Remembered

PASSWORD_KEY = "AMQP_PASS"
UNIT_PROPERTIES = (
    "LoadState", "ActiveState", "SubState", "Result", "UnitFileState", "MainPID", "NRestarts", "User",
    "ExecStart", "EnvironmentFiles", "FragmentPath", "DropInPaths", "Type", "ExecMainStatus", "ExecMainCode",
    "ActiveEnterTimestamp", "StatusText",
)
# systemd's credential stores, searched for LoadCredential=ID without an absolute path
CREDSTORE_DIRS = (Path("/etc/credstore"), Path("/run/credstore"), Path("/usr/lib/credstore"))


@dataclass(frozen=True)
class FileInfo:
    """What ``lstat`` says about one path (a symlink is reported as one, never followed)."""

    path: str
    kind: str = "missing"  # file | dir | symlink | other | missing | error
    mode: int = 0  # permission bits
    uid: int = -1
    gid: int = -1
    error: str = ""

    @property
    def exists(self) -> bool:
        return self.kind not in ("missing", "error")

    @property
    def root_only(self) -> bool:
        """A regular file owned by root that nobody else may read or write."""
        return self.kind == "file" and self.uid == 0 and not self.mode & 0o077


def lstat(path: Path) -> FileInfo:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return FileInfo(str(path))
    except OSError as exc:
        return FileInfo(str(path), kind="error", error=exc.strerror or str(exc))
    if stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    elif stat.S_ISREG(info.st_mode):
        kind = "file"
    elif stat.S_ISDIR(info.st_mode):
        kind = "dir"
    else:
        kind = "other"
    return FileInfo(str(path), kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


@dataclass(frozen=True)
class UserInfo:
    name: str
    exists: bool = False
    uid: int = -1
    gid: int = -1
    shell: str = ""
    groups: Tuple[int, ...] = ()


def user_info(name: str) -> UserInfo:
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except (KeyError, UnicodeEncodeError):
        return UserInfo(name)
    try:
        groups = tuple(sorted(set(os.getgrouplist(name, pw.pw_gid))))
    except OSError:
        groups = (pw.pw_gid,)
    return UserInfo(name, True, pw.pw_uid, pw.pw_gid, pw.pw_shell, groups)


@dataclass(frozen=True)
class ConsumerSettings:
    """The consumer's settings as the consumer itself reads them (the password left out)."""

    hosts: Tuple[str, ...]
    port: int
    vhost: str
    user: str
    error_percent: float = 0.0


ENABLED_STATES = ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias")
RUNNING_STATES = ("active", "activating", "reloading", "deactivating")
INSTANCE_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID", "StatusText",
                       "NeedDaemonReload", "Result")
_INSTANCE_NAME = re.compile(r"^dispatch@([1-9][0-9]{0,5})\.service$")


@dataclass(frozen=True)
class InstanceInfo:
    """One dispatch unit as ``systemctl show`` answers: ``dispatch.service`` or ``dispatch@N.service``."""

    unit: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    enabled: str = ""  # UnitFileState
    main_pid: int = 0
    status_text: str = ""
    need_reload: bool = False
    result: str = ""

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING_STATES

    @property
    def is_enabled(self) -> bool:
        return self.enabled in ENABLED_STATES

    @property
    def number(self) -> int:
        """N of dispatch@N.service; 0 for dispatch.service."""
        m = _INSTANCE_NAME.match(self.unit)
        return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class InstanceFacts:
    """The dispatch units on the host, read once: which unit files exist, how many instances are
    configured (layout.INSTANCES_FILE), and every dispatch unit systemd knows (enabled by a link
    or loaded) with its state. Decisions (the service step, ``check``, ``status``) derive from it."""

    legacy_file: bool = False  # dispatch.service
    template_file: bool = False  # dispatch@.service
    recorded: int = 0  # the count in layout.INSTANCES_FILE (0: none recorded)
    legacy: InstanceInfo = InstanceInfo(layout.UNIT_NAME)
    units: Tuple[InstanceInfo, ...] = ()  # dispatch@N.service, by N

    def __post_init__(self) -> None:  # from a JSON record: the nested dicts become InstanceInfo
        if isinstance(self.legacy, Mapping):
            object.__setattr__(self, "legacy", InstanceInfo(**self.legacy))
        object.__setattr__(self, "units", tuple(InstanceInfo(**u) if isinstance(u, Mapping) else u
                                                for u in self.units))

    @property
    def configured(self) -> int:
        """How many instances this host is set up to run (0: nothing installed)."""
        if self.recorded:
            return self.recorded
        if self.template_file:
            return max(1, sum(1 for u in self.units if u.is_enabled))
        return 1 if self.legacy_file else 0

    @property
    def uses_template(self) -> bool:
        return self.configured > 1

    def wanted_units(self, count: int) -> List[str]:
        return [layout.UNIT_NAME] if count == 1 else [instance_unit(i) for i in range(1, count + 1)]

    def info(self, unit: str) -> InstanceInfo:
        if unit == layout.UNIT_NAME:
            return self.legacy
        return next((u for u in self.units if u.unit == unit), InstanceInfo(unit))

    def every_unit(self) -> List[InstanceInfo]:
        return [self.legacy, *self.units]

    def running(self) -> List[InstanceInfo]:
        return [u for u in self.every_unit() if u.running]


def instance_unit(number: int) -> str:
    return f"{layout.INSTANCE_PREFIX}{number}.service"


@dataclass(frozen=True)
class InstalledState:
    """Every fact about the installed dispatch. Immutable; records to JSON without the password."""

    unit: str = layout.UNIT_NAME
    properties: Mapping[str, str] = field(default_factory=dict)  # one `systemctl show`
    os_id: str = ""
    os_name: str = ""
    os_family: Optional[str] = None  # rhel | debian | None
    is_root: bool = False
    systemd_pid1: bool = False
    systemd_version: Optional[int] = None
    selinux: Optional[str] = None  # enforcing | permissive | disabled | None
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

    def __post_init__(self) -> None:
        for name in ("properties", "environment", "build_stamp", "unit_verify", "unit_values"):
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
        return _int(self.prop("MainPID"))

    @property
    def credential_name(self) -> str:
        return layout.CREDENTIAL_NAME

    @property
    def loads_credential(self) -> bool:
        return any(name == layout.CREDENTIAL_NAME for name, _ in self.credentials)

    @property
    def could_use_credential(self) -> bool:
        """systemd >= 247 and the bundled flavour: the password belongs in a credential."""
        recent = self.systemd_version is not None and self.systemd_version >= layout.CREDENTIALS_MIN_SYSTEMD
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
            found = remembered(self)
            return {k: found[k].text for k in AMQP_KEYS if k in found}
        c = self.consumer
        return {"AMQP_HOST": ",".join(c.hosts), "AMQP_PORT": str(c.port), "AMQP_VHOST": c.vhost, "AMQP_USER": c.user}

    def unit_value(self, key: str) -> str:
        """``User``, ``ExecStart``: systemd's answer when it gave one, else the unit file's line."""
        return self.prop(key) or self.unit_values.get(key, "")

    def secrets(self) -> List[str]:
        """Every password this installation holds, for masking what is shown."""
        return [p.reveal() for p in (self.password, self.shadowed_password) if p]

    # -- recording ----------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready record of every fact; the password only as ``********``."""
        doc: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (FileInfo, UserInfo, ConsumerSettings, InstanceFacts)):
                value = asdict(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            doc[f.name] = value
        doc["password"] = MASK if self.password else None
        doc["shadowed_password"] = MASK if self.shadowed_password else None
        return json.loads(json.dumps(doc))


_NESTED = {"unit_file": FileInfo, "env_file": FileInfo, "credential_file": FileInfo, "app_dir": FileInfo,
           "binary": FileInfo, "interpreter": FileInfo, "service_user": UserInfo, "consumer": ConsumerSettings,
           "instance_facts": InstanceFacts}


def from_json(doc: Mapping[str, Any], password: Optional[str] = None) -> InstalledState:
    """The facts :meth:`InstalledState.to_json` recorded (the password given separately)."""
    known = {f.name for f in fields(InstalledState)}
    values: Dict[str, Any] = {}
    for key, value in doc.items():
        if key not in known or key in ("password", "shadowed_password"):
            continue
        kind = _NESTED.get(key)
        if kind is not None and value is not None:
            value = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        elif key in ("credentials", "journal"):
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
) -> InstalledState:
    """Read the installed dispatch once. Never raises for a missing or broken installation: what
    cannot be read is recorded as such. ``verify_unit`` runs ``systemd-analyze verify``,
    ``journal_lines`` reads that many log lines when the service is not active, ``process`` asks
    psutil which user the main process runs as (each costs time, so only ``check`` asks);
    ``version=False`` leaves systemd's version out (one process less, for ``status``);
    ``interpret=False`` leaves the consumer's reading of the settings to the caller
    (:func:`consumer_settings`: it imports pika, which ``status`` does in a child process)."""
    from .host import HostFacts, Runner
    from .systemd import Systemd

    host = HostFacts.gather()
    systemd = Systemd(runner or Runner(timeout=30))
    instances = read_instances(systemd.runner, systemd_pid1=host.systemd_pid1)
    if instances.uses_template:  # the instances share one template: dispatch@1 stands for them all
        systemd = Systemd(systemd.runner, unit=instance_unit(1))
    props = systemd.show(UNIT_PROPERTIES) if host.systemd_pid1 else {}
    unit_file = lstat(Path(props.get("FragmentPath") or layout.UNIT_PATH))
    unit_texts = _unit_texts(unit_file, props.get("DropInPaths", ""))
    credentials = load_credentials(unit_texts)
    env_path = env_file or env_file_from_unit(props, layout.ENV_FILE)
    env_facts = _read_env(env_path)
    secret = _read_credential(credentials)  # the credential's password wins over AMQP_PASS
    state = InstalledState(
        unit=systemd.unit, properties=props, os_id=host.os_id, os_name=host.os_name, os_family=host.family,
        is_root=host.is_root, systemd_pid1=host.systemd_pid1,
        systemd_version=systemd_version(systemd.runner) if host.systemd_pid1 and version else None,
        selinux=host.selinux, unit_file=unit_file, credentials=credentials, unit_values=unit_settings(unit_texts),
        service_user=user_info(service_user), app_dir=lstat(app_dir),
        **_passwords(env_facts, secret), **_read_binary(props, app_dir, host.family == "rhel"),
        instance_facts=instances,
    )
    if interpret:
        state = replace(state, **consumer_settings(state, env_path))
    return replace(state, **_slow_facts(state, systemd, verify_unit, journal_lines, process))


def read_instances(runner: Any, *, systemd_pid1: bool, unit_dir: Path = layout.UNIT_DIR,
                   instances_file: Path = layout.INSTANCES_FILE) -> InstanceFacts:
    """Every dispatch unit on the host: the unit files, the recorded count, the instances enabled
    (links in ``*.wants``) or loaded (``systemctl list-units``), each one's state from one
    ``systemctl show``. Without systemd only the files are read."""
    linked = set(_enabled_instances(unit_dir))
    numbers = set(linked)
    if systemd_pid1:
        res = runner.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager",
                          layout.INSTANCE_PREFIX + "*"], check=False, timeout=30)
        numbers |= set(parse_instance_list(res.stdout))
    names = [instance_unit(n) for n in sorted(numbers)]
    states: Dict[str, InstanceInfo] = {}
    if systemd_pid1:
        res = runner.run(["systemctl", "show", layout.UNIT_NAME, *names,
                          "--property=" + ",".join(INSTANCE_PROPERTIES)], check=False, timeout=30)
        states = {info.unit: info for info in parse_show_blocks(res.stdout)}
    return InstanceFacts(
        legacy_file=lstat(unit_dir / layout.UNIT_NAME).exists,
        template_file=lstat(unit_dir / layout.TEMPLATE_NAME).exists,
        recorded=recorded_instances(instances_file),
        legacy=states.get(layout.UNIT_NAME, InstanceInfo(layout.UNIT_NAME)),
        # without systemd's answer, a link in a .wants directory is what enabled means
        units=tuple(states.get(name, InstanceInfo(name, enabled="enabled" if n in linked else ""))
                    for n, name in zip(sorted(numbers), names)),
    )


def recorded_instances(path: Path) -> int:
    """The instance count recorded in ``path`` (0: absent or not a sane number)."""
    if lstat(path).kind != "file":
        return 0
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return 0
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= layout.MAX_INSTANCES:
        return 0
    return int(text)


def _enabled_instances(unit_dir: Path) -> List[int]:
    """N of every ``dispatch@N.service`` link in a ``*.wants``/``*.requires`` directory."""
    found: List[int] = []
    try:
        dirs = [d for d in unit_dir.iterdir() if d.name.endswith((".wants", ".requires")) and d.is_dir()]
    except OSError:
        return found
    for directory in dirs:
        try:
            found += [InstanceInfo(e.name).number for e in directory.iterdir() if _INSTANCE_NAME.match(e.name)]
        except OSError:
            continue
    return found


def parse_instance_list(text: str) -> List[int]:
    """N of every ``dispatch@N.service`` in ``systemctl list-units --plain --no-legend`` output."""
    out: List[int] = []
    for line in text.splitlines():
        words = [w for w in line.split() if w not in ("\u25cf", "*")]  # a failed unit's marker
        name = words[0] if words else ""
        if _INSTANCE_NAME.match(name):
            out.append(InstanceInfo(name).number)
    return out


def parse_show_blocks(text: str) -> List[InstanceInfo]:
    """``systemctl show A B --property=...``: one block per unit, separated by an empty line."""
    out: List[InstanceInfo] = []
    for block in text.split("\n\n"):
        values: Dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        if values.get("Id"):
            out.append(InstanceInfo(
                unit=values["Id"], load_state=values.get("LoadState", ""), active_state=values.get("ActiveState", ""),
                sub_state=values.get("SubState", ""), enabled=values.get("UnitFileState", ""),
                main_pid=_int(values.get("MainPID", "")), status_text=values.get("StatusText", ""),
                need_reload=values.get("NeedDaemonReload") == "yes", result=values.get("Result", "")))
    return out


def read_settings(env_file: Path = layout.ENV_FILE, *, interpret: bool = True) -> InstalledState:
    """Only the installed settings, as the consumer reads them: the environment file, the
    credential the unit file (and its drop-ins, at their places in :mod:`layout`) names, the unit
    file's User= and ExecStart= and the flavour of the binary it runs; no ``systemctl``. For
    ``check-rabbitmq`` and the remembered settings of ``install``/``configure``/``build``/``start``
    (:func:`remembered`), which need nothing else of the host."""
    unit_file = lstat(layout.UNIT_PATH)
    if not unit_file.exists and lstat(layout.TEMPLATE_PATH).exists:  # several instances: the template
        unit_file = lstat(layout.TEMPLATE_PATH)
    texts = _unit_texts(unit_file, "")
    credentials = load_credentials(texts)
    unit_values = unit_settings(texts)
    binary = _unit_binary(unit_values.get("ExecStart", ""))
    info = lstat(binary) if binary is not None else FileInfo(str(layout.APP_DIR / layout.BINARY_NAME))
    stamp = _read_stamp(binary.parent / layout.BUILD_STAMP_NAME) if binary is not None else {}
    state = InstalledState(unit_file=unit_file, credentials=credentials, unit_values=unit_values, binary=info,
                           flavour=flavour_of(binary) if binary is not None and info.kind == "file" else None,
                           build_stamp=stamp,
                           **_passwords(_read_env(env_file), _read_credential(credentials)))
    # interpret=False: only the files (``logs`` needs the passwords to mask, not pika's import)
    return replace(state, **consumer_settings(state, env_file)) if interpret else state


# -- the remembered settings ----------------------------------------------------------------------

AMQP_KEYS = ("AMQP_HOST", "AMQP_PORT", "AMQP_VHOST", "AMQP_USER")


def consumer_defaults() -> Dict[str, str]:
    """The consumer's default for each variable it reads (consumer/config.py), as text: the value
    the service uses when the environment file does not set it. (Not the password: it has none.)"""
    from .pikaload import load

    load()  # consumer.config imports the contract, which imports pika: without its asyncio adapter
    from .consumer import config

    return {name: default for name, default, _ in config.VARIABLES if name != PASSWORD_KEY}


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
                self._defaults = consumer_defaults()
            keys += [k for k in self._defaults if k not in self._found]
        return iter(keys)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def remembered(state: InstalledState) -> RememberedValues:
    """Every installed setting as text with where it was read, for the settings a command is not
    given (:mod:`roboshop_dispatch.sources`): each variable of the environment file (the consumer's
    default for those it does not set), ``amqp_pass`` (the credential, else AMQP_PASS),
    ``service_user`` (the unit's User=), ``app_dir`` (the directory of the dispatch its ExecStart=
    runs) and ``flavour`` (of that binary). Nothing for what is not installed or cannot be read."""
    from .sources import PASSWORD as PASSWORD_NAME

    out: Dict[str, Remembered] = {}
    env_path: Optional[str] = None
    if not state.env_error and state.env_file.exists:
        env_path = state.env_file.path
        for key, value in state.environment.items():
            out[key] = Remembered(value, f"{env_path}: {key}")
    if state.password:
        where = state.credential_file.path if state.password_source == "credential" and state.credential_file \
            else f"{state.env_file.path}: {PASSWORD_KEY}"
        out[PASSWORD_NAME] = Remembered(state.password.reveal(), where)
    unit = state.unit_file.path
    if state.unit_value("User"):
        out["service_user"] = Remembered(state.unit_value("User"), f"{unit}: User=")
    binary = _unit_binary(state.unit_value("ExecStart"))
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


def _unit_binary(exec_start: str) -> Optional[Path]:
    """The dispatch program an ExecStart= runs (systemd's form or the unit file's), or None."""
    found = binary_from_unit({"ExecStart": exec_start}, Path())
    return found if found != Path() and found.is_absolute() else None


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
    out: Dict[str, Any] = {"env_file": info, "environment": env, "env_has_password": password is not None}
    if password:
        out.update(password=Secret(password), password_source="environment file")
    return out


def _read_credential(credentials: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
    """The password from the file the unit's LoadCredential=amqp-pass:PATH names (it wins over
    AMQP_PASS in the environment file, as the consumer prefers $CREDENTIALS_DIRECTORY)."""
    path = next((p for name, p in credentials if name == layout.CREDENTIAL_NAME), None)
    if path is None:
        return {}
    target = Path(path) if path.startswith("/") else _credstore(path)
    out: Dict[str, Any] = {"credential_file": lstat(target)}
    try:
        text = target.read_bytes().decode("utf-8")
    except OSError as exc:
        return {**out, "credential_error": exc.strerror or str(exc)}
    except UnicodeDecodeError:
        return {**out, "credential_error": "not UTF-8 text"}
    if text.endswith("\n"):
        text = text[:-1]  # as the consumer reads it: one trailing newline is not the password's
    if text:
        out.update(password=Secret(text), password_source="credential")
    else:
        out["credential_error"] = "empty"
    return out


def _credstore(name: str) -> Path:
    """Where systemd looks for ``LoadCredential=ID`` without an absolute path."""
    for directory in CREDSTORE_DIRS:
        if lstat(directory / name).exists:
            return directory / name
    return CREDSTORE_DIRS[0] / name


def consumer_settings(state: InstalledState, env_path: Path) -> Dict[str, Any]:
    """The consumer's reading of the installed environment (and the credential), or why it fails."""
    from .pikaload import load

    load()  # consumer.config imports the contract, which imports pika: without its asyncio adapter
    from .consumer import config

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
        "build_stamp": _read_stamp(path.parent / layout.BUILD_STAMP_NAME),
        "binary_label": _selinux_label(path) if selinux_host and info.kind == "file" else "",
    }


def _read_stamp(path: Path) -> Dict[str, Any]:
    if lstat(path).kind != "file":
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"error": "unreadable"}
    return {k: v for k, v in doc.items() if isinstance(v, (str, int, float, bool))} if isinstance(doc, dict) else {}


def _selinux_label(path: Path) -> str:
    try:
        return str(os.getxattr(str(path), "security.selinux", follow_symlinks=False), "utf-8",
                   "replace").rstrip("\x00")
    except OSError:
        return ""


def _slow_facts(state: InstalledState, systemd: Any, verify: bool, lines: int, process: bool) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if verify and state.installed and state.unit_file.exists:
        res = systemd.verify(Path(state.unit_file.path))
        out["unit_verify"] = {"returncode": res["returncode"], "stderr": str(res["stderr"])}
    if lines > 0 and state.installed and not state.active:
        from .redact import Redactor

        mask = Redactor(state.secrets()).text
        out["journal"] = tuple(mask(line) for line in systemd.journal_lines(lines))
    if process and state.main_pid:
        out["process_user"] = process_user(state.main_pid)
    return out


def process_user(pid: int) -> Optional[str]:
    try:
        import psutil

        return str(psutil.Process(pid).username())
    except Exception:  # the process ended in between, or psutil cannot see it
        return None


def systemd_version(runner: Any) -> Optional[int]:
    """systemd's major version (``systemctl --version``: ``systemd 252 (252.39-1~deb12u2)``)."""
    res = runner.run(["systemctl", "--version"], check=False, timeout=10)
    m = re.match(r"systemd (\d+)", res.stdout)
    return int(m.group(1)) if m else None


# -- parsing systemd's answers -------------------------------------------------------------------


def _int(text: str) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def exec_argv(exec_start: str) -> List[str]:
    """The argv of ``systemctl show -p ExecStart`` (``{ path=... ; argv[]=... ; ... }``)."""
    m = re.search(r"argv\[\]=([^;]*)", exec_start)
    if m:
        return m.group(1).split()
    return exec_start.split()


def binary_from_unit(props: Mapping[str, str], default: Path) -> Path:
    """The dispatch program the unit runs: the ExecStart argument named ``dispatch`` (the bundled
    flavour runs ``python3 /app/dispatch``, the go flavour ``/app/dispatch``), else ``default``."""
    for arg in exec_argv(props.get("ExecStart", "")):
        if Path(arg).name == layout.BINARY_NAME:
            return Path(arg)
    return default


def env_file_from_unit(props: Mapping[str, str], default: Path) -> Path:
    value = props.get("EnvironmentFiles", "").strip()
    if value:
        return Path(value.split(" (", 1)[0].lstrip("-"))
    return default


def flavour_of(path: Path) -> Optional[str]:
    """``go`` (an ELF executable), ``bundled`` (a zipapp: ``#!`` or zip magic) or None. A symlink
    is not opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        head = os.read(fd, 4)
    except OSError:
        return None
    finally:
        os.close(fd)
    if head == b"\x7fELF":
        return "go"
    if head.startswith(b"#!") or head.startswith(b"PK"):
        return "bundled"
    return "unknown"


def _unit_texts(unit_file: FileInfo, drop_ins: str) -> List[str]:
    """The unit file's text and its drop-ins' (systemd's DropInPaths, else the unit's .d directory)."""
    paths = drop_ins.split() if drop_ins else sorted(
        str(p) for p in Path(unit_file.path).with_name(Path(unit_file.path).name + ".d").glob("*.conf"))
    texts = []
    for path in [unit_file.path, *paths]:
        try:
            texts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return texts


def _service_assignments(unit_texts: Sequence[str]) -> Iterator[Tuple[str, str]]:
    """Each ``KEY=VALUE`` of the ``[Service]`` section of a unit file and its drop-ins, in order
    (key and value stripped; an empty value is an assignment that clears, as in systemd)."""
    for text in unit_texts:
        section = ""
        for line in _logical_lines(text):
            if line.startswith("["):
                section = line.strip()
                continue
            key, sep, value = line.partition("=")
            if section == "[Service]" and sep:
                yield key.strip(), value.strip()


def load_credentials(unit_texts: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """The ``LoadCredential=ID[:PATH]`` of the ``[Service]`` section of a unit file and its drop-ins,
    in order (an empty assignment clears the list, as in systemd)."""
    found: Dict[str, str] = {}
    for key, value in _service_assignments(unit_texts):
        if key != "LoadCredential":
            continue
        if not value:
            found.clear()
            continue
        name, _, path = value.partition(":")
        found[name] = path or name
    return tuple(found.items())


def unit_settings(unit_texts: Sequence[str]) -> Dict[str, str]:
    """The last ``User=``, ``ExecStart=`` and ``EnvironmentFile=`` of the ``[Service]`` section of a
    unit file and its drop-ins (an empty assignment clears it, as in systemd)."""
    found: Dict[str, str] = {}
    for key, value in _service_assignments(unit_texts):
        if key not in ("User", "ExecStart", "EnvironmentFile"):
            continue
        if value:
            found[key] = value
        else:
            found.pop(key, None)
    return found


def _logical_lines(text: str) -> List[str]:
    lines: List[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending)
    return lines
