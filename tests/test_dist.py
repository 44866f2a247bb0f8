"""scripts/build-dist and what it makes, on this machine (no systemd host needed): the files and
their SHA256SUMS, the RPM's contents and dependencies, the pyz's contents (no lab, no compiled
extension, no psutil), its determinism, and the pyz run by a real CPython 3.9 that has nothing but
its standard library: every command's help, a dry run, the lab refused with a clear message, and
the consumer zipapp it would install byte-identical to a virtualenv install's, whether the pyz runs
from its zip or from its unpacked cache. The pyz on real systemd hosts: tests/test_dist_systemd.py
and tests/test_rhel_rpm.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Dict, List

import pytest

from roboshop_dispatch import __version__, bundle, render
from tests.support.dist import assert_virtualenv_as_installed, build_dist, sha256_of
from tests.test_python39 import COMMANDS, find_python39

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "packaging" / "pyz-requirements.txt"
BUNDLED = ("typer", "click", "rich", "jinja2", "markupsafe", "pika", "pygments", "markdown_it", "mdurl", "shellingham")


@pytest.fixture(scope="module")
def python39() -> str:
    return find_python39()


def locked() -> Dict[str, str]:
    """packaging/pyz-requirements.txt: name -> version."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", LOCK.read_text(), re.M))


def run_pyz(python: str, pyz: Path, *args: str, env: Dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "COLUMNS": "80", **(env or {})}
    return subprocess.run([python, "-I", str(pyz), *args], capture_output=True, text=True, env=environ,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def names(pyz: Path) -> List[str]:
    with zipfile.ZipFile(pyz) as zf:
        return zf.namelist()


def rpm_query(rpm: Path, *query: str) -> str:
    return subprocess.run(["rpm", "-qp", *query, str(rpm)], capture_output=True, text=True, check=True).stdout


# -- what build-dist leaves -----------------------------------------------------------------------


def test_build_dist_leaves_the_wheel_sdist_pyz_rpm_and_their_sums(dist):
    sums = dist.sha256()
    assert sorted(sums) == sorted(p.name for p in (dist.wheel, dist.sdist, dist.pyz, dist.rpm))
    for path in (dist.wheel, dist.sdist, dist.pyz, dist.rpm):
        assert sums[path.name] == sha256_of(path), path
    assert dist.pyz.read_bytes().startswith(b"#!/usr/bin/python3 -I\n")
    assert os.stat(dist.pyz).st_mode & 0o111 and zipfile.is_zipfile(dist.pyz)
    print(f"\npyz: {dist.pyz.stat().st_size / 1024:.0f} KiB, {len(names(dist.pyz))} files; "
          f"rpm: {dist.rpm.stat().st_size / 1024:.0f} KiB")


def test_the_rpm_installs_the_pyz_as_usr_bin_dispatchctl_with_completions_and_a_man_page(dist, tmp_path):
    assert rpm_query(dist.rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}") == f"dispatchctl {__version__} 1 noarch"
    dump = {line.split()[0]: line.split() for line in rpm_query(dist.rpm, "--dump").splitlines()}
    assert dump["/usr/bin/dispatchctl"][3] == sha256_of(dist.pyz) and dump["/usr/bin/dispatchctl"][4] == "0100755"
    completions = {"/usr/share/bash-completion/completions/dispatchctl", "/usr/share/zsh/site-functions/_dispatchctl"}
    assert completions <= set(dump)
    assert [p for p in dump if p.startswith("/usr/share/man/man1/dispatchctl.1")], dump
    assert "python3 >= 3.9" in rpm_query(dist.rpm, "--requires").splitlines()
    assert rpm_query(dist.rpm, "--recommends").split() == ["python3-psutil"]
    # the payload, unpacked: the completions and the man page come from the CLI itself
    copy = tmp_path / dist.rpm.name
    copy.write_bytes(dist.rpm.read_bytes())
    subprocess.run(["rpm2archive", str(copy)], check=True, capture_output=True)
    with tarfile.open(f"{copy}.tgz") as tar:
        files = {m.name.lstrip("."): tar.extractfile(m).read().decode(errors="replace")  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile() and "/share/" in m.name}
    assert "_DISPATCHCTL_COMPLETE=complete_bash" in files["/usr/share/bash-completion/completions/dispatchctl"]
    assert files["/usr/share/zsh/site-functions/_dispatchctl"].startswith("#compdef dispatchctl")
    man = next(text for name, text in files.items() if name.startswith("/usr/share/man/man1/"))
    assert man.startswith(".TH DISPATCHCTL 1") and f"dispatchctl {__version__}" in man.splitlines()[0]
    for command in COMMANDS:  # every command's own --help, verbatim
        usage = f"Usage: dispatchctl {command} [OPTIONS]".replace("-", "\\-")  # roff's minus signs
        assert f'.SS "dispatchctl {command}"' in man and usage in man, command
    assert "\\-\\-amqp\\-pass\\-file FILE" in man


def test_the_pyz_holds_dispatchctl_and_pure_python_dependencies_only(dist):
    listed = names(dist.pyz)
    assert "__main__.py" in listed
    assert not [n for n in listed if n.endswith((".so", ".pyd"))], "a compiled extension in the pyz"
    assert not [n for n in listed if n.startswith("roboshop_dispatch/lab/")], "the lab is in the pyz"
    assert not [n for n in listed if n.split("/")[0].startswith("psutil")], "psutil is in the pyz"
    for template in ("dispatch.service.j2", "dispatch.env.j2"):
        assert f"roboshop_dispatch/templates/{template}" in listed
    assert "roboshop_dispatch/schema/dispatchctl.schema.json" in listed
    for package in BUNDLED:
        assert f"{package}/__init__.py" in listed, package
    dist_infos = {n.split("/")[0] for n in listed if ".dist-info/" in n}
    for name, version in locked().items():  # every locked distribution, with its metadata and licence
        assert f"{name.replace('-', '_').lower()}-{version}.dist-info" in {d.lower() for d in dist_infos}, name
    with zipfile.ZipFile(dist.pyz) as zf:
        assert zf.comment.decode().startswith(f"dispatchctl {__version__} ")


def test_the_pyz_is_deterministic(dist, tmp_path):
    """The same sources give the same bytes: a second build, wheel and all, into another dir."""
    res = build_dist(tmp_path, "--pyz-only")
    assert res.returncode == 0, res.stderr
    again = tmp_path / dist.pyz.name
    assert sha256_of(again) == sha256_of(dist.pyz)
    print(f"\npyz built twice: sha256 {sha256_of(again)} both times")


# -- the pyz on a bare CPython 3.9 ----------------------------------------------------------------


def test_the_pyz_runs_on_a_python39_with_nothing_but_its_standard_library(dist, python39, tmp_path):
    for module in (*BUNDLED, "psutil", "typing_extensions"):
        probe = subprocess.run([python39, "-I", "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"this python3.9 has {module}: the test would not prove the pyz"
    for mode in ({"DISPATCHCTL_PYZ_UNPACK": "0"}, {"DISPATCHCTL_PYZ_CACHE": str(tmp_path / "cache")}):
        version = run_pyz(python39, dist.pyz, "--version", env=mode)
        assert (version.returncode, version.stdout) == (0, f"dispatchctl {__version__}\n"), version.stderr
        for command in COMMANDS:
            res = run_pyz(python39, dist.pyz, command, "--help", env=mode)
            assert res.returncode == 0 and f"Usage: dispatchctl-{__version__}.pyz {command}" in res.stdout, res.stderr
        res = run_pyz(python39, dist.pyz, "install", "--amqp-host", "127.0.0.1", "--dry-run", "--json",
                      env={**mode, "DISPATCHCTL_AMQP_PASS": "roboshop123"})
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert [s["name"] for s in doc["steps"]] == ["packages", "user", "appdir", "build", "config", "service"]
        assert "roboshop123" not in res.stdout + res.stderr
    assert (tmp_path / "cache").is_dir()  # the second mode ran unpacked


@pytest.mark.parametrize("args", [("lab", "up"), ("lab", "status", "--json"), ("lab", "down"), ("lab", "-h")])
def test_the_lab_is_not_in_the_pyz_and_says_how_to_get_it(dist, python39, args):
    """Not listed (the lab is a development tool, outside the production artifacts), and asked
    for anyway: one clear line, how to get it, exit 1; no traceback, no "No such command"."""
    res = run_pyz(python39, dist.pyz, *args, env={"DISPATCHCTL_PYZ_UNPACK": "0"})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "the lab is not part of this build" in res.stderr and "pip install ." in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    if "--json" in args:
        doc = json.loads(res.stdout)
        assert doc["ok"] is False and doc["error"]["kind"] == "preflight" and doc["command"] == "lab status"
    listed = run_pyz(python39, dist.pyz, "--help", env={"DISPATCHCTL_PYZ_UNPACK": "0"})
    commands = listed.stdout.split("Commands:")[1].split()
    assert listed.returncode == 0 and "install" in commands and "lab" not in commands, listed.stdout


PROBE = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from roboshop_dispatch import bundle, pkgfiles, render
from roboshop_dispatch.steps import build
zipapp = bundle.build_zipapp("/usr/bin/python3")
print(json.dumps({"zipapp": hashlib.sha256(zipapp).hexdigest(), "fingerprint": bundle.fingerprint(),
                  "stat_key": build.bundle_stat_key() is not None, "from": bundle.__file__,
                  "in_zip": pkgfiles.archive_of(__import__("pathlib").Path(bundle.__file__)) is not None,
                  "templates": {n: hashlib.sha256(pkgfiles.read_bytes(p)).hexdigest()
                                for n, p in pkgfiles.files_under(render.templates_dir(), ".j2")}}))
"""


def test_the_consumer_zipapp_from_the_pyz_is_the_virtualenvs_byte_for_byte(dist, python39, tmp_path):
    """A host moved from a virtualenv's dispatchctl to the pyz sees the same /app/dispatch (and the
    same templates): from the zip itself and from its unpacked copy, on 3.9."""
    assert_virtualenv_as_installed()
    pinned = locked()["pika"]
    assert metadata.version("pika") == pinned, (
        f"this virtualenv has pika {metadata.version('pika')}, the pyz {pinned} (packaging/pyz-requirements.txt): "
        "the same sources give the same zipapp, so align them")
    want = {"zipapp": sha256_of_bytes(bundle.build_zipapp("/usr/bin/python3")), "fingerprint": bundle.fingerprint(),
            "templates": {name: sha256_of(path) for name, path in
                          ((p.name, p) for p in sorted(render.templates_dir().glob("*.j2")))}}
    unpack = run_pyz(python39, dist.pyz, "--help", env={"DISPATCHCTL_PYZ_CACHE": str(tmp_path)})
    assert unpack.returncode == 0, unpack.stderr
    unpacked = next(p for p in tmp_path.iterdir() if len(p.name) == 64)
    for where, in_zip in ((dist.pyz, True), (unpacked, False)):
        res = subprocess.run([python39, "-I", "-c", PROBE, str(where)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        assert got["from"].startswith(str(where)) and got["in_zip"] is in_zip, got
        assert got["stat_key"] is True
        assert {k: got[k] for k in want} == want, where


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- the unpacked cache ---------------------------------------------------------------------------


def test_the_pyz_unpacks_once_into_its_private_cache_and_drops_older_copies(dist, python39, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    older = cache / ("0" * 64)
    (older / "roboshop_dispatch").mkdir(parents=True)
    env = {"DISPATCHCTL_PYZ_CACHE": str(cache)}
    assert run_pyz(python39, dist.pyz, "status", "--help", env=env).returncode == 0
    copy = cache / dist.pyz_fingerprint()
    mark = copy / ".complete"
    assert mark.read_text().strip() == dist.pyz_fingerprint()
    assert not older.exists(), "the older copy stayed"
    assert list(copy.rglob("__pycache__/*.cpython-39.pyc")), "no compiled code cached"
    assert (copy / "roboshop_dispatch" / "templates" / "dispatch.service.j2").is_file()
    assert not (copy / "__main__.py").exists()
    stamp = mark.stat().st_mtime_ns
    assert run_pyz(python39, dist.pyz, "status", "--help", env=env).returncode == 0
    assert mark.stat().st_mtime_ns == stamp  # not unpacked again
    assert sorted(p.name for p in cache.iterdir()) == [copy.name]  # no temp dir left behind


def test_a_cache_others_may_write_to_is_not_used(dist, python39, tmp_path):
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o777)  # anyone could plant code there: dispatchctl runs from its zip instead
    res = run_pyz(python39, dist.pyz, "status", "--help", env={"DISPATCHCTL_PYZ_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr
    assert list(cache.iterdir()) == []
