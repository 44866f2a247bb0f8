"""Pack the dispatch consumer and pika into one self-contained executable file (a zipapp).

The bytes are deterministic: entries sorted, fixed timestamps and modes, so the same sources
give the same file and the build step can tell "unchanged" by comparing bytes. Nothing else is
needed on the target host but a python3 >= 3.9.

The consumer's optional tracing and metrics (OpenTelemetry, prometheus_client and what they
need: :data:`OBSERVABILITY`) go in too, as the pure-Python files of the exact releases pinned in
pyproject.toml, with their ``*.dist-info`` (OpenTelemetry finds its context implementation
through entry points); they are imported only when switched on. Taken from this environment,
where pip installed them with dispatchctl: compiled accelerators (protobuf's upb,
charset-normalizer's mypyc modules) are left out, their pure-Python twins are in every wheel, and
only the dist-info files that are the same whichever wheel was installed (METADATA, entry points,
licences) are kept, so the bytes do not depend on the machine that builds them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

from .layout import PYTHON
from .pkgfiles import archive_of, files_under, read_bytes

_EPOCH = (1980, 1, 1, 0, 0, 0)
MAIN = (
    "# dispatch: the RoboShop dispatch consumer, packed by dispatchctl.\n"
    "import runpy\n"
    "runpy.run_module('roboshop_dispatch.consumer', run_name='__main__', alter_sys=True)\n"
)


def _python_files(package_dir: Path, arc_prefix: str) -> Iterator[Tuple[str, Path]]:
    """The package's modules, from a directory or from inside the single-file dispatchctl's zip."""
    for name, path in files_under(package_dir, ".py"):
        yield f"{arc_prefix}/{name}", path


# distribution -> the exact release bundled (pyproject.toml pins the same: tests/test_bundle.py checks).
# Not bundled: googleapis-common-protos, which the OTLP exporter declares and nothing imports.
OBSERVABILITY: Dict[str, str] = {
    "opentelemetry-api": "1.41.1",
    "opentelemetry-sdk": "1.41.1",
    "opentelemetry-exporter-otlp-proto-http": "1.41.1",
    "opentelemetry-exporter-otlp-proto-common": "1.41.1",
    "opentelemetry-proto": "1.41.1",
    "opentelemetry-semantic-conventions": "0.62b1",
    "protobuf": "6.33.6",
    "requests": "2.32.5",
    "urllib3": "2.6.3",
    "idna": "3.20",
    "charset-normalizer": "3.5.3",
    "certifi": "2026.10.19.post1",
    "importlib-metadata": "8.7.1",
    "zipp": "3.23.1",
    "typing-extensions": "4.16.0",
    "prometheus-client": "0.26.0",
}
_SKIP_SUFFIXES = (".so", ".pyd", ".pyc", ".pyi", ".dll", ".dylib", ".exe", ".proto", ".md")
_SKIP_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "WHEEL", "direct_url.json"}  # differ by installer/wheel


def _wanted(relative: str) -> bool:
    """Whether an installed file of a bundled distribution goes into the zipapp."""
    parts = relative.split("/")
    if ".." in parts or "__pycache__" in parts or relative.endswith(_SKIP_SUFFIXES) or parts[-1] == "py.typed":
        return False
    return not (parts[0].endswith(".dist-info") and len(parts) == 2 and parts[1] in _SKIP_DIST_INFO)


def _pinned() -> Iterator[Any]:
    """Each :data:`OBSERVABILITY` distribution as installed here; a missing one or another release
    is an error naming it."""
    from importlib import metadata

    for name, pinned in OBSERVABILITY.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ModuleNotFoundError(f"{name} is not installed: reinstall dispatchctl (it bundles {name}=={pinned} "
                                      "into the consumer)") from None
        if dist.version != pinned:
            raise ModuleNotFoundError(f"{name} {dist.version} is installed, the consumer bundles {name}=={pinned} "
                                      "(the release it is tested with): reinstall dispatchctl")
        yield dist


def observability_sources() -> Dict[str, bytes]:
    """Archive name -> bytes of every :data:`OBSERVABILITY` distribution's pure-Python files and
    dist-info, as installed here."""
    files: Dict[str, bytes] = {}
    for dist in _pinned():
        for entry in dist.files or ():
            relative = entry.as_posix()
            if _wanted(relative):
                files[relative] = entry.read_binary()  # a file, or a member of the zip dispatchctl runs from
    files.update(_namespace_inits(files))
    return files


def _content_hash(data: bytes) -> str:
    """sha256 as a RECORD file writes it (urlsafe base64, no padding)."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def observability_hashes() -> Dict[str, str]:
    """Archive name -> content hash of every file :func:`observability_sources` would read, from
    the RECORD pip wrote: fingerprint() without reading some 700 files on every run. A file RECORD
    gives no sha256 for, or whose size is not the recorded one (certifi's CA bundle is often
    replaced by the system's), is read and hashed."""
    hashes: Dict[str, str] = {}
    for dist in _pinned():
        entries = list(dist.files or ())
        # run from the single-file dispatchctl's zip: its files cannot be stat-ed, so they are read
        in_zip = bool(entries) and archive_of(Path(str(dist.locate_file(entries[0])))) is not None
        for entry in entries:
            relative = entry.as_posix()
            if not _wanted(relative):
                continue
            recorded = entry.hash
            if (recorded is not None and recorded.mode == "sha256" and not in_zip
                    and entry.size == Path(str(dist.locate_file(entry))).stat().st_size):
                hashes[relative] = recorded.value
            else:  # no hash recorded, or the file changed since (a distribution's own CA bundle...)
                hashes[relative] = _content_hash(entry.read_binary())
    for name in _namespace_inits(dict.fromkeys(hashes, b"")):
        hashes[name] = _content_hash(b"")
    return hashes


def _namespace_inits(files: Dict[str, bytes]) -> Dict[str, bytes]:
    """An empty ``__init__.py`` for each namespace package (``opentelemetry``, ``google``...):
    Python 3.9's zipimport cannot import namespace packages from a zip (3.10's does not help the
    hosts), and inside the zipapp every portion of them is there anyway."""
    packages = {name.rsplit("/", 1)[0] for name in files if name.endswith(".py") and "/" in name}
    wanted: Set[str] = set()
    for package in packages:
        parts = package.split("/")
        wanted.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {f"{d}/__init__.py": b"" for d in sorted(wanted) if f"{d}/__init__.py" not in files}


def sources() -> Dict[str, bytes]:
    """Archive name -> bytes of everything that goes into the zipapp."""
    return {**_own_sources(), **observability_sources()}


def _own_sources() -> Dict[str, bytes]:
    """The consumer, pika and pika's licence: everything but the observability packages."""
    import importlib.util

    own = Path(__file__).resolve().parent
    spec = importlib.util.find_spec("pika")  # located, not imported: keeps the CLI fast
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("pika is not installed: pip install pika")
    files: Dict[str, bytes] = {"__main__.py": MAIN.encode()}
    files["roboshop_dispatch/__init__.py"] = read_bytes(own / "__init__.py")
    files["roboshop_dispatch/amqp.py"] = read_bytes(own / "amqp.py")
    files["roboshop_dispatch/pikaload.py"] = read_bytes(own / "pikaload.py")
    for name, path in _python_files(own / "consumer", "roboshop_dispatch/consumer"):
        files[name] = read_bytes(path)
    for name, path in _python_files(Path(spec.origin).resolve().parent, "pika"):
        files[name] = read_bytes(path)
    files["LICENSES/pika.txt"] = _pika_license()
    return files


def _pika_license() -> bytes:
    from importlib import metadata

    try:
        dist = metadata.distribution("pika")
        for f in dist.files or ():
            if "LICENSE" in f.name.upper():
                return f.read_binary()  # a file, or a member of the zip dispatchctl runs from
    except metadata.PackageNotFoundError:
        pass
    return b"pika is distributed under the BSD 3-Clause licence.\n"


def fingerprint(files: Optional[Dict[str, bytes]] = None, interpreter: str = PYTHON) -> str:
    """sha256 over the names and content hashes of what goes into the zipapp (and the interpreter
    line). Without ``files``, the observability packages' hashes come from their RECORD files."""
    if files is not None:
        hashes = {name: _content_hash(data) for name, data in files.items()}
    else:
        hashes = {name: _content_hash(data) for name, data in _own_sources().items()}
        hashes.update(observability_hashes())
    digest = hashlib.sha256(interpreter.encode() + b"\0")
    for name, content in sorted(hashes.items()):
        digest.update(name.encode() + b"\0" + content.encode() + b"\n")
    return digest.hexdigest()


def installed_fingerprint(path: Path) -> Optional[str]:
    """The fingerprint recorded in an installed zipapp's comment, or None (absent, not ours)."""
    try:
        with zipfile.ZipFile(path) as zf:
            comment = zf.comment.decode("ascii", "replace")
    except (OSError, zipfile.BadZipFile):
        return None
    prefix = "dispatchctl-fingerprint:"
    return comment[len(prefix):] if comment.startswith(prefix) else None


def build_zipapp(interpreter: str = PYTHON) -> bytes:
    """The zipapp's bytes, with ``#!<interpreter> -I`` so it runs as ``/app/dispatch`` too.
    Its zip comment records :func:`fingerprint` so a re-run can compare without rebuilding."""
    files = sources()
    return zip_bytes(files, f"#!{interpreter} -I\n", f"dispatchctl-fingerprint:{fingerprint(files, interpreter)}")


def zip_bytes(files: Dict[str, bytes], head: str, comment: str) -> bytes:
    """``head`` (the ``#!`` line) then a zip of ``files`` whose bytes depend on nothing else: entries
    sorted, one fixed timestamp, mode 0644, the same compression (also the single-file dispatchctl's)."""
    buf = io.BytesIO()
    buf.write(head.encode())
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.comment = comment.encode()
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100644 & 0xFFFF) << 16
            info.create_system = 3
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()
