"""Fixtures for the real test hosts. Nothing here mocks a broker or systemd."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.broker import Broker  # noqa: E402


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
