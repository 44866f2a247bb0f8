"""The self-contained consumer executable (zipapp) that the bundled flavour installs."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from roboshop_dispatch import bundle


def test_bytes_are_deterministic():
    assert bundle.build_zipapp() == bundle.build_zipapp()


def test_interpreter_line_and_fingerprint(tmp_path):
    data = bundle.build_zipapp("/usr/libexec/platform-python")
    assert data.startswith(b"#!/usr/libexec/platform-python -I\n")
    path = tmp_path / "dispatch"
    path.write_bytes(data)
    assert bundle.installed_fingerprint(path) == bundle.fingerprint(interpreter="/usr/libexec/platform-python")
    assert bundle.installed_fingerprint(path) != bundle.fingerprint(interpreter="/usr/bin/python3")


def test_fingerprint_follows_content():
    files = bundle.sources()
    changed = dict(files)
    changed["roboshop_dispatch/amqp.py"] = files["roboshop_dispatch/amqp.py"] + b"\n# edit\n"
    assert bundle.fingerprint(files) != bundle.fingerprint(changed)


def test_not_ours_has_no_fingerprint(tmp_path):
    other = tmp_path / "dispatch"
    other.write_bytes(b"\x7fELF a go binary")
    assert bundle.installed_fingerprint(other) is None
    assert bundle.installed_fingerprint(tmp_path / "absent") is None


def test_contains_consumer_pika_and_the_observability_packages_only(tmp_path):
    path = tmp_path / "dispatch"
    path.write_bytes(bundle.build_zipapp())
    names = zipfile.ZipFile(path).namelist()
    assert "__main__.py" in names
    assert "roboshop_dispatch/consumer/__main__.py" in names
    assert "pika/__init__.py" in names
    tops = {n.split("/")[0] for n in names}
    observability = {"opentelemetry", "google", "requests", "urllib3", "idna", "charset_normalizer", "certifi",
                     "importlib_metadata", "zipp", "typing_extensions.py", "prometheus_client"}
    dist_infos = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_infos == {"__main__.py", "roboshop_dispatch", "pika", "LICENSES"} | observability
    assert len(dist_infos) == len(bundle.OBSERVABILITY)
    # none of the CLI's dependencies: the target host needs only python3
    assert not any(n.startswith(("roboshop_dispatch/cli", "roboshop_dispatch/steps")) for n in names)


def test_observability_files_are_pure_python_with_their_metadata(tmp_path):
    """No compiled accelerators (protobuf's upb, charset-normalizer's mypyc modules), no
    installer-specific dist-info files; each distribution's METADATA and OpenTelemetry's entry
    points (its context implementation is found through them) are there."""
    names = set(bundle.sources())
    assert not [n for n in names if n.endswith((".so", ".pyc", ".pyd")) or "__pycache__" in n]
    assert not [n for n in names if n.split("/")[-1] in ("RECORD", "WHEEL", "INSTALLER", "direct_url.json")]
    for dist in bundle.OBSERVABILITY:
        stem = dist.replace("-", "_")
        assert [n for n in names if n.lower().startswith(stem) and n.endswith(".dist-info/METADATA")], dist
    assert "opentelemetry_api-1.41.1.dist-info/entry_points.txt" in names
    assert "opentelemetry/__init__.py" in names and "google/__init__.py" in names  # namespace packages, for 3.9
    assert "certifi/cacert.pem" in names  # requests reads it when it is imported


def test_bundled_releases_are_the_ones_pyproject_pins():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    pins = dict(dep.split("==") for dep in pyproject["project"]["dependencies"] if "==" in dep)
    assert pins == bundle.OBSERVABILITY


def test_another_release_installed_is_refused(monkeypatch):
    import pytest

    monkeypatch.setitem(bundle.OBSERVABILITY, "opentelemetry-sdk", "0.0.1")
    with pytest.raises(ModuleNotFoundError, match=r"opentelemetry-sdk 1\.41\.1 is installed, the consumer bundles "
                                                  r"opentelemetry-sdk==0\.0\.1"):
        bundle.sources()


def test_runs_standalone_with_the_system_python(tmp_path):
    """Run by a python3 that has neither pika nor our package installed, in isolated mode."""
    python = shutil.which("python3", path="/usr/bin") or shutil.which("python3")
    assert python, "no python3 on this machine"
    path = tmp_path / "dispatch"
    path.write_bytes(bundle.build_zipapp(python))
    path.chmod(0o755)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AMQP_HOST": "127.0.0.1", "AMQP_USER": "roboshop"}
    proc = subprocess.run([str(path)], env=env, capture_output=True, text=True, timeout=30)
    # no AMQP_PASS: the consumer itself answers (so it was imported from the zip) with one line
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "AMQP_PASS" in lines[0], proc.stderr


def test_the_fingerprint_from_records_is_the_one_of_the_bytes():
    """fingerprint() takes the observability packages' hashes from pip's RECORD files (fast: the
    build step computes it on every run); it must equal the fingerprint of the bytes themselves,
    or every run would rebuild (or none would notice a change)."""
    assert bundle.fingerprint() == bundle.fingerprint(bundle.sources())
    hashes = bundle.observability_hashes()
    assert set(hashes) == set(bundle.observability_sources())
