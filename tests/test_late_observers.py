"""Observers that start after a node ended: the status app, ``watch`` and a bridge with a
fresh outbox, started after a ``kill -9`` of the node, a clean stop, or a ``kill -9`` and a
broker restart (with its saved retained messages). Each says at once that the node is down,
for the right reason, and never that it is up. Real mosquitto and real processes."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess
from testkit.support import (
    TEST_PASSWORD,
    WATCHER_USER,
    answers,
    config_dict,
    http_get,
    retained,
    serve_config,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from tests.test_watch import ANSI, Terminal
from yl_status.dev_broker import DevBroker, free_port
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

STATE = "yl/ar/nodes/node-1/state"


def end_the_node(tmp_path: Path, broker: DevBroker, how: str) -> str:
    """Run a node until its status is retained, end it ``how``; the state it ended in."""
    config = write_config(tmp_path / "node.yaml", config_dict(broker, "node-1"))
    gui = start_process(["node", "-c", str(config), "--toggle-every", "0.2"],
                        log_path=tmp_path / "node.log")
    try:
        wait_until(lambda: (retained(broker.host, broker.port, STATE) or {}).get("state") ==
                   "ready", timeout=15, what="node-1 ready on the broker")
    finally:
        if how == "clean stop":
            assert stop_process(gui) == 0
        else:
            gui.kill()
            gui.wait()
    ended = "disconnected" if how == "clean stop" else "lost"
    wait_until(lambda: retained(broker.host, broker.port, STATE)["state"] == ended,
               timeout=5, what=f"node-1 {ended} on the broker")
    if how == "kill -9, broker restarted":
        broker.stop()
        broker.start()
        assert retained(broker.host, broker.port, STATE)["state"] == ended
    return ended


def health_until_down(base: str, ended: str) -> None:
    """Poll ``/health`` from the status app's start: never 200, then 503 for ``ended``."""
    def down() -> bool:
        if not answers(base + "/nodes"):
            return False
        code, body = http_get(base + "/health")
        assert code != 200, f"a late status app calls a node that ended {ended} healthy"
        return code == 503 and isinstance(body, dict) and body.get("reason") == ended
    wait_until(down, timeout=15, what=f"/health 503 {ended}")


@pytest.mark.parametrize("how", ["kill -9", "clean stop", "kill -9, broker restarted"])
def test_late_observers_show_a_node_that_ended_down_at_once_for_the_right_reason(
        tmp_path: Path, broker: DevBroker, how: str) -> None:
    ended = end_the_node(tmp_path, broker, how)

    port = free_port()
    config = write_config(tmp_path / "serve.yaml", serve_config(broker, port))
    serve = start_process(["serve", "-c", str(config)], log_path=tmp_path / "serve.log")
    watch_config = write_config(tmp_path / "watch.yaml", config_dict(broker))
    terminal = Terminal([sys.executable, "-m", "yl_status", "watch", "-c", str(watch_config),
                         "--login", WATCHER_USER], {"YL_WATCH_PASSWORD": TEST_PASSWORD})
    double = MonitorDouble().start()
    bridge: BridgeProcess | None = None
    try:
        bridge = BridgeProcess(tmp_path, broker, double).start()
        health_until_down(f"http://127.0.0.1:{port}", ended)
        wait_until(lambda: f" {ended} " in terminal.frame() and
                   "broker: connected" in terminal.frame(), timeout=15,
                   what=f"watch shows node-1 {ended}")
        assert not re.search(r"\bready\b", ANSI.sub("", terminal.raw())), \
            "watch showed the node ready"
        wait_until(lambda: (double.node_view("node-1") or {}).get("status") == "offline",
                   timeout=10, what="node-1 offline at the monitor")
        assert [h.reason for h in double.history("node-1")] == [ended], \
            "a bridge with a fresh outbox told the monitor something else first"
        last = retained(broker.host, broker.port, "yl/ar/nodes/node-1/status")
        assert double.history("node-1")[0].body.get("gui") == last["gui"], \
            "the offline carries the node's last status"
        seen_until = time.monotonic() + 1.0
        while time.monotonic() < seen_until:
            assert http_get(f"http://127.0.0.1:{port}/health")[0] == 503
            assert [h.reason for h in double.history("node-1")] == [ended]
            time.sleep(0.1)
    finally:
        if bridge is not None:
            assert bridge.stop() == 0
        double.down()
        assert terminal.close() == 0
        assert stop_process(serve) == 0
