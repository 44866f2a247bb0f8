"""What dispatchctl created on this host (layout.CREATED_RECORD), so ``uninstall --purge`` removes
only that: the service user and the app directory are shared with the other RoboShop services,
and one that existed before dispatchctl is never deleted, chmod-ed or chown-ed by it.

Not a step: the user, appdir and build steps add to the record when they create something; the
uninstall steps read it. The record is root-only (0600) JSON: ``{"users": [...], "dirs": [...],
"files": [...]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ..layout import CREATED_RECORD
from .base import Context, load_cache, save_cache

KINDS = ("users", "dirs", "files")


def created(ctx: Context) -> Dict[str, List[str]]:
    record = load_cache(ctx, CREATED_RECORD)
    return {kind: [str(v) for v in record.get(kind, []) if isinstance(v, str)] for kind in KINDS}


def was_created(ctx: Context, kind: str, value: object) -> bool:
    return str(value) in created(ctx)[kind]


def remember(ctx: Context, kind: str, value: object) -> None:
    """Add ``value`` (a user name or a host path) to the record; nothing in check mode."""
    if ctx.dry_run:
        return
    record = created(ctx)
    if str(value) not in record[kind]:
        record[kind].append(str(value))
        save_cache(ctx, CREATED_RECORD, dict(record))


def forget(ctx: Context, kind: str, value: object) -> None:
    record = created(ctx)
    if str(value) in record[kind]:
        record[kind].remove(str(value))
        save_cache(ctx, CREATED_RECORD, dict(record))


def created_paths(ctx: Context, kind: str) -> List[Path]:
    return [Path(p) for p in created(ctx)[kind]]
