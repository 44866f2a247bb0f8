"""The text of the tracing and metrics settings, read without OpenTelemetry or prometheus_client
(standard library only), so that the consumer and dispatchctl read them alike: dispatchctl
validates ``--otlp-endpoint``, ``--metrics-listen`` and ``--otlp-header`` with these functions and
writes what the consumer parses.

- the collector's base URL (``OTEL_EXPORTER_OTLP_ENDPOINT``): http or https, a host, no space or
  control character; :func:`shown` prints one without user info, query or fragment;
- the metrics address (``DISPATCH_METRICS_LISTEN``): ``HOST:PORT`` or ``[IPV6]:PORT``; instance N
  of a template unit (``DISPATCH_INSTANCE=N``) listens on PORT + N - 1;
- the exporter's headers (the credential ``otlp-headers``, ``OTEL_EXPORTER_OTLP_HEADERS``): the
  specification's ``key=value,key=value`` with URL-encoded values (:func:`format_headers`), as
  OpenTelemetry's ``parse_env_headers`` reads them.
"""

from __future__ import annotations

import urllib.parse
from typing import Iterable, List, Mapping, Optional, Tuple

MAX_PORT = 65535
TRACING_ON = "on"


def tracing_state(env: Mapping[str, str]) -> str:
    """``on`` when an OTLP endpoint is set and OpenTelemetry is not disabled; else ``off`` (why)."""
    if not traces_url(env):
        return "off"
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "off(OTEL_SDK_DISABLED=true)"
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return "off(OTEL_TRACES_EXPORTER=none)"
    return TRACING_ON


def traces_url(env: Mapping[str, str]) -> str:
    """The collector's URL as set: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT."""
    return (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


# == the collector's URL ==========================================================================
def check_endpoint(url: str) -> str:
    """``url`` when it is an http:// or https:// URL with a host; ValueError saying why not."""
    try:
        parts = urllib.parse.urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is no number
        valid = False
    if not valid or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError(f"is not an http:// or https:// URL ({shown(url)})")
    return url


def shown(url: str) -> str:
    """A URL fit for a log line: no user info, query or fragment (they may hold a token)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))[:200]
    except ValueError:
        return "(unparsable URL)"


def endpoint_address(url: str) -> Tuple[str, int]:
    """(host, port) a collector URL connects to (the scheme's port when it names none)."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


# == the metrics address ==========================================================================
def parse_listen(raw: str) -> Tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); ValueError with the reason otherwise."""
    text = raw.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError("is not HOST:PORT or [IPV6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError("is not HOST:PORT or [IPV6]:PORT (an IPv6 address goes in brackets)")
    if any(ch.isspace() or ch in "/@[]" for ch in host) or not host.isascii():
        raise ValueError(f"has no valid host ({host[:60]!r})")
    if not (port.isdigit() and port.isascii() and 1 <= int(port) <= MAX_PORT):
        raise ValueError(f"has no valid port ({port[:20]!r}: 1..{MAX_PORT})")
    return host, int(port)


def instance_port(port: int, instance: Optional[str]) -> int:
    """The port instance ``instance`` (DISPATCH_INSTANCE, 1-based; None: the one dispatch.service)
    listens on: ``port + instance - 1``. ValueError when that is no port."""
    if instance is None:
        return port
    text = instance.strip()
    if not (text.isdigit() and text.isascii() and 1 <= int(text) <= MAX_PORT):
        raise ValueError(f"DISPATCH_INSTANCE={instance[:20]!r} is not an instance number (1, 2, ...)")
    number = port + int(text) - 1
    if number > MAX_PORT:
        raise ValueError(f"port {port} + instance {int(text)} - 1 = {number} is over {MAX_PORT}")
    return number


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# == the exporter's headers =======================================================================
_SEPARATORS = '()<>@,;:\\"/[]?={}'


def valid_header(name: str, value: str) -> bool:
    """An HTTP header name (a token) and a value without control characters."""
    token = name and all(33 <= ord(ch) < 127 and ch not in _SEPARATORS for ch in name)
    return bool(token) and all(ch == "\t" or 32 <= ord(ch) < 127 or ord(ch) > 159 for ch in value)


def format_headers(pairs: Iterable[Tuple[str, str]]) -> str:
    """The specification's text for ``pairs``: ``name=value`` joined by commas, each value
    URL-encoded (so a comma, space or ``=`` in it survives), names in lower case as HTTP has them."""
    return ",".join(f"{name.lower()}={urllib.parse.quote(value, safe='')}" for name, value in pairs)


def parse_headers(text: str) -> List[Tuple[str, str]]:
    """``name=value`` pairs of the specification's text, values URL-decoded and stripped, names in
    lower case (as OpenTelemetry's ``parse_env_headers`` reads them); a part without ``=`` gets
    an empty value (for the caller to refuse)."""
    pairs = []
    for part in text.split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        pairs.append((urllib.parse.unquote(name).strip().lower(), urllib.parse.unquote(value).strip()))
    return pairs


def header_secrets(text: str) -> List[str]:
    """Every form a header value of ``text`` may be shown in (as written, decoded): for masking."""
    values = []
    for part in text.split(","):
        raw = part.partition("=")[2].strip()
        values += [raw, urllib.parse.unquote(raw)]
    return [v for v in dict.fromkeys(values) if len(v) >= 3]
