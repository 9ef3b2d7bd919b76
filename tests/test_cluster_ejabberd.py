"""The nodes and the bridge on a clustered MQTT 5 broker other than mosquitto: a real two-node
ejabberd cluster (``mod_mqtt``), a node on one cluster node, the bridge on the other."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from testkit.bridge_process import BridgeProcess, reasons
from testkit.ejabberd import EjabberdCluster, EjabberdNode
from testkit.support import (
    BRIDGE_PASSWORD,
    BRIDGE_USER,
    NODE_PASSWORD,
    config_dict,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

WATCHER = ("ej-watcher", "watcher-secret")


@pytest.fixture(scope="module")
def cluster() -> Iterator[EjabberdCluster]:
    """One cluster for the module (it takes seconds to start); ejabberd runs detached, so
    it is no child of the tests."""
    found = EjabberdCluster()
    try:
        found.start()
        found.register({"node-1": NODE_PASSWORD, BRIDGE_USER: BRIDGE_PASSWORD,
                        WATCHER[0]: WATCHER[1]})
        yield found
    finally:
        found.stop()


def endpoint(node: EjabberdNode) -> Any:
    return SimpleNamespace(host="127.0.0.1", port=node.port)


def node_process(tmp_path: Path, where: EjabberdNode, name: str) -> Any:
    config = write_config(tmp_path / f"{name}.yaml", config_dict(
        endpoint(where), "node-1", monitor={"report_interval": 1}, mqtt={"keepalive": 2}))
    return start_process(["node", "-c", str(config), "--toggle-every", "0.2"],
                         log_path=tmp_path / f"{name}.log")


def test_a_node_and_the_bridge_on_different_cluster_nodes_lose_no_transition(
        tmp_path: Path, cluster: EjabberdCluster, double: MonitorDouble) -> None:
    first, second = cluster.nodes
    bridge = BridgeProcess(tmp_path, endpoint(first), double).start()
    node = node_process(tmp_path, second, "node-a")
    try:
        wait_until(lambda: double.is_online("node-1"), timeout=15, what="node online")
        node.kill()  # its will fires on the second cluster node, the bridge is on the first
        node.wait()
        wait_until(lambda: not double.is_online("node-1"), timeout=5, what="node offline")
        assert reasons(double.history("node-1")) == ["ready", "lost"]

        # While the bridge is away its persistent sessions keep what arrives, and they are
        # the cluster's: the bridge comes back on the other cluster node and gets it.
        bridge.kill()
        node = node_process(tmp_path, second, "node-b")
        wait_until(lambda: "connected to" in (tmp_path / "node-b.log").read_text(),
                   timeout=15, what="node connected again")
        assert stop_process(node) == 0
        moved = BridgeProcess(tmp_path, endpoint(second), double).start()
        try:
            wait_until(lambda: reasons(double.history("node-1")) ==
                       ["ready", "lost", "ready", "disconnected"], timeout=15,
                       what="the transitions made while the bridge was away")
            assert "session_present=True" in moved.log()
        finally:
            assert moved.stop() == 0
    finally:
        stop_process(node)
        bridge.stop()


def _retained_copies(node: EjabberdNode, topic: str) -> list[bytes]:
    """The retained messages a new subscriber to ``topic`` on ``node`` gets: those that arrive
    before a live message published after the subscription was acknowledged."""
    got: list[bytes] = []
    marker = topic + "/marker"
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=WATCHER[0],
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(*WATCHER)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == marker:
            done.set()
        elif message.retain:
            got.append(bytes(message.payload))

    def on_subscribe(c: mqtt.Client, *_args: object) -> None:
        c.publish(marker, b"live", qos=1)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, *_a: c.subscribe([(topic, 1), (marker, 1)])
    client.connect("127.0.0.1", node.port, 10)
    client.loop_start()
    try:
        assert done.wait(10), "the live message after the subscription never came"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_ejabberd_keeps_retained_messages_on_the_cluster_node_they_were_published_to(
        cluster: EjabberdCluster) -> None:
    """Why deploy/cluster says to connect every client to one ejabberd node."""
    first, second = cluster.nodes
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node-1",
                            protocol=mqtt.MQTTv5)
    publisher.username_pw_set("node-1", NODE_PASSWORD)
    publisher.connect("127.0.0.1", second.port, 10)
    publisher.loop_start()
    try:
        publisher.publish("yl/ar/nodes/node-1/state", b"retained", qos=1,
                          retain=True).wait_for_publish(10)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    topic = "yl/ar/nodes/node-1/state"
    assert _retained_copies(second, topic) == [b"retained"]
    assert _retained_copies(first, topic) == []
