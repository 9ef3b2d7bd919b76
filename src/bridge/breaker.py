"""Whether deliveries to the monitor may go out: the forwarder's circuit breaker.

A failure (the monitor unreachable, failing or refusing everything) opens it: nothing goes
out for a pause, jittered and growing exponentially with each failure in a row (or as long as
the monitor's ``Retry-After`` asks, up to 5 minutes), and then only a look at the monitor,
which closes it again if the monitor answers. A delivery that succeeds starts the count of
failures over.
"""

from __future__ import annotations

import logging
import time

from yl_core.link import backoff_delay

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0


class Breaker:
    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.reachable = True
        """False from a failure until the monitor answers again."""
        self.last_problem = ""
        self.failures = 0
        """Failures in a row since the last delivery that succeeded."""
        self.paused_until = 0.0
        """Nothing goes out before this (monotonic)."""

    def delivered(self) -> None:
        """A delivery succeeded."""
        self.failures = 0
        self.answered()

    def answered(self) -> None:
        """The monitor answered (a look at it, say): deliveries may go out again."""
        if not self.reachable:
            log.info("monitor reachable again")
        self.reachable = True
        self.last_problem = ""

    def failed(self, reason: str, retry_after: float | None = None) -> float:
        """Open: pause everything; returns the pause."""
        self.failures += 1
        pause = backoff_delay(self.failures - 1, self.initial, self.maximum)
        if retry_after is not None:
            pause = max(pause, min(retry_after, MAX_RETRY_AFTER))
        if self.reachable:
            log.warning("monitor unavailable (%s); pausing deliveries, retrying with backoff",
                        reason)
        self.reachable = False
        self.last_problem = reason
        self.paused_until = max(self.paused_until, time.monotonic() + pause)
        return pause
