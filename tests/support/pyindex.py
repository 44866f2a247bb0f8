"""A package index of our own for the tests: a PEP 503 "simple" index of a directory of wheels,
served over HTTP on loopback (the test hosts share this machine's network), and the requirements
file that pins every one of those wheels by version and sha256 (what ``pip --require-hashes``
wants, and what the Ansible role's index source asks for)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Tuple


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(wheel: Path) -> Tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return normalise(name), version


def make_index(wheels: List[Path], root: Path) -> Path:
    """``root/files/*.whl`` and ``root/simple/<name>/index.html``; returns ``root``."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    by_name: dict = {}
    for wheel in wheels:
        shutil.copy2(wheel, files / wheel.name)
        by_name.setdefault(wheel_name_version(wheel)[0], []).append(wheel)
    for name, found in by_name.items():
        page = root / "simple" / name / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../files/{html.escape(w.name)}#sha256={sha256(w)}">{html.escape(w.name)}</a>\n'
                        for w in sorted(found))
        page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hashed_requirements(wheels: List[Path]) -> str:
    """``name==version --hash=sha256:...`` for each wheel: every one pinned, every hash given."""
    return "".join(f"{name}=={version} --hash=sha256:{sha256(w)}\n"
                   for w in sorted(wheels) for name, version in [wheel_name_version(w)])


@contextlib.contextmanager
def serving(root: Path) -> Iterator[str]:
    """``root`` over HTTP on 127.0.0.1 (a free port) while the block runs: yields the index URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
