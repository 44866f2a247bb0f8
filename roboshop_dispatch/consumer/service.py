"""The dispatch consumer: one thread, one pika I/O loop, orders handled concurrently.

The parts, each in its own module: :mod:`.reconnect` (host rotation and backoff, pure),
:mod:`.session` (one connection and the callback chain up to consuming), :mod:`.fastpath` (the
default delivery path), :mod:`.handler` (what happens to each delivery), :mod:`.quarantine`
(confirmed republish of bad messages), :mod:`.acks` (batched acks), :mod:`.shutdown` (signals and
the clean stop). The :class:`Dispatcher` wires them together and owns the sessions' lifecycle:
anything that breaks the connection (broker outage, network, a channel error) ends the session,
unacked deliveries go back to the queue and the consumer reconnects forever.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from .. import __version__, amqp
from . import config as configuration
from . import fastpath
from .acks import Acker
from .delivery import Delivery
from .handler import OrderHandler
from .logs import LineLog, bridge_logging
from .nodump import make_undumpable
from .quarantine import Quarantine
from .reconnect import BACKOFF_CAP, ReconnectPolicy, backoff
from .sdnotify import Notifier, watchdog_interval
from .session import FAST, PIKA, Connector, Events, Session
from .shutdown import STOP_DEADLINE, STOP_GRACE, Shutdown, SignalWakeup
from .telemetry import Telemetry

# how often STATUS= tells systemd the orders handled so far (only when the count changed)
STATUS_EVERY_S = 1.0

__all__ = ["BACKOFF_CAP", "FAST", "PIKA", "STOP_DEADLINE", "STOP_GRACE", "Dispatcher", "backoff", "choose_path",
           "main"]


def choose_path(cfg: configuration.Config, log: LineLog,
                self_test: Callable[[], Optional[str]] = fastpath.self_test) -> str:
    """FAST when asked for and the start-up self-test passes; else PIKA (loudly when forced to)."""
    if not cfg.fast_path:
        return PIKA
    failure = self_test()
    if failure is None:
        return FAST
    log.warning(f"the fast delivery path failed its self-test with pika {fastpath.pika_version()} "
                f"({failure}): using pika's own delivery path, which cannot survive undecodable "
                "message properties")
    return PIKA


class Dispatcher(Events):
    def __init__(self, cfg: configuration.Config, log: LineLog, notifier: Notifier,
                 env: Mapping[str, str], rng: Optional[random.Random] = None) -> None:
        from pika.adapters.select_connection import IOLoop

        self.cfg = cfg
        self.log = log
        self.notifier = notifier
        self.rng = rng or random.Random()
        self.params = amqp.parameters(cfg.hosts, cfg.port, cfg.vhost, cfg.user, cfg.password)
        self.ioloop = IOLoop()
        self.watchdog_every = watchdog_interval(env)
        self.policy = ReconnectPolicy(len(self.params), self.rng)
        self.stats = {"dispatched": 0, "failed": 0, "quarantined": 0}
        self.shutdown = Shutdown(self)
        self.acks = Acker(self.ioloop, log, cfg.prefetch, after_done=self.shutdown.maybe_done)
        self.telemetry = Telemetry()  # tracing and metrics: switched on by run(), after the start-up line
        self.quarantine = Quarantine(self.ioloop, log, self.acks, self.stats, telemetry=self.telemetry,
                                     log_interval=cfg.quarantine_log_s)
        self.handler = OrderHandler(cfg, self.ioloop, log, self.rng, self.acks, self.quarantine, self.stats,
                                    self.telemetry)
        self.env = env
        self.connector = Connector(self.ioloop, log, cfg.prefetch, self, queue_type=cfg.queue_type,
                                   body_limit=cfg.max_body)
        self.signals = SignalWakeup(self.ioloop, self.shutdown.stop)
        self.session: Optional[Session] = None
        self.sessions = 0
        self.retry_timer: Any = None
        self.ready_sent = False
        self.path = PIKA
        self.consuming_status: Optional[str] = None  # what STATUS= says while consuming
        self.reported = 0  # the orders handled as last told to systemd

    # == lifecycle ================================================================================
    def run(self) -> int:
        self.path = choose_path(self.cfg, self.log)
        self.log.info(f"dispatch {__version__} starting: {self.cfg.describe()} "
                      f"(delivery path: {self.path}, pika {fastpath.pika_version()})")
        if self.notifier.unsupported:
            self.log.warning("NOTIFY_SOCKET is set but not a path or @abstract name: not notifying systemd")
        self.telemetry.switch_on(self.cfg, self.env, self.log, self.ioloop)
        self.signals.install()
        if self.watchdog_every and self.notifier.enabled:
            self.ioloop.call_later(self.watchdog_every, self._watchdog)
        if self.notifier.enabled:
            self.ioloop.call_later(STATUS_EVERY_S, self._report)
        self._connect()
        try:
            self.ioloop.start()
        finally:
            self.signals.restore()
            self.quarantine.close()
            self.telemetry.close()
        s = self.stats
        self.log.info(f"stopped: {s['dispatched']} orders dispatched ({s['failed']} logged as failed), "
                      f"{s['quarantined']} bad messages quarantined")
        self.log.flush()
        return 0

    def stop(self, why: str) -> None:
        self.shutdown.stop(why)

    def _report(self) -> None:
        """STATUS= with the orders handled so far, when it changed (``systemctl status``, and
        ``dispatchctl status`` per instance)."""
        if self.shutdown.stopping:
            return
        handled = self.stats["dispatched"]
        if self.consuming_status is not None and handled != self.reported:
            self.reported = handled
            self.notifier.status(self._status_line())
        self.ioloop.call_later(STATUS_EVERY_S, self._report)

    def _status_line(self) -> str:
        return f"{self.consuming_status}; {self.stats['dispatched']} orders handled"

    def _watchdog(self) -> None:
        self.notifier.watchdog()
        if self.watchdog_every:
            self.ioloop.call_later(self.watchdog_every, self._watchdog)

    # == connecting ===============================================================================
    def _connect(self) -> None:
        self.retry_timer = None
        if self.shutdown.stopping:
            self.ioloop.stop()
            return
        params = self.params[self.policy.index]
        where = f"[{params.host}]:{params.port}" if ":" in params.host else f"{params.host}:{params.port}"
        self.sessions += 1
        if self.sessions > 1:
            self.telemetry.reconnecting()
        self.notifier.status(f"connecting to {where}")
        self.log.info(f"connecting to {where} vhost={self.cfg.vhost} as {self.cfg.user!r}")
        self.session = Session(self.sessions, where, self.path)
        self.connector.open(self.session, params)

    def _schedule(self, delay: float, why: str) -> None:
        self.consuming_status = None
        if self.shutdown.stopping:
            self.ioloop.stop()
            return
        if delay > 0:
            self.notifier.status(f"{why}; retrying in {delay:.1f}s")
            self.log.info(f"retrying in {delay:.1f}s")
        self.retry_timer = self.ioloop.call_later(delay, self._connect)

    def cancel_retry(self) -> None:
        if self.retry_timer is not None:
            self.ioloop.remove_timeout(self.retry_timer)
            self.retry_timer = None

    # == session events ===========================================================================
    def on_open_failed(self, sess: Session, error: BaseException) -> None:
        sess.alive = False
        self.telemetry.connected(False)
        if self.shutdown.stopping:
            self.ioloop.stop()
            return
        kind = amqp.classify_error(error)
        hint = amqp.fix_hint(kind, self.cfg.user, self.cfg.vhost)
        if kind == amqp.AUTH:
            what = f"authentication failed for user {self.cfg.user!r} at {sess.host}"
        elif kind == amqp.VHOST:
            what = f"access to vhost {self.cfg.vhost!r} refused for user {self.cfg.user!r} at {sess.host}"
        else:
            what = f"cannot connect to {sess.host}"
        self.log.error(f"{what}: {amqp.describe_error(error)}; {hint}")
        self._schedule(self.policy.open_failed(), what)

    def on_closed(self, sess: Session, error: BaseException) -> None:
        sess.alive = False
        self.telemetry.connected(False)
        self.acks.stop_timer(sess)
        for timer in sess.deferred.values():
            self.ioloop.remove_timeout(timer)
        if self.shutdown.stopping:
            self.ioloop.stop()
            return
        lost = sess.tracker.in_flight + len(sess.unconfirmed) + sess.tracker.unacked_done
        back = f" ({lost} unacked deliveries go back to the queue)" if lost else ""
        consumed_for = time.monotonic() - sess.consuming_since if sess.consuming_since else 0.0
        delay = self.policy.session_ended(sess.trouble is not None, consumed_for)
        if sess.trouble is not None:
            self.log.warning(f"closed the connection to {sess.host}: {sess.trouble}{back}")
            self._schedule(delay, "recovering from an error")
        else:
            self.log.warning(f"connection to {sess.host} lost: {amqp.describe_error(error)}{back}")
            self._schedule(delay, "reconnecting")

    def on_consuming(self, sess: Session) -> None:
        if self.shutdown.stopping:
            sess.close()
            return
        sess.consuming = True
        self.telemetry.connected(True)
        sess.consuming_since = time.monotonic()
        self.policy.consuming()
        status = f"consuming {amqp.QUEUE} on {sess.host} vhost={self.cfg.vhost} (delivery path: {sess.path})"
        self.log.info(f"{status} (prefetch {self.cfg.prefetch})")
        self.consuming_status = status
        self.reported = self.stats["dispatched"]
        if self.ready_sent:
            self.notifier.status(self._status_line())
        else:
            self.ready_sent = True
            self.notifier.ready(self._status_line())
        if self.notifier.failed:
            self.log.warning(f"cannot notify systemd on NOTIFY_SOCKET: {self.notifier.failed}")
            self.notifier.failed = None

    def on_channel_closed(self, sess: Session, which: str, error: BaseException) -> None:
        import pika.exceptions

        if not sess.usable or not isinstance(error, pika.exceptions.ChannelClosedByBroker):
            return  # the connection is going away: on_closed reports it
        text = amqp.describe_error(error)
        hint = ""
        if "PRECONDITION_FAILED" in text and "inequivalent" in text:
            hint = (f"; the contract needs exchange {amqp.EXCHANGE!r} durable direct and queue "
                    f"{amqp.QUEUE!r} durable with no arguments: fix whoever declared them differently")
        elif "ACCESS_REFUSED" in text:
            hint = (f"; grant the user its permissions: rabbitmqctl set_permissions -p {self.cfg.vhost} "
                    f"{self.cfg.user} '.*' '.*' '.*'")
        self.log.error(f"the broker closed the {which} channel: {text}{hint}")
        sess.close(f"{which} channel closed: {text}")

    def on_delivery(self, sess: Session, delivery: Delivery) -> None:
        self.handler.handle(sess, delivery)

    def on_confirm(self, sess: Session, frame: Any) -> None:
        self.quarantine.on_confirm(sess, frame)

    def on_return(self, sess: Session) -> None:
        self.quarantine.on_return(sess)


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
    undumpable = make_undumpable()  # before the credential is read: see nodump.py
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
    if undumpable is not None:
        log.warning(f"cannot make the process non-dumpable ({undumpable}): other processes of this user may "
                    "read its memory and environment")
    notifier = Notifier(env)
    started = time.monotonic()
    try:
        return Dispatcher(cfg, log, notifier, env).run()
    except Exception as exc:  # a bug: log it with its traceback and let systemd's Restart= take over
        log.exception("ERROR", f"unexpected {type(exc).__name__} after {time.monotonic() - started:.0f}s: "
                               f"{exc}", exc)
        return 1
    finally:
        notifier.close()
