"""Step 5: the systemd unit and its EnvironmentFile, rendered from ``templates/``.

The unit (0644) holds no secret; the environment file (root, 0600) holds the settings and the
password. Both are written atomically, only when their content or owner/mode differ; diffs mask
the new and the old password.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import envfile
from ..files import unified_diff, write_atomic
from .base import Change, Context, Step, load_cache, save_cache
from .build import PYTHON
from .service import mark_pending

UNREADABLE = object()


def _read(path: Path):
    """The file's text, None when absent, UNREADABLE when we may not read it (dry run, not root)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except PermissionError:
        return UNREADABLE


def _owner_mode_fixes(path: Path, mode: int) -> List[str]:
    try:
        st = os.stat(path)
    except OSError:
        return []
    fixes = []
    if stat.S_IMODE(st.st_mode) != mode:
        fixes.append(f"mode {stat.S_IMODE(st.st_mode):04o} -> {mode:04o}")
    if st.st_uid != 0 or st.st_gid != 0:
        fixes.append(f"owner {st.st_uid}:{st.st_gid} -> root:root")
    return fixes


def mask_env(text: Optional[str], label: str = "********") -> Optional[str]:
    """The environment file with the AMQP_PASS value replaced (line-wise), for diffs."""
    if text is None:
        return None
    return "".join(f'AMQP_PASS="{label}"\n' if line.startswith("AMQP_PASS=") else line
                   for line in text.splitlines(keepends=True))


def mask_unit(text: Optional[str]) -> Optional[str]:
    """A unit with any ``Environment=...AMQP_PASS=...`` value masked (the course's unit keeps the
    password there), for diffs."""
    if text is None:
        return None
    import re

    return "".join(re.sub(r"(AMQP_PASS=)[^\n]*", r"\1********", line) if line.lstrip().startswith("Environment")
                   else line for line in text.splitlines(keepends=True))


def changed_keys(old: str, new: str) -> List[str]:
    before, after = envfile.parse(old), envfile.parse(new)
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


RENDER_CACHE = Path("/var/cache/dispatchctl/rendered.json")


def render_key(ctx: Context) -> str:
    """A digest of everything the two files are rendered from: the templates, the code that
    renders them, dispatchctl's version and the settings (password included: the cache is
    root-only, beside a root-only file that holds the password itself)."""
    import hashlib
    import json

    from .. import __version__, render, settings

    digest = hashlib.sha256(f"{__version__}\0{PYTHON}\0".encode())
    sources = [Path(render.__file__), Path(envfile.__file__), Path(settings.__file__), Path(__file__)]
    for path in sources + sorted(render.templates_dir().glob("*.j2")):
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode() + data)
    s = ctx.settings
    digest.update(json.dumps({"masked": s.masked(), "env": s.environment()}, sort_keys=True).encode())
    return digest.hexdigest()


def _sha256(path: Path) -> Optional[str]:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigStep(Step):
    """The two files are compared with freshly rendered ones. A re-run with the same inputs
    skips the rendering (and Jinja's import, a good part of a re-run's time): a small root-only
    cache maps the inputs' digest to the files' sha256, and both files must still have it."""

    name = "config"
    title = "Unit and environment file"

    def _cached(self, ctx: Context, key: str) -> bool:
        cache = load_cache(ctx, RENDER_CACHE)
        if not cache:
            return False
        s = ctx.settings
        for path, mode, digest in ((s.unit_path, 0o644, cache.get("unit")), (s.env_file, 0o600, cache.get("env"))):
            real = ctx.host_path(path)
            if cache.get("key") != key or digest is None or _sha256(real) != digest \
                    or _owner_mode_fixes(real, mode):
                return False
        return True

    def _remember(self, ctx: Context, key: str) -> None:

        if ctx.dry_run:
            return
        s = ctx.settings
        record = {"key": key, "unit": _sha256(ctx.host_path(s.unit_path)), "env": _sha256(ctx.host_path(s.env_file))}
        save_cache(ctx, RENDER_CACHE, record)

    def wanted(self, ctx: Context) -> List[Tuple[str, Path, str, int]]:
        from ..render import render_env, render_unit

        s = ctx.settings
        return [
            ("unit", s.unit_path, render_unit(s, PYTHON), 0o644),
            ("envfile", s.env_file, render_env(s), 0o600),
        ]

    def check(self, ctx: Context) -> Change:
        key = render_key(ctx)
        if self._cached(ctx, key):
            s = ctx.settings
            return Change(False, f"{s.unit_path} and {s.env_file} up to date",
                          report={"files": {str(s.unit_path): "ok", str(s.env_file): "ok"}})
        change = self._compare(ctx)
        if not change.needed:
            self._remember(ctx, key)
        change.data["key"] = key
        return change

    def _compare(self, ctx: Context) -> Change:
        secrets = [ctx.settings.amqp.password.reveal()]
        diffs: List[str] = []
        messages: List[str] = []
        marks = set()
        writes: Dict[str, Tuple[Path, str, int]] = {}
        fixes_needed: Dict[str, Tuple[Path, int]] = {}
        files: Dict[str, str] = {}
        for mark, path, text, mode in self.wanted(ctx):
            real = ctx.host_path(path)
            current = _read(real)
            if current is UNREADABLE:
                marks.add(mark)
                writes[mark] = (path, text, mode)
                messages.append(f"rewrite {path} (unreadable without root: assumed to differ)")
                diffs.append(unified_diff(None, mask_env(text) if mark == "envfile" else text, str(path),
                                          secrets))
                files[str(path)] = "unknown"
                continue
            if current == text:
                fixes = _owner_mode_fixes(real, mode)
                if fixes:
                    fixes_needed[mark] = (path, mode)
                    messages.append(f"fix {path}: {', '.join(fixes)}")
                    files[str(path)] = "fix"
                else:
                    files[str(path)] = "ok"
                continue
            old: Optional[str] = current
            if old is not None and mark == "envfile":
                previous = envfile.parse(old).get("AMQP_PASS")
                if previous:
                    secrets.append(previous)
            marks.add(mark)
            writes[mark] = (path, text, mode)
            if mark == "envfile":
                changed = old is not None and "AMQP_PASS" in changed_keys(old, text)
                diffs.append(unified_diff(mask_env(old), mask_env(text, "******** (changed)" if changed
                                                                 else "********"), str(path), secrets))
            else:
                diffs.append(unified_diff(mask_unit(old), text, str(path), secrets))
            if old is None:
                messages.append(f"write {path}")
                files[str(path)] = "create"
            elif mark == "envfile":
                messages.append(f"update {path} ({', '.join(changed_keys(old, text)) or 'comments'})")
                files[str(path)] = "update"
            else:
                messages.append(f"update {path}")
                files[str(path)] = "update"
        report = {"files": files}
        if not writes and not fixes_needed:
            return Change(False, f"{ctx.settings.unit_path} and {ctx.settings.env_file} up to date",
                          report=report)
        return Change(True, "; ".join(messages), diff="".join(diffs), marks=frozenset(marks),
                      data={"writes": writes, "fixes": fixes_needed, "messages": messages}, report=report)

    def apply(self, ctx: Context, change: Change) -> str:
        writes: Dict[str, Tuple[Path, str, int]] = change.data["writes"]  # type: ignore[assignment]
        fixes: Dict[str, Tuple[Path, int]] = change.data["fixes"]  # type: ignore[assignment]
        for mark, (path, text, mode) in writes.items():
            mark_pending(ctx, mark)
            real = ctx.host_path(path)
            if mark == "envfile" and not real.parent.exists():
                real.parent.mkdir(parents=True, mode=0o755)
            write_atomic(real, text.encode("utf-8"), mode=mode, uid=0, gid=0)
        for _mark, (path, mode) in fixes.items():
            real = ctx.host_path(path)
            os.chmod(real, mode)
            os.chown(real, 0, 0)
        self._remember(ctx, str(change.data["key"]))
        past = {"write": "wrote", "rewrite": "rewrote", "update": "updated", "fix": "fixed"}
        messages: List[str] = change.data["messages"]  # type: ignore[assignment]
        return "; ".join(past[m.split(" ", 1)[0]] + " " + m.split(" ", 1)[1] for m in messages)
