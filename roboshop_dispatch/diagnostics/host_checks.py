"""The host side of ``dispatchctl check``: each check is a pure function of the installed state
(:class:`~roboshop_dispatch.facts.installed.InstalledState`), listed in order in :data:`HOST_CHECKS`.
A check returns None when it does not apply (the unit's user and state when nothing is installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .. import layout, trust
from ..facts.installed import InstalledState
from ..facts.paths import FileInfo, UserInfo
from ..validate import MIN_PASSWORD_LENGTH, PRIVILEGED_GROUPS, weak_password
from .report import (
    BINARY_NOT_FOUND,
    FAIL,
    OK,
    PERMISSION_DENIED,
    SERVICE_NOT_STARTING,
    SKIP,
    WARN,
    Finding,
)
from .telemetry_checks import METRICS_TITLE, OTLP_TITLE, check_metrics, check_otlp

CONFIGURE_FIX = "dispatchctl configure --amqp-host HOST --amqp-pass-file FILE"


def _f(name: str, title: str, status: str, summary: str, **kw) -> Finding:
    return Finding(name=name, title=title, status=status, summary=summary, **kw)


def check_os(s: InstalledState) -> Finding:
    if s.host.family is None:
        return _f("os", "Supported OS", FAIL, f"{s.host.os_name or s.host.os_id or 'unknown OS'} is not supported",
                  diagnosis="Unsupported OS",
                  cause="dispatchctl supports the RHEL family (dnf) and Debian family (apt-get)",
                  fix="run dispatch on RHEL 9 or a RHEL-compatible host (Rocky, Alma, CentOS Stream)")
    return _f("os", "Supported OS", OK, f"{s.host.os_name or s.host.os_id} ({s.host.family} family)")


def check_root(s: InstalledState) -> Finding:
    if s.host.is_root:
        return _f("root", "Running as root", OK, "yes")
    return _f("root", "Running as root", FAIL, "no: the environment file (mode 0600) and the service cannot be checked",
              diagnosis="Not root", cause="the checks read root-only files", fix="sudo dispatchctl check")


def check_systemd(s: InstalledState) -> Finding:
    if s.host.systemd_pid1:
        version = f" (systemd {s.host.systemd_version})" if s.host.systemd_version else ""
        return _f("systemd", "systemd is PID 1", OK, "yes" + version)
    return _f("systemd", "systemd is PID 1", FAIL, "no /run/systemd/system: this host is not booted with systemd",
              diagnosis="No systemd", cause="dispatch runs as a systemd service",
              fix="run dispatch on a host booted with systemd")


def check_user(s: InstalledState) -> Finding:
    user = s.service_user
    privileged = [name for name in user.group_names if name in PRIVILEGED_GROUPS]
    if user.exists and privileged:
        listed = ", ".join(privileged)
        return _f("user", "Service user", WARN, f"{user.name} is in the privileged group(s) {listed}",
                  diagnosis="Service user in a privileged group",
                  cause=f"systemd gives the service its user's groups: {listed} give a way to root, the system's "
                        "logs or its secrets to a compromised consumer",
                  fix=f"gpasswd -d {user.name} {privileged[0]}, or a dedicated user: dispatchctl install --user "
                      "dispatch ... (install refuses this user unless --allow-group names the group)",
                  data={"groups": privileged})
    if user.exists:
        return _f("user", "Service user", OK, f"{user.name} (uid {user.uid}, shell {user.shell})")
    return _f("user", "Service user", FAIL, f"user '{user.name}' does not exist",
              diagnosis="Service user missing",
              cause="the unit's User= cannot be resolved: systemd refuses to start it",
              fix=f"dispatchctl install ... (creates it), or: useradd --system --shell /sbin/nologin {user.name}",
              issue=PERMISSION_DENIED)


def can_access(info: FileInfo, user: UserInfo, want: int) -> Optional[bool]:
    """Whether ``user`` has the ``want`` bits (4 read, 1 exec) on the regular file ``info``
    (None: unknown user). A symlink is never followed, so it is never accessible here."""
    if not user.exists:
        return None
    if user.uid == 0:
        return True
    if info.kind != "file":
        return False
    if info.uid == user.uid:
        bits = (info.mode >> 6) & 7
    elif info.gid in user.groups:
        bits = (info.mode >> 3) & 7
    else:
        bits = info.mode & 7
    return bits & want == want


def _binary_failure(path: str, summary: str, diagnosis: str, cause: str, fix: str, issue: str) -> Finding:
    return _f("binary", "Binary", FAIL, summary, diagnosis=diagnosis, cause=cause, fix=fix, issue=issue,
              data={"path": path})


def check_binary(s: InstalledState) -> Finding:
    b, user = s.binary, s.service_user
    if not b.exists:
        return _binary_failure(
            b.path, f"{b.path} does not exist", "Binary not found: run the build",
            f"the build was not run (or {b.path} was removed): ExecStart fails with 203/EXEC",
            "dispatchctl build   (or the whole procedure: dispatchctl install --amqp-host HOST)", BINARY_NOT_FOUND)
    if b.kind == "symlink":
        return _binary_failure(
            b.path, f"{b.path} is a symbolic link", "Binary replaced by a symbolic link",
            f"{b.path} should be a file written by dispatchctl; a link can point anywhere (it is not followed)",
            "dispatchctl build (writes the file in its place)", BINARY_NOT_FOUND)
    if b.kind != "file" or not b.mode & 0o111:
        return _binary_failure(
            b.path, f"{b.path} is not an executable file", "Binary not found: run the build",
            f"{b.path} exists but is not executable: systemd cannot run it", "dispatchctl build", BINARY_NOT_FOUND)
    interpreter = s.interpreter
    if interpreter is not None and not interpreter.exists:
        return _binary_failure(
            b.path, f"{b.path} is there but its interpreter {interpreter.path} is not",
            "Binary not found: the interpreter is missing",
            f"ExecStart runs {interpreter.path}, which is not installed",
            "dispatchctl install (packages step)", BINARY_NOT_FOUND)
    if can_access(b, user, 4 if interpreter else 5) is False:
        return _binary_failure(
            b.path, f"user '{user.name}' cannot read/execute {b.path}",
            "Permission denied: the service user cannot run the binary",
            f"{b.path}'s owner or mode keeps '{user.name}' out", "dispatchctl build (mode 0755)", PERMISSION_DENIED)
    return _f("binary", "Binary", OK, f"{b.path} ({s.flavour or 'unknown'} flavour)",
              data={"path": b.path, "flavour": s.flavour, "build": dict(s.build_stamp)})


def check_unit(s: InstalledState) -> Finding:
    path = s.unit_file.path
    if not s.host.systemd_pid1 and not s.unit_file.exists:
        return _f("unit", "Unit file", SKIP, "not checked: no systemd")
    if not s.installed or not s.unit_file.exists:
        return _f("unit", "Unit file", FAIL, f"{s.unit} is not installed", diagnosis="Service not installed",
                  cause="dispatchctl install has not run on this host (or uninstall did)",
                  fix="dispatchctl install --amqp-host HOST --amqp-pass-file FILE")
    verify = s.unit_verify or {}
    stderr = str(verify.get("stderr", "")).strip()
    if verify.get("returncode", 0) != 0:
        return _f("unit", "Unit file", FAIL,
                  f"systemd-analyze verify {path}: {stderr.splitlines()[-1] if stderr else 'failed'}",
                  diagnosis="Unit file invalid", cause=stderr, fix="dispatchctl configure (rewrites the unit)",
                  issue=SERVICE_NOT_STARTING)
    if stderr:
        return _f("unit", "Unit file", WARN, f"{path}: systemd-analyze verify warns: {stderr.splitlines()[0]}",
                  diagnosis="Unit file warnings", cause=stderr, fix="dispatchctl configure (rewrites the unit)")
    return _f("unit", "Unit file", OK, f"{path} passes systemd-analyze verify")


def check_envfile(s: InstalledState) -> Finding:
    env = s.env_file
    if not env.exists:
        return _f("envfile", "Environment file", FAIL, f"{env.path} does not exist",
                  diagnosis="Configuration missing", cause="the service has no AMQP settings",
                  fix=CONFIGURE_FIX, issue=SERVICE_NOT_STARTING)
    if not env.root_only:
        return _f("envfile", "Environment file", FAIL,
                  f"{env.path} is mode {env.mode:04o}, owner uid {env.uid}: the AMQP password is exposed"
                  + (" (a symbolic link)" if env.kind == "symlink" else ""),
                  diagnosis="Password exposed", cause="the environment file holds AMQP_PASS and must be root-only",
                  fix=f"chown root:root {env.path} && chmod 600 {env.path}   (or: dispatchctl configure)")
    if s.env_error:
        return _f("envfile", "Environment file", FAIL, f"cannot read {env.path}: {s.env_error}",
                  diagnosis="Configuration unreadable", cause=s.env_error, fix="sudo dispatchctl check")
    missing = [k for k, ok in (("AMQP_HOST", s.environment.get("AMQP_HOST")), ("AMQP_PASS", s.password)) if not ok]
    if missing:
        return _f("envfile", "Environment file", FAIL, f"{env.path} lacks {', '.join(missing)}"
                  + (" (and the unit loads no credential)" if "AMQP_PASS" in missing else ""),
                  diagnosis="Configuration incomplete", cause="the consumer exits at once without them",
                  fix=CONFIGURE_FIX, issue=SERVICE_NOT_STARTING)
    return _f("envfile", "Environment file", OK,
              f"{env.path}: mode 0600, root; AMQP_HOST={s.environment.get('AMQP_HOST')}")


def check_credential(s: InstalledState) -> Finding:
    """The password as a systemd credential (LoadCredential=amqp-pass:FILE, root 0600), or in the
    0600 environment file where no credential can be used (the go flavour, systemd < 247)."""
    title, env = "Password credential", s.env_file.path
    if not s.installed:
        return _f("credential", title, SKIP, "not checked: the service is not installed")
    if s.env_has_password and (s.loads_credential or s.could_use_credential):
        return _f("credential", title, FAIL,
                  f"AMQP_PASS is in {env}, where every process of the unit inherits it"
                  + (" (next to the credential)" if s.loads_credential else ""),
                  diagnosis="Password in the environment: use the systemd credential",
                  cause=(f"systemd {s.host.systemd_version} and the {s.flavour} flavour can pass it as the credential "
                         f"{layout.CREDENTIAL_NAME} (LoadCredential=), readable only by the service"),
                  fix="dispatchctl configure (moves the password to the credential file)",
                  data={"credential": s.loads_credential})
    if not s.loads_credential:
        if s.flavour == "go":
            why = "the go flavour"
        elif s.host.systemd_version is None:
            why = "systemd's version unknown"
        else:
            why = f"systemd {s.host.systemd_version} < {layout.CREDENTIALS_MIN_SYSTEMD}"
        return _f("credential", title, OK, f"no credential ({why}): AMQP_PASS is in {env} (root, 0600)")
    return _credential_file(s, title)


def _credential_file(s: InstalledState, title: str) -> Finding:
    cred = s.credential_file or FileInfo(str(layout.CREDENTIAL_FILE))
    if not cred.exists:
        return _f("credential", title, FAIL, f"{cred.path} does not exist (the unit's LoadCredential= names it)",
                  diagnosis="Configuration missing: the password credential", cause="systemd refuses to start the "
                  "service when a credential file is missing (243/CREDENTIALS)", fix=CONFIGURE_FIX,
                  issue=SERVICE_NOT_STARTING)
    if cred.kind != "file" or cred.uid != 0 or cred.mode != 0o600:
        return _f("credential", title, FAIL,
                  f"{cred.path} is {'a ' + cred.kind if cred.kind != 'file' else 'a file'} of mode {cred.mode:04o}, "
                  f"owner uid {cred.uid}: must be a root-owned 0600 file",
                  diagnosis="Password exposed", cause="the credential file holds the AMQP password",
                  fix=f"chown root:root {cred.path} && chmod 600 {cred.path}   (or: dispatchctl configure)")
    if s.credential_error:
        return _f("credential", title, FAIL, f"cannot read {cred.path}: {s.credential_error}",
                  diagnosis="Configuration unreadable", cause=s.credential_error, fix=CONFIGURE_FIX)
    return _f("credential", title, OK, f"{layout.CREDENTIAL_NAME} from {cred.path} (root, 0600)")


def check_unit_user(s: InstalledState) -> Optional[Finding]:
    if not s.installed:
        return None
    title, want = "Runs as the service user", s.service_user.name
    unit_user, proc_user, pid = s.prop("User"), s.process_user, s.main_pid
    data = {"unit_user": unit_user, "process_user": proc_user}
    if unit_user in ("", "root", "0") or proc_user == "root":
        return _f("unit-user", title, FAIL, f"User={unit_user or '(none: root)'}"
                  + (f"; the process {pid} runs as {proc_user}" if proc_user else ""),
                  diagnosis=f"Permission denied: wrong user — ensure User={want}",
                  cause=("the service runs as root (User= missing or root): a compromised consumer owns the host, "
                         "and files it creates become unreadable to the service user"),
                  fix=f"dispatchctl configure ... (writes User={want}); check: systemctl show -p User dispatch",
                  issue=PERMISSION_DENIED, data=data)
    if unit_user != want:
        return _f("unit-user", title, FAIL, f"User={unit_user}, expected {want}",
                  diagnosis=f"Permission denied: wrong user — ensure User={want}",
                  cause=f"the unit runs dispatch as '{unit_user}', not the service user '{want}'",
                  fix=f"dispatchctl configure --user {want} ...", issue=PERMISSION_DENIED, data=data)
    shown = f"; process {pid} runs as {proc_user}" if proc_user else ""
    return _f("unit-user", title, OK, f"User={unit_user}{shown}")


def check_service(s: InstalledState) -> Optional[Finding]:
    if not s.installed:
        return None
    restarts, sub = s.prop("NRestarts", "0"), s.prop("SubState")
    if s.active:
        return _f("service", "Service active", OK,
                  f"active ({sub}), MainPID {s.prop('MainPID')}, {restarts} restart(s)")
    active, lines, host = s.prop("ActiveState"), list(s.journal), s.amqp_values().get("AMQP_HOST", "?")
    state = f"{active} ({sub}), result {s.prop('Result', '?')}, {restarts} restart(s)"
    if active == "inactive" and s.prop("Result") == "success" and restarts in ("", "0"):
        return _f("service", "Service active", FAIL, f"{state}: stopped", diagnosis="Service stopped",
                  cause="dispatch was stopped (or never started)",
                  fix="dispatchctl start   (or: systemctl start dispatch)", data={"log": lines})
    return _f("service", "Service active", FAIL, f"{state}; AMQP_HOST={host}",
              diagnosis="Service not starting: verify AMQP_HOST",
              cause=(f"dispatch does not reach the running state (AMQP_HOST={host}); last log lines:\n"
                     + "\n".join(lines)),
              fix=("verify AMQP_HOST and the credentials (dispatchctl check-rabbitmq, below), fix them with "
                   "dispatchctl configure, then: systemctl restart dispatch; full log: dispatchctl logs -n 100"),
              issue=SERVICE_NOT_STARTING, data={"log": lines, "amqp_host": host})


def check_instances(s: InstalledState) -> Optional[Finding]:
    """As many instances running as configured (--instances), and no stale unit beside them."""
    facts = s.instance_facts
    title = "Instances running"
    if not s.host.systemd_pid1:
        return _f("instances", title, SKIP, "systemd is not running here")
    if facts is None or facts.configured == 0:  # nothing installed, or a record from before instances
        return None
    count = facts.configured
    if count == 1 and not [u for u in facts.running() if u.unit != s.unit]:
        return _f("instances", title, OK, f"one instance: {s.unit} (see the service check)")
    wanted = facts.wanted_units(count)
    down = [facts.info(u) for u in wanted if not facts.info(u).running]
    stray = [u for u in facts.running() if u.unit not in wanted]
    data = {"configured": count, "running": [u.unit for u in facts.running()], "down": [u.unit for u in down]}
    if down:
        names = ", ".join(f"{u.unit} ({u.active_state or 'inactive'}/{u.sub_state or '-'})" for u in down)
        return _f("instances", title, FAIL, f"{count - len(down)} of {count} running; down: {names}",
                  diagnosis="Fewer instances running than configured",
                  cause=f"{count} instance(s) are configured but {names} do(es) not run",
                  fix="dispatchctl start   (or: systemctl start " + " ".join(u.unit for u in down)
                  + "); why one stopped: dispatchctl logs, journalctl -u " + down[0].unit,
                  issue=SERVICE_NOT_STARTING, data=data)
    if stray:
        names = ", ".join(u.unit for u in stray)
        return _f("instances", title, WARN, f"{count} of {count} running, and {names} beside them",
                  diagnosis="A dispatch unit runs that is not configured",
                  cause=f"{names} run(s) although {count} instance(s) are configured ({', '.join(wanted)})",
                  fix="dispatchctl start   (stops and disables what is not configured)", data=data)
    shown = ", ".join(f"{facts.info(u).unit} pid {facts.info(u).main_pid}" for u in wanted)
    return _f("instances", title, OK, f"{count} of {count} running: {shown}", data=data)


def check_dirs(s: InstalledState) -> Finding:
    """The app dir, /etc/roboshop and every directory above them are root's alone (trust.py)."""
    title = "Directories root's alone"
    if not s.trust_dirs:
        return _f("dirs", title, SKIP, "not read")
    found = trust.problems(s.trust_dirs)
    if not found:
        return _f("dirs", title, OK, f"{s.app_dir.path}, {layout.CONFIG_DIR} and the directories above them")
    return _f("dirs", title, FAIL, "; ".join(f"{p.path} {p.why}" for p in found),
              diagnosis="Directories another user controls",
              cause="their owner (or anyone who may write in them) can swap the binary, its build stamp or the "
                    "settings: their code then runs as the service user, with the credential, or as root at the "
                    "next install",
              fix="; ".join(p.fix for p in found), data={"paths": [p.path for p in found]})


def check_same_user(s: InstalledState) -> Optional[Finding]:
    """Other units running as the service user can read the password the service holds."""
    if not s.installed or s.same_user_units is None:
        return None
    title, user = "Service user to itself", s.service_user.name
    if not s.same_user_units:
        return _f("same-user", title, OK, f"no other loaded unit runs as {user}")
    units = ", ".join(s.same_user_units)
    if s.loads_credential:
        cause = (f"systemd makes the credential (/run/credentials/{s.unit}/{layout.CREDENTIAL_NAME}) readable by "
                 f"the service's user, by design: every process of {user} can read the AMQP password (the "
                 "consumer's own memory and environment they cannot: it makes itself non-dumpable)")
    else:
        cause = (f"the password is in the service's environment: every process of {user} can read it in "
                 "/proc/PID/environ of a binary that does not make itself non-dumpable (the Go one)")
    return _f("same-user", title, WARN, f"{len(s.same_user_units)} other unit(s) run as {user}: {units}",
              diagnosis="Other services share the service user", cause=cause,
              fix="give dispatch a user of its own: dispatchctl configure --user dispatch ...",
              data={"units": list(s.same_user_units)})


def check_password(s: InstalledState) -> Optional[Finding]:
    """A weak AMQP password is warned about (never refused)."""
    if s.password is None or s.consumer is None:
        return None
    reasons = weak_password(s.password.reveal(), s.consumer.user)
    if not reasons:
        return _f("password", "AMQP password strength", OK, f"{MIN_PASSWORD_LENGTH} characters or more, not "
                  "the user's name or a well-known default")
    return _f("password", "AMQP password strength", WARN, "weak: " + "; ".join(reasons),
              diagnosis="Weak AMQP password",
              cause="anyone who reaches the broker may guess it (the course's default is in every copy of its "
                    "recipe)",
              fix=f"a long random one: openssl rand -base64 24; rabbitmqctl change_password {s.consumer.user} ...; "
                  "then dispatchctl configure --amqp-pass-file FILE", data={"reasons": reasons})


def check_selinux(s: InstalledState) -> Finding:
    """The SELinux mode (enforcing, permissive, disabled, absent) and, where it applies, whether
    the binary's label lets systemd run it (roboshop_dispatch.selinux)."""
    from .. import selinux

    mode = selinux.describe_mode(s.host.selinux)
    if s.host.family != "rhel":
        return _f("selinux", "SELinux", SKIP, f"not a RHEL-family host (SELinux {mode})")
    label, path = s.binary_label, s.binary.path
    if mode in (selinux.ENFORCING, selinux.PERMISSIVE) and selinux.binary_label_unfit(label):
        now = ("systemd may not execute it: the service fails with 203/EXEC" if mode == selinux.ENFORCING
               else "allowed now (permissive, logged as AVC denials), denied once SELinux enforces")
        return _f("selinux", "SELinux", WARN, f"{mode}; {path} is labelled {label}",
                  diagnosis="Permission denied: SELinux label",
                  cause=f"{path} carries {selinux.label_type(label)}: {now}",
                  fix=selinux.binary_fix(Path(path)), issue=PERMISSION_DENIED)
    return _f("selinux", "SELinux", OK, mode + (f"; {path}: {label}" if label else ""))


HostCheck = Callable[[InstalledState], Optional[Finding]]

# every host check of `dispatchctl check`, in the order they are reported
HOST_CHECKS: Tuple[Tuple[str, str, HostCheck], ...] = (
    ("os", "Supported OS", check_os),
    ("root", "Running as root", check_root),
    ("systemd", "systemd is PID 1", check_systemd),
    ("user", "Service user", check_user),
    ("dirs", "Directories root's alone", check_dirs),
    ("binary", "Binary", check_binary),
    ("unit", "Unit file", check_unit),
    ("envfile", "Environment file", check_envfile),
    ("credential", "Password credential", check_credential),
    ("unit-user", "Runs as the service user", check_unit_user),
    ("same-user", "Service user to itself", check_same_user),
    ("password", "AMQP password strength", check_password),
    ("service", "Service active", check_service),
    ("instances", "Instances running", check_instances),
    ("metrics", METRICS_TITLE, check_metrics),
    ("otlp", OTLP_TITLE, check_otlp),
    ("selinux", "SELinux", check_selinux),
)


def host_findings(state: InstalledState) -> List[Finding]:
    """Every host check of :data:`HOST_CHECKS` on ``state``; a check that raises is reported as an
    internal error (with its traceback), never silently dropped."""
    from .report import internal_error

    out: List[Finding] = []
    for name, title, check in HOST_CHECKS:
        try:
            f = check(state)
        except Exception as exc:
            f = internal_error(name, title, exc)
        if f is not None:
            out.append(f)
    return out
