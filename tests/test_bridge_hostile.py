"""Hostile input on the node topics: counted, logged, never forwarded, never fatal."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from testkit.bridge_process import BridgeProcess, last_gui, rejected_by_reason
from testkit.support import make_config, retained, wait_until

from publisher import StatusPublisher
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration


def intruder(broker: DevBroker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set("intruder", "intruder-secret")
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(5)
    return client


def good_status(base: dict[str, Any], **overrides: Any) -> bytes:
    data = dict(base)
    data.update(overrides)
    return json.dumps(data).encode()


def test_hostile_messages_are_counted_and_never_reach_the_monitor(
        tmp_path: Path, open_broker: DevBroker) -> None:
    broker = open_broker
    double = MonitorDouble().start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    publisher = StatusPublisher(make_config(broker, "node-1")).start()
    evil = intruder(broker)
    try:
        publisher.update_gui_status(video_running=True)
        wait_until(lambda: last_gui(double, "node-1").get("video_running") is True,
                   timeout=10, what="node-1 forwarded")
        publisher.update_gui_status(audio_running=True)
        wait_until(lambda: last_gui(double, "node-1").get("audio_running") is True,
                   timeout=10, what="a second status forwarded")
        current = retained(broker.host, broker.port, "yl/ar/nodes/node-1/status")
        assert current["seq"] >= 2
        status_topic = "yl/ar/nodes/node-1/status"
        cases: list[tuple[str, bytes, str]] = [
            (status_topic, b"{broken", "json"),
            (status_topic, b'{"v": 1, "seq": NaN}', "json"),
            (status_topic, b"[" * 60_000, "json"),
            (status_topic, b'{"v":1,"x":"' + b"a" * 1_000_000 + b'"}', "too_large"),
            (status_topic, good_status(current, seq="7"), "schema"),
            (status_topic, good_status({k: v for k, v in current.items() if k != "resources"}),
             "schema"),
            (status_topic, good_status(current, seq=current["seq"] + 50,
                                       gui={"evil": [1, [2]]}), "schema"),
            (status_topic, good_status(current, node_id="node-2", seq=current["seq"] + 60),
             "node_id"),
            (status_topic, good_status(current, seq=1, gui={"evil": True}), "stale"),
            ("yl/ar/nodes/node-1/state", b'{"v":1,"state":"hacked"}', "schema"),
            ("yl/ar/nodes/../status", good_status(current, node_id=".."), "node_id"),
            ("yl/ar/nodes/%2e%2e/status", good_status(current, node_id="%2e%2e"), "node_id"),
            ("yl/ar/nodes/a/b/status", good_status(current), ""),
            ("yl/ar/nodes/nodé/status", good_status(current, node_id="nodé"), "node_id"),
            ("yl/ar/nodes/" + "x" * 65 + "/status", good_status(current, node_id="x" * 65),
             "node_id"),
        ]
        expected: dict[str, int] = {}
        for topic, payload, reason in cases:
            info = evil.publish(topic, payload, qos=1)
            info.wait_for_publish(5)
            if reason:
                expected[reason] = expected.get(reason, 0) + 1

        def counted() -> bool:
            got = rejected_by_reason(bridge.metrics())
            return all(got.get(reason, 0) >= n for reason, n in expected.items())

        try:
            wait_until(counted, timeout=10, what=f"rejections {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; got {rejected_by_reason(bridge.metrics())}") from None
        publisher.update_gui_status(face_loaded=True)
        wait_until(lambda: last_gui(double, "node-1").get("face_loaded") is True, timeout=10,
                   what="node-1 still forwarded after the barrage")
        paths = [r[1] for r in double.requests]
        for bad in ("..", "%2e", "%2E", "nod%C3%A9", "x" * 65, "/a/", "node-2"):
            assert not [p for p in paths if bad in p], bad
        for beat in double.history("node-1"):
            assert "evil" not in beat.body.get("gui", {})
        assert bridge.process is not None
        assert bridge.process.poll() is None
        assert bridge.healthy()
        log = bridge.log()
        assert "rejected message reason=json" in log
        assert "rejected message reason=too_large" in log
    finally:
        evil.disconnect()
        evil.loop_stop()
        publisher.stop()
        assert bridge.stop() == 0
        double.down()
