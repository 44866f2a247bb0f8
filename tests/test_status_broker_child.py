"""status asks the broker from a forked child (the other core): same answer, bounded in time."""

from __future__ import annotations

import socket
import time

import pika

from roboshop_dispatch import amqp as contract
from roboshop_dispatch.settings import AmqpSettings, Secret
from roboshop_dispatch.status import queue_counts, run_in_child


def _settings(broker, vhost, host="127.0.0.1", port=None):
    return AmqpSettings.build(hosts=host, port=port or broker.port, vhost=vhost, user=broker.user,
                              password=Secret(broker.password))


def test_the_child_answers_what_a_direct_query_answers(broker, vhost):
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        broker.host, broker.port, vhost, pika.PlainCredentials(broker.user, broker.password)))
    try:
        ch = conn.channel()
        contract.declare_topology(ch)
        for _ in range(4):
            ch.basic_publish(contract.EXCHANGE, contract.ROUTING_KEY, b"{}")
        settings = _settings(broker, vhost)
        answer = run_in_child(lambda: queue_counts(settings))()
        assert answer == queue_counts(settings)
        assert answer["messages"] == 4 and answer["consumers"] == 0
    finally:
        conn.close()


def test_a_silent_broker_is_bounded_in_time(vhost, broker):
    """A listener that accepts and never speaks AMQP: the answer is the handshake's timeout, set
    from the caller's 1 s (pika's stack timeout is twice the socket timeout: about 2 s). An
    ordering rather than an absolute bound: it comes well before pika's default stack timeout
    (15 s), which is what the call would wait if the caller's timeout were not passed on."""
    import pika.connection

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        answer = run_in_child(lambda: queue_counts(_settings(broker, vhost, port=silent.getsockname()[1]), 1.0),
                              timeout=1.0)()
        took = time.monotonic() - started
    assert "Timeout during AMQP handshake" in answer.get("error", ""), answer
    default = pika.connection.Parameters.DEFAULT_STACK_TIMEOUT
    assert 1.0 <= took < default, (took, default)
