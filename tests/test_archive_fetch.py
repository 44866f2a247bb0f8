"""roboshop_dispatch.artifact.fetch against real servers on 127.0.0.1: plain HTTP and HTTPS (a
self-signed certificate made here and trusted through SSL_CERT_FILE), local paths and file URLs.
Every failure is one ArtifactError and leaves no file behind."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import ssl
import stat
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roboshop_dispatch import artifact
from roboshop_dispatch.artifact import ArtifactError, fetch
from roboshop_dispatch.validate import SettingsError, validate_artifact

BODY = b"PK\x05\x06" + bytes(18) + os.urandom(3000)


def slow_headers(out) -> None:
    """A response whose header lines come one a second, for 30 s (issue 19)."""
    with contextlib.suppress(OSError):
        out.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(30):
            out.flush()
            time.sleep(1)
            out.write(b"X-Slow-%d: y\r\n" % n)
        out.write(b"Content-Length: 2\r\n\r\nPK")


class Server:
    """A real HTTP(S) server on 127.0.0.1 with a few routes; counts the requests it answered."""

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.requests = 0
        self.redirects: Dict[str, str] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/ok.zip":
                    self._send(BODY)
                elif self.path == "/declares-too-much":
                    self._send(b"x" * 100, length=str(10 * 2**20))
                elif self.path == "/endless":  # no length: only the byte count can stop it
                    self.send_response(200)
                    self.end_headers()
                    chunk = bytes(64 * 1024)
                    with contextlib.suppress(OSError):
                        for _ in range(64):
                            self.wfile.write(chunk)
                elif self.path == "/trickle":  # a byte at a time, each well within the timeout
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    with contextlib.suppress(OSError):
                        for _ in range(1000):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.05)
                elif self.path == "/slow-headers":
                    slow_headers(self.wfile)
                elif self.path == "/slow":
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"PK")
                    self.wfile.flush()
                    time.sleep(3)
                else:
                    self.send_error(404)

            def _send(self, body: bytes, length: Optional[str] = None) -> None:
                self.send_response(200)
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> Tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    key, crt = where / "key.pem", where / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(crt)], check=True, capture_output=True, timeout=60)
    return crt, key


@pytest.fixture
def plain() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture
def tls(cert, monkeypatch) -> Iterator[Server]:
    crt, key = cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(crt))  # the client trusts this certificate, and only it
    server = Server(context)
    yield server
    server.close()


@pytest.fixture
def dest(tmp_path) -> Path:
    d = tmp_path / "download"
    d.mkdir()
    return d


def fails(dest: Path, match: str, source: str, **kw) -> str:
    """fetch raises ArtifactError matching ``match`` and leaves no new file in ``dest``."""
    before = set(dest.iterdir())
    with pytest.raises(ArtifactError, match=match) as err:
        fetch(source, dest, **kw)
    assert set(dest.iterdir()) == before
    return str(err.value)


def test_plain_http_is_refused_unless_allowed(plain, dest):
    fails(dest, "refusing plain http .* --insecure", plain.url("/ok.zip"))
    assert plain.requests == 0
    got = fetch(plain.url("/ok.zip"), dest, allow_http=True)
    assert got.path.read_bytes() == BODY and got.path.parent == dest and got.size == len(BODY)
    assert got.sha256 == hashlib.sha256(BODY).hexdigest()
    assert stat.S_IMODE(got.path.stat().st_mode) == 0o600


def test_https_with_a_trusted_certificate(tls, dest):
    got = fetch(tls.url("/ok.zip"), dest)
    assert got.path.read_bytes() == BODY


def test_an_untrusted_certificate_is_refused(tls, dest, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    fails(dest, "CERTIFICATE_VERIFY_FAILED|certificate verify failed", tls.url("/ok.zip"))


def test_the_pinned_sha256_is_checked(plain, dest):
    good = hashlib.sha256(BODY).hexdigest()
    got = fetch(plain.url("/ok.zip"), dest, allow_http=True, expected_sha256=good.upper())
    assert got.sha256 == good
    got.path.unlink()
    wrong = hashlib.sha256(b"other").hexdigest()
    message = fails(dest, "not the pinned", plain.url("/ok.zip"), allow_http=True, expected_sha256=wrong)
    assert good in message and wrong in message
    fails(dest, "not a sha256", plain.url("/ok.zip"), allow_http=True, expected_sha256="abc")


def test_the_size_cap_holds_with_and_without_a_declared_length(plain, dest):
    fails(dest, "larger than 1 MiB", plain.url("/declares-too-much"), allow_http=True, max_bytes=2**20)
    fails(dest, "larger than 1 MiB", plain.url("/endless"), allow_http=True, max_bytes=2**20)


def test_a_stalled_download_times_out(plain, dest):
    started = time.monotonic()
    fails(dest, "cannot fetch", plain.url("/slow"), allow_http=True, timeout=0.5)
    assert time.monotonic() - started < 2.5


def test_a_trickling_download_meets_the_deadline(plain, dest):
    started = time.monotonic()
    fails(dest, "took longer than 1 s", plain.url("/trickle"), allow_http=True, timeout=0.5, deadline=1.0)
    assert time.monotonic() - started < 3


def test_redirects_never_downgrade_nor_leave_http(tls, plain, dest):
    tls.redirects["/down"] = plain.url("/ok.zip")
    fails(dest, "from https to plain http", tls.url("/down"), allow_http=True)
    assert plain.requests == 0
    tls.redirects["/file"] = "file:///etc/passwd"
    fails(dest, "'file:///etc/passwd' is not allowed", tls.url("/file"))  # urllib's own rule
    tls.redirects["/ftp"] = "ftp://127.0.0.1/x.zip"
    fails(dest, "to a ftp URL", tls.url("/ftp"))  # ours: urllib would follow it
    plain.redirects["/up"] = tls.url("/ok.zip")
    assert fetch(plain.url("/up"), dest, allow_http=True).path.read_bytes() == BODY
    tls.redirects["/same"] = "/ok.zip"  # relative: stays on https
    assert fetch(tls.url("/same"), dest).path.read_bytes() == BODY
    plain.redirects["/plain"] = "/ok.zip"
    before = plain.requests
    fails(dest, "refusing plain http", plain.url("/plain"))
    assert plain.requests == before


def test_http_errors_and_credentials_in_urls(plain, dest):
    fails(dest, "HTTP 404 Not Found", plain.url("/missing"), allow_http=True)
    message = fails(dest, "credentials in the URL", plain.url("/ok.zip").replace("://", "://deploy:s3cret@"),
                    allow_http=True)
    assert "s3cret" not in message and "deploy:***@" in message
    assert plain.requests == 1


def test_local_paths_and_file_urls(tmp_path, dest):
    src = tmp_path / "dispatch zip.zip"
    src.write_bytes(BODY)
    assert fetch(str(src), dest).path.read_bytes() == BODY
    assert fetch(src.as_uri(), dest).path.read_bytes() == BODY
    fails(dest, "absolute path", "relative/dispatch.zip")
    fails(dest, "No such file", str(tmp_path / "missing.zip"))
    fails(dest, "not a regular file", str(tmp_path))
    fails(dest, "not a regular file", "/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fails(dest, "not a regular file", str(fifo))  # without hanging on the open
    fails(dest, "this host only", "file://elsewhere.invalid/x.zip")
    fails(dest, "only https", "ftp://127.0.0.1/x.zip")
    big = tmp_path / "big.zip"
    big.write_bytes(bytes(2**20 + 1))
    fails(dest, "larger than 1 MiB", str(big), max_bytes=2**20)


@given(user=st.text(min_size=1, max_size=12), password=st.text(min_size=1, max_size=20))
def test_shown_never_contains_the_password(user, password):
    quoted = urllib.parse.quote(password, safe="")
    url = f"https://{urllib.parse.quote(user, safe='')}:{quoted}@127.0.0.1:8443/dispatch.zip"
    shown = artifact.shown(url)
    assert ":***@127.0.0.1:8443/dispatch.zip" in shown
    assert shown.count(quoted) < url.count(quoted)


@given(st.text(max_size=40))
def test_shown_survives_any_text(text):
    for source in ("https://[" + text, "https://u:" + text + "@[::1/x", text):
        assert isinstance(artifact.shown(source), str)
    assert "pw" not in artifact.shown("https://u:pw@[" + text.replace("pw", ""))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.sampled_from(["file://", "/", "http://", "file:///", "ftp://", "https://["]))
def test_any_source_that_needs_no_network_ends_in_a_file_or_artifacterror(tmp_path_factory, text, prefix):
    dest = tmp_path_factory.mktemp("d")
    try:
        got = fetch(prefix + text, dest, max_bytes=2**20)  # http: refused before any connection
    except ArtifactError:
        assert list(dest.iterdir()) == []
    else:
        assert got.path.parent == dest


@pytest.mark.parametrize("server", ["plain", "tls"])
def test_the_deadline_covers_connecting_and_the_headers_too(server, dest, request):
    """Issue 19: a server that sends one header line a second never trips the per-receive timeout;
    the download's deadline must still end it (before the fix it waited the 30 s the server took)."""
    srv = request.getfixturevalue(server)
    started = time.monotonic()
    message = fails(dest, "took longer than 2 s", srv.url("/slow-headers"), allow_http=True, timeout=30, deadline=2)
    took = time.monotonic() - started
    assert 1.9 < took < 6, took
    assert "headers" in message


@given(st.dictionaries(st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12),
                       st.text(st.characters(categories=["L", "N", "P"]), min_size=8, max_size=40),
                       min_size=1, max_size=4),
       st.sampled_from(["", "token@", "deploy:pw-s3cr3t-xyz@"]))
def test_shown_masks_every_query_value_and_the_userinfo(query, userinfo):
    """A pre-signed URL's signature and credential, a token in the user's place: never shown, never
    recorded in the build stamp; what was masked is known as such (it is not given back)."""
    base = f"https://{userinfo}bucket.example.invalid/roboshop/dispatch.zip"
    url = base + "?" + urllib.parse.urlencode(query)
    shown = artifact.shown(url)
    for value in query.values():
        assert urllib.parse.quote_plus(value) not in shown and value not in shown
    assert "pw-s3cr3t-xyz" not in shown and "token@" not in shown
    assert shown.startswith("https://") and "bucket.example.invalid/roboshop/dispatch.zip?" in shown
    assert artifact.is_masked(shown) and not artifact.is_masked("https://bucket.example.invalid/d.zip")
    with pytest.raises(SettingsError, match="recorded with its secret masked"):
        validate_artifact("/app/.dispatch-build.json: artifact", shown)
