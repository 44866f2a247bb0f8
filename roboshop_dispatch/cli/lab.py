"""``dispatchctl lab up | down | status | shell | inventory``: a disposable lab on this machine.

Imported when the CLI starts (to list the commands), so it imports nothing of the lab itself:
``roboshop_dispatch.lab`` (pika, nspawn, the broker) is imported inside the commands.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Mapping, NoReturn, Optional, Tuple

import typer

from ..errors import ErrorKind, ExitStatus
from . import options as opt
from .app import DispatchTyper, app
from .common import HELP_OPTION_NAMES, INVOCATION
from .output import error, error_document, print_json, write

lab_app = DispatchTyper(
    name="lab",
    help="A disposable lab on this machine: a real RabbitMQ and N booted systemd hosts "
         "(systemd-nspawn), dispatch installed in each, orders flowing. Needs root.",
    short_help="A disposable lab: broker + systemd hosts.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": HELP_OPTION_NAMES},
)
app.add_typer(lab_app, name="lab")



def _fail(command: str, kind: str, message: str, as_json: bool) -> NoReturn:
    error(message)
    if as_json:
        print_json(error_document(command, "usage" if kind == "usage" else "preflight" if kind == "preflight"
                                  else "step", message))
    opt.finish(ErrorKind.exit_status(kind))


def _lab(command: str, as_json: bool) -> Any:
    """The Lab of $DISPATCHCTL_LAB_STATE (else /run/dispatchctl-lab), for root only."""
    from ..lab.state import LabStateError

    if os.geteuid() != 0:
        _fail(command, "preflight", "the lab needs root (systemd-nspawn, nsenter, a RabbitMQ node): "
              "run it with sudo", as_json)
    from ..lab.session import Lab

    try:
        return Lab()
    except LabStateError as exc:
        _fail(command, "usage", str(exc), as_json)


def _out(text: str, as_json: bool) -> None:
    if not INVOCATION.quiet:
        write(text, err=as_json)


@lab_app.command("up", short_help="Make the lab (again: nothing changes).")
def up(
    hosts: int = typer.Option(1, "--hosts", min=1, max=8, metavar="1..8", help="How many systemd hosts."),
    hosts_n: Optional[int] = typer.Option(None, "-n", min=1, max=8, hidden=True,
                                          help="Deprecated: --hosts (-n means log lines in every other command)."),
    no_install: bool = typer.Option(False, "--no-install",
                                    help="Boot the hosts (reachable by ssh) and start the broker, but do not "
                                         "install dispatch: for the Ansible fleet."),
    json_output: bool = opt.JsonOutput,
) -> None:
    """Make the lab: cached rootfs, a RabbitMQ node, N booted hosts with sshd, `dispatchctl install`
    in each, a handful of orders; each phase timed. Again while up: nothing changes."""
    from ..lab.report import format_phase
    from ..lab.session import LabError

    if hosts_n is not None:  # the old spelling still works, once more
        from .output import warning

        warning("`lab up -n N` is deprecated: use `lab up --hosts N` (-n means log lines in every other command)")
        hosts = hosts_n
    lab = _lab("lab up", json_output)
    try:
        report = lab.up(hosts, install=not no_install, on_phase=lambda p: _out(format_phase(p) + "\n", json_output),
                        on_note=lambda m: _out(f"dispatchctl: {m}\n", json_output))
    except LabError as exc:
        _fail("lab up", exc.kind, str(exc), json_output)
    if json_output:
        print_json({"command": "lab up", "ok": True, **report.document()})
        opt.finish(ExitStatus.OK)
    if report.cleaned_stale:
        _out("(a stale lab was found and removed first)\n", False)
    if report.already_up:
        installed = "dispatch installed" if report.state.installed else "dispatch not installed"
        _out(f"the lab is already up ({len(report.state.hosts)} host(s), {installed}): nothing to do\n", False)
        if report.state.installed == no_install:
            _out("(to change that: `dispatchctl lab down`, then `dispatchctl lab up` again)\n", False)
    elif report.status_text:
        _out(f"\n`dispatchctl status` inside lab-1:\n{report.status_text}\n", False)
    _out(_summary(lab), False)
    opt.finish(ExitStatus.OK)


def _summary(lab: Any) -> str:
    st = lab.status()
    lines = [f"{h['name']}  ssh -p {h['ssh_port']} root@127.0.0.1   {'running' if h['running'] else 'STOPPED'}"
             for h in st["hosts"]]
    b = st["broker"]
    if b:
        lines.append(f"broker  amqp://{b['user']}@127.0.0.1:{b['port']}/  (password in {b['password_file']})"
                     f"   {'running' if b['running'] else 'STOPPED'}")
    lines.append("next: dispatchctl lab shell [N] | lab inventory | lab status | lab down")
    return "\n".join(lines) + "\n"


@lab_app.command("down", short_help="Remove everything the lab made.")
def down(json_output: bool = opt.JsonOutput) -> None:
    """Power off every host, stop the broker, remove everything the lab made (not the cache)."""
    from ..lab.session import LabError

    lab = _lab("lab down", json_output)
    try:
        changed = lab.down()
    except LabError as exc:
        _fail("lab down", exc.kind, str(exc), json_output)
    if json_output:
        print_json({"command": "lab down", "ok": True, "changed": changed, "state_dir": str(lab.dir)})
    else:
        _out("lab down: hosts powered off, broker stopped, " + f"{lab.dir} removed\n" if changed
             else "lab down: no lab is up, nothing to do\n", False)
    opt.finish(ExitStatus.OK)


@lab_app.command("status", short_help="The lab's hosts, ports, broker, uptime.")
def status(json_output: bool = opt.JsonOutput) -> None:
    """The lab's hosts, ssh ports, broker and uptime. Exit 0 up, 3 not up, 1 stale."""
    from ..lab.session import LabError

    lab = _lab("lab status", json_output)
    try:
        st = lab.status()
    except LabError as exc:
        _fail("lab status", exc.kind, str(exc), json_output)
    code = 0 if st["up"] else 1 if st["stale"] else 3
    if json_output:
        print_json({"command": "lab status", "ok": code == 0, **st})
    elif not st["hosts"] and not st["broker"]:
        _out(f"no lab is up ({lab.dir}): `dispatchctl lab up`\n", False)
    else:
        state = "up" if st["up"] else "STALE (processes gone): `dispatchctl lab down` cleans it"
        _out(f"lab {state}, {len(st['hosts'])} host(s), uptime {st['uptime_s']:.0f} s, "
             f"dispatch {'installed' if st['installed'] else 'not installed'}; state in {lab.dir}\n", False)
        _out(_summary(lab), False)
    opt.finish(code)


@lab_app.command("inventory", short_help="An Ansible inventory of the lab's hosts.")
def inventory() -> None:
    """An Ansible inventory (INI) of the lab's hosts: ssh on 127.0.0.1, the lab's key and host keys."""
    from ..lab.session import LabError

    lab = _lab("lab inventory", False)
    try:
        text = lab.inventory()
    except LabError as exc:
        _fail("lab inventory", exc.kind, str(exc), False)
    sys.stdout.write(text)
    opt.finish(ExitStatus.OK)


@lab_app.command("shell", short_help="A shell in a lab host, or run a command there.",
                 context_settings={"allow_interspersed_args": False})
def shell(
    host: Optional[str] = typer.Argument(None, metavar="[HOST]", help="1, 2, ... or lab-1, ... (default: 1)."),
    command: Optional[List[str]] = typer.Argument(None, metavar="[-- CMD...]",
                                                  help="Run CMD there and exit with its code."),
) -> None:
    """A login shell inside a lab host (nsenter), or run CMD there: `lab shell 2 -- dispatchctl status`."""
    from ..lab.session import LabError

    lab = _lab("lab shell", False)
    parsed = [*([host] if host else []), *(command or [])]
    raw = sys.argv[sys.argv.index("shell") + 1:] if "shell" in sys.argv else parsed
    which, argv = shell_words(raw)
    try:
        target = lab.host(which)
    except LabError as exc:
        _fail("lab shell", exc.kind, str(exc), False)
    sys.stdout.flush()
    try:
        os.execvp("nsenter", shell_argv(target.container.leader, argv, os.environ))
    except OSError as exc:  # nsenter missing (util-linux) or not executable
        _fail("lab shell", "preflight", f"cannot run nsenter: {exc}", False)


def shell_words(raw: List[str]) -> Tuple[str, List[str]]:
    """(host, command) from the words after ``shell`` on the command line, ``[opts] [HOST] [--
    CMD...]``: click drops a ``--`` that comes first, so the raw words decide. The host is 1
    unless a word before ``--`` names it; without ``--`` the words after the host are the command."""
    words = list(raw)
    while words and words[0] != "--" and words[0].startswith("-"):  # -v, -q: the common options
        words.pop(0)
    if "--" in words:
        cut = words.index("--")
        before, after = words[:cut], words[cut + 1:]
    else:
        before, after = words[:1], words[1:]
    return (before[0] if before else "1"), [*before[1:], *after]


def shell_argv(leader: int, command: List[str], environ: Mapping[str, str]) -> List[str]:
    """nsenter into every namespace of the host's PID 1, with a clean environment (nothing of the
    caller's, except the terminal type) and a login shell when there is no command."""
    from ..lab.nspawn import PATH_INSIDE

    env = [f"PATH={PATH_INSIDE}", "HOME=/root", "LANG=C.UTF-8", "USER=root", "LOGNAME=root",
           f"TERM={environ.get('TERM', 'dumb')}"]
    return ["nsenter", "-t", str(leader), "-a", "env", "-i", *env, *(command or ["/bin/bash", "-l"])]
