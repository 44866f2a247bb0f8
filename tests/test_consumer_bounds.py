"""Issue 19's bounds on the work and memory one message may cost, as pure logic (the real-broker
side is tests/test_consumer_hostile.py): the digit rule, the configurable body limit, pika's path's
bounded assembler, and the consumer making itself non-dumpable."""

from __future__ import annotations

import json
import subprocess
import sys

import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika import frame as pika_frame
from pika import spec
from pika.channel import ContentFrameAssembler

from roboshop_dispatch.consumer import bounded, config, delivery, handler, orders

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


# == the digit rule ===============================================================================
@given(st.lists(st.integers(min_value=1, max_value=3 * orders.MAX_DIGITS), min_size=1, max_size=20),
       st.booleans(), st.integers(min_value=0, max_value=9))
def test_a_run_of_more_than_max_digits_is_refused_before_parsing_wherever_it_is(runs, in_string, start):
    """Numbers or digits in a string, of every digit: refused iff some run is longer than MAX_DIGITS."""
    digits = "123456789" + "0123456789" * (3 * orders.MAX_DIGITS // 10 + 1)  # no number starts with 0
    values = ['"' + digits[start:start + n] + '"' if in_string else digits[start % 9:start % 9 + n] for n in runs]
    body = ('{"orderid": "a", "n": [' + ", ".join(values) + "]}").encode()
    too_long = max(runs) > orders.MAX_DIGITS
    try:
        orders.parse_order(body)
    except orders.InvalidMessage as exc:
        assert too_long and "number too long" in exc.reason
    else:
        assert not too_long


def test_the_digit_rule_leaves_what_payment_sends_alone():
    order = {"orderid": "3f2a9c4e-1b7d-4e2a-9f3c-123456789012", "user": "user-12345678901234567890",
             "cart": {"total": 1234567.891234567, "tax": 0.30000000000000004,
                      "items": [{"qty": 3, "sku": "RB-00001", "name": "Robot", "price": 1e21, "subtotal": 12}]}}
    assert orders.parse_order(json.dumps(order).encode())["orderid"] == order["orderid"]
    assert orders.MAX_DIGITS <= 48  # "a few dozen": a 1000-digit run cost 0.84 s per MiB to scan


# == the body limit ===============================================================================
def test_the_default_body_limit_is_256_kib_and_configurable():
    assert delivery.MAX_BODY == 256 * 1024
    assert config.load({"AMQP_PASS": "p"}).max_body == delivery.MAX_BODY
    assert config.load({"AMQP_PASS": "p", "DISPATCH_MAX_BODY": "1048576"}).max_body == 1048576
    for bad in ("0", "1023", str(64 * 1024 * 1024 + 1), "1k", "-5"):
        with pytest.raises(config.ConfigError, match="DISPATCH_MAX_BODY"):
            config.load({"AMQP_PASS": "p", "DISPATCH_MAX_BODY": bad})


def test_a_delivery_over_its_paths_limit_is_no_order():
    body = b'{"orderid": "a", "pad": "' + b"x" * 5000 + b'"}'
    method = spec.Basic.Deliver("ctag", 1, False, "robot-shop", "orders")
    small = delivery.from_pika(method, pika.BasicProperties(headers={}), body, limit=4096)
    assert small.truncated and small.body_size == len(body) and len(small.body) == 4096
    assert "body too large" in (handler.problem(small) or "")
    large = delivery.from_pika(method, pika.BasicProperties(headers={}), body, limit=8192)
    assert handler.problem(large) is None and not large.truncated
    assert orders.summarize(large.body, {}, large.limit).orderid == "a"


# == pika's path: the bounded assembler ===========================================================
def _frames(body: bytes, cut: int):
    method = pika_frame.Method(1, spec.Basic.Deliver("ctag", 1, False, "robot-shop", "orders"))
    header = pika_frame.Header(1, len(body), pika.BasicProperties(headers={}))
    return [method, header] + [pika_frame.Body(1, body[i:i + cut]) for i in range(0, len(body), cut)]


def _assemble(assembler, frames):
    done = [out for out in (assembler.process(f) for f in frames) if out]
    assert len(done) == 1
    return done[0]


@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=700), st.integers(min_value=1, max_value=4000))
def test_the_bounded_assembler_is_pikas_for_a_body_within_the_limit_and_a_prefix_beyond(body, cut, limit):
    frames = _frames(body, cut)
    method, header, got = _assemble(bounded.BoundedAssembler(limit), frames)
    assert method is frames[0] and header is frames[1]
    if len(body) <= limit:
        assert got == _assemble(ContentFrameAssembler(), frames)[2] == body
        assert type(got) is bytes
    else:
        assert got == body[:delivery.keep_limit(len(body), limit)] and got.announced == len(body)
    made = delivery.from_pika(method.method, header.properties, got, limit)
    assert made.body_size == len(body) and made.truncated == (len(body) > limit)


def test_the_bounded_assembler_never_holds_more_than_the_prefix():
    big = 100 * 1024 * 1024
    assembler = bounded.BoundedAssembler()
    assembler.process(pika_frame.Method(1, spec.Basic.Deliver("ctag", 1, False, "robot-shop", "orders")))
    assembler.process(pika_frame.Header(1, big, pika.BasicProperties()))
    fragment = b"a" * 131064
    held = 0
    out = None
    for _ in range(big // len(fragment)):
        out = assembler.process(pika_frame.Body(1, fragment))
        held = max(held, sum(map(len, assembler._parts)))
    out = out or assembler.process(pika_frame.Body(1, b"a" * (big % len(fragment))))
    assert out is not None and out[2].announced == big and len(out[2]) == delivery.TRUNCATED_PREFIX
    assert held <= delivery.TRUNCATED_PREFIX


def test_the_bounded_assembler_refuses_what_pika_refuses():
    assembler = bounded.BoundedAssembler()
    assembler.process(pika_frame.Method(1, spec.Basic.Deliver("ctag", 1, False, "robot-shop", "orders")))
    assembler.process(pika_frame.Header(1, 3, pika.BasicProperties()))
    with pytest.raises(pika.exceptions.BodyTooLongError):
        assembler.process(pika_frame.Body(1, b"abcd"))
    with pytest.raises(pika.exceptions.UnexpectedFrameError):
        bounded.BoundedAssembler().process(pika_frame.Heartbeat())


def test_the_pinned_pika_has_the_hooks_the_bounded_path_needs():
    assert bounded.hooks_missing() is None


# == non-dumpable =================================================================================
def test_the_consumer_makes_itself_non_dumpable_before_reading_its_settings(tmp_path):
    """``dispatch --check-config`` in a subprocess: not dumpable by the time it has read its
    settings (its /proc/PID files then belong to root: tests/test_provision_systemd.py checks
    that on a real host, for the service user's process)."""
    probe = ("import sys; from roboshop_dispatch.consumer import nodump, service\n"
             "before = nodump.dumpable()\n"
             "code = service.main(['--check-config'])\n"
             "print('dumpable', before, nodump.dumpable(), code)\n")
    env = {"AMQP_PASS": "p", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "dumpable True False 0", out.stdout
