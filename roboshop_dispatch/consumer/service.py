"""The dispatch consumer: one thread, one pika SelectConnection, orders handled concurrently.

Flow per connection (a :class:`Session`): connect to the next broker of ``AMQP_HOST`` -> open the
consuming channel -> declare the contract's topology (exchange, ``orders`` with no arguments, the
binding, the ``orders.invalid`` quarantine queue) -> ``basic.qos(prefetch)`` -> open a
confirm-mode channel for quarantine -> ``basic.consume``.

Per delivery: validate; a bad message is republished to ``orders.invalid`` (reason in the
``x-dispatch-error`` header) and acked only once the broker confirmed the copy; a good order
"sleeps" twice through ``ioloop.call_later`` (so up to ``prefetch`` orders progress at once without
threads), is logged on one line, and is acked after that line was written. Acks are batched with
``multiple=True`` over the highest contiguous prefix of handled delivery tags.

Anything that breaks the connection (broker outage, network, a channel error) ends the session:
unacked deliveries go back to the queue, and the consumer reconnects forever with capped,
jittered exponential backoff. SIGTERM/SIGINT stop consuming, let the orders in flight finish and
get acked, then close cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import pika
import pika.exceptions
import pika.spec
from pika.adapters.select_connection import IOLoop

from .. import __version__, amqp
from . import config as configuration
from . import fastpath
from .acks import AckTracker
from .logs import LineLog, bridge_logging
from .orders import InvalidMessage, details, field, parse_order
from .sdnotify import Notifier, watchdog_interval

ERROR_HEADER = "x-dispatch-error"
ACK_DELAY = 0.01  # seconds: handled orders are acked together at most this late...
ACK_BATCH_DIVISOR = 4  # ...or as soon as prefetch/4 of them are waiting
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
STOP_GRACE = 8.0  # after SIGTERM, orders in flight get this long to finish
STOP_DEADLINE = 9.5  # and the process ends by then whatever the broker does

_PROPERTY_FIELDS = (
    "content_type", "content_encoding", "priority", "correlation_id", "reply_to", "expiration",
    "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id",
)


def backoff(failures: int, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` (>= 1) consecutive failed rounds: 0.5, 1, 2 ... 30, +-20 %."""
    base = min(BACKOFF_CAP, BACKOFF_FIRST * (2 ** min(failures - 1, 16)))
    return min(BACKOFF_CAP, base * rng.uniform(0.8, 1.2))


class _Quarantined:
    __slots__ = ("body", "properties", "reason", "tag")

    def __init__(self, tag: int, properties: pika.BasicProperties, body: bytes, reason: str) -> None:
        self.tag = tag
        self.properties = properties
        self.body = body
        self.reason = reason


class Session:
    """One connection to one broker node, its two channels and its delivery tags."""

    def __init__(self, number: int, host: str) -> None:
        self.number = number
        self.host = host
        self.conn: Any = None  # the pika connection, set right after this object exists
        self.consuming_since = 0.0
        self.channel: Any = None  # consuming channel
        self.qchannel: Any = None  # quarantine publishing channel, confirm mode
        self.consumer_tag: Optional[str] = None
        self.consuming = False
        self.alive = True  # False once the connection is gone: late timers do nothing
        self.closing = False  # we asked for the close
        self.trouble: Optional[str] = None  # why we closed it ourselves, if for an error
        self.tracker = AckTracker()
        self.ack_timer: Any = None
        self.since_ack = 0
        self.publish_seq = 0
        self.unconfirmed: Dict[int, _Quarantined] = {}

    @property
    def busy(self) -> bool:
        return bool(self.tracker.in_flight or self.unconfirmed)


class Dispatcher:
    def __init__(self, cfg: configuration.Config, log: LineLog, notifier: Notifier,
                 env: Mapping[str, str], rng: Optional[random.Random] = None) -> None:
        self.cfg = cfg
        self.log = log
        self.notifier = notifier
        self.rng = rng or random.Random()
        self.params = amqp.parameters(cfg.hosts, cfg.port, cfg.vhost, cfg.user, cfg.password)
        self.ioloop = IOLoop()
        self.watchdog_every = watchdog_interval(env)
        self.ack_batch = max(1, cfg.prefetch // ACK_BATCH_DIVISOR)
        self.processing = cfg.processing_ms
        self.error_percent = cfg.error_percent

        self.session: Optional[Session] = None
        self.sessions = 0
        self.host_index = 0
        self.round_failures = 0  # failed attempts since the last full round of hosts
        self.rounds = 0  # consecutive failed rounds (or troubled sessions): the backoff exponent
        self.troubled = False  # the last session ended on an error of ours: keep backing off
        self.retry_timer: Any = None
        self.stopping = False
        self.ready_sent = False
        self.exit_code = 0
        self.stats = {"dispatched": 0, "failed": 0, "quarantined": 0}
        self._wakeup: Optional[socket.socket] = None
        self._wakeup_w: Optional[socket.socket] = None

    # == lifecycle ================================================================================
    def run(self) -> int:
        self.log.info(f"dispatch {__version__} starting: {self.cfg.describe()}")
        if self.notifier.unsupported:
            self.log.warning("NOTIFY_SOCKET is set but not a path or @abstract name: not notifying systemd")
        self._install_signals()
        if self.watchdog_every and self.notifier.enabled:
            self.ioloop.call_later(self.watchdog_every, self._watchdog)
        self._connect()
        try:
            self.ioloop.start()
        finally:
            self._restore_signals()
        s = self.stats
        self.log.info(f"stopped: {s['dispatched']} orders dispatched ({s['failed']} logged as failed), "
                      f"{s['quarantined']} bad messages quarantined")
        self.log.flush()
        return self.exit_code

    def _install_signals(self) -> None:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wakeup, self._wakeup_w = r, w
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _note_signal)
        self.ioloop.add_handler(r.fileno(), self._on_wakeup, IOLoop.READ)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sock in (self._wakeup, self._wakeup_w):
            if sock is not None:
                sock.close()

    def _on_wakeup(self, _fd: int, _events: int) -> None:
        assert self._wakeup is not None
        try:
            data = self._wakeup.recv(512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(signal.Signals(signum).name)

    def _watchdog(self) -> None:
        self.notifier.watchdog()
        if self.watchdog_every:
            self.ioloop.call_later(self.watchdog_every, self._watchdog)

    # == connecting ===============================================================================
    def _connect(self) -> None:
        self.retry_timer = None
        if self.stopping:
            self.ioloop.stop()
            return
        params = self.params[self.host_index]
        where = f"[{params.host}]:{params.port}" if ":" in params.host else f"{params.host}:{params.port}"
        self.sessions += 1
        self.notifier.status(f"connecting to {where}")
        self.log.info(f"connecting to {where} vhost={self.cfg.vhost} as {self.cfg.user!r}")
        sess = Session(self.sessions, where)
        self.session = sess
        factory = fastpath.DispatchConnection if self.cfg.fast_path and fastpath.SUPPORTED else pika.SelectConnection
        sess.conn = factory(
            params,
            on_open_callback=lambda _conn: self._on_open(sess),
            on_open_error_callback=lambda _conn, error: self._on_open_error(sess, error),
            on_close_callback=lambda _conn, error: self._on_closed(sess, error),
            custom_ioloop=self.ioloop,
        )

    def _schedule(self, delay: float, why: str) -> None:
        if self.stopping:
            self.ioloop.stop()
            return
        if delay > 0:
            self.notifier.status(f"{why}; retrying in {delay:.1f}s")
            self.log.info(f"retrying in {delay:.1f}s")
        self.retry_timer = self.ioloop.call_later(delay, self._connect)

    def _next_host(self) -> None:
        self.host_index = (self.host_index + 1) % len(self.params)

    def _on_open_error(self, sess: Session, error: BaseException) -> None:
        sess.alive = False
        if self.stopping:
            self.ioloop.stop()
            return
        kind = amqp.classify_error(error)
        reason = amqp.describe_error(error)
        hint = amqp.fix_hint(kind, self.cfg.user, self.cfg.vhost)
        if kind == amqp.AUTH:
            what = f"authentication failed for user {self.cfg.user!r} at {sess.host}"
        elif kind == amqp.VHOST:
            what = f"access to vhost {self.cfg.vhost!r} refused for user {self.cfg.user!r} at {sess.host}"
        else:
            what = f"cannot connect to {sess.host}"
        self.log.error(f"{what}: {reason}; {hint}")
        self._next_host()
        self.round_failures += 1
        if self.round_failures < len(self.params):
            self._schedule(0, what)
            return
        self.round_failures = 0
        self.rounds += 1
        self._schedule(backoff(self.rounds, self.rng), what)

    def _on_closed(self, sess: Session, error: BaseException) -> None:
        sess.alive = False
        if sess.ack_timer is not None:
            self.ioloop.remove_timeout(sess.ack_timer)
            sess.ack_timer = None
        if self.stopping:
            self.ioloop.stop()
            return
        lost = sess.tracker.in_flight + len(sess.unconfirmed) + sess.tracker.unacked_done
        back = f" ({lost} unacked deliveries go back to the queue)" if lost else ""
        self._next_host()
        self.round_failures = 0
        if sess.trouble is not None:
            # a session that fails again and again (each time right after it started) backs off
            # further each time; one that had been consuming for a while starts over
            if sess.consuming_since and time.monotonic() - sess.consuming_since > 60:
                self.rounds = 0
            self.rounds += 1
            self.troubled = True
            self.log.warning(f"closed the connection to {sess.host}: {sess.trouble}{back}")
            self._schedule(backoff(self.rounds, self.rng), "recovering from an error")
            return
        self.log.warning(f"connection to {sess.host} lost: {amqp.describe_error(error)}{back}")
        self.rounds = 0
        self.troubled = False
        self._schedule(0, "reconnecting")

    def _close_session(self, sess: Session, trouble: Optional[str] = None) -> None:
        if trouble is not None and sess.trouble is None:
            sess.trouble = trouble
        if sess.closing or not sess.alive:
            return
        sess.closing = True
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            sess.conn.close()

    # == topology, then consume ===================================================================
    def _steps(self, sess: Session, steps: Sequence[Callable[[Callable[..., None]], None]],
               done: Callable[[], None]) -> None:
        def run(index: int, *_frame: Any) -> None:
            if not sess.alive or sess.closing:
                return
            if index == len(steps):
                done()
            else:
                steps[index](functools.partial(run, index + 1))

        run(0)

    def _on_open(self, sess: Session) -> None:
        self.notifier.status(f"connected to {sess.host}, declaring the topology")
        sess.conn.channel(on_open_callback=functools.partial(self._on_channel, sess))

    def _on_channel(self, sess: Session, channel: Any) -> None:
        sess.channel = channel
        channel.add_on_close_callback(functools.partial(self._on_channel_closed, sess, "consuming"))
        channel.add_on_cancel_callback(functools.partial(self._on_broker_cancel, sess))
        self._steps(sess, [
            lambda cb: amqp.declare_exchange(channel, callback=cb),
            lambda cb: amqp.declare_queue(channel, callback=cb),
            lambda cb: amqp.bind_queue(channel, callback=cb),
            lambda cb: amqp.declare_quarantine(channel, callback=cb),
            lambda cb: channel.basic_qos(prefetch_count=self.cfg.prefetch, callback=cb),
        ], lambda: sess.conn.channel(on_open_callback=functools.partial(self._on_qchannel, sess)))

    def _on_qchannel(self, sess: Session, qchannel: Any) -> None:
        if not sess.alive or sess.closing:
            return
        sess.qchannel = qchannel
        qchannel.add_on_close_callback(functools.partial(self._on_channel_closed, sess, "quarantine"))
        qchannel.add_on_return_callback(functools.partial(self._on_return, sess))
        qchannel.confirm_delivery(ack_nack_callback=functools.partial(self._on_confirm, sess),
                                  callback=lambda _frame: self._consume(sess))

    def _consume(self, sess: Session) -> None:
        if not sess.alive or sess.closing:
            return
        if self.stopping:
            self._close_session(sess)
            return
        if isinstance(sess.conn, fastpath.DispatchConnection):
            sess.conn.fast_deliveries(sess.channel.channel_number, functools.partial(self._on_delivery, sess))
        sess.consumer_tag = sess.channel.basic_consume(
            amqp.QUEUE, functools.partial(self._on_message, sess),
            callback=functools.partial(self._on_consuming, sess),
        )

    def _on_consuming(self, sess: Session, _frame: Any) -> None:
        sess.consuming = True
        sess.consuming_since = time.monotonic()
        self.round_failures = 0
        if not self.troubled:
            self.rounds = 0
        status = f"consuming {amqp.QUEUE} on {sess.host} vhost={self.cfg.vhost}"
        self.log.info(f"{status} (prefetch {self.cfg.prefetch})")
        if self.ready_sent:
            self.notifier.status(status)
        else:
            self.ready_sent = True
            self.notifier.ready(status)
        if self.notifier.failed:
            self.log.warning(f"cannot notify systemd on NOTIFY_SOCKET: {self.notifier.failed}")
            self.notifier.failed = None

    def _on_channel_closed(self, sess: Session, which: str, _channel: Any, error: BaseException) -> None:
        if not sess.alive or sess.closing or not isinstance(error, pika.exceptions.ChannelClosedByBroker):
            return  # the connection is going away: _on_closed reports it
        text = amqp.describe_error(error)
        hint = ""
        if "PRECONDITION_FAILED" in text and "inequivalent" in text:
            hint = (f"; the contract needs exchange {amqp.EXCHANGE!r} durable direct and queue "
                    f"{amqp.QUEUE!r} durable with no arguments: fix whoever declared them differently")
        elif "ACCESS_REFUSED" in text:
            hint = (f"; grant the user its permissions: rabbitmqctl set_permissions -p {self.cfg.vhost} "
                    f"{self.cfg.user} '.*' '.*' '.*'")
        self.log.error(f"the broker closed the {which} channel: {text}{hint}")
        self._close_session(sess, f"{which} channel closed: {text}")

    def _on_broker_cancel(self, sess: Session, _frame: Any) -> None:
        if sess.alive and not sess.closing:
            self.log.warning(f"the broker cancelled our consumer (was {amqp.QUEUE!r} deleted?): reconnecting")
            self._close_session(sess, "consumer cancelled by the broker")

    # == orders ===================================================================================
    def _on_message(self, sess: Session, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        """pika's delivery callback (used when the fast path is not available)."""
        self._on_delivery(sess, method.delivery_tag, method.redelivered, properties, body)

    def _on_delivery(self, sess: Session, tag: int, redelivered: bool, properties: Any, body: bytes) -> None:
        sess.tracker.delivered()
        try:
            order = parse_order(body, properties.headers)
        except InvalidMessage as exc:
            self._quarantine(sess, tag, redelivered, properties, body, exc.reason)
            return
        if self.processing is None:
            self._finish(sess, tag, order, self.error_percent > 0 and self._fails())
        else:
            self.ioloop.call_later(self._work(), functools.partial(self._halfway, sess, tag, order))

    def _work(self) -> float:
        assert self.processing is not None
        low, high = self.processing
        return self.rng.randint(low, high) / 1000.0

    def _fails(self) -> bool:
        return self.rng.random() * 100.0 < self.error_percent

    def _halfway(self, sess: Session, tag: int, order: Dict[str, Any]) -> None:
        if sess.alive:
            failed = self.error_percent > 0 and self._fails()
            self.ioloop.call_later(self._work(), functools.partial(self._finish, sess, tag, order, failed))

    def _finish(self, sess: Session, tag: int, order: Dict[str, Any], failed: bool) -> None:
        if not sess.alive:
            return  # the delivery went back to the queue with its connection: handled on redelivery
        if failed:
            self.stats["failed"] += 1
            self.log.order_line("ERROR", f"order {field(order['orderid'])} failed {details(order)} "
                                         f"(simulated: DISPATCH_ERROR_PERCENT={self.error_percent:g})")
        else:
            self.log.order_line("INFO", f"order {field(order['orderid'])} dispatched {details(order)}")
        self.stats["dispatched"] += 1
        self._done(sess, tag)

    def _done(self, sess: Session, tag: int) -> None:
        sess.tracker.complete(tag)
        sess.since_ack += 1
        if sess.since_ack >= self.ack_batch:
            self._flush_acks(sess)
        elif sess.ack_timer is None:
            sess.ack_timer = self.ioloop.call_later(ACK_DELAY, functools.partial(self._on_ack_timer, sess))
        if self.stopping:
            self._maybe_done(sess)

    def _on_ack_timer(self, sess: Session) -> None:
        sess.ack_timer = None
        self._flush_acks(sess)

    def _flush_acks(self, sess: Session) -> None:
        if sess.ack_timer is not None:
            self.ioloop.remove_timeout(sess.ack_timer)
            sess.ack_timer = None
        sess.since_ack = 0
        self.log.flush()  # the order lines are out before their acks
        if not sess.alive or not sess.channel.is_open:
            return
        upto = sess.tracker.take()
        if upto is not None:
            sess.channel.basic_ack(upto, multiple=True)

    # == quarantine ===============================================================================
    def _quarantine(self, sess: Session, tag: int, redelivered: bool, properties: Any, body: bytes,
                    reason: str) -> None:
        self.stats["quarantined"] += 1
        again = " (redelivered)" if redelivered else ""
        self.log.warning(f"bad message quarantined to {amqp.QUARANTINE_QUEUE}: {reason} "
                         f"[delivery {tag}, {len(body)} bytes{again}]")
        headers = dict(properties.headers or {})
        headers[ERROR_HEADER] = reason
        fields = {name: getattr(properties, name) for name in _PROPERTY_FIELDS}
        if fields["user_id"] is not None and fields["user_id"] != self.cfg.user:
            # the broker refuses a user_id other than ours: keep the original in a header instead
            headers["x-dispatch-user-id"] = fields.pop("user_id")
        copy = pika.BasicProperties(headers=headers, delivery_mode=2, **fields)
        self._publish_quarantine(sess, _Quarantined(tag, copy, body, reason))

    def _publish_quarantine(self, sess: Session, item: _Quarantined) -> None:
        if not sess.alive or sess.closing or sess.qchannel is None or not sess.qchannel.is_open:
            return
        sess.publish_seq += 1
        sess.unconfirmed[sess.publish_seq] = item
        sess.qchannel.basic_publish("", amqp.QUARANTINE_QUEUE, item.body, item.properties, mandatory=True)

    def _on_confirm(self, sess: Session, frame: Any) -> None:
        method = frame.method
        if method.multiple:
            seqs = sorted(s for s in sess.unconfirmed if s <= method.delivery_tag)
        else:
            seqs = [method.delivery_tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for seq in seqs:
            item = sess.unconfirmed.pop(seq, None)
            if item is None:
                continue
            if nacked:
                self.log.error(f"the broker refused the quarantine copy of delivery {item.tag} (nack): "
                               "reconnecting to retry")
                self._close_session(sess, "quarantine publish nacked")
                return
            self._done(sess, item.tag)

    def _on_return(self, sess: Session, _channel: Any, _method: Any, _properties: Any, _body: bytes) -> None:
        self.log.error(f"{amqp.QUARANTINE_QUEUE!r} does not exist any more (quarantine copy returned): "
                       "reconnecting to redeclare it")
        self._close_session(sess, "quarantine queue missing")

    # == stopping =================================================================================
    def stop(self, why: str) -> None:
        if self.stopping:
            self.log.warning(f"{why} again: closing now (unacked orders go back to the queue)")
            if self.session is not None and self.session.alive:
                self._close_session(self.session)
            else:
                self.ioloop.stop()
            return
        self.stopping = True
        self.ioloop.call_later(STOP_GRACE, self._grace_over)
        self.ioloop.call_later(STOP_DEADLINE, self._deadline)
        sess = self.session
        busy = sess.tracker.in_flight + len(sess.unconfirmed) if sess is not None and sess.alive else 0
        self.log.info(f"{why} received: stopping ({busy} orders in flight)")
        self.notifier.stopping(f"stopping: finishing {busy} orders in flight")
        if self.retry_timer is not None:
            self.ioloop.remove_timeout(self.retry_timer)
            self.retry_timer = None
        if sess is None or not sess.alive:
            self.ioloop.stop()
        elif sess.consuming and sess.channel is not None and sess.channel.is_open:
            sess.channel.basic_cancel(sess.consumer_tag, callback=functools.partial(self._on_cancelled, sess))
        else:
            self._close_session(sess)

    def _on_cancelled(self, sess: Session, _frame: Any) -> None:
        sess.consuming = False
        self._maybe_done(sess)

    def _maybe_done(self, sess: Session) -> None:
        if sess.consuming or sess.busy or not sess.alive or sess.closing:
            return
        self._final_acks(sess)
        self._close_session(sess)

    def _final_acks(self, sess: Session) -> None:
        self.log.flush()
        if sess.ack_timer is not None:
            self.ioloop.remove_timeout(sess.ack_timer)
            sess.ack_timer = None
        if not sess.alive or sess.channel is None or not sess.channel.is_open:
            return
        upto, singles = sess.tracker.take_all()
        if upto is not None:
            sess.channel.basic_ack(upto, multiple=True)
        for tag in singles:
            sess.channel.basic_ack(tag, multiple=False)

    def _grace_over(self) -> None:
        sess = self.session
        if sess is None or not sess.alive:
            self.ioloop.stop()
            return
        self.log.warning(f"orders still in flight after {STOP_GRACE:g}s: closing "
                         f"({sess.tracker.in_flight + len(sess.unconfirmed)} go back to the queue)")
        self._final_acks(sess)
        self._close_session(sess)

    def _deadline(self) -> None:
        self.log.warning("the broker did not confirm the close in time: exiting anyway")
        self.ioloop.stop()


def _note_signal(_signum: int, _frame: Any) -> None:
    """The real work happens in the I/O loop, woken by signal.set_wakeup_fd."""


def _parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<24} {desc} (default: {default})" for name, default, desc in configuration.VARIABLES]
    parser = argparse.ArgumentParser(
        prog="dispatch",
        description="The RoboShop dispatch consumer: consumes payment's orders from RabbitMQ.",
        epilog="environment:\n" + "\n".join(lines) + "\n\nAn invalid setting exits with status 2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dispatch {__version__}")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the environment, print the settings (never the password) and exit")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ
    try:
        cfg = configuration.load(env)
    except configuration.ConfigError as exc:
        sys.stderr.write(f"dispatch: invalid configuration: {exc}\n")
        sys.stderr.flush()
        return 2
    if args.check_config:
        sys.stdout.write(f"configuration OK: {cfg.describe()}\n")
        return 0
    log = LineLog(sys.stdout.fileno(), env)
    bridge_logging(log)
    notifier = Notifier(env)
    started = time.monotonic()
    try:
        return Dispatcher(cfg, log, notifier, env).run()
    except Exception as exc:  # a bug: say so on one line and let systemd's Restart= take over
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
        log.error(f"unexpected {type(exc).__name__}{where} after {time.monotonic() - started:.0f}s: {exc}")
        log.flush()
        return 1
    finally:
        notifier.close()
