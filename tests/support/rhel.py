"""A RHEL-shaped systemd host for the tests: real ``dnf`` and ``rpm`` over a local repository.

No RHEL-family image or repository can be had on these machines, so the host is derived from the
Debian test rootfs (roboshop_dispatch/lab/nspawn.py) and cached beside it, keyed by its recipe:

- Debian's ``dnf``, ``python3-dnf`` and ``rpm`` are installed into a copy of the Debian rootfs
  (``apt-get`` inside it, once), ``/etc/os-release`` says Rocky Linux 9, the RPM database is empty
  and dnf sees one repository only: ``file:///srv/dispatchctl-rpms`` (gpgcheck=0), bind-mounted
  read-only from a directory the test session builds with ``rpmbuild`` and ``createrepo_c``.
- What dispatchctl asks dnf for is *hidden* from the Debian side: ``/usr/bin/python3``,
  ``/usr/bin/go``, ``/usr/bin/gofmt`` and ``/usr/lib/go`` are removed (dnf itself, a Python program,
  is pointed at ``/usr/bin/python3.X`` explicitly), so ``rpm -q`` answers "not installed" and dispatchctl
  has to run ``dnf install`` for real.
- The RPMs (:func:`build_repo`): ``python3`` packs a real CPython 3.9 (the one pyenv built on this
  machine, without its tests) as ``/usr/bin/python3.9`` + ``/usr/lib/python3.9``: the bundled zipapp
  then really runs on 3.9, as on RHEL 9. ``golang`` is a thin package: ``/usr/bin/go`` and
  ``/usr/lib/golang`` are links into the Debian toolchain that stays in the rootfs
  (``/usr/lib/go-1.19``). That proves dispatchctl's dnf/rpm commands and their answers, not Rocky's
  own packages.

:class:`RhelHost` boots one such host; ``os_release`` switches it to Fedora (volatile: per boot).
Nothing skips: a host that cannot be built fails the caller with the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from roboshop_dispatch.lab.nspawn import CACHE, PATH_INSIDE, Container, HostError, ensure_rootfs, recipe_key

RHEL_RECIPE_VERSION = 1
DEB_PACKAGES: Tuple[str, ...] = ("dnf", "python3-dnf", "rpm")
HIDDEN: Tuple[str, ...] = ("usr/bin/python3", "usr/bin/go", "usr/bin/gofmt", "usr/lib/go")
REPO_INSIDE = "/srv/dispatchctl-rpms"
REPO_ID = "dispatchctl-test"
READY_MARK = ".dispatchctl-rhel-ready"

OS_RELEASE: Dict[str, str] = {
    "rocky": textwrap.dedent("""\
        NAME="Rocky Linux"
        VERSION="9.3 (Blue Onyx)"
        ID="rocky"
        ID_LIKE="rhel centos fedora"
        VERSION_ID="9.3"
        PLATFORM_ID="platform:el9"
        PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"
        ANSI_COLOR="0;32"
        """),
    "fedora": textwrap.dedent("""\
        NAME="Fedora Linux"
        VERSION="39 (Server Edition)"
        ID=fedora
        VERSION_ID=39
        PLATFORM_ID="platform:f39"
        PRETTY_NAME="Fedora Linux 39 (Server Edition)"
        VARIANT_ID=server
        """),
}
REPO_FILE = textwrap.dedent(f"""\
    [{REPO_ID}]
    name=dispatchctl test repository (RPMs built by the test session)
    baseurl=file://{REPO_INSIDE}
    enabled=1
    gpgcheck=0
    repo_gpgcheck=0
    """)
DNF_CONF = textwrap.dedent("""\
    [main]
    gpgcheck=0
    installonly_limit=3
    clean_requirements_on_remove=True
    best=True
    skip_if_unavailable=False
    install_weak_deps=False
    reposdir=/etc/yum.repos.d
    """)


def rhel_recipe_key() -> str:
    recipe = {"base": recipe_key(), "deb": sorted(DEB_PACKAGES), "hidden": sorted(HIDDEN),
              "os": OS_RELEASE["rocky"], "repo": REPO_FILE, "dnf": DNF_CONF, "version": RHEL_RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def rhel_rootfs_path() -> Path:
    return CACHE / f"rootfs-rocky9-{rhel_recipe_key()}"


def _run(argv: Sequence[str], what: str, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise HostError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    return proc


def ensure_rhel_rootfs(log=None) -> Path:
    """The cached RHEL-shaped rootfs, derived from the Debian one the first time (about a minute).
    Safe against concurrent test runs (a lock)."""
    base = ensure_rootfs(log=log)
    target = rhel_rootfs_path()
    if (target / READY_MARK).exists():
        return target
    with open(CACHE / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / READY_MARK).exists():
            return target
        started = time.monotonic()
        work = CACHE / f".{target.name}.build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        if log:
            log(f"deriving the RHEL-shaped test rootfs (once) from {base.name}")
        _run(["cp", "-a", "--reflink=auto", str(base), str(work)], "copying the Debian rootfs")
        # a plain (non-volatile) container run: apt-get installs Debian's dnf and rpm into the copy
        _run(["systemd-nspawn", "-q", "-D", str(work), "--register=no", "--keep-unit", "--console=pipe",
              f"--setenv=PATH={PATH_INSIDE}", "--setenv=DEBIAN_FRONTEND=noninteractive", "--",
              "sh", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
              + " ".join(DEB_PACKAGES) + " && apt-get clean"], "installing dnf and rpm into the rootfs", 1500)
        _shape(work)
        missing = [p for p in ("usr/bin/dnf", "usr/bin/rpm", "usr/lib/go-1.19/bin/go") if not (work / p).exists()]
        if missing:
            raise HostError(f"the RHEL-shaped rootfs lacks {', '.join(missing)} (see {work})")
        (work / READY_MARK).write_text(json.dumps({"built_s": time.monotonic() - started}))
        os.rename(work, target)
        return target


def _debian_python(root: Path) -> str:
    return "/usr/bin/" + os.readlink(root / "usr/bin/python3").split("/")[-1]


def _shape(root: Path) -> None:
    """Rocky's os-release, dnf's configuration, and python3/go hidden from the Debian side."""
    interpreter = _debian_python(root)
    # every Debian script that runs on /usr/bin/python3 (dnf among them) names its interpreter instead
    for folder in ("usr/bin", "usr/sbin", "usr/libexec"):
        for path in sorted((root / folder).glob("*")) if (root / folder).is_dir() else []:
            if path.is_symlink() or not path.is_file():
                continue
            with open(path, "rb") as fh:
                head = fh.readline()
            if head.rstrip() == b"#!/usr/bin/python3" or head.startswith(b"#!/usr/bin/python3 "):
                data = path.read_bytes()
                mode = path.stat().st_mode & 0o7777
                path.unlink()  # never write through to another file
                path.write_bytes(f"#!{interpreter}".encode() + data[len(head.rstrip()):])
                os.chmod(path, mode)
    for hidden in HIDDEN:
        p = root / hidden
        if p.is_symlink() or p.is_file():
            p.unlink()
    release = root / "etc/os-release"
    if release.is_symlink() or release.exists():
        release.unlink()
    release.write_text(OS_RELEASE["rocky"])
    (root / "usr/lib/os-release").unlink()
    (root / "usr/lib/os-release").write_text(OS_RELEASE["rocky"])
    (root / "etc/redhat-release").write_text("Rocky Linux release 9.3 (Blue Onyx)\n")
    repos = root / "etc/yum.repos.d"
    shutil.rmtree(repos, ignore_errors=True)
    repos.mkdir(parents=True)
    (repos / f"{REPO_ID}.repo").write_text(REPO_FILE)
    (root / "etc/dnf").mkdir(parents=True, exist_ok=True)
    (root / "etc/dnf/dnf.conf").write_text(DNF_CONF)
    (root / "etc/dnf/vars").mkdir(parents=True, exist_ok=True)
    (root / "etc/dnf/vars/releasever").write_text("9\n")
    (root / "srv/dispatchctl-rpms").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "var/lib/rpm", ignore_errors=True)
    (root / "var/lib/rpm").mkdir(parents=True)


# -- the RPMs ------------------------------------------------------------------------------------

SPEC_HEAD = """\
Name: {name}
Version: {version}
Release: 1.dispatchtest
Summary: {summary}
License: test
BuildArch: {arch}
AutoReqProv: no
%define debug_package %{{nil}}
%define _build_id_links none
%global __os_install_post %{{nil}}
%define _binary_payload w1.gzdio

%description
{summary} (built by the dispatchctl test session; see tests/support/rhel.py)

%install
{install}

%files
{files}
"""


def _rpmbuild(work: Path, name: str, version: str, summary: str, arch: str, install: str, files: str) -> Path:
    spec = work / f"{name}.spec"
    spec.write_text(SPEC_HEAD.format(name=name, version=version, summary=summary, arch=arch,
                                     install=install, files=files))
    top = work / "rpmbuild"
    _run(["rpmbuild", "-bb", "--define", f"_topdir {top}", "--define", "_tmppath %{_topdir}/tmp", str(spec)],
         f"rpmbuild {name}", 900)
    built = sorted((top / "RPMS").rglob(f"{name}-{version}-*.rpm"))
    if not built:
        raise HostError(f"rpmbuild {name} produced no RPM under {top}")
    return built[0]


def go_version(rootfs: Path) -> str:
    return (rootfs / "usr/lib/go-1.19/VERSION").read_text().split()[0].removeprefix("go")


def build_golang_rpm(work: Path, rootfs: Path) -> Path:
    install = textwrap.dedent("""\
        mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib
        ln -s ../lib/go-1.19/bin/go %{buildroot}/usr/bin/go
        ln -s ../lib/go-1.19/bin/gofmt %{buildroot}/usr/bin/gofmt
        ln -s go-1.19 %{buildroot}/usr/lib/golang""")
    return _rpmbuild(work, "golang", go_version(rootfs), "Go toolchain (links to the host rootfs's Go)",
                     "noarch", install, "/usr/bin/go\n/usr/bin/gofmt\n/usr/lib/golang")


PY39_SKIP = ("test", "site-packages", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
             "config-3.9-x86_64-linux-gnu", "__pycache__", "unittest/test", "distutils/tests", "ctypes/test",
             "sqlite3/test", "tkinter/test")


def python39() -> Tuple[Path, str]:
    """The prefix and version of a CPython 3.9 to pack, found as tests/test_python39.py and
    scripts/setup-dev find it: $DISPATCH_PYTHON39 (its python3.9), python3.9 on PATH, else pyenv's
    3.9; an installed prefix (with lib/python3.9)."""
    import glob

    candidates = [os.environ.get("DISPATCH_PYTHON39", ""), shutil.which("python3.9") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        prefix = Path(candidate).resolve().parent.parent
        if (prefix / "bin/python3.9").exists() and (prefix / "lib/python3.9/os.py").exists():
            version = _run([str(prefix / "bin/python3.9"), "-c", "import platform; print(platform.python_version())"],
                           "asking python3.9 its version").stdout.strip()
            return prefix, version
    raise HostError("no CPython 3.9 for the python3 RPM: set DISPATCH_PYTHON39=/path/to/python3.9 "
                    "(an installed prefix with lib/python3.9); scripts/setup-dev says how to add one")


def build_python3_rpm(work: Path) -> Path:
    """``python3`` 3.9: /usr/bin/python3.9 (+ python3), /usr/lib/libpython3.9.so.1.0 and the
    standard library in /usr/lib/python3.9 (found from /usr/bin by CPython's own prefix search)."""
    prefix, version = python39()
    excludes = " ".join(f"--exclude=./{p}" for p in PY39_SKIP) + " --exclude=__pycache__"
    install = textwrap.dedent(f"""\
        mkdir -p %{{buildroot}}/usr/bin %{{buildroot}}/usr/lib/python3.9
        cp -p {prefix}/bin/python3.9 %{{buildroot}}/usr/bin/python3.9
        ln -s python3.9 %{{buildroot}}/usr/bin/python3
        if [ -e {prefix}/lib/libpython3.9.so.1.0 ]; then
            cp -p {prefix}/lib/libpython3.9.so.1.0 %{{buildroot}}/usr/lib/libpython3.9.so.1.0
        else
            touch %{{buildroot}}/usr/lib/libpython3.9.so.1.0  # a static build needs none
        fi
        (cd {prefix}/lib/python3.9 && tar -cf - {excludes} .) | tar -xf - -C %{{buildroot}}/usr/lib/python3.9
        mkdir -p %{{buildroot}}/usr/lib/python3.9/site-packages""")
    files = "/usr/bin/python3.9\n/usr/bin/python3\n/usr/lib/libpython3.9.so.1.0\n/usr/lib/python3.9"
    return _rpmbuild(work, "python3", version, "CPython 3.9 (as RHEL 9's python3)", "x86_64", install, files)


def build_repo(dest: Path, rootfs: Path) -> Dict[str, Path]:
    """Every RPM dispatchctl may ask dnf for, built with rpmbuild into ``dest/all`` (a repository
    made by createrepo_c), and ``dest/no-golang``: the same without golang. name -> repo dir."""
    for tool in ("rpmbuild", "createrepo_c"):
        if shutil.which(tool) is None:
            raise HostError(f"{tool} is not installed: run scripts/setup-dev (apt-get install -y rpm createrepo-c)")
    work = dest / "build"
    work.mkdir(parents=True, exist_ok=True)
    rpms = {"golang": build_golang_rpm(work, rootfs), "python3": build_python3_rpm(work)}
    repos = {"all": dest / "all", "no-golang": dest / "no-golang"}
    for name, repo in repos.items():
        repo.mkdir(parents=True, exist_ok=True)
        for pkg, rpm in rpms.items():
            if name == "no-golang" and pkg == "golang":
                continue
            shutil.copy2(rpm, repo / rpm.name)
        _run(["createrepo_c", "-q", str(repo)], f"createrepo_c {name}")
        os.chmod(repo, 0o755)
    return repos


class RhelHost(Container):
    """A booted RHEL-shaped host whose only dnf repository is ``repo`` (read-only)."""

    def __init__(self, rootfs: Path, repo: Path, os_release: str = "rocky") -> None:
        super().__init__(rootfs, extra_args=[f"--bind-ro={repo}:{REPO_INSIDE}"])
        self.os_release = os_release

    def boot(self, timeout: float = 60.0) -> RhelHost:
        super().boot(timeout)
        if self.os_release != "rocky":
            self.write("/etc/os-release", OS_RELEASE[self.os_release], mode=0o644)
            self.write("/usr/lib/os-release", OS_RELEASE[self.os_release], mode=0o644)
        return self

    def rpm_installed(self, name: str) -> Optional[str]:
        res = self.run(["rpm", "-q", "--qf", "%{VERSION}", name], check=False)
        return res.stdout.strip() if res.returncode == 0 else None

    def dnf_history(self) -> List[str]:
        """dnf's transactions, one line each (``ID | command | date | action | altered``)."""
        out = self.run(["dnf", "-q", "history", "list"]).stdout
        return [line for line in out.splitlines() if line.strip()[:1].isdigit()]
