"""The lab's pure parts: the state file's parser, the install decision, phase lines, the inventory,
the `lab shell` words; and the `lab` CLI's refusals, which touch nothing (not root, bad options,
no lab up), each one valid JSON document. The real lab is tests/test_lab.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roboshop_dispatch.cli.lab import shell_argv, shell_words
from roboshop_dispatch.lab import tools
from roboshop_dispatch.lab.inventory import render
from roboshop_dispatch.lab.nspawn import host_alive, nspawn_alive, pid_running
from roboshop_dispatch.lab.report import Phase, format_phase
from roboshop_dispatch.lab.session import MARK, LabError, host_name
from roboshop_dispatch.lab.state import (
    BrokerRecord,
    HostRecord,
    LabState,
    LabStateError,
    checked_dir,
    parse,
    state_dir,
)
from tests.test_json_output import one_document

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")

pids = st.integers(min_value=2, max_value=2**22)
ports = st.integers(min_value=1, max_value=65535)
safe_paths = st.from_regex(r"\A/[A-Za-z0-9_+-]{1,12}(/[A-Za-z0-9_+-]{1,12}){0,3}\Z")


@st.composite
def lab_states(draw) -> LabState:
    count = draw(st.integers(min_value=0, max_value=8))
    host_ports = draw(st.lists(ports, min_size=count, max_size=count, unique=True))
    hosts = [HostRecord(f"lab-{n + 1}", draw(pids), draw(pids), host_ports[n]) for n in range(count)]
    broker = draw(st.none() | st.builds(
        BrokerRecord, node=st.from_regex(r"\A[a-z0-9]{1,20}@localhost\Z"), dir=safe_paths, port=ports, dist_port=ports,
        pid=st.integers(min_value=0, max_value=2**22), user=st.from_regex(r"\A[a-z]{1,10}\Z"),
        epmd_started=st.booleans()))
    return LabState(rootfs=draw(safe_paths), installed=draw(st.booleans()),
                    created=draw(st.floats(min_value=0, max_value=4e9)), broker=broker, hosts=hosts)


@settings(max_examples=200)
@given(lab_states())
def test_the_state_file_round_trips(state):
    assert parse(state.to_json()) == state


@settings(max_examples=300)
@given(st.text(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20).map(json.dumps))
def test_any_other_text_is_refused_with_a_reason_never_a_crash(text):
    try:
        parse(text)
    except LabStateError as exc:
        assert str(exc)
    else:  # only what to_json writes parses
        assert parse(parse(text).to_json()) == parse(text)


def _doc(**over):
    doc = json.loads(LabState(rootfs="/var/cache/x", installed=True, created=1.0,
                              broker=BrokerRecord("n1@localhost", "/run/l/broker", 5672, 25672, 10, "roboshop", False),
                              hosts=[HostRecord("lab-1", 100, 101, 2222)]).to_json())
    doc.update(over)
    return doc


@pytest.mark.parametrize("change, needle", [
    ({"format": 2}, "format"),
    ({"hosts": [{"name": "lab-1", "nspawn_pid": True, "leader_pid": 101, "ssh_port": 2222}]}, "nspawn_pid"),
    ({"hosts": [{"name": "lab-1", "nspawn_pid": 1, "leader_pid": 101, "ssh_port": 2222}]}, "nspawn_pid"),
    ({"hosts": [{"name": "../etc", "nspawn_pid": 100, "leader_pid": 101, "ssh_port": 2222}]}, "name"),
    ({"hosts": [{"name": "lab-1", "nspawn_pid": 100, "leader_pid": 101, "ssh_port": 2222}] * 2}, "twice"),
    ({"hosts": [{"name": "lab-1", "nspawn_pid": 100, "leader_pid": 101, "ssh_port": 2222, "x": 1}]}, "keys"),
    ({"rootfs": "/var/cache/a b"}, "rootfs"),
    ({"broker": {"node": "n'$(id)@localhost", "dir": "/x", "port": 1, "dist_port": 1, "pid": 1, "user": "u",
                 "epmd_started": False}}, "node"),
    ({"installed": "yes"}, "installed"),
    ({"extra": 1}, "keys"),
])
def test_a_doctored_state_file_is_refused_naming_the_field(change, needle):
    with pytest.raises(LabStateError, match=needle):
        parse(json.dumps(_doc(**change)))


@pytest.mark.parametrize("raw", ["relative/dir", "/run/a b", "/run/x'y", "/run/../etc", "/", "/run/$(id)", "/run/a\nb"])
def test_a_state_dir_that_would_need_quoting_is_refused(raw):
    with pytest.raises(LabStateError, match="absolute path"):
        checked_dir(raw, "DISPATCHCTL_LAB_STATE")


def test_the_state_dir_comes_from_the_environment():
    assert state_dir({}) == Path("/run/dispatchctl-lab")
    assert state_dir({"DISPATCHCTL_LAB_STATE": "/tmp/x/"}) == Path("/tmp/x")
    with pytest.raises(LabStateError, match="DISPATCHCTL_LAB_STATE"):
        state_dir({"DISPATCHCTL_LAB_STATE": "x"})


def test_state_is_written_atomically_with_its_mode_and_never_through_a_link(tmp_path):
    """The lab writes its files with the project's one atomic writer (roboshop_dispatch.files)."""
    from roboshop_dispatch.files import NotRegularFile, write_atomic

    target = tmp_path / "state.json"
    write_atomic(target, b"{}", mode=0o600)
    assert target.read_text() == "{}" and (target.stat().st_mode & 0o777) == 0o600
    write_atomic(target, b"[]", mode=0o644)
    assert target.read_text() == "[]" and (target.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target.unlink()
    target.symlink_to(victim)
    with pytest.raises(NotRegularFile):
        write_atomic(target, b"x")
    assert victim.read_text() == "keep" and target.is_symlink()


# -- the install decision --------------------------------------------------------------------------

ALL = {tool: True for tool, _ in tools.TOOLS}


def test_nothing_missing_means_nothing_to_do():
    d = tools.decide(ALL, has_apt=True, is_root=True)
    assert d.missing == () and d.commands == () and d.message == ""


def test_missing_tools_are_installed_with_apt_get_once_per_package():
    found = {**ALL, "rabbitmq-server": False, "rabbitmqctl": False, "nsenter": False}
    d = tools.decide(found, has_apt=True, is_root=True)
    assert d.packages == ("util-linux", "rabbitmq-server")
    assert d.commands == (("apt-get", "update", "-qq"), ("apt-get", "install", "-y", "-qq", "util-linux",
                                                             "rabbitmq-server"))
    assert "installing util-linux rabbitmq-server with apt-get" in d.message


def test_without_apt_or_root_it_says_exactly_what_to_install():
    found = {**ALL, "systemd-nspawn": False, "ssh-keygen": False}
    no_apt = tools.decide(found, has_apt=False, is_root=True)
    assert no_apt.commands == ()
    assert "systemd-nspawn, ssh-keygen" in no_apt.message and "systemd-container openssh-client" in no_apt.message
    not_root = tools.decide(found, has_apt=True, is_root=False)
    assert not_root.commands == () and "apt-get install -y systemd-container openssh-client" in not_root.message


@given(st.dictionaries(st.sampled_from([t for t, _ in tools.TOOLS]), st.booleans()), st.booleans(), st.booleans())
def test_the_decision_covers_every_missing_tool(found, has_apt, is_root):
    d = tools.decide(found, has_apt=has_apt, is_root=is_root)
    missing = [t for t, _ in tools.TOOLS if not found.get(t, False)]
    assert list(d.missing) == missing
    assert set(d.packages) == {p for t, p in tools.TOOLS if t in missing} and len(set(d.packages)) == len(d.packages)
    assert bool(d.commands) == bool(missing and has_apt and is_root)
    assert all(p in d.message for p in d.packages)


def test_ensure_raises_with_the_message_when_it_cannot_install():
    with pytest.raises(tools.ToolsMissing, match="debootstrap"):
        tools.ensure(lambda m: None, finder=lambda tool: tool not in ("debootstrap", "apt-get"))


# -- phases, inventory, shell words ------------------------------------------------------------------


def test_phase_lines_are_aligned_and_one_line():
    lines = [format_phase(Phase("rootfs", "cached", 0.01)), format_phase(Phase("orders", "5 published\nx", 1.25)),
             format_phase(Phase("status", "", -1))]
    assert lines[0].startswith("rootfs  cached") and lines[0].endswith("0.0 s")
    assert lines[1].endswith("1.2 s") and "\n" not in lines[1] and "x" not in lines[1]
    assert lines[2].endswith("0.0 s") and len({len(line) for line in lines}) == 1


def test_the_inventory_has_every_host_and_no_password(tmp_path):
    state = LabState(rootfs="/r", installed=False, created=0,
                     broker=BrokerRecord("n@localhost", "/s/broker", 5999, 25999, 5, "roboshop", False),
                     hosts=[HostRecord("lab-1", 10, 11, 40001), HostRecord("lab-2", 12, 13, 40002)])
    text = render(state, key_path=Path("/s/ssh/id_ed25519"), known_hosts=Path("/s/ssh/known_hosts"),
                  password_file=Path("/s/amqp.pass"))
    assert "lab-1 ansible_host=127.0.0.1 ansible_port=40001\n" in text
    assert "lab-2 ansible_host=127.0.0.1 ansible_port=40002\n" in text
    for line in ("ansible_user=root", "ansible_ssh_private_key_file=/s/ssh/id_ed25519",
                 "ansible_python_interpreter=/usr/bin/python3", "dispatch_amqp_host=127.0.0.1",
                 "dispatch_amqp_port=5999", "dispatch_amqp_user=roboshop",
                 "dispatch_amqp_password=\"{{ lookup('ansible.builtin.file', '/s/amqp.pass') }}\""):
        assert f"\n{line}\n" in text
    assert "UserKnownHostsFile=/s/ssh/known_hosts -o StrictHostKeyChecking=yes" in text
    # the role's variables, host and group ones added or overriding the lab's
    text = render(state, key_path=Path("/s/k"), known_hosts=Path("/s/kh"), password_file=Path("/s/amqp.pass"),
                  host_vars={"lab-2": {"dispatch_instances": "2"}}, group_vars={"dispatch_amqp_port": "6000"})
    assert "lab-2 ansible_host=127.0.0.1 ansible_port=40002 dispatch_instances=2\n" in text
    assert "\ndispatch_amqp_port=6000\n" in text and "dispatch_amqp_port=5999" not in text


@pytest.mark.parametrize("raw, host, command", [
    ([], "1", []),
    (["2"], "2", []),
    (["lab-2", "--", "dispatchctl", "status"], "lab-2", ["dispatchctl", "status"]),
    (["--", "hostname"], "1", ["hostname"]),
    (["-v", "2", "--", "sh", "-c", "exit 7"], "2", ["sh", "-c", "exit 7"]),
    (["2", "hostname", "-f"], "2", ["hostname", "-f"]),
    (["2", "--", "--", "x"], "2", ["--", "x"]),
])
def test_shell_words(raw, host, command):
    assert shell_words(raw) == (host, command)


def test_the_shell_gets_a_clean_environment():
    argv = shell_argv(4242, [], {"TERM": "xterm", "DISPATCHCTL_AMQP_PASS": "s3cret", "SSH_AUTH_SOCK": "/x"})
    assert argv[:6] == ["nsenter", "-t", "4242", "-a", "env", "-i"] and argv[-2:] == ["/bin/bash", "-l"]
    assert "TERM=xterm" in argv and not any("s3cret" in a or "SSH_AUTH_SOCK" in a for a in argv)
    assert shell_argv(1, ["id", "-u"], {})[-2:] == ["id", "-u"]


def test_host_names():
    assert host_name("2", ["lab-1", "lab-2"]) == "lab-2" and host_name("lab-1", ["lab-1"]) == "lab-1"
    with pytest.raises(LabError, match="lab-1, lab-2") as exc:
        host_name("3", ["lab-1", "lab-2"])
    assert exc.value.kind == "usage"


def test_pid_checks_never_take_another_process_for_a_host():
    assert pid_running(os.getpid()) and not pid_running(0) and not pid_running(2**22 + 1)
    assert not nspawn_alive("lab-1", os.getpid()) and not host_alive("lab-1", os.getpid(), os.getpid())


# -- the CLI's refusals: nothing is touched, one valid document each --------------------------------------


def lab_cli(*args, state=None, prefix=()):
    env = {k: v for k, v in os.environ.items() if k != "DISPATCHCTL_LAB_STATE"}
    if state is not None:
        env["DISPATCHCTL_LAB_STATE"] = str(state)
    return subprocess.run([*prefix, DISPATCHCTL, "lab", *args], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_not_root_is_a_preflight_error(tmp_path):
    res = lab_cli("up", "--json", state=tmp_path / "lab", prefix=["setpriv", "--reuid=65534", "--regid=65534",
                                                                     "--clear-groups"])
    assert res.returncode == 1, (res.stdout, res.stderr)
    doc = one_document(res)
    assert doc["command"] == "lab up" and doc["error"]["kind"] == "preflight" and "root" in doc["error"]["message"]
    assert not (tmp_path / "lab").exists()


@pytest.mark.parametrize("args", [["up", "--hosts", "9"], ["up", "--hosts", "0"], ["up", "--bogus"]])
def test_bad_options_are_usage_errors(tmp_path, args):
    res = lab_cli(*args, "--json", state=tmp_path / "lab")
    assert res.returncode == 2
    assert one_document(res)["error"]["kind"] == "usage" and not (tmp_path / "lab").exists()


def test_a_bad_state_dir_is_a_usage_error(tmp_path):
    res = lab_cli("status", "--json", state="relative/dir")
    assert res.returncode == 2 and "DISPATCHCTL_LAB_STATE" in one_document(res)["error"]["message"]


def test_without_a_lab_status_down_and_shell_say_so(tmp_path):
    state = tmp_path / "lab"
    res = lab_cli("status", "--json", state=state)
    assert res.returncode == 3 and one_document(res)["up"] is False
    down = lab_cli("down", "--json", state=state)
    assert down.returncode == 0 and one_document(down)["changed"] is False
    assert "nothing to do" in lab_cli("down", state=state).stdout
    for args in (["shell", "--", "true"], ["inventory"]):
        res = lab_cli(*args, state=state)
        assert res.returncode == 1 and "no lab is up" in res.stderr
    assert not state.exists()


def test_a_doctored_state_file_is_refused_not_trusted(tmp_path):
    state = tmp_path / "lab"
    state.mkdir()
    (state / MARK).write_text("")
    (state / "state.json").write_text(json.dumps(_doc(hosts=[{"name": "lab-1", "nspawn_pid": 1, "leader_pid": 1,
                                                              "ssh_port": 22}])))
    res = lab_cli("status", "--json", state=state)
    assert res.returncode == 1 and "nspawn_pid" in one_document(res)["error"]["message"]


def test_down_refuses_an_unreadable_record_and_keeps_it(tmp_path):
    """The state file is the only list of what to stop: `lab down` does not remove it unread."""
    state = tmp_path / "lab"
    state.mkdir()
    (state / MARK).write_text("")
    (state / "state.json").write_text("{not json")
    res = lab_cli("down", "--json", state=state)
    assert res.returncode == 1, (res.stdout, res.stderr)
    message = one_document(res)["error"]["message"]
    assert "beam.smp" in message and str(state) in message
    assert (state / "state.json").read_text() == "{not json"


def test_the_lab_needs_dispatchctl_in_a_virtualenv(monkeypatch):
    """Its hosts run dispatchctl through a read-only bind of its prefix: /usr must never be bound."""
    from roboshop_dispatch.lab.nspawn import HostError, bind_args

    assert all(arg.startswith("--bind-ro=") for arg in bind_args())  # this venv: fine
    for prefix in ("/usr", "/usr/local"):
        monkeypatch.setattr(sys, "prefix", prefix)
        monkeypatch.setattr(sys, "base_prefix", "/usr")
        with pytest.raises(HostError, match="not from a virtualenv"):
            bind_args()


def test_a_dir_the_lab_did_not_make_is_never_used_nor_removed(tmp_path):
    """A mistyped DISPATCHCTL_LAB_STATE (an existing dir of something else) loses nothing."""
    precious = tmp_path / "var-lib"
    precious.mkdir()
    (precious / "data").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(precious)
    for state in (precious, link):
        for args in (["down"], ["up", "--json"], ["status"]):
            res = lab_cli(*args, state=state)
            assert res.returncode == 1, (args, res.stdout, res.stderr)
            assert "refusing" in res.stderr
        assert (precious / "data").read_text() == "keep" and sorted(os.listdir(precious)) == ["data"]
    assert link.is_symlink()


def test_the_cli_does_not_import_the_lab_until_a_lab_command_runs():
    """The CLI's command list (every command's start) holds the lab's commands without importing
    roboshop_dispatch.lab (nspawn, the broker, pika's publisher)."""
    script = ("import sys\nfrom roboshop_dispatch.cli.app import app\nimport typer.main\n"
              "names = [c.name for c in typer.main.get_command(app).commands.values()]\n"
              "print(' '.join(names))\n"
              "print(' '.join(sorted(m for m in sys.modules if m.startswith('roboshop_dispatch'))))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    commands, modules = res.stdout.splitlines()
    assert "lab" in commands.split() and "roboshop_dispatch.cli.lab" in modules.split()
    assert not [m for m in modules.split() if m.startswith("roboshop_dispatch.lab")], modules


words = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@given(st.from_regex(r"\A(lab-)?[0-9]{1,2}\Z"), st.lists(words, max_size=5))
def test_whatever_follows_the_double_dash_is_the_command_verbatim(host, command):
    assert shell_words([host, "--", *command]) == (host, command)
    assert shell_words(["--", *command]) == ("1", command)
