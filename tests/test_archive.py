"""The go flavour's source zip is attacker input: roboshop_dispatch.archive inspects and unpacks it
with bounded work. Real archives, built here with zipfile or, for what zipfile will not write
(lying sizes, overlapping members, names the local header contradicts), as hand-crafted bytes.
Every unsafe or broken archive must end in UnsafeArchive, with nothing written outside staging."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roboshop_dispatch import archive
from roboshop_dispatch.archive import UnsafeArchive
from roboshop_dispatch.facts.host import HostFacts
from roboshop_dispatch.host import Runner
from roboshop_dispatch.settings import AmqpSettings, Secret, Settings
from roboshop_dispatch.steps.base import CHANGED, FAILED, OK, Context
from roboshop_dispatch.steps.build import BuildStep
from roboshop_dispatch.systemd import Systemd

# -- archives -------------------------------------------------------------------------------------

FILE = stat.S_IFREG | 0o644
EXEC = stat.S_IFREG | 0o755
DIR = stat.S_IFDIR | 0o755
LINK = stat.S_IFLNK | 0o777

_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")


def zip_of(entries: Iterable[Tuple[str, bytes, int]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip written by zipfile: (name, content, unix mode) per member, fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def zeros_deflated(mib: int) -> Tuple[bytes, int]:
    """Raw deflate data that inflates to ``mib`` MiB of zeros (about 1 KiB per MiB: each MiB is
    one full-flush segment, identical to the others), and the CRC-32 of those zeros."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zero = bytes(1 << 20)
    segment = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zero, crc)
    return segment * mib + c.flush(zlib.Z_FINISH), crc


def zeros_zip(mib: int, declared_mib: Optional[int] = None) -> bytes:
    """One member of ``mib`` MiB of zeros (declaring ``declared_mib``, default the truth)."""
    payload, crc = zeros_deflated(mib)
    return raw_zip([Raw(b"main.go", payload, (mib if declared_mib is None else declared_mib) << 20, crc)])


@dataclass
class Raw:
    """One member as bytes on disk; every field may lie."""

    name: bytes
    payload: bytes  # the (compressed) data as stored
    usize: int  # declared uncompressed size
    crc: int = 0
    method: int = zipfile.ZIP_DEFLATED
    mode: int = FILE
    flags: int = 0
    csize: Optional[int] = None  # declared compressed size (default: len(payload))
    local_name: Optional[bytes] = None  # what the local header says (default: name)
    offset: Optional[int] = None  # the central directory's offset for it (default: where it is)


def raw_zip(members: Sequence[Raw], prefix: bytes = b"") -> bytes:
    out = bytearray(prefix)
    offsets: List[int] = []
    for m in members:
        offsets.append(len(out))
        local = m.name if m.local_name is None else m.local_name
        csize = len(m.payload) if m.csize is None else m.csize
        out += _LOCAL.pack(b"PK\x03\x04", 20, 0, m.flags, m.method, 0, 0x5821, m.crc, csize, m.usize,
                           len(local), 0)
        out += local + m.payload
    start = len(out)
    for m, where in zip(members, offsets):
        csize = len(m.payload) if m.csize is None else m.csize
        out += _CENTRAL.pack(b"PK\x01\x02", 20, 3, 20, 0, m.flags, m.method, 0, 0x5821, m.crc, csize, m.usize,
                             len(m.name), 0, 0, 0, 0, m.mode << 16, where if m.offset is None else m.offset)
        out += m.name
    out += _END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(out) - start, start, 0)
    return bytes(out)


def stored(name: str, data: bytes, mode: int = FILE) -> Raw:
    return Raw(name.encode(), data, len(data), zlib.crc32(data), zipfile.ZIP_STORED, mode)


def deflated(name: str, data: bytes, mode: int = FILE) -> Raw:
    return Raw(name.encode(), deflate(data), len(data), zlib.crc32(data), zipfile.ZIP_DEFLATED, mode)


def write(tmp_path: Path, data: bytes, name: str = "a.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def tree(root: Path) -> List[str]:
    """Everything below ``root``, relative, links marked."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out.append(str(p.relative_to(root)) + (" -> link" if p.is_symlink() else ""))
    return sorted(out)


def refused(tmp_path: Path, data: bytes, reason: str) -> str:
    """Both inspection and extraction refuse ``data`` with ``reason``; extraction wrote nothing
    outside its staging directory. The message, for further checks."""
    path = write(tmp_path, data)
    with pytest.raises(UnsafeArchive, match=reason) as inspected:
        archive.inspect(path)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(UnsafeArchive, match=reason):
        archive.extract(path, staging)
    assert [p for p in tree(tmp_path) if not p.startswith("staging")] == ["a.zip"]
    assert not [p for p in tree(staging) if p.endswith("-> link")]
    return str(inspected.value)


GOOD = [("dispatch/main.go", b"package main\n\nfunc main() {}\n" * 40, FILE),
        ("dispatch/go.mod", b"module dispatch\n\ngo 1.19\n", FILE),
        ("dispatch/run.sh", b"#!/bin/sh\nexec ./dispatch\n", EXEC),
        ("dispatch/sub/", b"", DIR),
        ("dispatch/sub/util.go", b"package sub\n", FILE)]


# -- good archives ----------------------------------------------------------------------------------


def test_a_good_archive_is_inspected_and_extracted_with_sane_modes(tmp_path):
    path = write(tmp_path, zip_of([*GOOD, ("dispatch/suid", b"x", stat.S_IFREG | 0o4777),
                                   ("dispatch/trap/", b"", stat.S_IFDIR | 0o1600)]))
    summary = archive.inspect(path)
    assert (summary.files, summary.directories, summary.module_root, summary.has_go) == (5, 2, "dispatch", True)
    staging = tmp_path / "staging"
    staging.mkdir(mode=0o700)
    assert archive.extract(path, staging) == summary
    assert (staging / "dispatch/main.go").read_bytes() == GOOD[0][1]
    modes = {p: stat.S_IMODE(os.lstat(staging / p).st_mode) for p in tree(staging)}
    assert modes == {"dispatch": 0o755, "dispatch/go.mod": 0o644, "dispatch/main.go": 0o644, "dispatch/run.sh": 0o755,
                     "dispatch/sub": 0o755, "dispatch/sub/util.go": 0o644, "dispatch/suid": 0o755,
                     "dispatch/trap": 0o755}


def test_the_digest_ignores_timestamps_and_order_but_not_content_or_mode(tmp_path):
    main, x = b"package main\n", ("x.go", b"package main\n", FILE)
    a = archive.inspect(write(tmp_path, zip_of([("main.go", main, FILE), x]), "a.zip"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo("x.go", date_time=(2020, 5, 5, 1, 2, 4)), main)
        zf.writestr(zipfile.ZipInfo("main.go", date_time=(2021, 5, 5, 1, 2, 4)), main)
    b = archive.inspect(write(tmp_path, buf.getvalue(), "b.zip"))
    c = archive.inspect(write(tmp_path, zip_of([("main.go", b"package main // v2\n", FILE), x]), "c.zip"))
    d = archive.inspect(write(tmp_path, zip_of([("main.go", main, EXEC), x]), "d.zip"))
    assert a.digest == b.digest
    assert len({a.digest, c.digest, d.digest}) == 3
    assert a.module_root == ""


def test_the_digest_keeps_the_meaning_of_the_old_in_memory_one(tmp_path):
    """A stamp written by the previous release must not force a rebuild: same formula."""
    import hashlib

    entries = [("dispatch", "dir", b"", 0o755), ("dispatch/go.mod", "file", GOOD[1][1], 0o644),
               ("dispatch/main.go", "file", GOOD[0][1], 0o644), ("dispatch/run.sh", "file", GOOD[2][1], 0o755),
               ("dispatch/sub", "dir", b"", 0o755), ("dispatch/sub/util.go", "file", GOOD[4][1], 0o644)]
    old = hashlib.sha256()
    for name, kind, content, mode in sorted(entries):
        old.update(f"{name}\0{kind}\0{mode:o}\0{len(content)}\0".encode() + content)
    assert archive.source_digest(write(tmp_path, zip_of([*GOOD[:3], ("dispatch/", b"", DIR), *GOOD[3:]]))) \
        == old.hexdigest()


@pytest.mark.parametrize("names, root", [
    (["main.go"], ""), (["dispatch/main.go", "dispatch/go.mod"], "dispatch"),
    (["a/main.go", "b/x.go"], ""), (["go.mod", "sub/x.go"], ""),
])
def test_module_root(names, root):
    assert archive.module_root(names) == root


# -- unsafe names and types ---------------------------------------------------------------------


@pytest.mark.parametrize("name, reason", [
    ("/etc/cron.d/evil", "absolute path"),
    ("C:/x.go", "absolute path"),
    ("../evil.go", "'..'"),
    ("src/../../evil.go", "'..'"),
    ("src\\..\\..\\evil.go", "backslash"),
    ("a//b.go", "empty or '.'"),
    ("./main.go", "empty or '.'"),
    ("main.go\n", "not allowed"),
    ("evil\x1b[2J.go", "not allowed"),
    ("main\u202egod.go", "not allowed"),  # a right-to-left override hides the real name
    ("x" * 300 + ".go", "longer than"),
    ("a/" * 40 + "x.go", "deeper than 32"),
    ("ab:c.go", "not allowed"),
])
def test_unsafe_names_are_refused(tmp_path, name, reason):
    refused(tmp_path, zip_of([("ok.go", b"package main\n", FILE), (name, b"x", FILE)]), reason)


def test_a_nul_in_a_name_is_refused_although_zipfile_cuts_the_name_there(tmp_path):
    data = raw_zip([deflated("main.go", b"package main\n"), deflated("x.go\0/../../evil", b"x")])
    refused(tmp_path, data, "NUL")


@pytest.mark.parametrize("names, reason", [
    (["main.go", "main.go"], "duplicate"),
    (["main.go", "Main.go"], "duplicate"),  # Go refuses case-fold collisions too
    (["sub/", "sub/"], "duplicate"),
    (["sub", "sub/x.go"], "which is a file"),
])
def test_duplicates_and_files_used_as_directories_are_refused(tmp_path, names, reason):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it writes
        data = zip_of([(n, b"" if n.endswith("/") else b"package main\n", DIR if n.endswith("/") else FILE)
                       for n in names])
    refused(tmp_path, data, reason)


def test_a_link_chain_that_climbs_out_is_refused_before_anything_is_written(tmp_path):
    # l3 -> sub/l2/.. with sub/l2 -> .. : each looks inside as text, together they leave
    data = zip_of([("main.go", b"package main\n", FILE), ("sub/l2", b"..", LINK), ("l3", b"sub/l2/..", LINK),
                   ("l3/evil.go", b"x", FILE)])
    message = refused(tmp_path, data, "symbolic link")
    assert "'l3'" in message or "'sub/l2'" in message


@pytest.mark.parametrize("mode, reason", [
    (LINK, "symbolic link"), (stat.S_IFCHR | 0o644, "device"), (stat.S_IFIFO | 0o644, "FIFO"),
    (stat.S_IFSOCK | 0o644, "socket"),
])
def test_links_devices_fifos_and_sockets_are_refused(tmp_path, mode, reason):
    refused(tmp_path, zip_of([("main.go", b"package main\n", FILE), ("odd", b"main.go", mode)]), reason)


def test_encrypted_members_and_other_compression_methods_are_refused(tmp_path):
    enc = deflated("main.go", b"package main\n")
    enc.flags = 1
    refused(tmp_path, raw_zip([enc]), "encrypted")
    (tmp_path / "b").mkdir()
    bz2 = zip_of([("main.go", b"package main\n" * 100, FILE)], zipfile.ZIP_BZIP2)
    refused(tmp_path / "b", bz2, "compression method")


def test_a_directory_with_content_is_refused(tmp_path):
    refused(tmp_path, raw_zip([stored("sub/", b"x", DIR)]), "directory with content")


# -- bombs and caps -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gib_bomb(tmp_path_factory) -> Path:
    """A 1 MiB zip whose one member inflates to 1 GiB of zeros, declared honestly (the issue's
    957 KiB-class bomb)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    path.write_bytes(zeros_zip(1024))
    assert path.stat().st_size < 1100 * 1024
    return path


@pytest.fixture(scope="module")
def lying_bomb(tmp_path_factory) -> Path:
    """The same 1 MiB of deflate data under a member that declares 60 MiB (61:1, under every cap):
    only streaming can catch it."""
    path = tmp_path_factory.mktemp("bomb") / "lying.zip"
    path.write_bytes(zeros_zip(1024, declared_mib=60))
    return path


def test_the_gib_bomb_is_refused_as_a_bomb(gib_bomb, tmp_path):
    refused(tmp_path, gib_bomb.read_bytes(), "more than 64 MiB|zip bomb")


def test_a_member_inflating_past_its_declared_size_is_stopped_while_streaming(lying_bomb, tmp_path):
    message = refused(tmp_path, lying_bomb.read_bytes(), "inflates past its declared")
    assert str(60 << 20) in message


def _peak_rss_kib(path: Path, mode: str, staging: Path) -> dict:
    """Peak RSS of a fresh interpreter before and after inspecting or extracting ``path``."""
    code = """if True:
        import json, resource, sys
        from pathlib import Path
        from roboshop_dispatch import archive
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            if sys.argv[2] == "inspect":
                archive.inspect(Path(sys.argv[1]))
            else:
                archive.extract(Path(sys.argv[1]), Path(sys.argv[3]))
            outcome = "accepted"
        except archive.UnsafeArchive as exc:
            outcome = str(exc)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"base": base, "peak": peak, "outcome": outcome}))
    """
    res = subprocess.run([sys.executable, "-c", code, str(path), mode, str(staging)], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(res.stdout)


@pytest.mark.parametrize("which", ["gib_bomb", "lying_bomb"])
def test_reading_a_bomb_stays_within_a_few_mib(request, which, tmp_path):
    """The old code read the 1 GiB member into memory (1 GiB of RSS for a dry run)."""
    for mode in ("inspect", "extract"):
        staging = tmp_path / mode
        staging.mkdir()
        got = _peak_rss_kib(request.getfixturevalue(which), mode, staging)
        assert "bomb" in got["outcome"] or "inflates past" in got["outcome"] or "64 MiB" in got["outcome"]
        assert got["peak"] - got["base"] < 4 * 1024, got  # KiB


def test_a_ratio_bomb_under_the_size_cap_is_refused(tmp_path):
    payload, crc = zeros_deflated(10)
    refused(tmp_path, raw_zip([deflated("main.go", b"package main\n"), Raw(b"zeros.go", payload, 10 << 20, crc)]),
            r"compressed \d+:1, more than 100:1")


def test_an_overall_ratio_bomb_of_small_members_is_refused(tmp_path):
    # 200 members of 60 KiB zeros: each under the per-member floor, together over 100:1
    data = zip_of([(f"z{i}.go", bytes(60 * 1024), FILE) for i in range(200)])
    refused(tmp_path, data, "overall")


def test_a_total_size_bomb_is_refused_from_the_declared_sizes(tmp_path):
    junk = os.urandom(600 * 1024)  # 40 MiB declared from 600 KiB: 68:1, under the ratio cap
    data = raw_zip([Raw(b"a.go", junk, 40 << 20), Raw(b"b.go", junk, 40 << 20)])
    refused(tmp_path, data, "unpacks to 83886080 bytes, more than 64 MiB")
    (tmp_path / "one").mkdir()
    refused(tmp_path / "one", raw_zip([Raw(b"a.go", junk, 65 << 20)]), "'a.go': unpacks to")


def test_too_many_members_are_refused(tmp_path):
    refused(tmp_path, zip_of([(f"f{i}.go", b"", FILE) for i in range(archive.MAX_MEMBERS + 1)],
                             zipfile.ZIP_STORED), "10001 members: more than 10000")


def test_a_huge_central_directory_is_refused_before_zipfile_parses_it(tmp_path):
    many = raw_zip([stored(f"{i:07d}-" + "n" * 40 + ".go", b"") for i in range(30000)])
    refused(tmp_path, many, "central directory larger than 2 MiB")


def test_overlapping_members_are_refused(tmp_path):
    # the inner member's local header and data sit inside the outer (stored) member's data
    inner = deflated("inner.go", b"package main\n" * 50)
    inner_bytes = raw_zip([inner])
    inner_local = inner_bytes[:30 + len(inner.name) + len(inner.payload)]
    outer = stored("outer.go", b"//" + inner_local)
    prefix = 30 + len(outer.name) + 2
    inner.offset = prefix
    refused(tmp_path, raw_zip([outer, inner]), "overlaps")


def test_a_local_header_that_contradicts_the_directory_is_refused(tmp_path):
    m = deflated("main.go", b"package main\n")
    m.local_name = b"../../etc/x"
    refused(tmp_path, raw_zip([m]), "local header names")


def test_a_short_member_and_a_bad_crc_are_refused(tmp_path):
    m = deflated("main.go", b"package main\n")
    m.usize += 5
    refused(tmp_path, raw_zip([m]), "not the declared")
    (tmp_path / "crc").mkdir()
    m = deflated("main.go", b"package main\n")
    m.crc ^= 1
    refused(tmp_path / "crc", raw_zip([m]), "CRC")


@pytest.mark.parametrize("cut", [1, 10, 22, 60, 100, 200])
def test_truncated_archives_are_refused(tmp_path, cut):
    data = zip_of(GOOD)
    with pytest.raises(UnsafeArchive):
        archive.inspect(write(tmp_path, data[:-cut]))
    with pytest.raises(UnsafeArchive):
        archive.inspect(write(tmp_path, data[:cut], "head.zip"))


def test_not_a_zip_is_refused(tmp_path):
    refused(tmp_path, b"<html>404 not found</html>", "not a usable zip")


def test_extraction_never_follows_a_link_planted_in_staging(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "dispatch").symlink_to(outside)
    with pytest.raises(UnsafeArchive):
        archive.extract(write(tmp_path, zip_of(GOOD)), staging)
    assert list(outside.iterdir()) == []


# -- property: any bytes end in success or UnsafeArchive, never outside staging -------------------

VALID = zip_of(GOOD)


def _try_both(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = write(root, data)
        staging = root / "staging"
        staging.mkdir()
        try:
            inspected = archive.inspect(path)
        except UnsafeArchive:
            inspected = None
        try:
            extracted = archive.extract(path, staging)
        except UnsafeArchive:
            extracted = None
        assert inspected == extracted  # same verdict, same digest
        assert [p for p in tree(root) if not p.startswith("staging")] == ["a.zip"]
        for p in tree(staging):
            st_ = os.lstat(staging / p)
            assert stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode), p
            assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_escape_or_raise_anything_else(data):
    _try_both(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)))
def test_mutated_valid_zips_never_escape_or_raise_anything_else(changes, keep):
    data = bytearray(VALID)
    for index, value in changes:
        data[index] = value
    _try_both(bytes(data[:keep] if keep else data))


# -- the go flavour's build step: every archive ends in a result, never a traceback -------------


def go_ctx(tmp_path: Path, artifact: Union[Path, str], *, dry_run: bool = True, **extra) -> Context:
    amqp = AmqpSettings.build(hosts="127.0.0.1", password=Secret("roboshop123"))
    base = Settings.build(amqp=amqp, flavour="go", artifact=str(artifact), insecure=True)
    # the step must honour the two fields whatever the settings validation let through
    s = replace(base, artifact_sha256=extra.pop("sha256", None), insecure=extra.pop("insecure", False))
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True, exist_ok=True)
    facts = HostFacts.from_os_release('ID=debian\nVERSION_ID="12"\n', is_root=True, systemd_pid1=True)
    runner = Runner()
    return Context(settings=s, facts=facts, runner=runner, systemd=Systemd(runner), dry_run=dry_run, root=root)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Where the step downloads to (tempfile's directory), to see that it cleans up."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_the_dry_run_of_a_good_archive_predicts_a_build_and_keeps_nothing(tmp_path, private_tmp):
    path = write(tmp_path, zip_of(GOOD))
    result = BuildStep().run(go_ctx(tmp_path, path))
    assert result.status == CHANGED and "would go build /app/dispatch" in result.message, result
    assert result.data["sources"] == archive.inspect(path).digest[:12]
    assert result.data["artifact_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(private_tmp.iterdir()) == [] and tree(tmp_path / "root") == ["app"]


@pytest.mark.parametrize("make, reason", [
    (lambda: zip_of([("main.go", b"package main\n", FILE), ("../../etc/cron.d/x", b"x", FILE)]), "'..'"),
    (lambda: zip_of([("main.go", b"package main\n", FILE), ("sub/l2", b"..", LINK), ("l3", b"sub/l2/..", LINK)]),
     "symbolic link"),
    (lambda: zeros_zip(64), "zip bomb"),
    (lambda: b"PK\x03\x04 not really", "not a usable zip"),
    (lambda: zip_of([("README", b"no sources", FILE)]), "holds no .go file"),
])
def test_a_bad_archive_is_a_step_failure_with_a_next_action(tmp_path, private_tmp, make, reason):
    ctx = go_ctx(tmp_path, write(tmp_path, make()), dry_run=False)
    result = BuildStep().run(ctx)
    assert result.status == FAILED and re.search(reason, result.message), result
    assert result.next_action
    assert list(private_tmp.iterdir()) == [] and tree(tmp_path / "root") == ["app"]


def test_the_step_passes_the_sha256_pin_and_the_http_policy_to_fetch(tmp_path, private_tmp):
    path = write(tmp_path, zip_of(GOOD))
    wrong = "0" * 64
    result = BuildStep().run(go_ctx(tmp_path, path, sha256=wrong))
    assert result.status == FAILED and wrong in result.message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in result.message
    result = BuildStep().run(go_ctx(tmp_path, path, sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    assert result.status == CHANGED
    result = BuildStep().run(go_ctx(tmp_path, "http://127.0.0.1:9/dispatch.zip", insecure=False))
    assert result.status == FAILED and "--insecure" in result.message
    assert list(private_tmp.iterdir()) == []


def test_apply_cleans_up_when_the_toolchain_is_missing(tmp_path, private_tmp):
    ctx = go_ctx(tmp_path, write(tmp_path, zip_of(GOOD)), dry_run=False)
    result = BuildStep().run(ctx)  # no go below the test root
    assert result.status == FAILED and "go toolchain is not installed" in result.message
    assert list(private_tmp.iterdir()) == [] and tree(tmp_path / "root") == ["app"]


def test_unchanged_sources_skip_the_build(tmp_path, private_tmp):
    path = write(tmp_path, zip_of(GOOD))
    ctx = go_ctx(tmp_path, path, dry_run=False)
    binary = ctx.host_path(Path("/app/dispatch"))
    binary.write_bytes(b"\x7fELF built")
    binary.chmod(0o755)
    stamp = {"sources": archive.inspect(path).digest, "binary": hashlib.sha256(binary.read_bytes()).hexdigest()}
    ctx.host_path(Path("/app/.dispatch-build.json")).write_text(json.dumps(stamp))
    result = BuildStep().run(ctx)
    assert result.status == OK and "build skipped" in result.message, result
    assert list(private_tmp.iterdir()) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_no_archive_makes_the_step_raise(changes):
    data = bytearray(VALID)
    for index, value in changes:
        data[index] = value
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = BuildStep().run(go_ctx(root, write(root, bytes(data))))
        assert result.status in (CHANGED, FAILED)
        assert result.status == CHANGED or result.next_action


def test_corrupt_deflate_data_is_refused(tmp_path):
    m = deflated("main.go", b"package main\n" * 100)
    m.payload = b"\xff" * len(m.payload)  # an invalid block type
    refused(tmp_path, raw_zip([m]), "corrupt compressed data")
