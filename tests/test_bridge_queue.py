"""A broker whose queue for the absent bridge overflows: mosquitto's default is 1000 messages,
a site's own broker may keep fewer, and a fleet may have more nodes than that."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess, last_gui
from testkit.broker import broker_users, running_broker
from testkit.support import NODE_PASSWORD, make_config, wait_until

from publisher import StatusPublisher
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

NODES = [f"q-{i:03d}" for i in range(100)]
UPDATES = 20
QUEUE = 50
"""Fewer than the nodes: even an empty queue cannot hold every node's retained status."""


@pytest.fixture
def small_queue_broker(tmp_path: Path) -> Iterator[DevBroker]:
    users = broker_users()
    users.update(dict.fromkeys(NODES, NODE_PASSWORD))
    yield from running_broker(tmp_path / "broker", users,
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
