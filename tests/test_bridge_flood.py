"""kill -9 of the bridge in the middle of a flood: nothing acknowledged is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess, reasons
from testkit.support import (
    NODE_PASSWORD,
    Recorder,
    config_dict,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

FLOOD_NODES = [f"flood-{i:04d}" for i in range(1, 101)]
FLAP_NODES = [f"flap-{i:04d}" for i in range(1, 11)]
CYCLES = 3


def test_kill_9_of_the_bridge_during_a_flood_loses_no_transition_and_no_newest_status(
        tmp_path: Path, broker: DevBroker) -> None:
    broker.add_users(dict.fromkeys(FLOOD_NODES + FLAP_NODES, NODE_PASSWORD))
    double = MonitorDouble().start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    recorder = Recorder(broker.host, broker.port).start()
    config = write_config(tmp_path / "nodes.yaml", config_dict(broker, "flood"))
    flood = start_process(["node", "-c", str(config), "--node-id", "flood", "--count", "100",
                           "--toggle-every", "0.01"], log_path=tmp_path / "flood.log")
    flap = None
    try:
        def statuses() -> int:
            return sum(1 for m in recorder.messages if m.topic.endswith("/status"))

        def all_states(word: str, after: float) -> bool:
            return all(any(m.at >= after and m.payload and m.json()["state"] == word
                           for m in recorder.on(f"yl/ar/nodes/{n}/state")) for n in FLAP_NODES)

        for cycle in range(CYCLES):
            began = time.monotonic()
            flap = start_process(["node", "-c", str(config), "--node-id", "flap", "--count",
                                  "10"], log_path=tmp_path / f"flap-{cycle}.log")
            wait_until(lambda b=began: all_states("ready", b), timeout=30, what="flap ready")
            if cycle == 0:
                bridge.kill()
            killed = time.monotonic()
            flap.kill()
            flap.wait()
            wait_until(lambda k=killed: all_states("lost", k), timeout=10, what="flap lost")
            if cycle == 1:
                bridge.start()
        wait_until(lambda: statuses() >= 10_000, timeout=120, what="10,000 statuses")
        flood_stopped = time.monotonic()
        assert stop_process(flood) == 0
        for node in FLOOD_NODES:
            recorder.wait_for(f"yl/ar/nodes/{node}/state",
                              lambda d: d["state"] == "disconnected", after=flood_stopped)
        wait_until(lambda: all(reasons(double.history(n))[-1:] == ["disconnected"]
                               for n in FLOOD_NODES), timeout=60, what="flood delivered")
        wait_until(bridge.drained, timeout=30, what="outbox drained")
        for node in FLAP_NODES:
            assert reasons(double.history(node)) == ["ready", "lost"] * CYCLES, node
        for node in FLOOD_NODES:
            history = double.history(node)
            assert reasons(history) == ["ready", "disconnected"], node
            newest = recorder.last(f"yl/ar/nodes/{node}/status")
            assert newest is not None
            assert history[-1].body["gui"] == newest.json()["gui"], node
            assert history[-1].body["uptime"] == newest.json()["uptime"], node
            uptimes = [h.body["uptime"] for h in history if "uptime" in h.body]
            assert uptimes == sorted(uptimes), f"{node} went back in time"
        metrics = bridge.metrics()
        assert metrics.get("yl_bridge_coalesced_total", 0) > 0
        assert not [k for k in metrics if k.startswith("yl_bridge_dropped_total")]
    finally:
        if flap is not None:
            stop_process(flap)
        stop_process(flood)
        recorder.stop()
        bridge.stop()
        double.down()
