"""A broker whose queue for the bridge overflows: while the bridge is away (mosquitto's
default queue is 1000 messages, a site's own broker may keep fewer, and a fleet may have
more nodes than that), and while it is connected but far behind (an overload)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from testkit.bridge_process import BridgeProcess, last_gui
from testkit.broker import broker_users, running_broker
from testkit.raw_publisher import RawPublisher
from testkit.support import NODE_PASSWORD, TEST_ACL, TEST_PASSWORD, make_config, wait_until

from bridge import refresh
from publisher import StatusPublisher
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

NODES = [f"q-{i:03d}" for i in range(100)]
UPDATES = 20
QUEUE = 50
"""Fewer than the nodes: even an empty queue cannot hold every node's retained status."""
FLOODER = "flooder"
FLOOD_ACL = TEST_ACL + f"\nuser {FLOODER}\ntopic write yl/ar/nodes/#\n"


@pytest.fixture
def small_queue_broker(tmp_path: Path) -> Iterator[DevBroker]:
    users = broker_users()
    users.update(dict.fromkeys(NODES, NODE_PASSWORD))
    users[FLOODER] = TEST_PASSWORD
    yield from running_broker(tmp_path / "broker", users, acl=FLOOD_ACL,
                              settings={"max_queued_messages": str(QUEUE)})


def test_every_node_ends_at_its_newest_status_whatever_the_broker_dropped(
        tmp_path: Path, small_queue_broker: DevBroker) -> None:
    broker = small_queue_broker
    double = MonitorDouble().start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    publishers = [StatusPublisher(make_config(broker, node), min_gap=0.0).start()
                  for node in NODES]
    try:
        wait_until(lambda: all(double.is_online(n) for n in NODES), timeout=20,
                   what="every node online")
        bridge.kill()
        base = [p.stats()["report_count"] for p in publishers]
        for step in range(1, UPDATES + 1):
            for publisher in publishers:
                publisher.update_gui_status(step=step)
            wait_until(lambda s=step: all(p.stats()["report_count"] >= b + s
                                          for p, b in zip(publishers, base, strict=True)),
                       timeout=20, what="each update published")
        bridge.start()
        # well before the nodes' next periodic report (30 s), which would hide the loss
        wait_until(lambda: all(last_gui(double, n).get("step") == UPDATES for n in NODES),
                   timeout=15, what="every node's newest status at the monitor")
        assert "Outgoing messages are being dropped" in broker.log_tail(200)
    finally:
        for publisher in publishers:
            publisher.stop()
        bridge.stop()
        double.down()


def _receiver_child(bridge: BridgeProcess) -> psutil.Process:
    assert bridge.process is not None
    children = [c for c in psutil.Process(bridge.process.pid).children()
                if "bridge.status_receiver" in " ".join(c.cmdline())]
    assert len(children) == 1, children
    return children[0]


def _drops(broker: DevBroker) -> int:
    """How often the broker began dropping messages for the bridge's session."""
    return broker.log_tail(100_000).count("Outgoing messages are being dropped for client "
                                          "yl-bridge")


def _announce(publisher: RawPublisher, double: MonitorDouble, nodes: list[str]) -> None:
    for node in nodes:
        publisher.state(node, "ready")
        publisher.status(node)
    wait_until(lambda: all(double.is_online(n) for n in nodes), timeout=30,
               what="every node online")


def _newest_everywhere(publisher: RawPublisher, double: MonitorDouble,
                       nodes: list[str]) -> bool:
    return all(last_gui(double, n).get("n") == publisher.seq[n] for n in nodes)


@pytest.fixture
def flood_broker(tmp_path: Path) -> Iterator[DevBroker]:
    """The project's broker config, and a login that publishes for every node."""
    users = broker_users()
    users[FLOODER] = TEST_PASSWORD
    yield from running_broker(tmp_path / "flood-broker", users, acl=FLOOD_ACL)


def test_a_connected_bridge_that_falls_behind_past_the_queue_reads_the_retained_again(
        tmp_path: Path, small_queue_broker: DevBroker) -> None:
    """The bridge stays connected while the broker drops what its session's queue cannot
    hold (the status receiver stopped for a moment stands for a bridge far behind): a gap in
    a node's seq makes it read the retained statuses again, so the newest of every node
    reaches the monitor without a reconnect and before the nodes report again."""
    broker = small_queue_broker
    double = MonitorDouble().start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    publisher = RawPublisher(broker.port, FLOODER, TEST_PASSWORD, retain=True, expiry=True)
    child: psutil.Process | None = None
    try:
        _announce(publisher, double, NODES)
        wait_until(lambda: bridge.drained() and bridge.health()["caught_up"], timeout=20,
                   what="the outbox drained and the sessions' first retained round read")
        child = _receiver_child(bridge)
        drops = _drops(broker)
        child.suspend()
        suspended = time.monotonic()
        for _ in range(UPDATES):
            for node in NODES:
                publisher.status(node)
        wait_until(lambda: _drops(broker) > drops, timeout=3,
                   what="the broker dropping messages for the bridge")
        time.sleep(max(suspended + refresh.BEHIND + 1.5 - time.monotonic(), 0.0))  # the fault
        child.resume()
        wait_until(lambda: _newest_everywhere(publisher, double, NODES), timeout=15,
                   what="every node's newest status at the monitor")
        assert bridge.metric("yl_bridge_retained_rereads_total") >= 1
        assert _receiver_child(bridge).pid == child.pid, "the receiver was replaced"
        assert "status receiver has not answered" not in bridge.log()
    finally:
        if child is not None:
            with contextlib.suppress(psutil.Error):
                child.resume()
        publisher.close()
        bridge.stop()
        double.down()


OVERLOAD_NODES = [f"ov-{i:03d}" for i in range(500)]
OVERLOAD_SECONDS = 10.0


def _offer(publisher: RawPublisher, nodes: list[str], rate: float | None,
           seconds: float) -> int:
    """Statuses round the nodes at ``rate`` a second (None: as fast as they go)."""
    began, sent = time.monotonic(), 0
    while time.monotonic() - began < seconds:
        for node in nodes:
            publisher.status(node)
            sent += 1
            if rate is not None and sent % 50 == 0:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
    return sent


def test_after_an_overload_of_three_times_what_it_forwards_every_node_is_at_its_newest(
        tmp_path: Path, flood_broker: DevBroker) -> None:
    """Statuses offered at 3 x the rate the bridge forwards, for 10 s, on the project's
    broker config: afterwards every node's newest status is at the monitor within
    seconds, whatever the broker dropped on the way."""
    double = MonitorDouble(keep=20_000).start()
    bridge = BridgeProcess(tmp_path, flood_broker, double).start()
    publisher = RawPublisher(flood_broker.port, FLOODER, TEST_PASSWORD, retain=True,
                             expiry=True)
    try:
        _announce(publisher, double, OVERLOAD_NODES)
        wait_until(bridge.drained, timeout=20, what="the outbox drained")
        before, began = double.request_total, time.monotonic()
        _offer(publisher, OVERLOAD_NODES, None, 3.0)
        forwards = (double.request_total - before) / (time.monotonic() - began)
        wait_until(bridge.drained, timeout=30, what="the outbox drained after measuring")
        drops = _drops(flood_broker)
        began = time.monotonic()
        offered = _offer(publisher, OVERLOAD_NODES, 3 * forwards, OVERLOAD_SECONDS) / \
            (time.monotonic() - began)
        ended = time.monotonic()
        wait_until(lambda: _newest_everywhere(publisher, double, OVERLOAD_NODES),
                   timeout=30, what="every node's newest status at the monitor")
        took = time.monotonic() - ended
        dropped = _drops(flood_broker) > drops
        print(f"forwarded {forwards:.0f}/s, offered {offered:.0f}/s for "
              f"{OVERLOAD_SECONDS:g} s; newest everywhere {took:.1f} s after; broker "
              f"dropped: {dropped}; re-read rounds: "
              f"{bridge.metric('yl_bridge_retained_rereads_total'):g}")
        assert offered >= 2 * forwards, "the statuses were not offered faster than forwarded"
        if dropped:
            assert bridge.metric("yl_bridge_retained_rereads_total") >= 1
    finally:
        publisher.close()
        bridge.stop()
        double.down()
