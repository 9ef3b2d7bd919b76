"""The bridge's broker session (``bridge.status_receiver``) on a real mosquitto: what it hands
the bridge, in which batches."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from testkit.raw_publisher import RawPublisher
from testkit.support import BRIDGE_PASSWORD, BRIDGE_USER, make_config, wait_until

from bridge import status_receiver
from bridge.incoming import Received
from bridge.service import IN_FLIGHT
from bridge.status_receiver import StatusReceiver
from yl_core.link import options_from_config
from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration

INTRUDER = ("intruder", "intruder-secret")
"""``open_broker``'s login that may publish any node's topics."""


class Batches:
    """The batches the receiver hands the bridge, in order; each acknowledged, as the bridge
    does once it committed them (the broker sends a session only so many unacknowledged)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[Received]] = []
        self.receiver: StatusReceiver | None = None

    def __call__(self, batch: list[Received]) -> None:
        with self.lock:
            self.batches.append(batch)
        assert self.receiver is not None
        for connection in {m.connection for m in batch}:
            self.receiver.acknowledge(connection, [(m.mid, m.qos) for m in batch
                                                   if m.qos and m.connection == connection])

    def topics(self) -> list[list[str]]:
        with self.lock:
            return [[m.topic for m in batch] for batch in self.batches]


def settle(publisher: RawPublisher, batches: Batches) -> int:
    """Wait until a state went through on its own (what the connect's round left to hand on
    is gone with it); returns the batches so far."""
    publisher.state("settle", "ready")
    wait_until(lambda: any("yl/ar/nodes/settle/state" in b for b in batches.topics()),
               timeout=20, what="a first state")
    return len(batches.topics())


@pytest.fixture
def receiver(open_broker: DevBroker) -> Iterator[tuple[StatusReceiver, Batches]]:
    """A receiver on a thread of the test's process (so a changed ``LINGER`` holds there),
    caught up with the broker."""
    config = make_config(open_broker, "yl-bridge")
    options = options_from_config(config.mqtt, BRIDGE_USER, username=BRIDGE_USER,
                                  password=BRIDGE_PASSWORD, clean_start=False,
                                  session_expiry=60, manual_ack=True,
                                  receive_maximum=IN_FLIGHT)
    batches = Batches()
    caught_up = threading.Event()
    running = StatusReceiver(options, config.mqtt.topics, 1, batches, config.logging,
                             in_thread=True,
                             on_caught_up=lambda up: caught_up.set() if up else None)
    batches.receiver = running
    running.start()
    try:
        wait_until(caught_up.is_set, timeout=20, what="the receiver caught up")
        yield running, batches
    finally:
        running.stop(3.0)


def test_statuses_that_come_together_reach_the_bridge_in_one_batch(
        monkeypatch: pytest.MonkeyPatch, open_broker: DevBroker,
        receiver: tuple[StatusReceiver, Batches]) -> None:
    """Live statuses linger for others (one hand-off, one commit, one acknowledgement for
    the lot); a state takes them along at once, after them, in the order they came."""
    monkeypatch.setattr(status_receiver, "LINGER", 60.0)
    publisher = RawPublisher(open_broker.port, *INTRUDER)
    try:
        batches = receiver[1]
        before = settle(publisher, batches)
        for _ in range(5):
            publisher.status("n1")
        publisher.state("n2", "ready")
        wait_until(lambda: len(batches.topics()) > before, timeout=20,
                   what="the state and the statuses before it")
        assert batches.topics()[before:] == [["yl/ar/nodes/n1/status"] * 5 +
                                             ["yl/ar/nodes/n2/state"]]
    finally:
        publisher.close()


def test_a_full_batch_of_statuses_goes_without_lingering(
        monkeypatch: pytest.MonkeyPatch, open_broker: DevBroker,
        receiver: tuple[StatusReceiver, Batches]) -> None:
    monkeypatch.setattr(status_receiver, "LINGER", 60.0)
    publisher = RawPublisher(open_broker.port, *INTRUDER)
    try:
        batches = receiver[1]
        before = settle(publisher, batches)
        for i in range(status_receiver.LINGER_BATCH):
            publisher.status(f"n{i}")
        wait_until(lambda: sum(map(len, batches.topics()[before:])) ==
                   status_receiver.LINGER_BATCH, timeout=20,
                   what="a full batch without a state")
    finally:
        publisher.close()
