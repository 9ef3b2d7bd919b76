"""A node's story reaches the monitor in the order the broker received it, with GUIs that
change a flag and crash a second or so after they start: real mosquitto, real bridges (one,
or an active/standby pair on PostgreSQL) and real node processes, each ``kill -9``-ed."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess
from testkit.postgres import PostgresServer
from testkit.support import Recorder, config_dict, start_process, wait_until, write_config

from yl_core import timestamps
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import Heartbeat, MonitorDouble

pytestmark = pytest.mark.integration

NODES = [f"node-{i}" for i in range(1, 5)]
LIVES = 3
REQUESTS_PER_ITEM = 1.05


def test_churning_nodes_tell_each_life_in_order_and_end_it_with_its_last_status(
        tmp_path: Path, broker: DevBroker) -> None:
    """One bridge, killed -9 during the second lives and started after their crashes (its
    sessions replay what they kept)."""
    double = MonitorDouble().start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    try:
        _churn(tmp_path, broker, double, bridge.kill, bridge.start, bridge.drained)
    finally:
        assert bridge.stop() == 0
        double.down()


def test_churning_nodes_on_an_active_standby_pair_across_a_takeover(
        tmp_path: Path, broker: DevBroker, postgres: PostgresServer) -> None:
    """An active/standby pair: the active instance is killed -9 during the second lives,
    the standby takes over while the nodes crash, and the killed one comes back as the
    standby. The nodes report every 2 s: a status expires at the broker three intervals
    after it was sent, and with 1 s, those published while no instance is active (the 3 s
    of the lease) expire before the standby can read them."""
    double = MonitorDouble().start()
    pair = [BridgeProcess(tmp_path, broker, double, outbox_url=postgres.url, instance=name)
            for name in ("a", "b")]
    for bridge in pair:
        bridge.start(wait=False)
        wait_until(lambda b=bridge: b.role() in ("active", "standby") and b.healthy(),
                   timeout=15, what=f"{bridge.instance} up")
    killed: list[BridgeProcess] = []

    def active() -> BridgeProcess:
        return wait_until(lambda: next((b for b in pair if b.role() == "active"), None),
                          timeout=15, what="an active instance")

    def kill_active() -> None:
        bridge = active()
        bridge.kill()
        killed.append(bridge)

    def restart_killed() -> None:
        bridge = killed.pop()
        bridge.start(wait=False)
        wait_until(lambda: bridge.role() == "standby", timeout=15, what="back as standby")

    try:
        _churn(tmp_path, broker, double, kill_active, restart_killed,
               lambda: active().drained(), report_interval=2)
    finally:
        for bridge in pair:
            bridge.stop()
        double.down()


def _story(history: list[Heartbeat]) -> str:
    return "; ".join(f"{h.reason} {h.body.get('timestamp')} uptime {h.body.get('uptime')}"
                     for h in history)


def _churn(tmp_path: Path, broker: DevBroker, double: MonitorDouble,
           disrupt: Callable[[], object], restore: Callable[[], object],
           drained: Callable[[], bool], report_interval: float = 1) -> None:
    """Four nodes at ``report_interval: 1``, each flipping a flag every 0.2 s and killed
    0.2-1 s apart 1-3 s after it started, three lives each; ``disrupt`` the bridge once the
    second lives are ready, ``restore`` it after their crashes. At the monitor each node's
    requests go forward in time (across the bridge's restart or takeover too), nothing of a
    life comes after its ``offline``, that ``offline`` carries the last status the life
    published, and no item is sent more than ``REQUESTS_PER_ITEM`` times on average."""
    recorder = Recorder(broker.host, broker.port).start()
    rng = random.Random(27)
    try:
        for life in range(LIVES):
            began = time.monotonic()
            nodes = {}
            for node in NODES:
                config = write_config(tmp_path / f"{node}.yaml", config_dict(
                    broker, node, monitor={"report_interval": report_interval}))
                nodes[node] = start_process(["node", "-c", str(config), "--toggle-every",
                                             "0.2"], log_path=tmp_path / f"{node}-{life}.log")
            for node in NODES:
                recorder.wait_for(f"yl/ar/nodes/{node}/state",
                                  lambda d: d["state"] == "ready", after=began, timeout=15)
            if life == 1:
                disrupt()  # its two sessions catch up apart when it is back
            for _node, process in sorted(nodes.items(), key=lambda _: rng.random()):
                time.sleep(rng.uniform(0.2, 1.0))  # the life's length, not a wait for anything
                process.kill()
                process.wait()
            for node in NODES:
                recorder.wait_for(f"yl/ar/nodes/{node}/state",
                                  lambda d: d["state"] == "lost", after=began, timeout=10)
            if life == 1:
                restore()
        wait_until(lambda: all([h.reason for h in double.history(n)].count("lost") == LIVES
                               for n in NODES), timeout=20, what="every life's end delivered")
        wait_until(drained, timeout=10, what="outbox drained")
        for node in NODES:
            history = double.history(node)
            for before, after in itertools.pairwise(history):
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
                    f"{node}: the offline of {session} does not carry its last status " \
                    f"({published[-1]['seq']}): {_story(history)}"
        items = {(h.node_id, json.dumps(h.body, sort_keys=True))
                 for n in NODES for h in double.history(n)}
        requests = double.request_count("/heartbeat")
        assert requests <= REQUESTS_PER_ITEM * len(items), \
            f"{requests} heartbeat requests for {len(items)} items"
    finally:
        recorder.stop()
