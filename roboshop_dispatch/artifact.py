"""Fetch the go flavour's artifact to a file on disk: streamed, capped, optionally pinned.

The source is an ``https://`` URL, an ``http://`` one only when the caller allows it (the CLI's
``--insecure``), a ``file://`` URL or an absolute path. A redirect may not leave http(s) nor go
from https to http. The download is streamed into a private temporary file (never held in
memory), capped at :data:`MAX_DOWNLOAD` bytes and an overall deadline that covers connecting,
the headers and the body (:class:`_Deadline`), and hashed on the way; a
pinned sha256 (``--sha256``) that does not match removes the file and names both digests.
Every failure is one :class:`ArtifactError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import re
import socket
import ssl
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, List, NamedTuple, Optional, Tuple

from .errors import DispatchctlError

MAX_DOWNLOAD = 64 * 1024 * 1024
CHUNK = 64 * 1024
TIMEOUT = 30.0  # seconds for connecting and for each read
DEADLINE = 300.0  # seconds for the whole download
MAX_REDIRECTS = 5
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class ArtifactError(DispatchctlError):
    """The artifact could not be fetched, is too large, or does not match its pinned sha256."""


class Fetched(NamedTuple):
    path: Path  # a 0600 file in the directory the caller gave; the caller removes it
    sha256: str
    size: int


MASKED = "***"


def shown(source: str) -> str:
    """``source`` fit for messages and files: the userinfo (a password, or a token in the user's
    place) and every query value (a pre-signed URL's signature, credential, token...) replaced by
    ``***``. What is masked cannot be given back: see :func:`is_masked`."""
    try:
        parts = urllib.parse.urlsplit(source) if "://" in source else None
    except ValueError:  # e.g. an unclosed IPv6 bracket: mask the whole authority and the query
        return re.sub(r"\?.*", "?" + MASKED, re.sub(r"//[^/]*@", "//***@", source))
    if parts is None:
        return source
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASKED}@{host}" if colon else f"{MASKED}@{host}"
    if query:
        query = "&".join(f"{pair.partition('=')[0]}={MASKED}" if "=" in pair else MASKED
                         for pair in query.split("&"))
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def is_masked(source: str) -> bool:
    """Whether ``source`` is what :func:`shown` made of an address with a secret in it."""
    return "://" in source and MASKED in source and shown(source) == source


def check_sha256(value: str) -> str:
    """``value`` as 64 lower-case hex digits, or ArtifactError."""
    if not _SHA256.fullmatch(value):
        raise ArtifactError(f"{value[:80]!r} is not a sha256 (64 hexadecimal digits)")
    return value.lower()


class _RedirectPolicy(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s), never from https to http, and to http only if allowed."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        if new not in ("http", "https"):
            raise ArtifactError(f"refusing a redirect from {shown(req.full_url)} to a {new or 'schemeless'} URL")
        if old == "https" and new == "http":
            raise ArtifactError(f"refusing a redirect from https to plain http ({shown(newurl)})")
        if new == "http" and not self.allow_http:
            raise ArtifactError(f"refusing a redirect to plain http ({shown(newurl)}) without --insecure")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """One clock for the whole download: connecting, the response's headers and its body. Every
    connection made under it is tracked; when the time is up a watchdog thread shuts their sockets
    down, so a server that trickles one header line a second cannot hold a read past it (a
    per-receive timeout alone never fires then). Reads then fail, and :meth:`check` says why."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._connections: List[Any] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()

    def left(self) -> float:
        return max(0.001, self.at - time.monotonic())

    def track(self, connection: Any) -> None:
        with self._lock:
            self._connections.append(connection)
            if self.expired:
                _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for connection in self._connections:
                _shut(connection)

    def check(self, source: str) -> None:
        if self.expired or time.monotonic() > self.at:
            raise ArtifactError(f"{shown(source)}: the download took longer than {self.seconds:g} s "
                                "(connecting, the headers and the body)")


def _shut(connection: Any) -> None:
    """Shut the connection's socket down under whoever reads it (the plain socket's shutdown, also
    under TLS: the blocked read then ends, and the TLS object stays intact for the reader)."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _connections(base: Any, deadline: _Deadline, timeout: float) -> Any:
    """A connection class for urllib's do_open: ``base``, connecting within what is left of the
    deadline, tracked by it."""
    def make(host: str, **kwargs: Any) -> Any:
        kwargs["timeout"] = min(timeout, deadline.left())
        connection = base(host, **kwargs)
        deadline.track(connection)
        return connection
    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline, timeout: float) -> None:
        super().__init__()
        self.make = _connections(http.client.HTTPConnection, deadline, timeout)

    def http_open(self, req: Any) -> Any:
        return self.do_open(self.make, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, timeout: float) -> None:
        super().__init__()
        self.make = _connections(http.client.HTTPSConnection, deadline, timeout)

    def https_open(self, req: Any) -> Any:
        # the system's trust store (and $SSL_CERT_FILE), read now: what urllib's default handler uses
        return self.do_open(self.make, req, context=ssl.create_default_context())


def _opener(allow_http: bool, deadline: _Deadline, timeout: float) -> urllib.request.OpenerDirector:
    """http(s) only: no file:, ftp: or data: handlers behind a redirect; every connection under
    ``deadline``."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), _HTTPHandler(deadline, timeout), _HTTPSHandler(deadline, timeout),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(),
                    _RedirectPolicy(allow_http)):
        opener.add_handler(handler)
    return opener


def _copy(src: io.BufferedIOBase, dest: BinaryIO, source: str, max_bytes: int, deadline: _Deadline) -> str:
    """Copy in chunks, within the caps; the sha256 of what was copied. ``read1`` returns what one
    receive brought, so a server that trickles bytes meets the deadline too (and the deadline's
    watchdog ends a read that waits past it)."""
    digest = hashlib.sha256()
    total = 0
    while True:
        chunk = src.read1(CHUNK)
        deadline.check(source)  # an early end of the body may be the watchdog's doing
        if not chunk:
            return digest.hexdigest()
        total += len(chunk)
        if total > max_bytes:
            raise ArtifactError(f"{shown(source)} is larger than {max_bytes // 2**20} MiB")
        digest.update(chunk)
        dest.write(chunk)


def _open_url(source: str, allow_http: bool, max_bytes: int, timeout: float, deadline: _Deadline) -> Any:
    request = urllib.request.Request(source, headers={"User-Agent": "dispatchctl"})
    try:
        response = _opener(allow_http, deadline, timeout).open(request, timeout=min(timeout, deadline.left()))
    except urllib.error.HTTPError as exc:
        deadline.check(source)
        raise ArtifactError(f"HTTP {exc.code} {exc.reason} from {shown(source)}") from None
    except urllib.error.URLError as exc:
        deadline.check(source)
        raise ArtifactError(f"cannot fetch {shown(source)}: {exc.reason}") from None
    except (OSError, http.client.HTTPException):
        deadline.check(source)
        raise
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        response.close()
        raise ArtifactError(f"{shown(source)} is {int(length)} bytes, larger than {max_bytes // 2**20} MiB")
    return response


def _open_local(path: str) -> io.BufferedIOBase:
    """A regular file (O_NONBLOCK: a FIFO must not hang us before we can refuse it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArtifactError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def source_of(source: str, allow_http: bool) -> Tuple[str, str]:
    """('url', url) or ('path', absolute path), or ArtifactError naming the source as
    :func:`shown` shows it (never its credentials). Pure: the CLI checks ``--artifact`` with it
    when it reads the option, before any step runs."""
    if "://" not in source:
        if not os.path.isabs(source):
            raise ArtifactError(f"{shown(source)}: give an https URL or an absolute path")
        return "path", source
    try:
        parts = urllib.parse.urlsplit(source)
        parts.port  # noqa: B018 (a port out of range or not a number raises here)
    except ValueError as exc:
        raise ArtifactError(f"{shown(source)}: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if parts.username is not None or parts.password is not None:
        raise ArtifactError(f"{shown(source)}: credentials in the URL are refused (they show in process "
                            "lists); use a pre-signed URL or a local path")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ArtifactError(f"{shown(source)}: a file URL names this host only")
        return "path", urllib.request.url2pathname(parts.path)
    if scheme == "http" and not allow_http:
        raise ArtifactError(f"refusing plain http for {shown(source)}: use https, or --insecure to accept it")
    if scheme not in ("http", "https"):
        raise ArtifactError(f"{shown(source)}: only https (http with --insecure), file URLs and paths")
    if not parts.hostname:
        raise ArtifactError(f"{shown(source)}: the URL names no host")
    return "url", source


def _discard(path: Optional[Path]) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def fetch(source: str, dest_dir: Path, *, allow_http: bool = False, expected_sha256: Optional[str] = None,
          max_bytes: int = MAX_DOWNLOAD, timeout: float = TIMEOUT, deadline: float = DEADLINE) -> Fetched:
    """Download (or copy) ``source`` into a new 0600 file in ``dest_dir``; see the module text.
    ``timeout`` bounds connecting and each receive, ``deadline`` the whole transfer (seconds): the
    connection, the response's headers and its body.
    Raises ArtifactError only."""
    pinned = check_sha256(expected_sha256) if expected_sha256 is not None else None
    path: Optional[Path] = None
    try:
        kind, where = source_of(source, allow_http)
        fd, name = tempfile.mkstemp(prefix=".artifact-", suffix=".zip", dir=str(dest_dir))
        path = Path(name)
        with os.fdopen(fd, "wb") as out, _Deadline(deadline) as clock:
            try:
                src = _open_url(where, allow_http, max_bytes, timeout, clock) if kind == "url" else _open_local(where)
                with src:
                    digest = _copy(src, out, source, max_bytes, clock)
            except (OSError, http.client.HTTPException, ValueError):
                clock.check(source)  # the watchdog's doing: say so
                raise
        if pinned is not None and digest != pinned:
            raise ArtifactError(f"{shown(source)} has sha256 {digest}, not the pinned {pinned} (--sha256)")
        return Fetched(path, digest, path.stat().st_size)
    except ArtifactError:
        _discard(path)
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        _discard(path)
        what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ArtifactError(f"cannot fetch {shown(source)}: {what}") from None
