"""check-rabbitmq's "Queue type and replicas": what type ``orders`` is, its leader and members,
and whether the broker is a cluster, from RabbitMQ's management HTTP API on the node checked.

Read-only: two GET requests (``/api/queues/VHOST/orders`` and ``/api/nodes``) with the same
credentials as AMQP (HTTP basic auth, never in the URL), a short timeout and a size cap. The API
is a plugin (``rabbitmq-plugins enable rabbitmq_management``) and needs a user tagged
``monitoring`` (or ``management``); without it the type comes from the AMQP declare alone and the
leader and members are reported unknown, with why.

A cluster is told by the API listing more than one node; without the API, by AMQP_HOST naming
more than one host (an operator lists the nodes of a cluster there), and the finding says so.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .. import amqp as contract
from ..settings import AmqpSettings
from .catalog import finding, host_label, scrub
from .report import OK, WARN, Finding

DEFAULT_MANAGEMENT_PORT = 15672
MAX_REPLY = 1 << 20  # bytes of one API reply read at most
NAME = "queue-type"


@dataclass(frozen=True)
class ManagementView:
    """What the management API said; ``why`` is set when it could not be read."""

    why: str = ""
    queue: Dict[str, Any] = field(default_factory=dict)  # /api/queues/VHOST/orders (type, leader, members...)
    nodes: List[str] = field(default_factory=list)  # the cluster's nodes (running or not)

    @property
    def reachable(self) -> bool:
        return not self.why


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # never follow the credentials elsewhere
        return None


def _get(base: str, path: str, auth: str, timeout: float) -> Any:
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))
    request = urllib.request.Request(base + path, headers={"Authorization": auth, "Accept": "application/json"})
    with opener.open(request, timeout=timeout) as reply:
        body = reply.read(MAX_REPLY + 1)
    if len(body) > MAX_REPLY:
        raise ValueError(f"reply over {MAX_REPLY} bytes")
    return json.loads(body.decode("utf-8"))


def _why(exc: BaseException, label: str, user: str) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code == 401:
            return (f"the management API at {label} refused user '{user}' (401): it needs the tag monitoring "
                    f"(rabbitmqctl set_user_tags {user} monitoring)")
        if exc.code == 404:
            return f"the management API at {label} answered 404 (queue '{contract.QUEUE}' or the API not found)"
        return f"the management API at {label} answered HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        text = getattr(reason, "strerror", None) or str(reason)
        return f"no management API at {label} ({scrub(str(text))}; rabbitmq-plugins enable rabbitmq_management)"
    if isinstance(exc, (ValueError, UnicodeDecodeError)):
        return f"the management API at {label} sent an unreadable reply"
    return f"the management API at {label} failed: {type(exc).__name__}"


def fetch(address: str, port: int, amqp: AmqpSettings, timeout: float) -> ManagementView:
    """The queue's and the cluster's view from the management API on ``address:port``."""
    label = host_label(address, port)
    base = f"http://{label}"
    secret = f"{amqp.user}:{amqp.password.reveal()}".encode()
    auth = "Basic " + base64.b64encode(secret).decode("ascii")
    vhost = urllib.parse.quote(amqp.vhost, safe="")
    try:
        queue = _get(base, f"/api/queues/{vhost}/{contract.QUEUE}", auth, timeout)
        nodes = _get(base, "/api/nodes?columns=name", auth, timeout)
    except Exception as exc:  # any failure of a read-only probe: reported as unknown, with why
        return ManagementView(why=_why(exc, label, amqp.user))
    if not isinstance(queue, dict) or not isinstance(nodes, list):
        return ManagementView(why=f"the management API at {label} sent an unexpected reply")
    names = [str(n.get("name")) for n in nodes if isinstance(n, dict) and n.get("name")]
    return ManagementView(queue=queue, nodes=names)


def _names(value: Any) -> List[str]:
    return [scrub(str(v)) for v in value] if isinstance(value, list) else []


def queue_type_finding(view: ManagementView, amqp_type: Optional[str], hosts: int) -> Finding:
    """The finding, from the API's view and the type the AMQP declare found (None: not compared)."""
    q = view.queue
    kind = scrub(str(q.get("type") or amqp_type or "unknown")) if view.reachable else (amqp_type or "unknown")
    members, online = _names(q.get("members")), _names(q.get("online"))
    leader = scrub(str(q.get("leader") or q.get("node") or "")) or "unknown"
    cluster = len(view.nodes) > 1 if view.reachable else hosts > 1
    told = (f"{len(view.nodes)} nodes" if view.reachable else f"assumed from AMQP_HOST listing {hosts} hosts"
            if hosts > 1 else "a single host in AMQP_HOST")
    data: Dict[str, Any] = {"type": kind, "leader": leader if leader != "unknown" else None,
                            "members": members, "online": online, "cluster": cluster, "nodes": len(view.nodes)}
    where = (f"leader {leader}, members {', '.join(members)}" if members else f"on node {leader}")
    summary = f"'{contract.QUEUE}' is a {kind} queue, {where}" if view.reachable else (
        f"'{contract.QUEUE}' is a {kind} queue; leader and members unknown: {view.why}")
    if kind == contract.CLASSIC and cluster:
        return finding(
            NAME, WARN, summary + f" (a cluster: {told})", data=data,
            diagnosis="Classic queue orders on a cluster: lost with its node",
            cause=(f"a classic queue lives on one node ({leader}): while that node is down, '{contract.QUEUE}' "
                   "is unavailable and its orders wait there; a quorum queue is replicated over the nodes"),
            fix=("move it to a quorum queue without losing orders (docs/howto/scaling.md), then install with "
                 "--queue-type quorum (DISPATCH_QUEUE_TYPE=quorum)"))
    if kind == contract.QUORUM and members and len(online) < len(members):
        return finding(
            NAME, WARN, summary + f"; only {len(online)} of {len(members)} members online", data=data,
            diagnosis="Quorum queue orders has members down",
            cause="nodes of the cluster are down or partitioned: one more loss can stop the queue (majority lost)",
            fix="on the broker: rabbitmqctl cluster_status; start the missing nodes")
    return finding(NAME, OK, summary + (f" ({told})" if cluster else ""), data=data)


def queue_type_check(amqp: AmqpSettings, address: str, amqp_type: Optional[str], management_port: int,
                     timeout: float) -> Finding:
    """The whole check: the API read (bounded by ``timeout``) and its finding."""
    if timeout <= 0.05:
        view = ManagementView(why="no time left in the check's budget to ask the management API")
    else:
        view = fetch(address, management_port, amqp, timeout)
    return queue_type_finding(view, amqp_type, len(amqp.hosts))
