"""pytest glue for the real systemd hosts of ``roboshop_dispatch.lab.nspawn`` (the lab's code)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from roboshop_dispatch.lab.nspawn import Container, HostError

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def booted(rootfs):
    """A freshly booted systemd host from ``rootfs``, powered off afterwards; a host that cannot
    boot fails the test loudly with the reason."""
    import pytest

    container = Container(rootfs)
    try:
        container.boot()
    except HostError as exc:
        pytest.fail(f"cannot boot the systemd test host: {exc}", pytrace=False)
    try:
        yield container
    finally:
        container.poweroff()
