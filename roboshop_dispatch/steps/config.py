"""Step 5: the systemd unit, its EnvironmentFile and the password's credential file.

The unit (0644) holds no secret; the environment file (root, 0600) holds the settings. The AMQP
password is a systemd credential (``LoadCredential=``, root 0600 file): it is never in the
service's environment, so no other process of the service user reads it in /proc/PID/environ.
It stays in the environment file only for the go flavour (the Go binary reads only AMQP_PASS) and
where systemd predates credentials (< 247). Files are written in the order credential,
environment file, unit: a run that fails in between leaves files the next run compares and
repairs, and never a unit that points at a credential not yet written. Each file is written
atomically, only when its content or owner/mode differ, and never through a link.
Diffs mask every secret: the new password, and the old ones learnt by parsing the old files
(whatever their quoting, ``export`` prefix or escapes), and the whole value of every secret key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from .. import envfile
from ..consumer.telemetry_settings import header_secrets
from ..files import drift, fix_owner_mode, lstat_regular, write_atomic
from ..layout import CREDENTIALS_MIN_SYSTEMD, PYTHON, RENDER_CACHE
from ..redact import Redactor
from .base import Action, Change, Context, Step, load_cache, save_cache, unchanged
from .dropins import plan_carry
from .generation import before_change
from .instances import INSTANCES, wanted_count
from .textfiles import (
    CREDENTIAL,
    HEADERS,
    WHOLE_SECRETS,
    Current,
    WantedFile,
    _Unreadable,
    changed_keys,
    file_diff,
    old_secrets,
    read_current,
)

ENV_ROUTE = "envfile"


def password_route(flavour: str, systemd_version: Optional[int]) -> str:
    """``credential`` (LoadCredential=; the bundled consumer reads $CREDENTIALS_DIRECTORY) or
    ``envfile`` (AMQP_PASS in the 0600 environment file)."""
    if flavour == "go":
        return ENV_ROUTE
    if systemd_version is not None and systemd_version < CREDENTIALS_MIN_SYSTEMD:
        return ENV_ROUTE
    return CREDENTIAL


ROUTE_NOTES = {
    "go": "; AMQP_PASS stays in it: the Go binary reads only that variable",
    "old-systemd": f"; AMQP_PASS stays in it: systemd < {CREDENTIALS_MIN_SYSTEMD} has no credentials",
}


@dataclass(frozen=True)
class ConfigPlan:
    writes: Tuple[WantedFile, ...]
    fixes: Tuple[WantedFile, ...]
    key: str


def compare(want: WantedFile, current: Current, fixes: List[str]) -> Optional[Action]:
    """The action one file needs, from its current text and its owner/mode drift."""
    if want.text is None:
        return None if current is None else Action("remove", str(want.path), " (no longer used)")
    if isinstance(current, _Unreadable):
        return Action("rewrite", str(want.path), " (unreadable without root: assumed to differ)" + want.note)
    if current == want.text:
        return Action("fix", str(want.path), ": " + ", ".join(fixes)) if fixes else None
    if current is None:
        return Action("write", str(want.path), want.note)
    if want.mark == "envfile":
        keys = ", ".join(changed_keys(current, want.text)) or "comments"
        return Action("update", str(want.path), f" ({keys}){want.note}")
    return Action("update", str(want.path), want.note)


def render_key(ctx: Context) -> str:
    """A digest of everything the files are rendered from: the templates, the code that renders
    them, dispatchctl's version and the settings (password included: the cache is root-only,
    beside a root-only file that holds the password itself)."""
    from .. import __version__, pkgfiles, render, settings

    digest = hashlib.sha256(f"{__version__}\0{PYTHON}\0".encode())
    sources = [Path(render.__file__), Path(envfile.__file__), Path(settings.__file__), Path(__file__)]
    for path in sources + [p for _, p in pkgfiles.files_under(render.templates_dir(), ".j2")]:
        data = pkgfiles.read_bytes(path)  # a file, or a member of the zip dispatchctl runs from
        digest.update(f"{path.name}\0{len(data)}\0".encode() + data)
    s = ctx.settings
    # systemd's version is left out (asking costs a subprocess): a host upgraded past 247 keeps
    # its working environment-file route until the settings or dispatchctl change
    inputs = {"masked": s.masked(), "env": s.environment(), "group": unit_group(ctx)}
    digest.update(json.dumps(inputs, sort_keys=True).encode())
    return digest.hexdigest()


def unit_group(ctx: Context) -> str:
    """The unit's Group=: the service user's primary group as the system has it (its own name
    before the user step made it)."""
    from ..facts.paths import primary_group

    return primary_group(ctx.settings.service_user) or ctx.settings.service_user


def _sha256(path: Path) -> Optional[str]:
    from ..files import read_regular

    try:
        data = read_regular(path)
    except OSError:
        return None
    return None if data is None else hashlib.sha256(data).hexdigest()


class ConfigStep(Step[ConfigPlan]):
    """The files are compared with freshly rendered ones. A re-run with the same inputs skips the
    rendering (and Jinja's import, a good part of a re-run's time): a small root-only cache maps
    the inputs' digest to the files' sha256, and every file must still have it."""

    name = "config"
    title = "Unit and environment file"

    @staticmethod
    def systemd_version(ctx: Context) -> Optional[int]:
        from ..facts.host import systemd_version

        return ctx.facts.systemd_version if ctx.facts.systemd_version is not None else systemd_version()

    def route(self, ctx: Context) -> str:
        return password_route(ctx.settings.flavour, self.systemd_version(ctx))

    def paths(self, ctx: Context) -> List[Tuple[str, Path, int]]:
        """The files in writing order: the credentials, environment file, instance count, unit (the
        template dispatch@.service for more than one instance, else dispatch.service)."""
        s = ctx.settings
        unit = s.template_path if wanted_count(ctx) > 1 else s.unit_path
        return [(CREDENTIAL, s.credential_file, 0o600), (HEADERS, s.otlp_headers_file, 0o600),
                ("envfile", s.env_file, 0o600),
                (INSTANCES, s.instances_file, 0o644), ("unit", unit, 0o644)]

    def wanted(self, ctx: Context) -> List[WantedFile]:
        from ..render import render_env, render_unit

        s = ctx.settings
        credential = self.route(ctx) == CREDENTIAL
        note = ""
        if s.flavour == "go":
            note = ROUTE_NOTES["go"]
        elif not credential and (self.systemd_version(ctx) or CREDENTIALS_MIN_SYSTEMD) < CREDENTIALS_MIN_SYSTEMD:
            note = ROUTE_NOTES["old-systemd"]
        count = wanted_count(ctx)
        headers = s.otlp_headers.reveal() + "\n" if credential and s.otlp_headers is not None else None
        return [WantedFile(CREDENTIAL, s.credential_file, s.amqp.password.reveal() if credential else None, 0o600,
                           secret=True),
                WantedFile(HEADERS, s.otlp_headers_file, headers, 0o600, secret=True),
                WantedFile("envfile", s.env_file, render_env(s, with_password=not credential), 0o600, secret=True,
                           note=note),
                WantedFile(INSTANCES, s.instances_file, f"{count}\n" if count > 1 else None, 0o644,
                           note=f" ({count} instances)"),
                WantedFile("unit", s.template_path if count > 1 else s.unit_path,
                           render_unit(s, PYTHON, credential=credential, template=count > 1, group=unit_group(ctx)),
                           0o644)]

    def _cached(self, ctx: Context, key: str) -> bool:
        cache = load_cache(ctx, RENDER_CACHE)
        if cache.get("key") != key:
            return False
        for mark, path, mode in self.paths(ctx):
            real = ctx.host_path(path)
            st = lstat_regular(real)
            if st is None and cache.get(mark) is None:
                continue  # a file that must not exist (the credential on the environment route)
            if st is None or cache.get(mark) is None or _sha256(real) != cache.get(mark) or drift(st, mode):
                return False
        return True

    def _remember(self, ctx: Context, key: str) -> None:
        if ctx.dry_run:
            return
        record: Dict[str, Any] = {"key": key}
        for mark, path, _mode in self.paths(ctx):
            record[mark] = _sha256(ctx.host_path(path))
        save_cache(ctx, RENDER_CACHE, record)

    def _summary(self, ctx: Context, route: str) -> str:
        s = ctx.settings
        where = f"the password in {s.credential_file}" if route == CREDENTIAL else \
            f"the password in {s.env_file}" + (" (the Go binary reads only AMQP_PASS)" if s.flavour == "go" else "")
        count = wanted_count(ctx)
        unit = f"{s.template_path} ({count} instances)" if count > 1 else str(s.unit_path)
        return f"{unit} and {s.env_file} up to date ({where}; {s.queue_type} orders queue)"

    def check(self, ctx: Context) -> Change[ConfigPlan]:
        count = wanted_count(ctx)
        if ctx.host_path(ctx.settings.unit_path if count > 1 else ctx.settings.template_path).exists():
            plan_carry(ctx, count)  # a migration whose drop-ins cannot go along is refused before any write
        change = self._check(ctx)
        # what the dry run and the JSON report show beside the files
        change.report.update(instances=wanted_count(ctx), queue_type=ctx.settings.queue_type)
        return change

    def _check(self, ctx: Context) -> Change[ConfigPlan]:
        key = render_key(ctx)
        if self._cached(ctx, key):
            cache = load_cache(ctx, RENDER_CACHE)
            route = CREDENTIAL if cache.get(CREDENTIAL) else ENV_ROUTE
            return unchanged(self._summary(ctx, route),
                             {"files": {str(path): "ok" for mark, path, _mode in self.paths(ctx)
                                        if cache.get(mark) is not None}})
        change = self.compare(ctx, key)
        if not change.needed:
            self._remember(ctx, key)
        return change

    def compare(self, ctx: Context, key: str) -> Change[ConfigPlan]:
        wanted = self.wanted(ctx)
        current = {w.mark: read_current(ctx.host_path(w.path)) for w in wanted}
        secrets = ctx.settings.secrets()
        for mark, text in current.items():
            if isinstance(text, str):
                secrets += [text, *header_secrets(text)] if mark in WHOLE_SECRETS else old_secrets(text)
        redactor = Redactor(secrets)
        actions: List[Action] = []
        writes: List[WantedFile] = []
        fixes: List[WantedFile] = []
        diffs: List[str] = []
        files: Dict[str, str] = {}
        for want in wanted:
            st = None if current[want.mark] is None or isinstance(current[want.mark], _Unreadable) \
                else lstat_regular(ctx.host_path(want.path))
            action = compare(want, current[want.mark], drift(st, want.mode) if st is not None else [])
            if action is None:
                if want.text is not None:  # a file that must not exist and does not is not reported
                    files[str(want.path)] = "ok"
                continue
            files[str(want.path)] = {"fix": "fix", "write": "create", "update": "update", "rewrite": "unknown",
                                     "remove": "remove"}[action.verb]
            actions.append(action)
            (fixes if action.verb == "fix" else writes).append(want)
            if action.verb != "fix":
                diffs.append(file_diff(want, current[want.mark], redactor))
        route = CREDENTIAL if any(w.mark == CREDENTIAL and w.text is not None for w in wanted) else ENV_ROUTE
        if not actions:
            return unchanged(self._summary(ctx, route), {"files": files})
        marks: Set[str] = {w.mark for w in writes}
        report = {"files": files, "password": route}
        return Change(actions, ConfigPlan(tuple(writes), tuple(fixes), key), diff="".join(diffs),
                      marks=frozenset(marks), report=report)

    def apply(self, ctx: Context, change: Change[ConfigPlan]) -> None:
        plan = change.the_plan()
        # every byte is ready before the first write: nothing can fail half-way for want of it
        payloads = {want.mark: want.text.encode("utf-8") for want in plan.writes if want.text is not None}
        for want in plan.writes:
            before_change(ctx, want.mark)  # keeps what runs now, once, for a rollback
            real = ctx.host_path(want.path)
            if want.text is None:
                lstat_regular(real)  # a link is refused, not removed
                real.unlink(missing_ok=True)
                continue
            if not real.parent.exists():
                real.parent.mkdir(parents=True, mode=0o755)
            write_atomic(real, payloads[want.mark], mode=want.mode, uid=0, gid=0)
        for want in plan.fixes:
            fix_owner_mode(ctx.host_path(want.path), want.mode)
        self._remember(ctx, plan.key)
