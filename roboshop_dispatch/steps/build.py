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
import stat
import tempfile
from pathlib import Path
from typing import Dict, Optional

from ..files import write_atomic
from ..host import CommandError
from .base import Change, Context, Step, StepFailed, load_cache, save_cache
from .service import mark_pending

PYTHON = "/usr/bin/python3"
STAMP_NAME = ".dispatch-build.json"
GO_CACHE = Path("/var/cache/dispatchctl/go")
GO_CANDIDATES = ("/usr/bin/go", "/usr/lib/go/bin/go", "/usr/local/go/bin/go", "/usr/lib/golang/bin/go")


BUNDLE_CACHE = Path("/var/cache/dispatchctl/bundle.json")


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
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _mode_fixes(st: os.stat_result) -> list:
    fixes = []
    if stat.S_IMODE(st.st_mode) != 0o755:
        fixes.append(f"mode {stat.S_IMODE(st.st_mode):04o} -> 0755")
    if st.st_uid != 0 or st.st_gid != 0:
        fixes.append(f"owner {st.st_uid}:{st.st_gid} -> root:root")
    return fixes


def sha256_file(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except FileNotFoundError:
        return None


def find_go(root: Path = Path("/")) -> Optional[str]:
    found = shutil.which("go")
    if found and root == Path("/"):
        return found
    for candidate in GO_CANDIDATES:
        if os.access(root / candidate.lstrip("/"), os.X_OK):
            return candidate
    return None


class BuildStep(Step):
    name = "build"
    title = "Build /app/dispatch"

    def check(self, ctx: Context) -> Change:
        if ctx.settings.flavour == "go":
            return self._check_go(ctx)
        return self._check_bundled(ctx)

    def apply(self, ctx: Context, change: Change) -> str:
        action = change.data["action"]
        binary = ctx.host_path(ctx.settings.binary)
        if action == "fix":
            os.chmod(binary, 0o755)
            os.chown(binary, 0, 0)
            if ctx.settings.flavour == "bundled":
                self._remember_bundle(ctx, change.data.get("key"))  # type: ignore[arg-type]
            return "fixed" + change.message[len("fix"):]
        if action == "go":
            return self._apply_go(ctx, change)
        from .. import bundle

        data = bundle.build_zipapp(PYTHON)
        mark_pending(ctx, "binary")
        write_atomic(binary, data, mode=0o755, uid=0, gid=0)
        self._remember_bundle(ctx, change.data.get("key"))  # type: ignore[arg-type]
        return f"wrote {ctx.settings.binary} (zipapp, {len(data) // 1024} KiB, {change.data['fingerprint']})"

    # -- bundled ------------------------------------------------------------------------------
    def _check_bundled(self, ctx: Context) -> Change:
        path = ctx.settings.binary
        binary = ctx.host_path(path)
        key = bundle_stat_key()
        st = _file_state(binary)
        cached = load_cache(ctx, BUNDLE_CACHE)
        if (st is not None and key is not None and cached.get("key") == key and not _mode_fixes(st)
                and cached.get("binary") == [st.st_size, st.st_mtime_ns, st.st_ino]):
            short = str(cached.get("fingerprint", ""))[:12]
            return Change(False, f"{path} up to date (zipapp {short})",
                          report={"path": str(path), "flavour": "bundled", "fingerprint": short})
        change = self._check_bundled_content(ctx)
        if not change.needed:
            self._remember_bundle(ctx, key)
        change.data["key"] = key
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

    def _check_bundled_content(self, ctx: Context) -> Change:
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
                return Change(False, f"{path} up to date (zipapp {short})", report=report)
            return Change(True, f"fix {path}: {', '.join(fixes)}", data={"action": "fix"}, report=report)
        what = "write" if st is None else ("replace" if have is None else "update")
        return Change(True, f"{what} {path} (zipapp {short})", marks=frozenset({"binary"}),
                      data={"action": "bundled", "fingerprint": short}, report=report)

    # -- go -------------------------------------------------------------------------------------
    def _stamp_path(self, ctx: Context) -> Path:
        return ctx.host_path(ctx.settings.app_dir / STAMP_NAME)

    def _check_go(self, ctx: Context) -> Change:
        from .. import archive, artifact

        source = artifact.shown(ctx.settings.artifact)
        # INTEGRATOR: --insecure / --sha256 arrive as Settings fields on the steps branch: read them
        # directly (``ctx.settings.insecure``, ``ctx.settings.sha256``) once merged
        allow_http = bool(getattr(ctx.settings, "insecure", True))
        pinned = getattr(ctx.settings, "sha256", None)
        download = Path(tempfile.mkdtemp(prefix="dispatchctl-artifact-"))
        keep = False
        try:
            try:
                fetched = artifact.fetch(ctx.settings.artifact, download, allow_http=allow_http,
                                         expected_sha256=pinned)
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
            digest = summary.digest
            path = ctx.settings.binary
            binary = ctx.host_path(path)
            report: Dict[str, object] = {"path": str(path), "flavour": "go", "sources": digest[:12],
                                         "artifact_sha256": fetched.sha256}
            try:
                stamp = json.loads(self._stamp_path(ctx).read_text())
            except (OSError, ValueError):
                stamp = {}
            st = _file_state(binary)
            binary_sha = sha256_file(binary) if st is not None else None
            if stamp.get("sources") == digest and binary_sha is not None and stamp.get("binary") == binary_sha:
                assert st is not None
                fixes = _mode_fixes(st)
                if not fixes:
                    return Change(False, f"sources unchanged ({digest[:12]}): build skipped", report=report)
                return Change(True, f"fix {path}: {', '.join(fixes)}", data={"action": "fix"}, report=report)
            why = ("first build" if st is None else
                   "sources changed" if stamp.get("sources") != digest else "binary differs from the last build")
            keep = not ctx.dry_run  # apply unpacks this very file, then removes it
            return Change(True, f"go build {path} from {source} ({why})", marks=frozenset({"binary"}),
                          data={"action": "go", "archive": str(fetched.path), "digest": digest,
                                "artifact_sha256": fetched.sha256}, report=report)
        finally:
            if not keep:
                shutil.rmtree(download, ignore_errors=True)

    def _apply_go(self, ctx: Context, change: Change) -> str:
        from .. import archive, artifact

        zip_path = Path(str(change.data["archive"]))
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
            "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod",
        }
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=str(app_dir)))
        try:
            try:
                summary = archive.extract(zip_path, staging)
            except archive.UnsafeArchive as exc:
                raise StepFailed(f"refusing to unpack {artifact.shown(ctx.settings.artifact)}: {exc}",
                                 "use a trustworthy archive of Go sources") from None
            if summary.digest != change.data["digest"]:
                raise StepFailed("the artifact changed between check and build", self.retry_hint(ctx))
            src = staging / summary.module_root
            out = app_dir / ".dispatch.new"
            try:
                if not (src / "go.mod").exists():
                    ctx.runner.run([go, "mod", "init", "dispatch"], cwd=src, env=env, timeout=120)
                ctx.runner.run([go, "get"], cwd=src, env=env, timeout=900)
                ctx.runner.run([go, "build", "-trimpath", "-o", str(out)], cwd=src, env=env, timeout=900)
            except CommandError as exc:
                raise StepFailed(f"{' '.join(exc.argv[1:3])} failed: {exc.output.strip()[-800:]}",
                                 "fix the sources (or the network for `go get`), then run "
                                 "`dispatchctl build --flavour go` again") from None
            os.chmod(out, 0o755)
            os.chown(out, 0, 0)
            binary_sha = sha256_file(out)
            mark_pending(ctx, "binary")
            os.replace(out, ctx.host_path(ctx.settings.binary))
            # keep the sources beside the binary, as the manual's /app does
            kept = app_dir / "src"
            shutil.rmtree(kept, ignore_errors=True)
            os.rename(src, kept)
            stamp = {"artifact": artifact.shown(ctx.settings.artifact), "sources": change.data["digest"],
                     "artifact_sha256": change.data["artifact_sha256"], "binary": binary_sha}
            write_atomic(self._stamp_path(ctx), (json.dumps(stamp, indent=1) + "\n").encode(), mode=0o644)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(zip_path.parent, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(app_dir / ".dispatch.new")
        size = os.stat(ctx.host_path(ctx.settings.binary)).st_size
        return f"built {ctx.settings.binary} with go ({size // 1024} KiB, sources {str(change.data['digest'])[:12]})"

    def retry_hint(self, ctx: Context) -> str:
        return f"fix the cause above, then run `dispatchctl build --flavour {ctx.settings.flavour}` again"
