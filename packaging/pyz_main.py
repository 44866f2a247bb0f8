# dispatchctl in one file: a zipapp of dispatchctl and its pure-Python dependencies, built by
# scripts/build-dist from packaging/ (this file is its __main__.py). It needs python3 >= 3.9 and
# its standard library, nothing else; psutil is used when the host has it.
#
# Python compiles a module from a zip on every start (it caches compiled code only beside files
# on disk), which would make every command start 2-3 times slower than from a virtualenv. So the
# first run unpacks the archive once into a private cache, named by the archive's fingerprint,
# and every run imports from there, with Python's compiled-code cache:
#   root:   /var/cache/dispatchctl/pyz/<fingerprint>/
#   others: $XDG_CACHE_HOME/dispatchctl/pyz/<fingerprint>/ (else ~/.cache/...)
#   or:     $DISPATCHCTL_PYZ_CACHE/<fingerprint>/
# The cache is used only when it and every directory above it belong to root or to this user and
# no one else may write to them (above it, a sticky directory of root's such as /tmp is fine);
# otherwise (or with DISPATCHCTL_PYZ_UNPACK=0) dispatchctl runs straight from the zip. A new
# archive unpacks afresh and removes the unpacked copies of older ones.

import os
import sys

VERSION = "@VERSION@"
FINGERPRINT = "@FINGERPRINT@"
MARK = ".complete"


def cache_base():
    """Where this user's unpacked copies live, or None when dispatchctl must run from the zip."""
    if os.environ.get("DISPATCHCTL_PYZ_UNPACK", "1") == "0":
        return None
    if os.environ.get("DISPATCHCTL_PYZ_CACHE"):
        return os.path.abspath(os.environ["DISPATCHCTL_PYZ_CACHE"])
    if os.geteuid() == 0:
        return "/var/cache/dispatchctl/pyz"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dispatchctl", "pyz") if os.path.isabs(base) else None


def trusted(path):
    """``path`` and every directory above it are real directories (no links) of root or of this
    user that no one else may write to; above ``path``, a sticky directory of root's will do too
    (no one else can rename or remove what this user has in it)."""
    import stat

    euid, first = os.geteuid(), True
    while True:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        sticky_root = not first and st.st_uid == 0 and st.st_mode & stat.S_ISVTX
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, euid) or (st.st_mode & 0o022 and not sticky_root):
            return False
        parent, first = os.path.dirname(path), False
        if parent == path:
            return True
        path = parent


def unpack(archive, base, target):
    """Unpack ``archive`` into ``target`` (a temp dir renamed into place: complete or absent)."""
    import shutil
    import tempfile
    import zipfile

    work = tempfile.mkdtemp(prefix=".unpack-", dir=base)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if info.is_dir() or info.filename == "__main__.py":
                    continue
                if info.filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    raise ValueError(f"unexpected member {info.filename!r}")
                path = os.path.join(work, *parts)
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                with open(path, "xb") as out:
                    out.write(zf.read(info))
        with open(os.path.join(work, MARK), "w") as out:
            out.write(FINGERPRINT + "\n")
        os.chmod(work, 0o755)
        os.rename(work, target)
    except (OSError, ValueError):
        shutil.rmtree(work, ignore_errors=True)
        if not os.path.isfile(os.path.join(target, MARK)):  # not another run's copy, ready meanwhile
            raise
    for name in os.listdir(base):  # the copies of older archives
        if name != FINGERPRINT and len(name) == 64:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def unpacked(archive):
    """The directory to import dispatchctl from (unpacked on first use), or None: the zip itself."""
    base = cache_base()
    if base is None:
        return None
    target = os.path.join(base, FINGERPRINT)
    try:
        if not os.path.isdir(base):
            os.makedirs(base, mode=0o700)
        if not trusted(base):
            return None
        if not os.path.isfile(os.path.join(target, MARK)):
            unpack(archive, base, target)
        return target if trusted(target) else None
    except (OSError, ValueError):
        return None


def main():
    if sys.argv[1:] == ["--version"]:
        print(f"dispatchctl {VERSION}")
        return
    archive = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == archive:
        target = unpacked(archive)
        if target is not None:
            sys.path[0] = target
    from roboshop_dispatch.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
