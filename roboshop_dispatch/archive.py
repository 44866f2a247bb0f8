"""Fetch the go flavour's artifact (URL or local path) and unzip it safely.

Every member is validated before anything is written: an absolute path, a ``..`` component, a
link that points outside the destination, a device or FIFO, or an archive that unpacks to more
than :data:`MAX_TOTAL` bytes is rejected with the member's name, and nothing is extracted.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

MAX_DOWNLOAD = 256 * 1024 * 1024
MAX_TOTAL = 1024 * 1024 * 1024
MAX_MEMBERS = 20000


class UnsafeArchive(ValueError):
    """The archive would write outside its destination (or is not a usable zip)."""


def fetch(artifact: str, timeout: float = 60.0) -> bytes:
    """The artifact's bytes from an http(s)/file URL or a local path. Raises OSError."""
    if "://" not in artifact:
        with open(artifact, "rb") as fh:
            data = fh.read(MAX_DOWNLOAD + 1)
    else:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(artifact, headers={"User-Agent": "dispatchctl"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = response.read(MAX_DOWNLOAD + 1)
        except urllib.error.HTTPError as exc:
            raise OSError(f"HTTP {exc.code} {exc.reason} from {artifact}") from None
        except urllib.error.URLError as exc:
            raise OSError(f"cannot fetch {artifact}: {exc.reason}") from None
    if len(data) > MAX_DOWNLOAD:
        raise OSError(f"{artifact} is larger than {MAX_DOWNLOAD // (1024 * 1024)} MiB")
    return data


def _kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "dir"
    if info.create_system == 3 and mode:  # unix attributes present
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFLNK:
            return "link"
        if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
            return "special"
        if fmt == stat.S_IFDIR:
            return "dir"
    return "file"


def _clean_name(name: str) -> str:
    if "\x00" in name or "\\" in name:
        raise UnsafeArchive(f"{name!r}: a NUL or backslash in a member name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"{name!r}: an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{name!r}: a '..' component escapes the destination")
    return "/".join(parts)


def members(data: bytes) -> List[Tuple[str, str, bytes, int]]:
    """(name, kind, content, mode) of every member, validated; content of a link is its target."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"not a zip archive: {exc}") from None
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeArchive(f"{len(infos)} members: more than {MAX_MEMBERS}")
    if sum(i.file_size for i in infos) > MAX_TOTAL:
        raise UnsafeArchive(f"unpacks to more than {MAX_TOTAL // (1024 * 1024)} MiB")
    out: List[Tuple[str, str, bytes, int]] = []
    seen: Dict[str, str] = {}
    for info in infos:
        name = _clean_name(info.filename)
        kind = _kind(info)
        if not name:
            continue
        if kind == "special":
            raise UnsafeArchive(f"{info.filename!r}: a device, FIFO or socket")
        content = b"" if kind == "dir" else zf.read(info)
        if kind == "link":
            target = content.decode("utf-8", "replace")
            if target.startswith("/") or "\x00" in target:
                raise UnsafeArchive(f"{info.filename!r}: a link to the absolute path {target!r}")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchive(f"{info.filename!r}: a link to {target!r} points outside")
        # a member below a link would be written through it
        parents = name.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if seen.get("/".join(parents[:i])) == "link":
                raise UnsafeArchive(f"{info.filename!r}: written through a link in the archive")
        seen[name] = kind
        mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
        out.append((name, kind, content, mode))
    return out


def source_digest(entries: List[Tuple[str, str, bytes, int]]) -> str:
    """sha256 over names, kinds and contents: the same sources re-zipped give the same digest."""
    digest = hashlib.sha256()
    for name, kind, content, mode in sorted(entries):
        digest.update(f"{name}\0{kind}\0{mode:o}\0{len(content)}\0".encode() + content)
    return digest.hexdigest()


def extract(entries: List[Tuple[str, str, bytes, int]], dest: Path) -> int:
    """Write the validated entries under ``dest`` (a new, empty directory). Returns the file count."""
    root = os.path.realpath(dest)
    count = 0
    for name, kind, content, mode in entries:
        path = os.path.join(root, *name.split("/"))
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        if os.path.commonpath([root, os.path.realpath(parent)]) != root:
            raise UnsafeArchive(f"{name!r}: its directory resolves outside the destination")
        if kind == "dir":
            os.makedirs(path, exist_ok=True)
        elif kind == "link":
            os.symlink(content.decode("utf-8"), path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            count += 1
    # links were checked one by one as text; a chain of links is only judged right resolved
    for name, kind, _, _ in entries:
        if kind == "link":
            real = os.path.realpath(os.path.join(root, *name.split("/")))
            if os.path.commonpath([root, real]) != root:
                raise UnsafeArchive(f"{name!r}: resolves to {real}, outside the destination")
    return count


def module_root(entries: List[Tuple[str, str, bytes, int]]) -> str:
    """The directory holding the Go sources: the top level, or the single top-level directory
    that a 'dispatch/…' style archive wraps everything in."""
    names = [n for n, kind, _, _ in entries if kind != "dir"]
    if any("/" not in n and (n.endswith(".go") or n == "go.mod") for n in names):
        return ""
    tops = {n.split("/")[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop()
    return ""
