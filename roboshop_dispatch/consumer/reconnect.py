"""When and where to connect next: host rotation over the cluster plus capped, jittered backoff.

Pure state, no I/O: the service asks it for the next host and how long to wait, and tells it what
happened. A failed attempt moves to the next host at once until every host failed in this round;
then the wait grows 0.5 s, 1 s, 2 s ... 30 s (+-20 %). A session that was lost (broker outage,
network) reconnects at once to the next host; one we closed ourselves because of an error backs
off further each time, unless it had been consuming for a minute.
"""

from __future__ import annotations

import random
from typing import Optional

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
HEALTHY_AFTER = 60.0  # seconds of consuming after which a troubled session counts as recovered


def backoff(failures: int, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` (>= 1) consecutive failed rounds: 0.5, 1, 2 ... 30, +-20 %."""
    base = min(BACKOFF_CAP, BACKOFF_FIRST * (2 ** min(max(failures, 1) - 1, 16)))
    return min(BACKOFF_CAP, base * rng.uniform(0.8, 1.2))


class ReconnectPolicy:
    def __init__(self, hosts: int, rng: Optional[random.Random] = None) -> None:
        if hosts < 1:
            raise ValueError("at least one host")
        self.hosts = hosts
        self.rng = rng or random.Random()
        self.index = 0  # the host to connect to next
        self.round_failures = 0  # failed attempts since the last full round of hosts
        self.rounds = 0  # consecutive failed rounds (or troubled sessions): the backoff exponent
        self.troubled = False  # the last session ended on an error of ours: keep backing off

    def _next_host(self) -> None:
        self.index = (self.index + 1) % self.hosts

    def open_failed(self) -> float:
        """A connection attempt failed: the delay before the next attempt (to the next host)."""
        self._next_host()
        self.round_failures += 1
        if self.round_failures < self.hosts:
            return 0.0
        self.round_failures = 0
        self.rounds += 1
        return backoff(self.rounds, self.rng)

    def consuming(self) -> None:
        """A session got as far as consuming."""
        self.round_failures = 0
        if not self.troubled:
            self.rounds = 0

    def session_ended(self, trouble: bool, consumed_for: float) -> float:
        """A session ended (``trouble``: we closed it because of an error); the delay before the
        next attempt, to the next host. ``consumed_for``: seconds it had been consuming (0: never)."""
        self._next_host()
        self.round_failures = 0
        if trouble:
            if consumed_for > HEALTHY_AFTER:
                self.rounds = 0
            self.rounds += 1
            self.troubled = True
            return backoff(self.rounds, self.rng)
        self.rounds = 0
        self.troubled = False
        return 0.0
