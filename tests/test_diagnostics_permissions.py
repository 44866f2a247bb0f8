"""The permission probes' replies, as RabbitMQ 3.10 gave them (recorded from a real node with a
user granted everything, nothing, and the least privilege the fix prints), interpreted purely."""

from __future__ import annotations

import pytest

from roboshop_dispatch.diagnostics import permissions as p
from roboshop_dispatch.diagnostics.broker import Reply
from roboshop_dispatch.settings import AmqpSettings, Secret

# (probe, reply, expected result), in the order probe() sends them
RECORDED = [
    # a user with ".*" ".*" ".*": every request gets past the permission check, then fails harmlessly
    (p.PROBES[0], Reply(406, "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in "
                             "exchange 'robot-shop' in vhost 'cap'"), p.GRANTED),
    (p.PROBES[1], Reply(406, "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'orders' in vhost 'cap': "
                             '"expected integer, got longstr"'), p.GRANTED),
    (p.PROBES[3], Reply(404, "NOT_FOUND - no exchange 'dispatchctl.no-such-exchange.e3b8' in vhost 'cap'"),
     p.GRANTED),
    (p.PROBES[4], Reply(404, "NOT_FOUND - no exchange 'robot-shop' in vhost 'cap'"), p.GRANTED),
    (p.PROBES[5], Reply(404, "NOT_FOUND - no queue 'orders' in vhost 'cap'"), p.GRANTED),
    (p.PROBES[6], Reply(0, ""), p.GRANTED),
    # a user with "^$" "^$" "^$"
    (p.PROBES[0], Reply(403, "ACCESS_REFUSED - access to exchange 'robot-shop' in vhost 'cap' refused for user "
                             "'none'"), p.DENIED),
    (p.PROBES[2], Reply(403, "ACCESS_REFUSED - access to queue 'orders.invalid' in vhost 'cap' refused for user "
                             "'none'"), p.DENIED),
    (p.PROBES[3], Reply(403, "ACCESS_REFUSED - access to queue 'orders' in vhost 'cap' refused for user 'none'"),
     p.DENIED),
    (p.PROBES[4], Reply(403, "ACCESS_REFUSED - access to queue 'orders.dispatchctl-probe-3056' in vhost 'cap' "
                             "refused for user 'none'"), p.UNKNOWN),
    (p.PROBES[6], Reply(403, "ACCESS_REFUSED - access to exchange 'amq.default' in vhost 'cap' refused for user "
                             "'none'"), p.DENIED),
    # the least privilege: write on orders is checked first, so a 403 on the made-up exchange proves it
    (p.PROBES[3], Reply(403, "ACCESS_REFUSED - access to exchange 'dispatchctl.no-such-exchange.3fad' in vhost "
                             "'cap' refused for user 'least'"), p.GRANTED),
    # a reply no probe expects
    (p.PROBES[0], Reply(541, "INTERNAL_ERROR"), "unexpected 541"),
]


@pytest.mark.parametrize("probe, reply, expected", RECORDED)
def test_interpret_recorded_replies(probe, reply, expected):
    got = p.interpret(probe, reply)
    assert got["result"] == expected
    assert (got["permission"], got["resource"], got["kind"]) == (probe.permission, probe.resource, probe.kind)
    assert (got["reply"] == "") == (expected == p.GRANTED)


def test_a_403_about_another_resource_is_not_a_denial_of_this_one():
    # read on robot-shop: a 403 about the made-up queue says nothing about robot-shop
    other = Reply(403, "ACCESS_REFUSED - access to queue 'x' in vhost '/' refused for user 'u'")
    assert p.interpret(p.PROBES[4], other)["result"] == p.UNKNOWN
    assert p.interpret(p.PROBES[0], other)["result"] == p.UNKNOWN


AMQP = AmqpSettings(hosts=("h",), user="u", vhost="v", password=Secret("pw"))


def _perms(results):
    return [dict(permission=pr.permission, resource=pr.resource, kind=pr.kind, result=r, reply="" if r == p.GRANTED
                 else "why") for pr, r in zip(p.PROBES, results)]


def test_the_finding_denied_beats_unknown_beats_ok():
    ok = p.permissions_finding(AMQP, _perms([p.GRANTED] * 7), 1.0)
    assert ok.status == "ok"
    unknown = p.permissions_finding(AMQP, _perms([p.GRANTED] * 4 + [p.UNKNOWN] + [p.GRANTED] * 2), 1.0)
    assert unknown.status == "warn" and "read on exchange 'robot-shop'" in unknown.summary
    denied = p.permissions_finding(AMQP, _perms([p.DENIED] + [p.GRANTED] * 3 + [p.UNKNOWN] + [p.GRANTED] * 2), 1.0)
    assert denied.status == "fail" and denied.diagnosis == "RabbitMQ permissions missing"
    assert "configure on exchange 'robot-shop'" in denied.summary and "read on" not in denied.summary
    assert "rabbitmqctl set_permissions -p v u" in denied.fix
    assert p.configurable(_perms([p.GRANTED, p.DENIED, p.GRANTED] + [p.GRANTED] * 4)) == {"robot-shop",
                                                                                        "orders.invalid"}
