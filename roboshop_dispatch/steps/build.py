"""Step 4: ``/app/dispatch``.

``bundled``: one self-contained zipapp (the consumer and pika) run by the system python3. The
zipapp records a fingerprint of its sources in its zip comment, so a re-run compares fingerprints
without rebuilding and rewrites the file only when the content changes.

``go``: the manual's route. Fetch the artifact, unzip it safely, ``go mod init dispatch`` when
there is no go.mod, ``go get``, ``go build``. A stamp beside the binary records the sources'
digest and the binary's sha256: unchanged sources and an untouched binary skip the build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..files import drift, fix_owner_mode, lstat_regular, read_regular, write_atomic
from ..host import CommandError
from ..layout import BUILD_STAMP_NAME as STAMP_NAME
from ..layout import BUNDLE_CACHE, GO_CACHE, GO_CANDIDATES, PYTHON
from ..pkgfiles import archive_of
from . import record
from .base import Action, Change, Context, Step, StepFailed, load_cache, save_cache, unchanged
from .generation import before_change

BINARY_MODE = 0o755


@dataclass(frozen=True)
class FixPlan:
    """The binary is current; only its owner or mode drifted."""

    key: Optional[str] = None


@dataclass(frozen=True)
class BundlePlan:
    fingerprint: str
    key: Optional[str]


@dataclass(frozen=True)
class GoPlan:
    archive: Path  # the fetched artifact, already inspected; apply unpacks it, then removes it
    digest: str
    artifact_sha256: str


BuildPlan = Union[FixPlan, BundlePlan, GoPlan]


def bundle_stat_key() -> Optional[str]:
    """A digest of the *stat* (name, size, mtime) of every file the zipapp is packed from, and of
    bundle.py itself: equal digests mean the same sources, without reading them or importing the
    bundler (zipfile, importlib.metadata). A re-run then compares it, and the installed file's
    size, mtime and inode, with what the last run recorded. None when pika cannot be found."""
    import importlib.util

    own = Path(__file__).resolve().parent.parent
    spec = importlib.util.find_spec("pika")
    if spec is None or spec.origin is None:
        return None
    pika_dir = Path(spec.origin).resolve().parent
    archive = archive_of(own)
    if archive is not None:  # the single-file dispatchctl run from its zip: the zip holds every source
        st = os.stat(archive)
        key = f"{PYTHON}\0{archive}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n"
        return hashlib.sha256(key.encode()).hexdigest()
    digest = hashlib.sha256(f"{PYTHON}\0".encode() + (own / "bundle.py").read_bytes())
    files = [own / "__init__.py", own / "amqp.py", *sorted((own / "consumer").rglob("*.py")),
             *sorted(pika_dir.rglob("*.py")), *sorted(pika_dir.parent.glob("pika-*.dist-info/*"))]
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            continue
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _file_state(path: Path) -> Optional[os.stat_result]:
    """The binary's lstat; a link or anything but a regular file there is refused."""
    return lstat_regular(path)


def _mode_fixes(st: os.stat_result) -> list:
    return drift(st, BINARY_MODE)


def sha256_file(path: Path) -> Optional[str]:
    data = read_regular(path)
    return None if data is None else hashlib.sha256(data).hexdigest()


def go_build_command(go: str, out: Path) -> List[str]:
    """What the manual builds: a plain ``go build``. ``-trimpath`` or a forced ``CGO_ENABLED=0``
    change every package's build ID, so the toolchain's precompiled standard library (Go <= 1.19,
    RHEL's and Debian's packages) is no longer used and a fresh host recompiles it: 18 s instead of
    0.9 s measured here for the course's program. The persistent GOCACHE (layout.GO_CACHE) keeps
    whatever is compiled once for the next build."""
    return [go, "build", "-o", str(out)]


def find_go(root: Path = Path("/")) -> Optional[str]:
    found = shutil.which("go")
    if found and root == Path("/"):
        return found
    for candidate in GO_CANDIDATES:
        if os.access(root / candidate.lstrip("/"), os.X_OK):
            return candidate
    return None


class BuildStep(Step[BuildPlan]):
    name = "build"
    title = "Build /app/dispatch"

    def check(self, ctx: Context) -> Change[BuildPlan]:
        lstat_regular(self._stamp_path(ctx))  # a planted link there is refused before anything
        if ctx.settings.flavour == "go":
            return self._check_go(ctx)
        return self._check_bundled(ctx)

    def apply(self, ctx: Context, change: Change[BuildPlan]) -> Optional[str]:
        plan = change.the_plan()
        binary = ctx.host_path(ctx.settings.binary)
        if isinstance(plan, FixPlan):
            fix_owner_mode(binary, BINARY_MODE)
            if ctx.settings.flavour == "bundled":
                self._remember_bundle(ctx, plan.key)
            return None
        if isinstance(plan, GoPlan):
            return self._apply_go(ctx, change)
        from .. import bundle

        data = bundle.build_zipapp(PYTHON)
        before_change(ctx, "binary")
        write_atomic(binary, data, mode=BINARY_MODE, uid=0, gid=0)
        record.remember(ctx, "files", ctx.settings.binary)
        self._remember_bundle(ctx, plan.key)
        return f"wrote {ctx.settings.binary} (zipapp, {len(data) // 1024} KiB, {plan.fingerprint})"

    # -- bundled ------------------------------------------------------------------------------
    def _check_bundled(self, ctx: Context) -> Change[BuildPlan]:
        path = ctx.settings.binary
        binary = ctx.host_path(path)
        key = bundle_stat_key()
        st = _file_state(binary)
        cached = load_cache(ctx, BUNDLE_CACHE)
        if (st is not None and key is not None and cached.get("key") == key and not _mode_fixes(st)
                and cached.get("binary") == [st.st_size, st.st_mtime_ns, st.st_ino]):
            short = str(cached.get("fingerprint", ""))[:12]
            return unchanged(f"{path} up to date (zipapp {short})",
                             {"path": str(path), "flavour": "bundled", "fingerprint": short})
        change = self._check_bundled_content(ctx, key)
        if not change.needed:
            self._remember_bundle(ctx, key)
        return change

    def _remember_bundle(self, ctx: Context, key: Optional[str]) -> None:
        if ctx.dry_run or key is None:
            return
        st = _file_state(ctx.host_path(ctx.settings.binary))
        if st is None:
            return
        from .. import bundle

        record = {"key": key, "fingerprint": bundle.installed_fingerprint(ctx.host_path(ctx.settings.binary)),
                  "binary": [st.st_size, st.st_mtime_ns, st.st_ino]}
        save_cache(ctx, BUNDLE_CACHE, record)

    def _check_bundled_content(self, ctx: Context, key: Optional[str]) -> Change[BuildPlan]:
        from .. import bundle

        path = ctx.settings.binary
        binary = ctx.host_path(path)
        want = bundle.fingerprint(interpreter=PYTHON)
        short = want[:12]
        report: Dict[str, object] = {"path": str(path), "flavour": "bundled", "fingerprint": short}
        st = _file_state(binary)
        have = bundle.installed_fingerprint(binary) if st is not None else None
        if have == want and st is not None:
            fixes = _mode_fixes(st)
            if not fixes:
                return unchanged(f"{path} up to date (zipapp {short})", report)
            return Change([Action("fix", str(path), ": " + ", ".join(fixes))], FixPlan(key), report=report)
        what = "write" if st is None else ("replace" if have is None else "update")
        return Change([Action(what, str(path), f" (zipapp {short})")], BundlePlan(short, key),
                      marks=frozenset({"binary"}), report=report)

    # -- go -------------------------------------------------------------------------------------
    def _stamp_path(self, ctx: Context) -> Path:
        return ctx.host_path(ctx.settings.app_dir / STAMP_NAME)

    def _check_go(self, ctx: Context) -> Change[BuildPlan]:
        from .. import archive, artifact

        source = artifact.shown(ctx.settings.artifact)
        download = Path(tempfile.mkdtemp(prefix="dispatchctl-artifact-"))
        keep = False
        try:
            try:
                fetched = artifact.fetch(ctx.settings.artifact, download, allow_http=ctx.settings.insecure,
                                         expected_sha256=ctx.settings.artifact_sha256)
                summary = archive.inspect(fetched.path)
            except artifact.ArtifactError as exc:
                raise StepFailed(str(exc), "check --artifact (an https URL or an absolute path), --sha256 and "
                                 "the network, then run `dispatchctl build --flavour go` again") from None
            except archive.UnsafeArchive as exc:
                raise StepFailed(f"refusing to unpack {source}: {exc}",
                                 "use a trustworthy archive of Go sources (no links, absolute paths or '..', "
                                 "at most 64 MiB unpacked)") from None
            if not summary.has_go:
                raise StepFailed(f"{source} holds no .go file", "check --artifact")
            change = self._plan_go(ctx, source, summary.digest, fetched)
            keep = not ctx.dry_run and isinstance(change.plan, GoPlan)  # apply unpacks this file, then removes it
            return change
        finally:
            if not keep:
                shutil.rmtree(download, ignore_errors=True)

    def _plan_go(self, ctx: Context, source: str, digest: str, fetched: Any) -> Change[BuildPlan]:
        path = ctx.settings.binary
        binary = ctx.host_path(path)
        report: Dict[str, object] = {"path": str(path), "flavour": "go", "sources": digest[:12],
                                     "artifact_sha256": fetched.sha256}
        try:
            stamp = json.loads(read_regular(self._stamp_path(ctx)) or b"{}")
        except ValueError:
            stamp = {}
        st = _file_state(binary)
        binary_sha = sha256_file(binary) if st is not None else None
        if stamp.get("sources") == digest and binary_sha is not None and stamp.get("binary") == binary_sha:
            assert st is not None
            fixes = _mode_fixes(st)
            if not fixes:
                return unchanged(f"sources unchanged ({digest[:12]}): build skipped", report)
            return Change([Action("fix", str(path), ": " + ", ".join(fixes))], FixPlan(), report=report)
        why = ("first build" if st is None else
               "sources changed" if stamp.get("sources") != digest else "binary differs from the last build")
        return Change([Action("go build", str(path), f" from {source} ({why})")],
                      GoPlan(fetched.path, digest, fetched.sha256), marks=frozenset({"binary"}), report=report)

    def _apply_go(self, ctx: Context, change: Change[BuildPlan]) -> str:
        from .. import archive, artifact

        plan = change.the_plan()
        assert isinstance(plan, GoPlan)
        zip_path = plan.archive
        go = find_go(ctx.root)
        if go is None:
            shutil.rmtree(zip_path.parent, ignore_errors=True)
            raise StepFailed("the go toolchain is not installed",
                             "run `dispatchctl install --flavour go` (it installs golang first)")
        app_dir = ctx.host_path(ctx.settings.app_dir)
        cache = ctx.host_path(GO_CACHE)
        env = {
            "HOME": os.environ.get("HOME") or "/root",
            "GOPATH": str(cache / "path"), "GOCACHE": str(cache / "build"),
            "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod",
        }
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=str(app_dir)))
        try:
            try:
                summary = archive.extract(zip_path, staging)
            except archive.UnsafeArchive as exc:
                raise StepFailed(f"refusing to unpack {artifact.shown(ctx.settings.artifact)}: {exc}",
                                 "use a trustworthy archive of Go sources") from None
            if summary.digest != plan.digest:
                raise StepFailed("the artifact changed between check and build", self.retry_hint(ctx))
            src = staging / summary.module_root
            out = app_dir / ".dispatch.new"
            try:
                if not (src / "go.mod").exists():
                    ctx.runner.run([go, "mod", "init", "dispatch"], cwd=src, env=env, timeout=120)
                ctx.runner.run([go, "get"], cwd=src, env=env, timeout=900)
                ctx.runner.run(go_build_command(go, out), cwd=src, env=env, timeout=900)
            except CommandError as exc:
                raise StepFailed(f"{' '.join(exc.argv[1:3])} failed: {exc.output.strip()[-800:]}",
                                 "fix the sources (or the network for `go get`), then run "
                                 "`dispatchctl build --flavour go` again") from None
            fix_owner_mode(out, BINARY_MODE)
            binary_sha = sha256_file(out)
            before_change(ctx, "binary")
            lstat_regular(ctx.host_path(ctx.settings.binary))
            os.replace(out, ctx.host_path(ctx.settings.binary))
            # keep the sources beside the binary, as the manual's /app does
            kept = app_dir / "src"
            shutil.rmtree(kept, ignore_errors=True)
            os.rename(src, kept)
            stamp = {"artifact": artifact.shown(ctx.settings.artifact), "sources": plan.digest,
                     "artifact_sha256": plan.artifact_sha256, "binary": binary_sha}
            write_atomic(self._stamp_path(ctx), (json.dumps(stamp, indent=1) + "\n").encode(), mode=0o644)
            for made in (ctx.settings.binary, ctx.settings.app_dir / STAMP_NAME, ctx.settings.app_dir / "src"):
                record.remember(ctx, "files", made)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(zip_path.parent, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(app_dir / ".dispatch.new")
        size = os.stat(ctx.host_path(ctx.settings.binary)).st_size
        return f"built {ctx.settings.binary} with go ({size // 1024} KiB, sources {plan.digest[:12]})"

    def retry_hint(self, ctx: Context) -> str:
        return f"fix the cause above, then run `dispatchctl build --flavour {ctx.settings.flavour}` again"
