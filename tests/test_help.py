"""``--help`` at 80 columns (COLUMNS=80, piped): ``-h`` is ``--help`` on every command, the
command list has one line per command, metavars say what a value is, long defaults are shown
whole, and -v/-vv/-q are accepted by every command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DISPATCHCTL = str(Path(sys.prefix) / "bin" / "dispatchctl")
COMMANDS = ["install", "configure", "build", "start", "stop", "restart", "rollback", "check-rabbitmq", "check",
            "status", "logs", "uninstall"]
ABOUT_COMMANDS = ["completion", "help", "version"]  # about dispatchctl itself (issue 20)
LAB_COMMANDS = ["lab up", "lab down", "lab status", "lab inventory", "lab shell"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DISPATCHCTL_AMQP_PASS"}
    env["COLUMNS"] = "80"
    return subprocess.run([DISPATCHCTL, *args], capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_the_command_list_has_one_line_per_command_within_80_columns():
    res = cli("--help")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    listed = lines[lines.index("Commands:") + 1:]
    names = [line.split()[0] for line in listed if line.strip()]
    assert names == [*COMMANDS, *ABOUT_COMMANDS, "lab"], res.stdout
    assert all(len(line) <= 80 for line in res.stdout.splitlines()), res.stdout
    for line in listed:  # a summary, not a docstring cut off
        assert not line.rstrip().endswith(("...", "…")), line
    # typer's own guess the shell from the parent process: hidden (`dispatchctl completion SHELL` is told it)
    assert "--install-completion" not in res.stdout and "--show-completion" not in res.stdout


def test_the_lab_lists_its_commands_one_line_each():
    res = cli("lab", "-h")
    assert res.returncode == 0 and res.stdout.startswith("Usage: dispatchctl lab")
    listed = res.stdout.splitlines()[res.stdout.splitlines().index("Commands:") + 1:]
    assert [line.split()[0] for line in listed if line.strip()] == [c.split()[1] for c in LAB_COMMANDS], res.stdout
    assert all(len(line) <= 80 for line in res.stdout.splitlines()), res.stdout


@pytest.mark.parametrize("command", COMMANDS + ABOUT_COMMANDS + LAB_COMMANDS)
def test_h_is_help_and_every_command_takes_v_vv_q(command):
    long, short = cli(*command.split(), "--help"), cli(*command.split(), "-h")
    assert long.returncode == short.returncode == 0
    assert long.stdout == short.stdout and long.stdout.startswith(f"Usage: dispatchctl {command}")
    for option in ("-v, --verbose", "-q, --quiet", "-h, --help"):
        assert option in long.stdout, long.stdout
    assert ("--exit-code" in long.stdout) == ("--dry-run" in long.stdout)
    for line in long.stdout.splitlines():  # wrapped at word boundaries: only one unbreakable word is longer
        assert len(line) <= 80 or len(line.split()[-1]) > 40, line
    assert "<str>" not in long.stdout and "TEXT" not in long.stdout, long.stdout


def test_metavars_and_long_defaults():
    out = cli("install", "--help").stdout
    for opt, metavar in (("--amqp-pass-file", "FILE"), ("--app-dir", "DIR"), ("--user", "USER"),
                         ("--amqp-host", "HOST"), ("--amqp-user", "USER")):
        assert re.search(rf"{opt} {re.escape(metavar)}", out), (opt, out)
    joined = re.sub(r"-\n\s+", "-", out)  # the URL may be wrapped, but whole
    # the default is shown whole (wrapped at a word or a hyphen, never cut off)
    assert "else https://roboshop-artifacts.s3.amazonaws.com/dispatch.zip." in " ".join(joined.split()), out


@pytest.mark.parametrize("args", [["-v"], ["-vv"], ["-q"], ["--verbose", "--verbose"]])
def test_verbosity_options_parse_on_every_command(no_systemd_host, args):
    """Parsed, not refused: each command then fails (or works) for its own reason, never exit 2
    (in a container without systemd: what they find there does not depend on this machine)."""
    for command in ("status", "check"):
        res = no_systemd_host.dispatchctl(command, *args, "--json")
        assert res.returncode in (1, 4), res.stdout + res.stderr


def test_completion_scripts_for_bash_zsh_fish(tmp_path):
    shown = cli("--show-completion", "bash")
    assert shown.returncode == 0 and "complete -o default -F _dispatchctl_completion dispatchctl" in shown.stdout
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    installed = subprocess.run([DISPATCHCTL, "--install-completion"], capture_output=True, text=True, env=env,
                               timeout=60)
    assert installed.returncode == 0, installed.stderr
    assert "_dispatchctl_completion" in (tmp_path / ".bash_completions" / "dispatchctl.sh").read_text()
    assert "dispatchctl.sh" in (tmp_path / ".bashrc").read_text()
    for shell in ("bash", "zsh", "fish"):
        env = {**os.environ, "_DISPATCHCTL_COMPLETE": f"source_{shell}"}
        res = subprocess.run([DISPATCHCTL], capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == 0 and "dispatchctl" in res.stdout and "_DISPATCHCTL_COMPLETE" in res.stdout, \
            (shell, res.stdout, res.stderr)
    # the completions themselves: bash asks for the words after `dispatchctl che`
    env = {**os.environ, "_DISPATCHCTL_COMPLETE": "complete_bash", "COMP_WORDS": "dispatchctl che", "COMP_CWORD": "1"}
    res = subprocess.run([DISPATCHCTL], capture_output=True, text=True, env=env, timeout=60)
    assert set(res.stdout.split()) >= {"check", "check-rabbitmq"}, res.stdout


def test_version_stays_fast():
    """What ``--version`` imports (nothing of typer, rich or typing), and its CPU time against a
    baseline measured here: importing typer alone, the least the full CLI costs. No absolute
    bound: bench/provision.py measures the wall time (``version_s``) against the bare interpreter."""
    import resource

    res = subprocess.run([sys.executable, "-X", "importtime", DISPATCHCTL, "--version"], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.startswith("dispatchctl ")
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if "|" in line}
    assert not {"typer", "rich", "click", "typing", "roboshop_dispatch.cli.app"} & imported, sorted(imported)

    def cpu_s(argv) -> float:
        """The least CPU time (user + system) of 5 runs: a busy machine stretches it little."""
        runs = []
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(argv, capture_output=True, check=True, timeout=30)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            runs.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return min(runs)

    version, typer_alone = cpu_s([DISPATCHCTL, "--version"]), cpu_s([sys.executable, "-c", "import typer"])
    assert version < typer_alone, (version, typer_alone)  # measured here: 0.020 s against 0.062 s
