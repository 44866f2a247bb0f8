"""Fast tests of check-rabbitmq's "Queue type and replicas" logic (diagnostics/queue_type.py): the
finding from what the management API said, whatever it said."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roboshop_dispatch.diagnostics.queue_type import ManagementView, fetch, queue_type_finding
from roboshop_dispatch.settings import AmqpSettings, Secret

NODES = ["r@a", "r@b", "r@c"]


def test_a_quorum_queue_with_every_member_online_is_ok():
    view = ManagementView(queue={"type": "quorum", "leader": "r@b", "members": NODES, "online": NODES}, nodes=NODES)
    f = queue_type_finding(view, "quorum", 3)
    assert f.status == "ok" and "leader r@b" in f.summary and f.data["members"] == NODES and f.data["cluster"]


def test_a_quorum_queue_with_a_member_down_is_a_warning():
    view = ManagementView(queue={"type": "quorum", "leader": "r@b", "members": NODES, "online": NODES[1:]},
                          nodes=NODES)
    f = queue_type_finding(view, "quorum", 3)
    assert f.status == "warn" and "2 of 3" in f.summary and f.cause and f.fix


@pytest.mark.parametrize("nodes, hosts, warn", [(NODES, 1, True), (["r@a"], 3, False), (["r@a"], 1, False)])
def test_a_classic_queue_warns_only_on_a_cluster_as_the_api_says(nodes, hosts, warn):
    view = ManagementView(queue={"type": "classic", "node": "r@a"}, nodes=nodes)
    f = queue_type_finding(view, "classic", hosts)
    assert (f.status == "warn") is warn and f.data["leader"] == "r@a"


@pytest.mark.parametrize("hosts, warn", [(3, True), (1, False)])
def test_without_the_api_a_cluster_is_assumed_from_amqp_host(hosts, warn):
    f = queue_type_finding(ManagementView(why="no management API"), "classic", hosts)
    assert (f.status == "warn") is warn and "unknown" in f.summary and f.data["leader"] is None
    assert f.data["type"] == "classic"
    assert queue_type_finding(ManagementView(why="x"), None, 1).data["type"] == "unknown"


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                    max_size=4), max_leaves=12)


@given(st.dictionaries(st.sampled_from(["type", "leader", "members", "online", "node"]), JSONISH),
       st.lists(st.text(max_size=10), max_size=5), st.integers(1, 5))
def test_any_api_reply_gives_a_one_line_finding(queue, nodes, hosts):
    """A broker (or whatever answers on that port) may send anything: never an exception, never a
    control character in what is printed."""
    f = queue_type_finding(ManagementView(queue=queue, nodes=nodes), None, hosts)
    assert f.status in ("ok", "warn")
    assert all(ch.isprintable() for ch in f.summary), f.summary
    json.dumps(f.as_dict())


class _Api(BaseHTTPRequestHandler):
    replies: ClassVar[dict] = {}
    seen: ClassVar[list] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        code, body = self.replies.get(self.path.split("?")[0], (404, b"{}"))
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def api():
    server = HTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Api.seen = []
    yield server
    server.shutdown()
    server.server_close()


def settings(vhost: str = "/") -> AmqpSettings:
    return AmqpSettings(hosts=("127.0.0.1",), vhost=vhost, user="roboshop", password=Secret("s3cret pw"))


def test_fetch_reads_the_queue_and_the_nodes_with_basic_auth_never_in_the_url(api):
    _Api.replies = {"/api/queues/%2F/orders": (200, json.dumps({"type": "quorum", "leader": "r@a"}).encode()),
                    "/api/nodes": (200, json.dumps([{"name": "r@a"}, {"name": "r@b"}]).encode())}
    view = fetch("127.0.0.1", api.server_address[1], settings(), 2.0)
    assert view.reachable and view.queue["leader"] == "r@a" and view.nodes == ["r@a", "r@b"]
    assert all("s3cret" not in path and auth.startswith("Basic ") for path, auth in _Api.seen)


@pytest.mark.parametrize("reply, why", [
    ((401, b"{}"), "needs the tag monitoring"),
    ((200, b"not json"), "unreadable reply"),
    ((200, b"[1, 2]"), "unexpected reply"),
    ((302, b""), "HTTP 302"),
])
def test_fetch_says_why_it_could_not_read(api, reply, why):
    _Api.replies = {"/api/queues/%2F/orders": reply, "/api/nodes": (200, b"[]")}
    view = fetch("127.0.0.1", api.server_address[1], settings(), 2.0)
    assert not view.reachable and why in view.why and "s3cret" not in view.why
