"""Inspect and unpack the go flavour's source zip: attacker input, read with bounded work.

:func:`inspect` is the check phase: one streaming pass that validates every member and computes
the sources' digest (:func:`source_digest`'s meaning: names, kinds, modes and contents, not
timestamps), without writing anything. :func:`extract` makes the same pass and streams each member
into a fresh staging directory. Both refuse, with :class:`UnsafeArchive` and nothing else:

- names: empty, absolute, drive letters, ``.``/``..``/empty components, backslashes, NUL, too
  long or too deep, characters outside Go's own module file-name rule, duplicates, and names that
  collide once case-folded and Unicode-normalised (Go refuses those too); a file used as a directory;
- types: symbolic links (all of them: a Go module zip never holds one, and a link is the way out of
  the destination, alone or chained), devices, FIFOs, sockets, encrypted members, compression
  methods other than stored and deflated;
- sizes: more than :data:`MAX_MEMBERS` members, a central directory over :data:`MAX_DIRECTORY`
  bytes, more than :data:`MAX_TOTAL` bytes unpacked, a member or the whole archive compressed more
  than :data:`MAX_RATIO`:1, overlapping members (the overlap bomb), a member that inflates past its
  declared size (stopped while streaming: memory stays bounded by :data:`CHUNK`), a short one, or
  one whose CRC-32 is wrong;
- structure: not a zip, truncated, a local header that disagrees with the central directory.

zipfile is used only to parse the central directory (its public ``ZipInfo`` fields); every
member's bytes are read and inflated here with zlib, so the caps hold whatever zipfile would do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, cast

from .errors import DispatchctlError

MAX_MEMBERS = 10_000
MAX_DIRECTORY = 2 * 1024 * 1024  # bytes of central directory zipfile may read (10,000 members fit)
MAX_TOTAL = 64 * 1024 * 1024  # unpacked bytes: a Go source tree is a few MiB
MAX_RATIO = 100  # unpacked:packed, per member and overall ...
RATIO_FLOOR = 64 * 1024  # ... for members (and archives) larger than this: tiny files compress well
MAX_NAME = 1024  # bytes of a member name; a component at most 255
MAX_DEPTH = 32  # path components: each one costs an open() per member when extracting
CHUNK = 64 * 1024

# Go's module file-name rule (golang.org/x/mod/module, fileNameOK): ASCII letters and digits, these
# punctuation characters, and non-ASCII letters
_NAME_PUNCTUATION = frozenset("!#$%&()+,-.=@[]^_{}~ ")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"


class UnsafeArchive(DispatchctlError):
    """The archive is unsafe or unusable: the message names the member and the reason."""


@dataclass(frozen=True)
class Member:
    """A validated member: ``name`` is clean (no ``.``, ``..`` or empty components)."""

    name: str
    kind: str  # "file" or "dir"
    mode: int  # 0o755 or 0o644
    info: zipfile.ZipInfo


@dataclass(frozen=True)
class ArchiveSummary:
    """What one pass over the archive found."""

    digest: str  # sha256 over names, kinds, modes and contents (timestamps ignored)
    files: int
    directories: int
    unpacked_bytes: int
    module_root: str  # "" (the top level) or the single directory that wraps the sources
    has_go: bool  # at least one .go file


# -- names and types --------------------------------------------------------------------------


def _name_char_ok(ch: str) -> bool:
    if ch.isascii():
        return ch.isalnum() or ch in _NAME_PUNCTUATION
    return ch.isalpha()


def clean_name(raw: str) -> str:
    """The member name without a trailing ``/``, or UnsafeArchive saying what is wrong with it."""
    shown = repr(raw[:200])
    if "\x00" in raw:
        raise UnsafeArchive(f"{shown}: a NUL in a member name")
    if "\\" in raw:
        raise UnsafeArchive(f"{shown}: a backslash in a member name")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchive(f"{shown}: an absolute path")
    name = raw[:-1] if raw.endswith("/") else raw
    parts = name.split("/")
    if ".." in parts:
        raise UnsafeArchive(f"{shown}: a '..' component escapes the destination")
    if name == "" or "" in parts or "." in parts:
        raise UnsafeArchive(f"{shown}: an empty or '.' path component")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME or any(len(p.encode()) > 255 for p in parts):
        raise UnsafeArchive(f"{shown}: a name longer than {MAX_NAME} bytes or a component over 255")
    if len(parts) > MAX_DEPTH:
        raise UnsafeArchive(f"{shown}: nested deeper than {MAX_DEPTH} directories")
    bad = next((ch for ch in name if ch != "/" and not _name_char_ok(ch)), None)
    if bad is not None:
        raise UnsafeArchive(f"{shown}: the character {bad!r} is not allowed in a Go source file name")
    return name


def _kind(info: zipfile.ZipInfo, name: str) -> str:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # unix attributes present
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFLNK:
            raise UnsafeArchive(f"{name!r}: a symbolic link (refused: Go sources never need one, and a "
                                "link can point outside the destination)")
        if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchive(f"{name!r}: a device, FIFO or socket")
        if fmt == stat.S_IFDIR:
            return "dir"
    return "dir" if info.filename.endswith("/") else "file"


def _mode(info: zipfile.ZipInfo) -> int:
    """0o755 when any execute bit is set, else 0o644: never setuid, setgid or world-writable."""
    return 0o755 if (info.external_attr >> 16) & 0o111 else 0o644


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


# -- the member list --------------------------------------------------------------------------


def _check_sizes(info: zipfile.ZipInfo, name: str) -> None:
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"{name!r}: an encrypted member")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsafeArchive(f"{name!r}: compression method {info.compress_type} (only stored and deflated)")
    if info.file_size > MAX_TOTAL:
        raise UnsafeArchive(f"{name!r}: unpacks to {info.file_size} bytes, more than {MAX_TOTAL // 2**20} MiB")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise UnsafeArchive(f"{name!r}: a stored member whose sizes differ")
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * info.compress_size:
        raise UnsafeArchive(f"{name!r}: compressed {info.file_size // max(info.compress_size, 1)}:1, "
                            f"more than {MAX_RATIO}:1 (a zip bomb)")


def _check_totals(infos: List[zipfile.ZipInfo]) -> None:
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > MAX_TOTAL:
        raise UnsafeArchive(f"unpacks to {total} bytes, more than {MAX_TOTAL // 2**20} MiB")
    if total > RATIO_FLOOR and total > MAX_RATIO * packed:
        raise UnsafeArchive(f"compressed {total // max(packed, 1)}:1 overall, more than {MAX_RATIO}:1 (a zip bomb)")


def _check_tree(members: List[Member]) -> None:
    """No duplicates (exact, or once case-folded and normalised); no file used as a directory."""
    seen: Dict[str, str] = {}
    kinds = {m.name: m.kind for m in members}
    for m in members:
        key = _fold(m.name)
        if key in seen:
            raise UnsafeArchive(f"{m.name!r}: a duplicate of {seen[key]!r}")
        seen[key] = m.name
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            if kinds.get("/".join(parts[:i])) == "file":
                raise UnsafeArchive(f"{m.name!r}: below {'/'.join(parts[:i])!r}, which is a file")


def members(zf: zipfile.ZipFile) -> List[Member]:
    """Every member of ``zf`` validated by its central directory entry, sorted by name."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeArchive(f"{len(infos)} members: more than {MAX_MEMBERS}")
    out: List[Member] = []
    for info in infos:
        name = clean_name(info.filename)
        kind = _kind(info, name)
        _check_sizes(info, name)
        if kind == "dir" and info.file_size:
            raise UnsafeArchive(f"{name!r}: a directory with content")
        out.append(Member(name, kind, _mode(info), info))
    _check_totals(infos)
    out.sort(key=lambda m: m.name)
    _check_tree(out)
    return out


# -- reading members ----------------------------------------------------------------------------


def _data_start(fh: BinaryIO, member: Member) -> int:
    """Where the member's compressed bytes start, after a local header that must agree."""
    info = member.info
    fh.seek(info.header_offset)
    header = fh.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        raise UnsafeArchive(f"{member.name!r}: no local header where the directory says (truncated or corrupt)")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[-2], fields[-1]
    raw = fh.read(name_len)
    if b"\0" in raw:  # zipfile cuts a central name at a NUL: the local name shows it
        raise UnsafeArchive(f"{raw[:200]!r}: a NUL in a member name")
    encoding = "utf-8" if fields[3] & 0x800 else "cp437"
    if raw.decode(encoding, "replace") != info.filename:
        raise UnsafeArchive(f"{member.name!r}: its local header names {raw[:200]!r}")
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _check_layout(fh: BinaryIO, members: List[Member], end: int) -> Dict[str, int]:
    """The data start of every member; refuses members that overlap or run past ``end``."""
    starts = {m.name: _data_start(fh, m) for m in members}
    spans = sorted((m.info.header_offset, starts[m.name] + m.info.compress_size, m.name) for m in members)
    for (_, stop, name), (begin, _, following) in zip(spans, spans[1:]):
        if begin < stop:
            raise UnsafeArchive(f"{following!r} overlaps {name!r} (an overlapping-members zip bomb)")
    if spans and spans[-1][1] > end:
        raise UnsafeArchive(f"{spans[-1][2]!r}: its data runs past the end of the archive (truncated)")
    return starts


def _inflate(fh: BinaryIO, member: Member, start: int) -> Iterator[bytes]:
    """The member's bytes in chunks of at most CHUNK, checked against its declared size and CRC."""
    info = member.info
    fh.seek(start)
    left = info.compress_size
    want = info.file_size
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    crc = produced = 0
    while inflater is None or not inflater.eof:
        if inflater is not None and inflater.unconsumed_tail:
            data = inflater.unconsumed_tail
        elif left:
            data = fh.read(min(CHUNK, left))
            if not data:
                raise UnsafeArchive(f"{member.name!r}: truncated")
            left -= len(data)
        elif inflater is None:
            break
        else:
            data = b""  # input exhausted: flush what zlib still holds
        out = data if inflater is None else inflater.decompress(data, CHUNK)
        if not data and not out:
            break
        produced += len(out)
        if produced > want:
            raise UnsafeArchive(f"{member.name!r}: inflates past its declared {want} bytes")
        crc = zlib.crc32(out, crc)
        if out:
            yield out
    if inflater is not None and not inflater.eof:
        raise UnsafeArchive(f"{member.name!r}: its compressed data is truncated")
    if produced != want:
        raise UnsafeArchive(f"{member.name!r}: {produced} bytes, not the declared {want}")
    if crc != info.CRC:
        raise UnsafeArchive(f"{member.name!r}: bad CRC-32 (corrupt)")


# -- the pass -----------------------------------------------------------------------------------


class _BoundedReads:
    """The archive file for zipfile: one read larger than MAX_DIRECTORY is refused, so a huge
    central directory never becomes hundreds of MiB of ZipInfo objects."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            here = self._fh.tell()
            n = self._fh.seek(0, os.SEEK_END) - here
            self._fh.seek(here)
        if n > MAX_DIRECTORY:
            raise UnsafeArchive(f"a central directory larger than {MAX_DIRECTORY // 2**20} MiB")
        return self._fh.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def seekable(self) -> bool:
        return True


def module_root(names: List[str]) -> str:
    """The directory holding the Go sources (from the names of the files): the top level, or the
    single top-level directory that a 'dispatch/…' style archive wraps everything in."""
    if any("/" not in n and (n.endswith(".go") or n == "go.mod") for n in names):
        return ""
    tops = {n.split("/")[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop()
    return ""


Sink = Callable[[Member], Optional[Callable[[bytes], None]]]


def _scan(path: Path, sink: Optional[Sink]) -> ArchiveSummary:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        zf = zipfile.ZipFile(cast(BinaryIO, _BoundedReads(fh)))
        listed = members(zf)
        starts = _check_layout(fh, listed, end)
        for m in listed:
            digest.update(f"{m.name}\0{m.kind}\0{m.mode:o}\0{m.info.file_size}\0".encode("utf-8", "surrogatepass"))
            write = sink(m) if sink is not None else None
            if m.kind == "file":
                for chunk in _inflate(fh, m, starts[m.name]):
                    digest.update(chunk)
                    if write is not None:
                        write(chunk)
    files = [m.name for m in listed if m.kind == "file"]
    return ArchiveSummary(digest.hexdigest(), len(files), len(listed) - len(files),
                          sum(m.info.file_size for m in listed), module_root(files),
                          any(n.endswith(".go") for n in files))


def _guarded(path: Path, sink: Optional[Sink]) -> ArchiveSummary:
    """_scan with every way a hostile archive can break a reader turned into UnsafeArchive."""
    try:
        return _scan(path, sink)
    except UnsafeArchive:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise UnsafeArchive(f"not a usable zip archive: {exc}") from None
    except zlib.error as exc:
        raise UnsafeArchive(f"corrupt compressed data: {exc}") from None
    except (EOFError, struct.error, UnicodeError, OverflowError) as exc:
        raise UnsafeArchive(f"a truncated or corrupt zip archive: {exc}") from None
    except ValueError as exc:  # e.g. a negative seek from a bogus offset
        raise UnsafeArchive(f"a corrupt zip archive: {exc}") from None
    except OSError as exc:
        if exc.errno in _ARCHIVE_ERRNOS or exc.errno is None:
            raise UnsafeArchive(f"a corrupt zip archive: {exc.strerror or exc}") from None
        raise


# errors that only a bad archive causes (as opposed to a full disk or a read-only file system)
_ARCHIVE_ERRNOS = {errno.EINVAL, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                   errno.ENAMETOOLONG, errno.EILSEQ, errno.EFBIG}


def inspect(path: Path) -> ArchiveSummary:
    """Validate the zip at ``path`` and compute its digest, writing nothing. Memory stays within
    a few chunks whatever the archive holds. Raises UnsafeArchive (or OSError if ``path`` cannot
    be read)."""
    return _guarded(path, None)


def source_digest(path: Path) -> str:
    """sha256 over names, kinds, modes and contents: the same sources re-zipped give the same digest."""
    return inspect(path).digest


# -- extraction ---------------------------------------------------------------------------------


class _Staging:
    """Writes members below one directory, by file descriptors: each directory is opened with
    O_NOFOLLOW relative to its parent (from the staging root every time: no fd is kept per
    directory) and each file created with O_EXCL|O_NOFOLLOW, so nothing is ever written through a
    link or outside the staging directory."""

    def __init__(self, dest: Path) -> None:
        self.root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.current: Optional[int] = None

    def _dir(self, rel: str) -> int:
        """An fd of the directory ``rel`` (made 0755 if missing); the caller closes it."""
        fd = os.dup(self.root)
        for leaf in rel.split("/") if rel else ():
            made = False
            try:
                with contextlib.suppress(FileExistsError):  # made for an earlier member
                    os.mkdir(leaf, 0o700, dir_fd=fd)
                    made = True
                child = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
            if made:
                os.fchmod(child, 0o755)
            fd = child
        return fd

    def _finish(self) -> None:
        if self.current is not None:
            os.close(self.current)
            self.current = None

    def open(self, member: Member) -> Optional[Callable[[bytes], None]]:
        self._finish()
        if member.kind == "dir":  # 0755 whatever the archive says: a 0644 directory is a trap
            os.close(self._dir(member.name))
            return None
        parent, _, leaf = member.name.rpartition("/")
        dir_fd = self._dir(parent)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(leaf, flags, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        self.current = fd
        os.fchmod(fd, member.mode)

        def write(chunk: bytes) -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]

        return write

    def close(self) -> None:
        self._finish()
        os.close(self.root)


def extract(path: Path, dest: Path) -> ArchiveSummary:
    """Validate the zip at ``path`` and stream its members into ``dest`` (a fresh, empty directory
    that only we can write to), with the checks and caps of :func:`inspect`. On UnsafeArchive part
    of the archive may have been written below ``dest`` (never outside): the caller removes it."""
    staging = _Staging(dest)
    try:
        return _guarded(path, staging.open)
    finally:
        staging.close()
