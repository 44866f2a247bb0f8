"""The RoboShop dispatch consumer: ``python -m roboshop_dispatch.consumer``.

A drop-in for the original Go ``dispatch`` binary that consumes the ``orders`` queue the RoboShop
payment service feeds, with at-least-once acks, bad-message quarantine, reconnection, a clean
stop on SIGTERM and systemd notify support.

This package runs on target hosts from a single zipapp under the system ``python3`` (3.9+): it
imports only the standard library, pika, :mod:`roboshop_dispatch.amqp` and
:mod:`roboshop_dispatch.pikaload`, and reads no data files.
"""

from __future__ import annotations

from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the consumer in the foreground; returns the process exit code."""
    from ..pikaload import load

    load()  # pika without its asyncio adapter, which the consumer never uses (about 10 ms of start-up)
    from .service import main as _main

    return _main(argv)
