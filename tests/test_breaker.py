"""The forwarder's circuit breaker, alone: pauses, Retry-After, what closes it."""

from __future__ import annotations

import time

import pytest

from bridge.breaker import MAX_RETRY_AFTER, Breaker


def test_failures_in_a_row_pause_longer_up_to_the_maximum() -> None:
    breaker = Breaker(0.2, 2.0)
    pauses = [breaker.failed("down") for _ in range(8)]
    assert 0.1 <= pauses[0] <= 0.2
    assert 0.2 <= pauses[1] <= 0.4
    assert all(1.0 <= p <= 2.0 for p in pauses[4:])
    assert not breaker.reachable
    assert breaker.last_problem == "down"
    assert breaker.paused_until >= time.monotonic() + 0.9


def test_the_monitor_answering_closes_it_and_only_a_delivery_starts_over() -> None:
    breaker = Breaker(0.2, 60.0)
    for _ in range(5):
        breaker.failed("500")
    breaker.answered()
    assert (breaker.reachable, breaker.last_problem) == (True, "")
    assert 1.6 <= breaker.failed("500 again") <= 6.4  # the sixth failure in a row
    breaker.delivered()
    assert 0.1 <= breaker.failed("500") <= 0.2


@pytest.mark.parametrize(("asked", "at_least"), [(30.0, 30.0), (10_000.0, MAX_RETRY_AFTER)])
def test_retry_after_is_honoured_up_to_five_minutes(asked: float, at_least: float) -> None:
    breaker = Breaker(0.2, 2.0)
    assert breaker.failed("429", retry_after=asked) == at_least
