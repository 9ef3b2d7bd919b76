"""A node's story reaches the monitor in the order the broker received it, with GUIs that
change a flag and crash a second or so after they start: real mosquitto, a real bridge and
real node processes, each ``kill -9``-ed."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess
from testkit.support import Recorder, config_dict, start_process, wait_until, write_config

from yl_core import timestamps
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

NODES = [f"node-{i}" for i in range(1, 5)]
LIVES = 3


def test_churning_nodes_tell_each_life_in_order_and_end_it_with_its_last_status(
        tmp_path: Path, broker: DevBroker) -> None:
    """Four nodes at ``report_interval: 1``, each flipping a flag every 0.2 s and killed
    1-3 s after it started, three lives each, the second while the bridge is killed -9 (back
    after the crashes, its sessions replay what they kept): at the monitor each node's
    requests go forward in time, nothing of a life comes after its ``offline``, and that
    ``offline`` carries the last status the life published."""
    double = MonitorDouble().start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    recorder = Recorder(broker.host, broker.port).start()
    rng = random.Random(27)
    restarted = 0.0
    try:
        for life in range(LIVES):
            began = time.monotonic()
            nodes = {}
            for node in NODES:
                config = write_config(tmp_path / f"{node}.yaml", config_dict(
                    broker, node, monitor={"report_interval": 1}))
                nodes[node] = start_process(["node", "-c", str(config), "--toggle-every",
                                             "0.2"], log_path=tmp_path / f"{node}-{life}.log")
            for node in NODES:
                recorder.wait_for(f"yl/ar/nodes/{node}/state",
                                  lambda d: d["state"] == "ready", after=began, timeout=15)
            if life == 1:
                bridge.kill()  # its two sessions catch up apart when it is back
            for _node, process in sorted(nodes.items(), key=lambda _: rng.random()):
                time.sleep(rng.uniform(0.2, 1.0))  # the life's length, not a wait for anything
                process.kill()
                process.wait()
            for node in NODES:
                recorder.wait_for(f"yl/ar/nodes/{node}/state",
                                  lambda d: d["state"] == "lost", after=began, timeout=10)
            if life == 1:
                restarted = time.time()
                bridge.start()
        wait_until(lambda: all([h.reason for h in double.history(n)].count("lost") == LIVES
                               for n in NODES), timeout=15, what="every life's end delivered")
        wait_until(bridge.drained, timeout=10, what="outbox drained")
        for node in NODES:
            history = double.history(node)
            for before, after in itertools.pairwise(history):
                if before.at < restarted <= after.at:
                    continue  # each bridge instance keeps a node's requests in time order
                assert timestamps.epoch_from_iso(after.body["timestamp"]) >= \
                    timestamps.epoch_from_iso(before.body["timestamp"]), \
                    f"{node}: a request went back in time: {before} then {after}"
            ends = [i for i, h in enumerate(history) if h.reason == "lost"]
            for i in ends[:-1]:
                assert history[i + 1].reason == "ready", f"{node}: something after an offline"
            assert ends[-1] == len(history) - 1, f"{node}: something after its last offline"
            sessions = [m.json()["session"] for m in recorder.on(f"yl/ar/nodes/{node}/state")
                        if m.json()["state"] == "lost"]
            assert len(sessions) == LIVES
            for index, session in zip(ends, sessions, strict=True):
                published = [m.json() for m in recorder.on(f"yl/ar/nodes/{node}/status")
                             if m.json()["session"] == session]
                assert history[index].body.get("gui") == published[-1]["gui"], \
                    f"{node}: the offline of {session} does not carry its last status"
    finally:
        recorder.stop()
        assert bridge.stop() == 0
        double.down()
