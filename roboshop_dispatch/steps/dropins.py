"""An operator's drop-ins follow dispatch between its two shapes (``--instances``).

``dispatch.service.d/*.conf`` apply to ``dispatch.service``; ``dispatch@.service.d/*.conf`` to every
``dispatch@N.service``. A migration 1 -> N carries the first into the second before the instances
start (so they start with them), and removes the old directory once they run (with the unit file no
longer used); N -> 1 the other way. Refused, with the path, before anything changes: a drop-in of
the same name with other content on the other side, something that is not a regular file, and
(N -> 1) a drop-in of one instance only (``dispatch@2.service.d/``), which has no place in
``dispatch.service``. A rollback puts the old directories back as they were (steps/generation.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from ..files import lstat_regular, read_regular, write_atomic
from .base import Action, Context, StepFailed

_ONE_INSTANCE_DIR = re.compile(r"^dispatch@[0-9]+\.service\.d$")


@dataclass(frozen=True)
class Carry:
    moves: Tuple[Tuple[Path, Path], ...] = ()  # (from, to), as on the host
    old_dir: Optional[Path] = None  # removed once the new units run (when empty)


def dropin_dir(unit_file: Path) -> Path:
    return unit_file.with_name(unit_file.name + ".d")


def _confs(ctx: Context, directory: Path) -> List[Path]:
    real = ctx.host_path(directory)
    if not real.is_dir() or real.is_symlink():
        return []
    found = []
    for entry in sorted(real.iterdir()):
        if entry.suffix == ".conf":
            lstat_regular(entry)  # a link or a directory is refused, with its path
            found.append(directory / entry.name)
    return found


def plan_carry(ctx: Context, count: int) -> Carry:
    """The drop-ins a migration to ``count`` instances carries (StepFailed: refused, with the path)."""
    s = ctx.settings
    old, new = (s.unit_path, s.template_path) if count > 1 else (s.template_path, s.unit_path)
    if count == 1:
        real_dir = ctx.host_path(s.unit_dir)
        alone = [d for d in sorted(real_dir.iterdir()) if _ONE_INSTANCE_DIR.match(d.name)] \
            if real_dir.is_dir() else []
        for directory in alone:
            confs = _confs(ctx, s.unit_dir / directory.name)
            if confs:
                raise StepFailed(f"{confs[0]} applies to one instance only: it has no place in {new.name}",
                                 f"move it into {dropin_dir(s.template_path)}/ (every instance) or remove it, "
                                 "then run the command again")
    moves = []
    for source in _confs(ctx, dropin_dir(old)):
        target = dropin_dir(new) / source.name
        there = read_regular(ctx.host_path(target)) if lstat_regular(ctx.host_path(target)) else None
        if there is not None and there != read_regular(ctx.host_path(source)):
            raise StepFailed(f"{source} and {target} differ: which one {new.name} should use is yours to say",
                             f"merge them into {target} and remove {source}, then run the command again")
        moves.append((source, target))
    return Carry(tuple(moves), dropin_dir(old) if moves else None)


def actions(carry: Carry) -> List[Action]:
    if not carry.moves:
        return []
    names = ", ".join(src.name for src, _ in carry.moves)
    return [Action("carry", f"{carry.moves[0][0].parent}/{{{names}}}", f" -> {carry.moves[0][1].parent}/")]


def carry_over(ctx: Context, carry: Carry) -> None:
    """Copy the drop-ins to the new shape's directory (before systemd is reloaded and the new units start)."""
    for source, target in carry.moves:
        real = ctx.host_path(source)
        st = lstat_regular(real)
        data = read_regular(real)
        if st is None or data is None:
            continue
        write_atomic(ctx.host_path(target), data, mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid)


def retire(ctx: Context, carry: Carry) -> None:
    """Remove the carried drop-ins from the old directory, and it when empty (the new units run)."""
    for source, _ in carry.moves:
        ctx.host_path(source).unlink(missing_ok=True)
    if carry.old_dir is not None:
        real = ctx.host_path(carry.old_dir)
        if real.is_dir() and not any(real.iterdir()):
            real.rmdir()
