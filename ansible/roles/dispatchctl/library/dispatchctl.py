#!/usr/bin/python3
"""Ansible module: run ``dispatchctl <command> --json`` on the managed host and map its one JSON
document onto Ansible's contract. Shipped inside the ``dispatchctl`` role (its ``library/``), so a
play that uses the role can also call the module directly in later tasks.

Runs on the managed host's own python3 (>= 3.9: RHEL 9); standard library and ansible's
module_utils only. The pure mapping functions (``build_command``, ``interpret``, ``file_diffs``)
take and return plain data and have unit tests (tests/test_ansible_module.py).
"""

from __future__ import annotations

import json
import os

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dispatchctl
short_description: Provision and operate the RoboShop dispatch service with dispatchctl
description:
  - Runs C(dispatchctl COMMAND --json) on the host and reports its steps.
  - Check mode runs C(--dry-run) (the exact changes the real run would make); diff mode adds
    C(--diff) (passwords masked) and returns one diff per file.
  - C(changed) is the document's count of steps that changed (would change, in check mode).
  - A failure is reported with dispatchctl's message, its C(next_action) and exit code.
  - The password goes to dispatchctl in its environment (C(DISPATCHCTL_AMQP_PASS)), never on a
    command line; so do the OTLP exporter's headers (C(DISPATCHCTL_OTLP_HEADER)).
  - "A change whose restarted instance does not become ready is rolled back on the host (the last
    good generation runs again); the task then fails with C(rolled_back=true) and what failed in
    C(rollback). For a fleet, run the role with C(serial) (one host, or a few, at a time) and
    C(max_fail_percentage=0), so that the first host that rolls back stops the play."
options:
  command:
    description: The dispatchctl command. Defaults to C(install), or C(uninstall) with I(state=absent).
    choices: [install, configure, build, start, stop, restart, rollback, uninstall, check, check-rabbitmq, status]
    type: str
  state:
    description: C(present) installs (or runs I(command)); C(absent) uninstalls.
    choices: [present, absent]
    default: present
    type: str
  amqp_host:
    description: "RabbitMQ host: an IP, an RFC 1123 name, or a comma-separated cluster list (tried in turn)."
    type: list
    elements: str
  amqp_port:
    description: "RabbitMQ port."
    type: int
  amqp_vhost:
    description: "RabbitMQ virtual host."
    type: str
  amqp_user:
    description: "RabbitMQ user."
    type: str
  amqp_password_file:
    description: "A file on the host holding the password (C(--amqp-pass-file))."
    type: path
  amqp_password:
    description: "The AMQP password. Never logged, never on a command line (dispatchctl gets it as
      $DISPATCHCTL_AMQP_PASS)."
    type: str
  user:
    description: "The service user (a system account, never root; install creates it when missing)."
    type: str
  allow_groups:
    description: "Accept a service user in these privileged groups (docker, lxd, disk, sudo, wheel, adm,
      systemd-journal, kvm, shadow), which the service then gets: refused otherwise."
    type: list
    elements: str
  app_dir:
    description: "Where dispatch lives (DIR/dispatch)."
    type: path
  flavour:
    description: "bundled: a self-contained python zipapp (offline); go: the manual's go build."
    type: str
    choices: [bundled, go]
  artifact:
    description: "The go flavour's source zip (a URL or a local path)."
    type: str
  sha256:
    description: "The artifact's expected SHA-256 (64 hex digits): refused when it differs."
    type: str
  insecure:
    description: "Allow an http:// artifact (no transport security)."
    type: bool
  error_percent:
    description: "Share of orders logged as failed (DISPATCH_ERROR_PERCENT, for demos)."
    type: int
  instances:
    description: "Consumers on this host: 1 runs dispatch.service; N > 1 runs dispatch@1..N from the
      template dispatch@.service. A change starts/stops only the difference."
    type: int
  queue_type:
    description: "The orders queue's type (DISPATCH_QUEUE_TYPE): classic is the contract; quorum survives the
      loss of a cluster node (bundled flavour only; check-rabbitmq --declare declares it so when it is
      absent)."
    type: str
    choices: [classic, quorum]
  max_body:
    description: "The largest message body the consumer parses as an order (DISPATCH_MAX_BODY, bytes,
      1024..67108864): a larger one is quarantined unparsed (bundled flavour)."
    type: int
  ready_timeout:
    description: "Seconds a started or restarted instance has to report ready (READY=1, sent once it consumes); a
      change whose restart does not is rolled back (default 30, plus 10 for each further AMQP host)."
    type: int
  no_rollback:
    description: "Keep the new state when a restarted instance does not become ready (`dispatchctl rollback` can
      still return to the last good generation)."
    type: bool
  otlp_endpoint:
    description: "Send a span per order (OpenTelemetry, OTLP/HTTP) to this collector's base URL
      (OTEL_EXPORTER_OTLP_ENDPOINT; spans go to URL/v1/traces); none: tracing off. Bundled flavour only."
    type: str
  metrics_listen:
    description: "Serve Prometheus metrics on http://HOST:PORT/metrics (DISPATCH_METRICS_LISTEN; with
      --instances N, instance i on PORT+i-1); none: off. No authentication: keep it on 127.0.0.1 unless a
      firewall guards the port. Bundled flavour only."
    type: str
  otlp_headers:
    description: "A header sent to the collector, e.g. authorization=Bearer TOKEN (repeatable): a secret,
      kept in a root-only systemd credential and never shown; none removes them."
    type: dict
  purge: {type: bool, default: false, description: uninstall --purge --yes.}
  dispatchctl_path:
    description: dispatchctl on the host; default C(dispatchctl) on PATH or in /usr/local/bin.
    type: path
  ignore_inapplicable:
    description:
      - Drop the options (and the password) the command does not take, instead of failing; they
        are returned in C(ignored). The role sets it, so that one set of inventory variables
        serves install, status, uninstall...
    type: bool
    default: false
"""

RETURN = r"""
steps: {description: one object per step (name, status, changed, message, next_action, ...), type: list}
document: {description: dispatchctl's whole JSON document (passwords masked), type: dict}
rc: {description: dispatchctl's exit code, type: int}
next_action: {description: on failure, what to run or fix next, type: str}
rolled_back: {description: a restarted instance was not ready and the last good generation runs again, type: bool}
rollback: {description: "when a restart failed its health gate: what failed (reason, units, journal) and what was put
  back, or why not", type: dict}
"""

# The settings: a copy of roboshop_dispatch/knobs.py (this module runs alone on the managed host),
# held equal to it by tests/test_ansible_module.py. Module option -> (dispatchctl's option, the
# argument spec, the commands that take it). Anything a command does not take is refused before
# dispatchctl runs, with the command named.
AMQP_COMMANDS = ("install", "configure", "check-rabbitmq")
SETTINGS = {
    "amqp_host": ("--amqp-host", dict(type="list", elements="str"), AMQP_COMMANDS),
    "amqp_port": ("--amqp-port", dict(type="int"), AMQP_COMMANDS),
    "amqp_vhost": ("--amqp-vhost", dict(type="str"), AMQP_COMMANDS),
    "amqp_user": ("--amqp-user", dict(type="str"), AMQP_COMMANDS),
    "amqp_password_file": ("--amqp-pass-file", dict(type="path", no_log=False), AMQP_COMMANDS),
    "amqp_password": ("--amqp-pass", dict(type="str", no_log=True), AMQP_COMMANDS),  # given in the environment
    "user": ("--user", dict(type="str"), ("install", "configure", "check", "uninstall")),
    "allow_groups": ("--allow-group", dict(type="list", elements="str"), ("install", "configure")),
    "app_dir": ("--app-dir", dict(type="path"), ("install", "configure", "build", "check", "uninstall")),
    "flavour": ("--flavour", dict(type="str", choices=["bundled", "go"]), ("install", "configure", "build")),
    "artifact": ("--artifact", dict(type="str"), ("install", "build")),
    "sha256": ("--sha256", dict(type="str"), ("install", "build")),
    "insecure": ("--insecure", dict(type="bool"), ("install", "build")),
    "error_percent": ("--error-percent", dict(type="int"), ("install", "configure")),
    "instances": ("--instances", dict(type="int"), ("install", "configure")),
    "queue_type": ("--queue-type", dict(type="str", choices=["classic", "quorum"]),
                   ("install", "configure", "check-rabbitmq")),
    "max_body": ("--max-body", dict(type="int"), ("install", "configure")),
    "ready_timeout": ("--ready-timeout", dict(type="int"),
                      ("install", "configure", "build", "start", "restart", "rollback")),
    "no_rollback": ("--no-rollback", dict(type="bool"), ("install", "configure", "build", "start")),
    # tracing and metrics; the headers (a secret) reach dispatchctl in its environment, never in argv
    "otlp_endpoint": ("--otlp-endpoint", dict(type="str"), ("install", "configure")),
    "metrics_listen": ("--metrics-listen", dict(type="str"), ("install", "configure")),
    "otlp_headers": ("--otlp-header", dict(type="dict", no_log=True), ("install", "configure")),
}
# secret settings other than the password: option -> the DISPATCHCTL_* variable that carries them
SECRET_ENV = {"otlp_headers": "DISPATCHCTL_OTLP_HEADER"}
PASSWORD = ("amqp_password", "amqp_password_file")
COMMANDS = ("install", "configure", "build", "start", "stop", "restart", "rollback", "uninstall", "check",
            "check-rabbitmq", "status")
# command -> the module options it takes (beyond the password)
COMMAND_OPTIONS = {
    command: tuple(k for k, (_, _, takers) in SETTINGS.items() if command in takers and k not in PASSWORD)
    + (("purge",) if command == "uninstall" else ())
    for command in COMMANDS
}
TAKES_PASSWORD = SETTINGS["amqp_password"][2]
PLANS = ("install", "configure", "build", "start", "stop", "restart", "rollback", "uninstall")  # --dry-run
DIFFS = ("install", "configure", "build", "rollback")  # they take --diff
FLAGS = ("insecure", "no_rollback")  # on/off options without a value
FINDINGS = ("check", "check-rabbitmq")
VALUE_FLAGS = {k: flag for k, (flag, spec, _) in SETTINGS.items() if spec["type"] != "bool" and k not in PASSWORD}
PASSWORD_ENV = "DISPATCHCTL_AMQP_PASS"
ARGUMENT_SPEC = dict(
    command=dict(type="str", choices=list(COMMANDS)),
    state=dict(type="str", default="present", choices=["present", "absent"]),
    **{k: spec for k, (_, spec, _) in SETTINGS.items()},
    purge=dict(type="bool", default=False),
    dispatchctl_path=dict(type="path"), ignore_inapplicable=dict(type="bool", default=False),
)
DEFAULT_DIRS = ["/usr/local/bin", "/opt/dispatchctl/bin"]


class UsageError(ValueError):
    """The module's options do not fit the command; nothing ran."""


def command_of(params):
    """The dispatchctl command the options ask for."""
    command, state = params.get("command"), params.get("state") or "present"
    if state == "absent":
        if command not in (None, "uninstall"):
            raise UsageError(f"state=absent uninstalls: it cannot run command={command}")
        return "uninstall"
    return command or "install"


def inapplicable(params):
    """The options given that the command does not take (the password counts as one)."""
    command = command_of(params)
    given = [k for k in [*list(VALUE_FLAGS), *FLAGS, "purge"] if _given(params.get(k))]
    refused = [k for k in given if k not in COMMAND_OPTIONS[command]]
    if command not in TAKES_PASSWORD:
        refused += [k for k in ("amqp_password", "amqp_password_file") if params.get(k) is not None]
    return refused


def applicable(params):
    """``params`` without what the command does not take (``ignore_inapplicable``)."""
    dropped = set(inapplicable(params))
    return {k: (None if k in dropped else v) for k, v in params.items()}


def build_command(params, binary, check_mode=False, diff_mode=False):
    """(argv, environment additions) for ``params``; the password only ever in the environment."""
    command = command_of(params)
    allowed = COMMAND_OPTIONS[command]
    refused = [k for k in inapplicable(params) if k not in ("amqp_password", "amqp_password_file")]
    if refused:
        raise UsageError(f"dispatchctl {command} does not take {', '.join(refused)}")
    secret = params.get("amqp_password")
    pass_file = params.get("amqp_password_file")
    if (secret is not None or pass_file) and command not in TAKES_PASSWORD:
        raise UsageError(f"dispatchctl {command} takes no password")
    if secret is not None and pass_file:
        raise UsageError("give amqp_password or amqp_password_file, not both")
    argv = [binary, command]
    env = {}
    for key, flag in VALUE_FLAGS.items():
        value = params.get(key)
        if value is None or key not in allowed:
            continue
        if key in SECRET_ENV:
            env[SECRET_ENV[key]] = otlp_headers_text(value)
            continue
        if key == "amqp_host":
            value = ",".join(value) if isinstance(value, (list, tuple)) else value
        argv.append(f"{flag}={value}")  # one token: a value that starts with "-" stays a value
    for key in FLAGS:
        if params.get(key):
            argv.append(SETTINGS[key][0])
    if params.get("purge"):
        argv += ["--purge", "--yes"]
    if pass_file:
        argv.append(f"--amqp-pass-file={pass_file}")
    if check_mode and command in PLANS:
        argv.append("--dry-run")
    if diff_mode and command in DIFFS:
        argv.append("--diff")
    argv.append("--json")
    if secret is not None:
        env[PASSWORD_ENV] = secret
    return argv, env


def otlp_headers_text(headers):
    """A dict of headers as DISPATCHCTL_OTLP_HEADER takes them (OpenTelemetry's form: name=value,...
    values URL-encoded); an empty dict (or "none") removes the installed ones."""
    from urllib.parse import quote

    if not headers or headers == "none":
        return "none"
    if not isinstance(headers, dict):
        raise UsageError("otlp_headers is a dict of header names and values")
    return ",".join(f"{name}={quote(str(value), safe='')}" for name, value in headers.items())


def _given(value):
    return value is not None and value is not False and value != []


def file_diffs(steps):
    """Ansible diffs from the steps' unified diffs: one per file (``--- old`` / ``+++ new``)."""
    diffs = []
    for step in steps:
        text = _text(step.get("diff_text"))
        chunks = []
        for line in text.splitlines(True):
            if line.startswith("--- ") or not chunks:
                chunks.append([])
            chunks[-1].append(line)
        for chunk in chunks:
            header = next((ln[4:].strip() for ln in chunk if ln.startswith("+++ ")), _text(step.get("name")))
            path = header[1:] if header.startswith("b/") else header
            diffs.append({"before_header": path, "after_header": path, "prepared": "".join(chunk)})
    return diffs


def _text(value):
    """A member that should be text, as text (a document is data: never trust its types)."""
    return value if isinstance(value, str) else ("" if value is None else json.dumps(value))


def _count(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tail(text, lines=8):
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _failed_findings(doc):
    findings = doc.get("findings")
    if not isinstance(findings, list):
        return []
    return [f for f in findings if isinstance(f, dict) and f.get("status") == "fail"]


def interpret(command, rc, stdout, stderr, diff_mode=False):
    """dispatchctl's result -> the module's result: a dict with ``failed``, ``changed``, ``msg``..."""
    try:
        doc = json.loads(stdout)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError:
        return {"failed": True, "changed": False, "rc": rc,
                "msg": f"dispatchctl {command} printed no JSON document (exit {rc}): "
                       f"{_tail(stderr) or _tail(stdout) or 'no output'}",
                "next_action": "run the same dispatchctl command on the host to see why"}
    steps = doc.get("steps")
    steps = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
    result = {"failed": False, "changed": False, "rc": rc, "document": doc, "steps": steps,
              "changed_steps": [_text(s.get("name")) for s in steps if s.get("changed")]}
    if command in PLANS:
        result["changed"] = _count(doc.get("changed")) > 0
        result["dry_run"] = bool(doc.get("dry_run"))
        result["rolled_back"] = doc.get("rolled_back") is True
        if isinstance(doc.get("rollback"), dict):
            result["rollback"] = doc["rollback"]
    if diff_mode and steps:
        result["diff"] = file_diffs(steps)
    error = doc.get("error")
    error = error if isinstance(error, dict) else ({"message": str(error)} if error else None)
    if error and not (command == "status" and error.get("kind") != "no-systemd"):
        kind = _text(error.get("kind"))
        result.update(failed=True, msg=_text(error.get("message")) or f"dispatchctl {command} failed (exit {rc})",
                      kind=kind, next_action=_text(error.get("next_action")) or _next_action_for(kind, command))
        if error.get("step"):
            result["step"] = _text(error["step"])
        return result
    if command in FINDINGS and not doc.get("ok"):
        failed = _failed_findings(doc)
        result.update(failed=True, msg="; ".join(f"{_text(f.get('title'))}: {_text(f.get('summary'))}" for f in failed)
                      or f"dispatchctl {command} failed (exit {rc})",
                      next_action="; ".join(_text(f.get("fix")) for f in failed if f.get("fix")))
        return result
    if rc not in (0, 3, 4) or (command in PLANS and not doc.get("ok")):
        result.update(failed=True, msg=f"dispatchctl {command} failed (exit {rc}): {_tail(stderr)}",
                      next_action="run the same dispatchctl command on the host to see why")
        return result
    result["msg"] = _summary(command, doc, steps)
    return result


def _next_action_for(kind, command):
    if kind == "usage":
        return "fix the module's options (dispatchctl refused them before touching anything)"
    if kind == "preflight":
        return "run the task as root (become: true) on a systemd host of a supported OS"
    return f"run `dispatchctl {command}` on the host with -v to see why"


def _summary(command, doc, steps):
    if command in PLANS:
        names = [_text(s.get("name")) for s in steps if s.get("changed")]
        verb = "would change" if doc.get("dry_run") else "changed"
        return f"{verb}: {', '.join(names)}" if names else "nothing to change"
    if command == "status":
        return "running" if doc.get("running") else ("installed, not running" if doc.get("installed")
                                                      else "not installed")
    return "all checks passed" if doc.get("ok") else ""


def find_binary(module, path):
    if path:
        return path if os.access(path, os.X_OK) else None
    return module.get_bin_path("dispatchctl", required=False, opt_dirs=DEFAULT_DIRS)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        command = command_of(module.params)
        ignored = inapplicable(module.params) if module.params["ignore_inapplicable"] else []
        params = applicable(module.params) if ignored else module.params
        binary = find_binary(module, module.params.get("dispatchctl_path"))
        if binary is None:
            where = module.params.get("dispatchctl_path") or "PATH, " + ", ".join(DEFAULT_DIRS)
            if command == "uninstall":
                module.exit_json(changed=False, ignored=ignored,
                                 msg=f"dispatchctl is not installed ({where}): nothing it made to remove")
            if module.check_mode:
                module.exit_json(changed=command in PLANS,
                                 msg=f"dispatchctl is not installed ({where}): the real run installs it first; "
                                     "nothing can be predicted before")
            module.fail_json(msg=f"dispatchctl not found ({where})",
                             next_action="install it (the dispatchctl role does) or set dispatchctl_path")
        argv, env = build_command(params, binary, module.check_mode, module._diff)
    except UsageError as exc:
        module.fail_json(msg=str(exc), next_action="fix the task's options")
    env["LC_ALL"] = "C.UTF-8"
    rc, out, err = module.run_command(argv, environ_update=env, check_rc=False)
    result = interpret(command, rc, out, err, module._diff)
    result["cmd"] = argv
    result["ignored"] = ignored
    if result.pop("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
