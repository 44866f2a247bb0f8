"""Pack the dispatch consumer and pika into one self-contained executable file (a zipapp).

The bytes are deterministic: entries sorted, fixed timestamps and modes, so the same sources
give the same file and the build step can tell "unchanged" by comparing bytes. Nothing else is
needed on the target host but a python3 >= 3.9.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Dict, Optional, Tuple

from .layout import PYTHON

_EPOCH = (1980, 1, 1, 0, 0, 0)
MAIN = (
    "# dispatch: the RoboShop dispatch consumer, packed by dispatchctl.\n"
    "import runpy\n"
    "runpy.run_module('roboshop_dispatch.consumer', run_name='__main__', alter_sys=True)\n"
)


def _python_files(package_dir: Path, arc_prefix: str) -> Iterator[Tuple[str, Path]]:
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        yield f"{arc_prefix}/{path.relative_to(package_dir).as_posix()}", path


def sources() -> Dict[str, bytes]:
    """Archive name -> bytes of everything that goes into the zipapp."""
    import importlib.util

    own = Path(__file__).resolve().parent
    spec = importlib.util.find_spec("pika")  # located, not imported: keeps the CLI fast
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("pika is not installed: pip install pika")
    files: Dict[str, bytes] = {"__main__.py": MAIN.encode()}
    files["roboshop_dispatch/__init__.py"] = (own / "__init__.py").read_bytes()
    files["roboshop_dispatch/amqp.py"] = (own / "amqp.py").read_bytes()
    for name, path in _python_files(own / "consumer", "roboshop_dispatch/consumer"):
        files[name] = path.read_bytes()
    for name, path in _python_files(Path(spec.origin).resolve().parent, "pika"):
        files[name] = path.read_bytes()
    files["LICENSES/pika.txt"] = _pika_license()
    return files


def _pika_license() -> bytes:
    from importlib import metadata

    try:
        dist = metadata.distribution("pika")
        for f in dist.files or ():
            if "LICENSE" in f.name.upper():
                return Path(str(dist.locate_file(f))).read_bytes()
    except metadata.PackageNotFoundError:
        pass
    return b"pika is distributed under the BSD 3-Clause licence.\n"


def fingerprint(files: Optional[Dict[str, bytes]] = None, interpreter: str = PYTHON) -> str:
    """sha256 over the names and contents that go into the zipapp (and the interpreter line)."""
    digest = hashlib.sha256(interpreter.encode() + b"\0")
    for name, data in sorted((files if files is not None else sources()).items()):
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
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
    buf = io.BytesIO()
    buf.write(f"#!{interpreter} -I\n".encode())
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.comment = f"dispatchctl-fingerprint:{fingerprint(files, interpreter)}".encode()
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100644 & 0xFFFF) << 16
            info.create_system = 3
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()
