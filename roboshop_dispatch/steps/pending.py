"""Restarts a change left pending (not a step: the build and config steps record here, the
service step reads and clears it).

A change that a run made but could not follow with its restart (the run failed in between, or
``build``/``configure`` ran while the service was stopped) is remembered in
/run/dispatchctl/restart-pending, written *before* the file changes: the next run restarts then.
It lives in /run because a reboot starts the service fresh anyway.
"""

from __future__ import annotations

import contextlib
import time
from typing import List

from ..files import read_regular, write_atomic
from ..layout import RESTART_PENDING as PENDING
from .base import Context

RESTART_MARKS = ("unit", "envfile", "credential", "otlp-headers", "binary")


def mark_pending(ctx: Context, reason: str) -> None:
    """Record, before a restart-relevant file changes, that the service must be restarted."""
    path = ctx.host_path(PENDING)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = pending_reasons(ctx)
    if reason not in existing:
        write_atomic(path, "".join(r + "\n" for r in [*existing, reason]).encode(), mode=0o600)


def pending_reasons(ctx: Context, started_usec: int = 0) -> List[str]:
    """What a change left pending. Nothing when the running process started after the marker was
    written (someone restarted it by hand: it already runs the new files)."""
    import os

    path = ctx.host_path(PENDING)
    try:
        data = read_regular(path)
        if data is None:
            return []
        reasons = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln]
        written = os.lstat(path).st_mtime
    except OSError:
        return []
    if started_usec:
        written_monotonic = time.monotonic() - (time.time() - written)
        if started_usec / 1e6 > written_monotonic:
            return []
    return reasons


def clear_pending(ctx: Context) -> None:
    with contextlib.suppress(FileNotFoundError):
        ctx.host_path(PENDING).unlink()
