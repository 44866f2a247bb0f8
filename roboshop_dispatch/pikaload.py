"""pika imported without its asyncio adapter, for dispatchctl's on-call commands and the consumer.

``import pika`` imports every connection adapter, and the asyncio one imports asyncio: about 55 ms
of the 400 ms that ``status`` and ``check-rabbitmq`` may take on these machines, and a tenth of the
consumer's start-up. The commands use only BlockingConnection, the consumer only SelectConnection,
so while pika loads, ``pika.adapters.asyncio_connection`` is a placeholder; it is removed
afterwards, so a later ``import pika.adapters.asyncio_connection`` still gets the real module.
Standard library only: the consumer's zipapp carries this module beside ``amqp.py``.
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

ASYNCIO_ADAPTER = "pika.adapters.asyncio_connection"
_lock = threading.Lock()


def load() -> Any:
    """The pika package (imported now unless something imported it already)."""
    with _lock:
        if "pika" in sys.modules:
            return sys.modules["pika"]
        placeholder = types.ModuleType(ASYNCIO_ADAPTER)
        placeholder.AsyncioConnection = None  # type: ignore[attr-defined]
        installed = sys.modules.setdefault(ASYNCIO_ADAPTER, placeholder) is placeholder
        try:
            import pika
        finally:
            if installed and sys.modules.get(ASYNCIO_ADAPTER) is placeholder:
                del sys.modules[ASYNCIO_ADAPTER]
        return pika
