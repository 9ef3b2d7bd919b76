"""The shipped broker config: authentication and per-node write access."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from testkit.support import (
    BRIDGE_PASSWORD,
    BRIDGE_USER,
    NODE_PASSWORD,
    VIEWER_PASSWORD,
    VIEWER_USER,
    retained,
)

from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration


def connect(broker: DevBroker, username: str | None, password: str | None,
            client_id: str = "") -> tuple[mqtt.Client, int]:
    done = threading.Event()
    result: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or (username or ""),
                         protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)

    def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        result.append(reason.value)
        done.set()

    client.on_connect = on_connect
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert done.wait(5), "no CONNACK"
    return client, result[0]


def publish_reason(client: mqtt.Client, topic: str, payload: bytes) -> int:
    done = threading.Event()
    reasons: list[int] = []

    def on_publish(c: mqtt.Client, u: Any, mid: int, reason: Any, props: Any) -> None:
        reasons.append(reason.value)
        done.set()

    client.on_publish = on_publish
    client.publish(topic, payload, qos=1, retain=True)
    assert done.wait(5), "no PUBACK"
    return reasons[0]


def accepted(reason: int) -> bool:
    """0 success or 16 no matching subscribers; 128 and up are refusals."""
    return reason < 128


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_a_node_writes_its_own_topics(broker: DevBroker) -> None:
    client, rc = connect(broker, "node-1", NODE_PASSWORD)
    try:
        assert rc == 0
        assert accepted(publish_reason(client, "yl/ar/nodes/node-1/status", b'{"x":1}'))
    finally:
        close(client)
    assert retained(broker.host, broker.port, "yl/ar/nodes/node-1/status") == {"x": 1}


@pytest.mark.parametrize("client_id", ["", "node-2", "node-2/x"])
def test_a_node_cannot_write_another_nodes_topics_even_with_a_spoofed_client_id(
        broker: DevBroker, client_id: str) -> None:
    client, rc = connect(broker, "node-1", NODE_PASSWORD, client_id=client_id)
    try:
        assert rc == 0
        for topic in ("yl/ar/nodes/node-2/status", "yl/ar/nodes/node-2/state",
                      "yl/ar/nodes/node-1/cmd/rebirth", "yl/ar/bridges/yl-bridge/state"):
            assert publish_reason(client, topic, b'{"forged":true}') == 135, topic
    finally:
        close(client)
    assert retained(broker.host, broker.port, "yl/ar/nodes/node-2/status") is None


def test_viewer_reads_but_cannot_write(broker: DevBroker) -> None:
    client, rc = connect(broker, VIEWER_USER, VIEWER_PASSWORD)
    try:
        assert rc == 0
        assert publish_reason(client, "yl/ar/nodes/node-1/state", b"{}") == 135
    finally:
        close(client)


@pytest.mark.parametrize(("username", "password"), [(VIEWER_USER, VIEWER_PASSWORD),
                                                    (BRIDGE_USER, BRIDGE_PASSWORD)])
def test_only_node_logins_write_node_topics_even_named_like_themselves(
        broker: DevBroker, username: str, password: str) -> None:
    client, rc = connect(broker, username, password)
    try:
        assert rc == 0
        for kind in ("state", "status"):
            topic = f"yl/ar/nodes/{username}/{kind}"
            assert publish_reason(client, topic, b'{"fake":true}') == 135, topic
    finally:
        close(client)
    assert retained(broker.host, broker.port, f"yl/ar/nodes/{username}/state") is None


def test_bridge_may_send_commands_and_its_own_state(broker: DevBroker) -> None:
    client, rc = connect(broker, BRIDGE_USER, BRIDGE_PASSWORD)
    try:
        assert rc == 0
        assert accepted(publish_reason(client, "yl/ar/nodes/node-1/cmd/rebirth", b""))
        assert accepted(publish_reason(client, "yl/ar/bridges/yl-bridge/state", b"{}"))
        assert publish_reason(client, "yl/ar/nodes/node-1/status", b"{}") == 135
    finally:
        close(client)


@pytest.mark.parametrize(("username", "password"), [(None, None), ("node-1", "wrong"),
                                                    ("nobody", "node-secret")])
def test_anonymous_and_bad_credentials_are_refused(broker: DevBroker, username: str | None,
                                                   password: str | None) -> None:
    client, rc = connect(broker, username, password)
    close(client)
    assert rc in (134, 135), rc
