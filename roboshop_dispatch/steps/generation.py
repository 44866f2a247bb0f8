"""The last good generation: the files dispatch ran from before a change, kept to go back to.

A generation is every file a restart depends on: the binary, the unit (``dispatch.service``) and
the template (``dispatch@.service``) with their drop-in directories, the environment file, the
credentials (the AMQP password, the OTLP exporter's headers) and the instance count; each with its
owner, mode and sha256, or the fact that it was absent; and the units that ran ready then. It
lives root-only under layout.GENERATIONS_DIR (0700 directories, 0600 files, written atomically),
one directory per generation, named by two pointer files:

- ``staged``: before the first file a restart depends on is written, and only when dispatch runs
  ready (it works: that is what "good" means), :func:`stage` copies the current files.
- the restart passed its health gate: :func:`promote` makes it ``kept`` (the older one goes), so
  ``dispatchctl rollback`` returns to what ran before the change.
- it did not: steps/gate.py puts the staged generation back and drops it (``kept`` stays the
  older good one), or, with --no-rollback, promotes it.

Reading a generation checks its manifest (names, paths) and, before anything is restored, every
copy's sha256: a damaged generation is refused whole, never restored in part.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DispatchctlError, ErrorKind
from ..facts.instances import InstanceInfo
from ..files import lstat_regular, read_regular, write_atomic
from ..layout import GENERATIONS_DIR, INSTANCE_PREFIX, KEPT_POINTER, STAGED_POINTER
from ..systemd import UP_STATES
from .base import Context, installed_instances
from .pending import mark_pending, pending_reasons

# what a member's change means to the service step (the marks of steps/base.py)
MARKS = {"binary": "binary", "unit": "unit", "template": "unit", "dropin": "unit", "envfile": "envfile",
         "credential": "credential", "otlp-headers": "otlp-headers", "instances": "instances"}
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$")
_BLOB = re.compile(r"^f[0-9]{1,4}$")


class GenerationError(DispatchctlError):
    """A kept generation that cannot be used (its manifest or a copy is damaged)."""

    kind = ErrorKind.STEP


@dataclass(frozen=True)
class Member:
    role: str  # binary, unit, template, dropin, envfile, credential, otlp-headers, instances
    path: str  # as on the host
    present: bool
    mode: int = 0
    uid: int = 0
    gid: int = 0
    sha256: str = ""
    blob: str = ""  # its copy in the generation's directory


@dataclass(frozen=True)
class Generation:
    id: str
    directory: Path  # where it is kept (under ctx.root)
    kept_at: str
    command: str
    units: Tuple[str, ...]  # the units that ran ready when it was kept
    enabled: Tuple[str, ...]
    members: Tuple[Member, ...]
    dropin_dirs: Tuple[str, ...] = field(default=())

    @property
    def instances(self) -> int:
        """How many instances ran from it (1: dispatch.service)."""
        return sum(1 for u in self.units if u.startswith(INSTANCE_PREFIX)) or 1

    def summary(self) -> str:
        return f"generation {self.id} (kept {self.kept_at} by `dispatchctl {self.command}`)"


def dropin_dirs(ctx: Context) -> List[Path]:
    s = ctx.settings
    return [s.unit_path.with_name(s.unit_path.name + ".d"), s.template_path.with_name(s.template_path.name + ".d")]


def member_paths(ctx: Context) -> List[Tuple[str, Path]]:
    """(role, path as on the host) of every file a generation holds, present or not."""
    s = ctx.settings
    found = [("binary", s.binary), ("unit", s.unit_path), ("template", s.template_path), ("envfile", s.env_file),
             ("credential", s.credential_file), ("otlp-headers", s.otlp_headers_file), ("instances", s.instances_file)]
    for directory in dropin_dirs(ctx):
        real = ctx.host_path(directory)
        if real.is_dir() and not real.is_symlink():
            found += [("dropin", directory / p.name) for p in sorted(real.iterdir()) if p.suffix == ".conf"]
    return found


def ready_now(running: Sequence[InstanceInfo]) -> bool:
    """Whether the running dispatch units all run ready: up (READY=1 sent, once consuming) and
    none saying it is retrying (its settings do not work now: nothing good to keep)."""
    return all(u.active_state in UP_STATES and "retrying" not in u.status_text for u in running)


def ready_units(ctx: Context) -> Tuple[List[str], List[str]]:
    """(the dispatch units running ready now, none unless all are; the enabled ones)."""
    facts = installed_instances(ctx)
    running = facts.running()
    enabled = [u.unit for u in facts.every_unit() if u.is_enabled]
    return ([u.unit for u in running] if ready_now(running) else []), enabled


# -- reading ----------------------------------------------------------------------------------


def _pointer(ctx: Context, pointer: Path) -> Optional[str]:
    try:
        data = read_regular(ctx.host_path(pointer))
    except OSError:
        return None
    text = data.decode("ascii", "replace").strip() if data else ""
    return text if _ID.match(text) else None


def _load(ctx: Context, gen_id: str) -> Generation:
    directory = ctx.host_path(GENERATIONS_DIR / gen_id)
    try:
        doc = json.loads(read_regular(directory / "manifest.json") or b"null")
        members = tuple(Member(**m) for m in doc["members"])
        gen = Generation(id=gen_id, directory=directory, kept_at=str(doc["kept_at"]), command=str(doc["command"]),
                         units=tuple(map(str, doc["units"])), enabled=tuple(map(str, doc["enabled"])),
                         members=members, dropin_dirs=tuple(map(str, doc["dropin_dirs"])))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise GenerationError(f"{directory}/manifest.json is unreadable or damaged ({type(exc).__name__})") from None
    for m in gen.members:
        if m.role not in MARKS or not os.path.isabs(m.path) or os.path.normpath(m.path) != m.path \
                or (m.present and not _BLOB.match(m.blob)):
            raise GenerationError(f"{directory}/manifest.json names an unexpected file: {m.role} {m.path!r}")
    return gen


def kept(ctx: Context) -> Optional[Generation]:
    """The generation ``dispatchctl rollback`` returns to (None: none kept). GenerationError when damaged."""
    gen_id = _pointer(ctx, KEPT_POINTER)
    return _load(ctx, gen_id) if gen_id else None


def staged(ctx: Context) -> Optional[Generation]:
    gen_id = _pointer(ctx, STAGED_POINTER)
    return _load(ctx, gen_id) if gen_id else None


def verify(gen: Generation) -> Dict[str, bytes]:
    """Every copy's bytes by path, each checked against its sha256 (GenerationError when one differs)."""
    data: Dict[str, bytes] = {}
    for m in gen.members:
        if not m.present:
            continue
        try:
            blob = read_regular(gen.directory / m.blob)
        except OSError:
            blob = None
        if blob is None or hashlib.sha256(blob).hexdigest() != m.sha256:
            raise GenerationError(f"the kept copy of {m.path} ({gen.directory / m.blob}) is missing or damaged "
                                  "(its sha256 differs from the manifest)")
        data[m.path] = blob
    return data


# -- keeping ----------------------------------------------------------------------------------


def before_change(ctx: Context, mark: str) -> None:
    """Called before a file a restart depends on is written (``mark``: what it is): the first
    time in a run, stage what runs now; then record that a restart is pending (the instance
    count excepted: the service step starts or stops the difference)."""
    if not ctx.staging_done:
        ctx.staging_done = True
        stage(ctx)
    if mark != "instances":
        mark_pending(ctx, mark)


def stage(ctx: Context) -> Optional[Generation]:
    """Keep the files dispatch runs from now as the staged generation, before a change writes the
    first of them: only when dispatch runs ready (else there is nothing good to go back to), and
    not again when an earlier change is still waiting for its restart (the staged one is what runs)."""
    if ctx.dry_run or not ctx.facts.systemd_pid1:
        return None
    try:
        current = staged(ctx)
    except GenerationError:
        current = None
    if current is not None and pending_reasons(ctx):
        return current
    discard_staged(ctx)
    units, enabled = ready_units(ctx)
    if not units:
        return None
    gen = _capture(ctx, units, enabled)
    _write_pointer(ctx, STAGED_POINTER, gen.id)
    return gen


def _capture(ctx: Context, units: List[str], enabled: List[str]) -> Generation:
    gen_id = time.strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(4).hex()
    directory = ctx.host_path(GENERATIONS_DIR / gen_id)
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory.parent, 0o700)
    directory.mkdir(mode=0o700)
    members: List[Member] = []
    for index, (role, path) in enumerate(member_paths(ctx)):
        real = ctx.host_path(path)
        st = lstat_regular(real)
        data = read_regular(real) if st is not None else None
        if st is None or data is None:
            members.append(Member(role, str(path), False))
            continue
        blob = f"f{index}"
        write_atomic(directory / blob, data, mode=0o600, uid=0, gid=0)
        members.append(Member(role, str(path), True, st.st_mode & 0o7777, st.st_uid, st.st_gid,
                              hashlib.sha256(data).hexdigest(), blob))
    manifest = {"kept_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": ctx.command, "units": units,
                "enabled": enabled, "members": [asdict(m) for m in members],
                "dropin_dirs": [str(d) for d in dropin_dirs(ctx)]}
    write_atomic(directory / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode(), mode=0o600,
                 uid=0, gid=0)
    return _load(ctx, gen_id)


def _write_pointer(ctx: Context, pointer: Path, gen_id: str) -> None:
    write_atomic(ctx.host_path(pointer), (gen_id + "\n").encode(), mode=0o600, uid=0, gid=0)


def _remove(ctx: Context, gen_id: Optional[str]) -> None:
    if gen_id:
        shutil.rmtree(ctx.host_path(GENERATIONS_DIR / gen_id), ignore_errors=True)


def promote(ctx: Context) -> Optional[str]:
    """The staged generation becomes the kept one (the older kept one goes). Its id, or None."""
    new = _pointer(ctx, STAGED_POINTER)
    if new is None:
        return None
    old = _pointer(ctx, KEPT_POINTER)
    _write_pointer(ctx, KEPT_POINTER, new)
    ctx.host_path(STAGED_POINTER).unlink(missing_ok=True)
    if old != new:
        _remove(ctx, old)
    return new


def discard_staged(ctx: Context) -> None:
    """Drop the staged generation (the change it guarded is done or undone)."""
    gen_id = _pointer(ctx, STAGED_POINTER)
    if gen_id and gen_id != _pointer(ctx, KEPT_POINTER):
        _remove(ctx, gen_id)
    ctx.host_path(STAGED_POINTER).unlink(missing_ok=True)


# -- restoring --------------------------------------------------------------------------------


def differences(ctx: Context, gen: Generation) -> List[Tuple[Member, str]]:
    """The members that differ from the host now, each with what putting it back does: write
    (absent now), replace (other content), fix (owner or mode), remove (absent in the generation);
    and a drop-in the generation did not have, to remove."""
    out: List[Tuple[Member, str]] = []
    for m in gen.members:
        real = ctx.host_path(Path(m.path))
        st = lstat_regular(real)
        if not m.present:
            if st is not None:
                out.append((m, "remove"))
            continue
        if st is None:
            out.append((m, "write"))
        elif hashlib.sha256(read_regular(real) or b"").hexdigest() != m.sha256:
            out.append((m, "replace"))
        elif (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (m.mode, m.uid, m.gid):
            out.append((m, "fix"))
    known = {m.path for m in gen.members}
    for directory in gen.dropin_dirs:
        real = ctx.host_path(Path(directory))
        if real.is_dir() and not real.is_symlink():
            names = [str(Path(directory) / p.name) for p in sorted(real.iterdir()) if p.suffix == ".conf"]
            out += [(Member("dropin", name, False), "remove") for name in names if name not in known]
    return out


def restore(ctx: Context, gen: Generation, data: Dict[str, bytes]) -> List[str]:
    """Put the generation's files back (``data``: :func:`verify`'s); the marks of what changed."""
    marks: List[str] = []
    for m, what in differences(ctx, gen):
        real = ctx.host_path(Path(m.path))
        if what == "remove":
            lstat_regular(real)  # a link is refused, not removed
            real.unlink(missing_ok=True)
        else:
            real.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            write_atomic(real, data[m.path], mode=m.mode, uid=m.uid, gid=m.gid)
        if MARKS[m.role] not in marks:
            marks.append(MARKS[m.role])
    for directory in gen.dropin_dirs:
        real = ctx.host_path(Path(directory))
        if real.is_dir() and not real.is_symlink() and not any(real.iterdir()):
            real.rmdir()
    return marks
