"""dispatchctl's distributables, built once per test session the way an operator builds them:
``scripts/build-dist`` into the checkout's ``dist/`` (what the Ansible role installs by default).
A lock keeps two test runs of one checkout from building at once."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from roboshop_dispatch import __version__

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "dist"


@dataclass(frozen=True)
class Dist:
    dir: Path
    pyz: Path
    rpm: Path
    wheel: Path
    sdist: Path
    sums: Path

    def pyz_fingerprint(self) -> str:
        """The fingerprint the pyz's zip comment records (its unpacked copy's directory name)."""
        import zipfile

        with zipfile.ZipFile(self.pyz) as zf:
            return zf.comment.decode().split()[-1]

    def sha256(self) -> Dict[str, str]:
        """SHA256SUMS as a dict: file name -> digest."""
        return {name: digest for digest, name in (line.split("  ", 1) for line in self.sums.read_text().splitlines())}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_dist(out: Path = DIST, *args: str) -> subprocess.CompletedProcess:
    (REPO / "build").mkdir(exist_ok=True)
    with open(REPO / "build" / ".build-dist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return subprocess.run([str(REPO / "scripts" / "build-dist"), "--out", str(out), *args], capture_output=True,
                              text=True, timeout=900, stdin=subprocess.DEVNULL)


def built(out: Path = DIST) -> Dist:
    """What scripts/build-dist left in ``out``; AssertionError naming what is missing."""
    names = {
        "pyz": f"dispatchctl-{__version__}.pyz", "rpm": f"dispatchctl-{__version__}-1.noarch.rpm",
        "wheel": f"roboshop_dispatch-{__version__}-py3-none-any.whl",
        "sdist": f"roboshop_dispatch-{__version__}.tar.gz",
        "sums": "SHA256SUMS",
    }
    missing = [name for name in names.values() if not (out / name).is_file()]
    assert not missing, f"scripts/build-dist left no {', '.join(missing)} in {out}"
    return Dist(out, **{key: out / name for key, name in names.items()})


def changed_since_installed() -> List[str]:
    """The files of what the consumer zipapp packs (pika and the observability packages) that
    differ from what pip installed into this virtualenv (their RECORD): a zipapp built here then
    packs those bytes, and no build from the wheels can be byte-identical to it."""
    import base64
    from importlib import metadata

    from roboshop_dispatch.bundle import OBSERVABILITY

    changed = []
    for name in ["pika", *OBSERVABILITY]:
        dist = metadata.distribution(name)
        for entry in dist.files or ():
            path = Path(str(dist.locate_file(entry)))
            if entry.hash is None or entry.hash.mode != "sha256" or not path.is_file():
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
            if digest != entry.hash.value:
                changed.append(str(path))
    return changed


def assert_virtualenv_as_installed() -> None:
    changed = changed_since_installed()
    assert not changed, ("files of this virtualenv changed since pip installed them, so its zipapp is not the "
                         f"wheels' (reinstall them: pip install --force-reinstall --no-deps ...): {changed}")
