"""Build dispatchctl's distributables into dist/ (run by scripts/build-dist, with the checkout's
virtualenv that scripts/setup-dev makes):

- the wheel and the sdist (``python -m build --no-isolation``: hatchling from the virtualenv);
- ``dispatchctl-VERSION.pyz``: one executable zipapp of dispatchctl (without its lab) and the
  pure-Python files of the dependencies pinned with their sha256 in packaging/pyz-requirements.txt
  (pip downloads them with --require-hashes); deterministic: the same sources give the same bytes;
- ``dispatchctl-VERSION-1.noarch.rpm`` from packaging/dispatchctl.spec: /usr/bin/dispatchctl (the
  pyz), bash and zsh completions and a man page, both made by running the pyz itself;
- ``SHA256SUMS`` of the four.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roboshop_dispatch import __version__  # noqa: E402
from roboshop_dispatch.bundle import zip_bytes  # noqa: E402

HERE = ROOT / "packaging"
LOCK = HERE / "pyz-requirements.txt"
SPEC = HERE / "dispatchctl.spec"
BOOTSTRAP = HERE / "pyz_main.py"
INTERPRETER = "/usr/bin/python3"
# left out of the pyz: the lab (apt-get, debootstrap: never on a production host) and compiled
# extensions (markupsafe, charset-normalizer and protobuf fall back to their pure modules)
LEFT_OUT = re.compile(r"^roboshop_dispatch/lab/|\.(so|pyd|dll|dylib|exe)$|^[^/]+\.data/")
# the hosts' floor and the interpreters after it that the pyz's dependencies must serve
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
# the interpreter this virtualenv was made from: no virtualenv's packages beside the pyz's own
BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")
NOT_BUNDLED = {
    "psutil",  # used when the host has it (roboshop_dispatch/procinfo.py)
    "googleapis-common-protos",  # the OTLP exporter declares it, nothing imports it (bundle.OBSERVABILITY)
}


def run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"build-dist: {' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def build_python_packages(out: Path) -> Tuple[Path, Path]:
    """The sdist, then the wheel built from that sdist (as pip would), into ``out``."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], timeout=600)
    wheel = next(out.glob("roboshop_dispatch-*.whl"))
    sdist = next(out.glob("roboshop_dispatch-*.tar.gz"))
    return wheel, sdist


def download_locked(dest: Path) -> List[Path]:
    """The locked wheels, checked against their sha256 by pip (any wheel for markupsafe: only its
    Python files are used)."""
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes", "--only-binary=:all:",
         "--python-version", "3.9", "--implementation", "cp", "--abi", "cp39", "--platform", "manylinux2014_x86_64",
         "--disable-pip-version-check", "-d", str(dest), "-r", str(LOCK)], timeout=600)
    return sorted(dest.glob("*.whl"))


def wheel_members(wheel: Path) -> Dict[str, bytes]:
    """What a wheel contributes to the pyz: its files but LEFT_OUT, its RECORD listing only those."""
    kept: Dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.is_dir() and not LEFT_OUT.search(info.filename):
                kept[info.filename] = zf.read(info)
    for name in [n for n in kept if n.endswith(".dist-info/RECORD")]:
        lines = kept[name].decode().splitlines()
        kept[name] = "".join(f"{line}\n" for line in lines if line.split(",", 1)[0] in kept).encode()
    return kept


def pyz_members(wheels: Iterable[Path]) -> Dict[str, bytes]:
    members: Dict[str, bytes] = {}
    for wheel in wheels:
        for name, data in wheel_members(wheel).items():
            if name in members:
                raise SystemExit(f"build-dist: {name} is in two wheels ({wheel.name} and another)")
            members[name] = data
    return members


def fingerprint(members: Dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, data in sorted(members.items()):
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def pyz_bytes(members: Dict[str, bytes]) -> bytes:
    """``#!/usr/bin/python3 -I`` then the zip: the bootstrap as __main__.py, everything else as is."""
    digest = fingerprint(members)
    main = BOOTSTRAP.read_text().replace('"@VERSION@"', repr(__version__)).replace('"@FINGERPRINT@"', repr(digest))
    return zip_bytes({**members, "__main__.py": main.encode()}, f"#!{INTERPRETER} -I\n",
                     f"dispatchctl {__version__} {digest}")


def requirements(metadata: str) -> List[Tuple[str, str]]:
    """(name, marker) of each Requires-Dist line in a METADATA text."""
    found = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            spec, _, marker = line[len("Requires-Dist:"):].partition(";")
            found.append((re.split(r"[\s\[(<>=!~]", spec.strip(), maxsplit=1)[0], marker.strip()))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_dependencies(members: Dict[str, bytes]) -> List[str]:
    """Every dependency some bundled distribution declares for Linux and a Python of PYTHONS (no
    extra) that the pyz does not bundle (but NOT_BUNDLED); and every distribution that refuses 3.9."""
    from packaging.markers import Marker
    from packaging.specifiers import SpecifierSet

    metadata = {name: data.decode() for name, data in members.items() if name.endswith(".dist-info/METADATA")}
    present = {normalise(re.search(r"^Name: (.+)$", text, re.M).group(1)) for text in metadata.values()}  # type: ignore[union-attr]
    problems = []
    for name, text in sorted(metadata.items()):
        floor = re.search(r"^Requires-Python: (.+)$", text, re.M)
        if floor and "3.9" not in SpecifierSet(floor.group(1).strip()):
            problems.append(f"{name}: Requires-Python {floor.group(1).strip()} refuses 3.9")
        for dep, marker in requirements(text):
            environments = [{"python_version": v, "python_full_version": f"{v}.0", "sys_platform": "linux",
                             "platform_system": "Linux", "os_name": "posix", "extra": ""} for v in PYTHONS]
            needed = not marker or any(Marker(marker).evaluate(env) for env in environments)
            if needed and normalise(dep) not in present | NOT_BUNDLED:
                problems.append(f"{name}: needs {dep} ({marker or 'always'})")
    return problems


def build_pyz(own_wheel: Path, locked: List[Path], out: Path) -> Path:
    members = pyz_members([own_wheel, *locked])
    problems = missing_dependencies(members)
    if problems:
        raise SystemExit("build-dist: the pyz would lack what its packages need:\n  " + "\n  ".join(problems))
    pyz = out / f"dispatchctl-{__version__}.pyz"
    pyz.write_bytes(pyz_bytes(members))
    pyz.chmod(0o755)
    return pyz


def run_pyz(pyz: Path, argv: List[str], env: Dict[str, str]) -> str:
    """The pyz run as ``dispatchctl`` (its name in help and completions), from the zip itself."""
    with tempfile.TemporaryDirectory(prefix="dispatchctl-pyz-") as tmp:
        named = Path(tmp) / "dispatchctl"
        os.symlink(pyz.resolve(), named)
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "COLUMNS": "80",
                   "DISPATCHCTL_PYZ_UNPACK": "0", **env}
        return run([BASE_PYTHON, "-I", str(named), *argv], env=environ, timeout=120).stdout


def extras(pyz: Path, work: Path) -> Dict[str, Path]:
    """The completions (bash, zsh) and the man page, each made by the pyz itself."""
    files = {"dispatchctl.bash": "source_bash", "_dispatchctl": "source_zsh"}  # click's completion protocol
    made = {}
    for name, instruction in files.items():
        made[name] = work / name
        made[name].write_text(run_pyz(pyz, [], {"_DISPATCHCTL_COMPLETE": instruction}).lstrip("\n"))
    made["dispatchctl.1"] = work / "dispatchctl.1"
    made["dispatchctl.1"].write_text(run([BASE_PYTHON, "-I", str(HERE / "manpage.py"), str(pyz.resolve())],
                                         env={"LANG": "C.UTF-8", "DISPATCHCTL_PYZ_UNPACK": "0"}, timeout=120).stdout)
    return made


def build_rpm(pyz: Path, work: Path, out: Path) -> Path:
    sources = work / "SOURCES"
    sources.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pyz, sources / "dispatchctl.pyz")
    for name, path in extras(pyz, work).items():
        shutil.copy2(path, sources / name)
    top = work / "rpmbuild"
    run(["rpmbuild", "-bb", "--define", f"_topdir {top}", "--define", f"_sourcedir {sources}",
         "--define", f"dispatchctl_version {__version__}", "--define", "_tmppath %{_topdir}/tmp", str(SPEC)],
        timeout=600)
    built = next((top / "RPMS" / "noarch").glob(f"dispatchctl-{__version__}-1.noarch.rpm"))
    return Path(shutil.copy2(built, out / built.name))


def sha256sums(files: List[Path], out: Path) -> Path:
    lines = "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}\n" for f in sorted(files))
    path = out / "SHA256SUMS"
    path.write_text(lines)
    return path


def clean(out: Path) -> None:
    for pattern in ("roboshop_dispatch-*.whl", "roboshop_dispatch-*.tar.gz", "dispatchctl-*.pyz",
                    "dispatchctl-*.rpm", "SHA256SUMS"):
        for old in out.glob(pattern):
            old.unlink()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/build-dist", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where to put them (default: dist/)")
    parser.add_argument("--pyz-only", action="store_true", help="only the pyz (and its SHA256SUMS)")
    args = parser.parse_args(argv)
    for tool in ([] if args.pyz_only else ["rpmbuild"]):
        if shutil.which(tool) is None:
            raise SystemExit(f"build-dist: {tool} is missing: run scripts/setup-dev (apt-get install -y rpm)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clean(out)
    with tempfile.TemporaryDirectory(prefix="dispatchctl-build-") as tmp:
        work = Path(tmp)
        wheel, sdist = build_python_packages(work / "python")
        pyz = build_pyz(wheel, download_locked(work / "locked"), out)
        if args.pyz_only:
            built = [pyz]
        else:
            built = [Path(shutil.copy2(wheel, out / wheel.name)), Path(shutil.copy2(sdist, out / sdist.name)), pyz,
                     build_rpm(pyz, work / "rpm", out)]
    sums = sha256sums(built, out)
    for path in [*built, sums]:
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
