"""Step 4: ``/app/dispatch``.

``bundled``: one self-contained zipapp (the consumer and pika) run by the system python3. Its
bytes are deterministic: the installed file is compared byte for byte with a fresh build (never
by the fingerprint in its own zip comment, which anyone who wrote the file could forge) and
rewritten only when it differs; a re-run whose sources and installed file are unchanged (a
root-only record of their stat) skips even the build.

``go``: the manual's route. Fetch the artifact, unzip it safely, ``go mod init dispatch`` when
there is no go.mod, ``go get`` (left out when that module imports only the standard library and
itself), ``go build``, all in a private directory of ours
(layout.GO_BUILD_DIR, root 0700): the app directory is shared with the other RoboShop services,
so nothing there is touched but the binary and the stamp (an ``/app/src`` is theirs). The sources
of the last build are kept in layout.GO_SOURCES. A stamp beside the binary (root, 0600) records
the sources' digest, the binary's sha256 and the artifact's address masked
(:func:`roboshop_dispatch.artifact.shown`): unchanged sources and an untouched binary skip the
build. A stamp that is not root's is never believed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .. import goimports
from ..files import drift, fix_owner_mode, lstat_regular, read_regular, write_atomic
from ..host import CommandError
from ..layout import BUILD_STAMP_NAME as STAMP_NAME
from ..layout import BUNDLE_CACHE, GO_BUILD_DIR, GO_CACHE, GO_CANDIDATES, GO_SOURCES, PYTHON
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
    data: bytes = field(default=b"", repr=False)  # the zipapp the check built and compared


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


def read_stamp(path: Path) -> Dict[str, Any]:
    """The build stamp, or {} when absent, unreadable or not root's alone (then not believed:
    whoever wrote it could make the next build skip, or fetch what they chose)."""
    st = lstat_regular(path)
    if st is None or st.st_uid != 0 or st.st_mode & 0o022:
        return {}
    try:
        stamp = json.loads(read_regular(path) or b"{}")
    except ValueError:
        return {}
    return stamp if isinstance(stamp, dict) else {}


def private_dir(path: Path) -> Path:
    """``path`` as a directory only root may write in (made 0700 when missing), or StepFailed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise StepFailed(f"{path} is not a directory of root's alone (uid {st.st_uid}, mode "
                         f"{stat.S_IMODE(st.st_mode):04o}): the build will not run in it",
                         f"remove {path} after checking who made it, then run the build again")
    return path


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

        data = plan.data or bundle.build_zipapp(PYTHON)
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
        """The installed file against a fresh build, byte for byte (the build is deterministic)."""
        from .. import bundle

        path = ctx.settings.binary
        binary = ctx.host_path(path)
        data = bundle.build_zipapp(PYTHON)
        short = bundle.fingerprint(interpreter=PYTHON)[:12]
        report: Dict[str, object] = {"path": str(path), "flavour": "bundled", "fingerprint": short}
        st = _file_state(binary)
        if st is not None and read_regular(binary) == data:
            fixes = _mode_fixes(st)
            if not fixes:
                return unchanged(f"{path} up to date (zipapp {short})", report)
            return Change([Action("fix", str(path), ": " + ", ".join(fixes))], FixPlan(key), report=report)
        what = "write" if st is None else ("update" if bundle.installed_fingerprint(binary) else "replace")
        return Change([Action(what, str(path), f" (zipapp {short})")], BundlePlan(short, key, data),
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
        stamp = read_stamp(self._stamp_path(ctx))
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
        try:
            go = find_go(ctx.root)
            if go is None:
                raise StepFailed("the go toolchain is not installed",
                                 "run `dispatchctl install --flavour go` (it installs golang first)")
            private_dir(ctx.host_path(GO_BUILD_DIR.parent))
            staging = Path(tempfile.mkdtemp(prefix="build-", dir=str(private_dir(ctx.host_path(GO_BUILD_DIR)))))
            try:
                (staging / "unpacked").mkdir()
                try:
                    summary = archive.extract(zip_path, staging / "unpacked")
                except archive.UnsafeArchive as exc:
                    raise StepFailed(f"refusing to unpack {artifact.shown(ctx.settings.artifact)}: {exc}",
                                     "use a trustworthy archive of Go sources") from None
                if summary.digest != plan.digest:
                    raise StepFailed("the artifact changed between check and build", self.retry_hint(ctx))
                src = staging / "unpacked" / summary.module_root
                data = self._go_build(ctx, go, src, staging / "dispatch")
                self._install_go(ctx, plan, data, src)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            shutil.rmtree(zip_path.parent, ignore_errors=True)
        return f"built {ctx.settings.binary} with go ({len(data) // 1024} KiB, sources {plan.digest[:12]})"

    def _go_build(self, ctx: Context, go: str, src: Path, out: Path) -> bytes:
        """``go mod init`` (when there is no go.mod), ``go get`` (unless that init's module imports
        nothing from elsewhere: :mod:`..goimports`), ``go build`` in ``src``: the binary's bytes."""
        cache = ctx.host_path(GO_CACHE)
        env = {
            "HOME": os.environ.get("HOME") or "/root",
            "GOPATH": str(cache / "path"), "GOCACHE": str(cache / "build"),
            "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod",
        }
        try:
            fetch = True
            if not (src / "go.mod").exists():
                ctx.runner.run([go, "mod", "init", "dispatch"], cwd=src, env=env, timeout=120)
                fetch = goimports.needs_get(src, "dispatch")  # nothing to get: the standard library only
            if fetch:
                ctx.runner.run([go, "get"], cwd=src, env=env, timeout=900)
            ctx.runner.run(go_build_command(go, out), cwd=src, env=env, timeout=900)
        except CommandError as exc:
            raise StepFailed(f"{' '.join(exc.argv[1:3])} failed: {exc.output.strip()[-800:]}",
                             "fix the sources (or the network for `go get`), then run "
                             "`dispatchctl build --flavour go` again") from None
        return out.read_bytes()

    def _install_go(self, ctx: Context, plan: GoPlan, data: bytes, src: Path) -> None:
        """The binary and its stamp into the app dir (nothing else there is touched); the sources
        kept in our private GO_SOURCES."""
        from .. import artifact

        before_change(ctx, "binary")
        write_atomic(ctx.host_path(ctx.settings.binary), data, mode=BINARY_MODE, uid=0, gid=0)
        kept = ctx.host_path(GO_SOURCES)
        shutil.rmtree(kept, ignore_errors=True)  # ours alone: the last build's sources
        os.rename(src, kept)
        stamp = {"artifact": artifact.shown(ctx.settings.artifact), "sources": plan.digest,
                 "artifact_sha256": plan.artifact_sha256, "binary": hashlib.sha256(data).hexdigest()}
        write_atomic(self._stamp_path(ctx), (json.dumps(stamp, indent=1) + "\n").encode(), mode=0o600, uid=0, gid=0)
        for made in (ctx.settings.binary, ctx.settings.app_dir / STAMP_NAME):
            record.remember(ctx, "files", made)

    def retry_hint(self, ctx: Context) -> str:
        return f"fix the cause above, then run `dispatchctl build --flavour {ctx.settings.flavour}` again"
