"""Time bounds: a call that may never return (a resolver, a broker dropping packets) cannot hold
up the answer, nor the exit of the process.

Each call runs in a daemon thread that completes a :class:`concurrent.futures.Future`; the caller
waits on the futures with ``concurrent.futures.wait`` and a deadline. (A ThreadPoolExecutor would
do the waiting the same way, but its threads are joined at interpreter exit: one resolver that never
answers would keep the finished command from exiting.) At most :data:`MAX_PARALLEL` calls run at
once.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

MAX_PARALLEL = 8  # the most calls in flight at once (the hosts of a cluster)


class Clock:
    """A time budget: how long is left, how long has passed."""

    def __init__(self, budget: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + budget

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def extend(self, seconds: float) -> None:
        """Give back time the checks did not use (a password prompt waiting for the user)."""
        self.end += max(0.0, seconds)


def start(fn: Callable[[], Any]) -> cf.Future:
    """``fn()`` in a daemon thread; its outcome lands in the returned future."""
    future: cf.Future = cf.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, name="dispatchctl-bounded", daemon=True).start()
    return future


def run_all(calls: Sequence[Callable[[], Any]], timeout: float) -> List[cf.Future]:
    """Run ``calls`` side by side (at most MAX_PARALLEL at once) and wait ``timeout`` s in all.
    A future that is not done when this returns belongs to a call left behind."""
    deadline = time.monotonic() + max(0.0, timeout)
    futures: List[cf.Future] = []
    for first in range(0, len(calls), MAX_PARALLEL):
        batch = [start(call) for call in calls[first:first + MAX_PARALLEL]]
        cf.wait(batch, timeout=max(0.0, deadline - time.monotonic()))
        futures.extend(batch)
    return futures


def run_bounded(fn: Callable[[], Any], timeout: float) -> Tuple[bool, Any, Optional[BaseException]]:
    """(finished, result, exception) of ``fn()``, waiting at most ``timeout`` s for it."""
    future = run_all([fn], timeout)[0]
    if not future.done():
        return False, None, None
    error = future.exception()
    return True, (None if error is not None else future.result()), error
