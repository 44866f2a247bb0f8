"""The consumer makes itself non-dumpable at start, before it reads its credential.

Every process of the service user can otherwise read the consumer's memory and environment
(``/proc/PID/mem``, ``/proc/PID/environ``, ptrace: Yama's ptrace scope is 0 by default on RHEL
and Debian), and so the AMQP password it holds. ``prctl(PR_SET_DUMPABLE, 0)`` makes the kernel
give those files to root and refuse a same-user ptrace attach (and no core dump is written).
Linux only, through ctypes (standard library); elsewhere, or when it fails, the reason is
returned and the consumer runs as before.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
PR_GET_DUMPABLE = 3


def _libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def make_undumpable() -> Optional[str]:
    """``prctl(PR_SET_DUMPABLE, 0)``: None when done, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"not on Linux ({sys.platform})"
    try:
        import ctypes

        libc = _libc()
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            import os

            return f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}"
    except (OSError, AttributeError) as exc:
        return f"prctl is not available: {exc}"
    return None


def dumpable() -> Optional[bool]:
    """Whether this process is dumpable (None: cannot tell)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return None
