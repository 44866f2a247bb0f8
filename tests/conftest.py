"""Fixtures for the real test hosts. Nothing here mocks a broker or systemd."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

# CI explores the same examples every run (a red CI blocks a landing, so it must not depend on the
# draw); developers' runs draw new ones each time. Either way every property test generates its
# inputs, and a failure prints the example to reproduce with @example.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roboshop_dispatch.lab.broker import Broker  # noqa: E402


def pytest_report_header(config):
    """Which pika the session (and its consumers) run: tests/test_pika_oldest.py runs some again
    with another on PYTHONPATH, and checks this line."""
    import pika

    return f"pika {pika.__version__} from {Path(pika.__file__).resolve().parent.parent}"


@pytest.fixture(scope="session")
def broker():
    """A real RabbitMQ node started for this test session (fails loudly when it cannot start)."""
    node = Broker()
    try:
        node.start()
    except Exception as exc:
        node.stop()
        pytest.fail(f"cannot start a real RabbitMQ node: {exc}", pytrace=False)
    yield node
    node.stop()


@pytest.fixture
def vhost(broker):
    """A fresh vhost with full permissions for the test user: tests never see each other's queues."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    broker.ctl("add_vhost", name)
    broker.ctl("set_permissions", "-p", name, broker.user, ".*", ".*", ".*")
    yield name
    broker.ctl("delete_vhost", name, check=False)


# -- a real systemd host (systemd-nspawn): roboshop_dispatch/lab/nspawn.py ------------------------------


@pytest.fixture(scope="session")
def systemd_rootfs():
    """The cached Debian rootfs (built with debootstrap on first use, minutes; then reused)."""
    import subprocess

    from roboshop_dispatch.lab.nspawn import HostError, ensure_rootfs

    try:
        return ensure_rootfs(log=lambda msg: print(msg, file=sys.stderr))
    except (HostError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot build the systemd test host: {exc}", pytrace=False)


@pytest.fixture
def systemd_host(systemd_rootfs):
    """A freshly booted, throwaway systemd host (PID 1 systemd, volatile root, host network).
    This checkout's CLI runs inside with ``host.dispatchctl(...)``; powered off afterwards."""
    from tests.support.hosts import booted

    with booted(systemd_rootfs) as container:
        yield container


@pytest.fixture(scope="session")
def no_systemd_host(systemd_rootfs):
    """One throwaway container that is not booted (PID 1 is ``sleep``: no systemd), shared by the
    tests of a host without systemd: the CLI runs there with ``host.dispatchctl(...)``, never on
    this machine, whose PID 1 the tests assume nothing about."""
    from tests.support.hosts import unbooted

    with unbooted(systemd_rootfs) as container:
        yield container
