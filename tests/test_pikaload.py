"""pika without its asyncio adapter for the on-call commands (a fresh interpreter each time)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from roboshop_dispatch.pikaload import load
pika = load()
assert "asyncio" not in sys.modules, "asyncio was imported"
assert "pika.adapters.asyncio_connection" not in sys.modules, "the placeholder stayed behind"
assert pika.BlockingConnection and pika.PlainCredentials and pika.ConnectionParameters
import pika.exceptions
assert load() is pika
# a later explicit import still gets pika's real asyncio adapter
from pika.adapters.asyncio_connection import AsyncioConnection
assert AsyncioConnection is not None and "asyncio" in sys.modules
print("ok")
"""


def test_pika_loads_without_asyncio_and_the_real_adapter_stays_importable():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_pika_already_imported_is_returned_as_is():
    code = "import pika, sys; from roboshop_dispatch.pikaload import load; assert load() is pika; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
