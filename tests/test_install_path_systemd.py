"""How `dispatchctl` gets onto a host, as the README says, in a fresh systemd host.

The README's headline is `sudo dispatchctl install ...`. sudo runs commands with its
``secure_path`` (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), so a virtualenv's
``bin`` is not on it: these tests prove, with the real sudo of a real Debian host and an operator
account that may use it, that

- the venv route works with the full path, and a bare `sudo dispatchctl` after it does not (which
  is why the README gives the full path);
- the pipx route (`PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install .`, the form every
  pipx version understands; `pipx install --global` in pipx >= 1.5 does the same) puts
  `dispatchctl` on sudo's PATH, and the installed command provisions the service for real.

Everything is installed from the checkout and a wheelhouse built on this machine with its own
configured pip (``pip wheel``), bound read-only into the container: the container reaches no
package index.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from roboshop_dispatch import __version__
from roboshop_dispatch.lab.nspawn import Container, HostError
from tests.support.hosts import REPO
from tests.test_provision_systemd import wait_consumer

pytestmark = [pytest.mark.systemd, pytest.mark.broker]

WHEELS = "/wheels"
OPERATOR = "ops"
# offline: every pip run inside (pipx's too) takes packages from the wheelhouse only
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
PIPX = {"PIPX_HOME": "/opt/pipx", "PIPX_BIN_DIR": "/usr/local/bin"}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """dispatchctl's dependencies and build backend as wheels, made with this machine's pip."""
    out = tmp_path_factory.mktemp("wheels")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(out), str(REPO),
                          "hatchling"], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        pytest.fail(f"cannot build the wheelhouse: pip wheel exited {res.returncode}\n{res.stderr[-3000:]}",
                    pytrace=False)
    for wheel in out.glob("roboshop_dispatch-*.whl"):
        wheel.unlink()  # the checkout itself is installed from source, as an operator would
    out.chmod(0o755)
    return out


@pytest.fixture(scope="module")
def host(systemd_rootfs, wheelhouse):
    container = Container(systemd_rootfs, extra_args=[f"--bind-ro={wheelhouse}:{WHEELS}"])
    try:
        container.boot()
    except HostError as exc:
        pytest.fail(f"cannot boot the systemd test host: {exc}", pytrace=False)
    try:
        # an operator who may use sudo, as on a real host (sudo's own defaults: secure_path, env_reset)
        container.run(["useradd", "--create-home", OPERATOR])
        container.write(f"/etc/sudoers.d/{OPERATOR}", f"{OPERATOR} ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)
        yield container
    finally:
        container.poweroff()


def as_operator(host, *argv: str, check: bool = False, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """``sudo -n ARGV`` typed by the operator: sudo resets PATH to its secure_path."""
    return host.run(["/usr/sbin/runuser", "-u", OPERATOR, "--", "sudo", "-n", *argv], check=check, timeout=timeout,
                    env={"PATH": "/home/ops/.local/bin:/usr/local/bin:/usr/bin:/bin"})


def copy_checkout(host) -> str:
    """The checkout as an operator's clone (the bound one is read-only, and a build writes to it)."""
    inside = "/root/dispatchctl-src"
    host.run(["sh", "-c", f"rm -rf {inside} && mkdir -p {inside} && cd {REPO} && "
              f"tar -cf - --exclude=.venv --exclude=.git --exclude='__pycache__' --exclude='.*_cache' . | "
              f"tar -xf - -C {inside}"])
    return inside


def test_venv_route_needs_the_full_path_under_sudo(host):
    src = copy_checkout(host)
    host.run(["python3", "-m", "venv", "/opt/dispatchctl-venv"])
    res = host.run(["/opt/dispatchctl-venv/bin/pip", "install", "-q", src], env=OFFLINE, check=False, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    # the README's Quick start: `sudo "$PWD/.venv/bin/dispatchctl" ...`
    full = as_operator(host, "/opt/dispatchctl-venv/bin/dispatchctl", "--version")
    assert full.returncode == 0, full.stderr
    assert full.stdout.strip() == f"dispatchctl {__version__}"
    # sudo's secure_path does not include a venv: the bare name is not found (the report)
    bare = as_operator(host, "dispatchctl", "--version")
    assert bare.returncode != 0
    assert "command not found" in bare.stderr
    secure = as_operator(host, "sh", "-c", 'echo "$PATH"').stdout.strip()
    assert "/usr/local/bin" in secure.split(":"), secure


def test_pipx_route_puts_dispatchctl_on_sudo_path_and_installs(host, broker, vhost):
    src = copy_checkout(host)
    res = host.run(["pipx", "install", src], env={**OFFLINE, **PIPX}, check=False, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    link = host.run(["readlink", "-f", "/usr/local/bin/dispatchctl"]).stdout.strip()
    assert link.startswith("/opt/pipx/venvs/"), link
    mode = host.run(["stat", "-c", "%U %a", "/opt/pipx/venvs"]).stdout.split()
    assert mode[0] == "root" and not int(mode[1], 8) & 0o022, mode  # no one else can change root's tool

    version = as_operator(host, "dispatchctl", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"dispatchctl {__version__}"

    # the headline command, as typed: `sudo dispatchctl install --amqp-host ... --amqp-pass-file ...`
    host.write("/root/amqp.pass", broker.password + "\n")
    res = as_operator(host, "dispatchctl", "install", "--amqp-host", "127.0.0.1", "--amqp-port",
                      str(broker.port), "--amqp-vhost", vhost, "--amqp-user", broker.user,
                      "--amqp-pass-file", "/root/amqp.pass", "--json", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is True
    active = host.run(["systemctl", "is-active", "dispatch.service"], check=False).stdout.strip()
    assert active == "active", host.journal()
    wait_consumer(broker, vhost)
    # the service runs the bundled consumer with the host's python3, not pipx's venv
    exec_start = host.show("dispatch.service", ["ExecStart"])["ExecStart"]
    assert "/opt/pipx" not in exec_start, exec_start
    assert broker.password not in res.stdout + res.stderr
