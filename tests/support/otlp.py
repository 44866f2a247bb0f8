"""A real OTLP/HTTP trace receiver for the tests: it decodes what the consumer's exporter sends
with the OTLP protobuf definitions themselves (``opentelemetry-proto``), as a collector does.

``Receiver().start()`` listens on a free loopback port (``.endpoint`` is the base URL for
``OTEL_EXPORTER_OTLP_ENDPOINT``); ``stop()`` makes it go away (connection refused) and
``start()`` brings it back on the same port. Every span received is kept as a :class:`Span`,
with its resource's attributes, and every request's headers.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

KINDS = {PbSpan.SPAN_KIND_INTERNAL: "INTERNAL", PbSpan.SPAN_KIND_SERVER: "SERVER",
         PbSpan.SPAN_KIND_CLIENT: "CLIENT", PbSpan.SPAN_KIND_PRODUCER: "PRODUCER",
         PbSpan.SPAN_KIND_CONSUMER: "CONSUMER", PbSpan.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


class Span(NamedTuple):
    name: str
    kind: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # 16 hex digits, "" for a root span
    attributes: Dict[str, Any]
    events: List[tuple]  # (name, attributes)
    status: str
    status_message: str
    resource: Dict[str, Any]
    flags: int


def spans_of(request: ExportTraceServiceRequest) -> List[Span]:
    out = []
    for rs in request.resource_spans:
        resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    s.name, KINDS[s.kind], s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                    {kv.key: value(kv.value) for kv in s.attributes},
                    [(e.name, {kv.key: value(kv.value) for kv in e.attributes}) for e in s.events],
                    STATUS[s.status.code], s.status.message, resource, s.flags))
    return out


class Receiver:
    def __init__(self, path: str = "/v1/traces") -> None:
        self.path = path
        self.spans: List[Span] = []
        self.requests: List[Dict[str, str]] = []  # the headers of each export request
        self.cond = threading.Condition()
        self.port = 0
        self.delay = 0.0  # seconds each export is held before the answer (a slow collector)
        self.server: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != receiver.path or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if self.path != receiver.path else 415)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                if receiver.delay:
                    time.sleep(receiver.delay)
                receiver.took(dict(self.headers.items()), spans_of(request))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler

    def took(self, headers: Dict[str, str], spans: List[Span]) -> None:
        with self.cond:
            self.requests.append(headers)
            self.spans.extend(spans)
            self.cond.notify_all()

    def start(self) -> Receiver:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Gone: the port refuses connections until start() again."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait(self, predicate: Callable[[List[Span]], bool], timeout: float, what: str) -> List[Span]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}: {len(self.spans)} spans received")
                self.cond.wait(min(left, 0.5))
            return list(self.spans)

    def wait_spans(self, count: int, timeout: float = 30) -> List[Span]:
        return self.wait(lambda spans: len(spans) >= count, timeout, f"{count} spans")

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
