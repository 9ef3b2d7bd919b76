"""Active/standby bridges on one PostgreSQL outbox: real PostgreSQL (started by the test as an
unprivileged user), real mosquitto, real bridge processes, the monitor double.

Whether two instances ever forwarded at once is read off the double's request log: each
request names its instance (User-Agent), and every change of sender in the log must be a
takeover the lease recorded (its epoch), so two senders at once, which would alternate,
cannot pass."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.bridge_process import BridgeProcess, reasons
from testkit.broker import DefaultMosquitto
from testkit.postgres import PostgresServer
from testkit.support import (
    BRIDGE_PASSWORD,
    BRIDGE_USER,
    NODE_PASSWORD,
    Recorder,
    config_dict,
    make_config,
    start_process,
    stop_process,
    wait_until,
    write_config,
)
from testkit.tcp_proxy import PartitionProxy

from bridge.status_receiver import StatusReceiver
from yl_core.link import options_from_config
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

FLOOD_NODES = [f"flood-{i:04d}" for i in range(1, 101)]
FLAP_NODES = [f"flap-{i:04d}" for i in range(1, 11)]
TAKEOVER_LIMIT = 5.0


@pytest.fixture
def monitor() -> Iterator[MonitorDouble]:
    double = MonitorDouble().start()
    yield double
    double.down()


def start_in_turn(a: BridgeProcess, b: BridgeProcess) -> None:
    """``a`` first, until it is active and healthy; then ``b``, until it stands by."""
    a.start(wait=False)
    wait_until(lambda: a.role() == "active" and a.healthy(), timeout=15,
               what="a active and healthy")
    b.start(wait=False)
    wait_until(lambda: b.role() == "standby" and b.healthy(), timeout=15,
               what="b standing by")


@pytest.fixture
def pair(tmp_path: Path, broker: DevBroker, monitor: MonitorDouble,
         postgres: PostgresServer) -> Iterator[tuple[BridgeProcess, BridgeProcess]]:
    """Two bridge instances, ``a`` started first (so active), sharing one outbox."""
    a = BridgeProcess(tmp_path, broker, monitor, outbox_url=postgres.url, instance="a")
    b = BridgeProcess(tmp_path, broker, monitor, outbox_url=postgres.url, instance="b")
    try:
        start_in_turn(a, b)
        yield a, b
    finally:
        for bridge in (a, b):
            if bridge.process is not None:
                os.kill(bridge.process.pid, signal.SIGCONT)
            bridge.stop()


def senders(double: MonitorDouble, after: float = 0.0) -> list[str]:
    """The instance of every request, in the order the monitor handled them."""
    with double.lock:
        agents = [r[4] or "" for r in double.requests if r[3] >= after]
    return [a.rsplit("(instance ", 1)[-1].rstrip(")") for a in agents]


def runs(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if not out or out[-1] != name:
            out.append(name)
    return out


def epoch(postgres: PostgresServer) -> int:
    return int(postgres.query("SELECT epoch FROM bridge_lease WHERE id = 1")[0][0])


def assert_one_sender_at_a_time(double: MonitorDouble, postgres: PostgresServer) -> None:
    order = runs(senders(double))
    assert len(order) <= epoch(postgres), \
        f"senders changed more often than the lease did: {order[:20]}"


def start_flood(tmp_path: Path, broker: DevBroker, count: int, toggle_every: float
                ) -> tuple[Any, list[str]]:
    """``count`` nodes in one process, flipping a GUI flag every ``toggle_every`` s."""
    nodes = FLOOD_NODES[:count]
    broker.add_users(dict.fromkeys(nodes, NODE_PASSWORD))
    config = write_config(tmp_path / "nodes.yaml", config_dict(broker, "flood"))
    flood = start_process(["node", "-c", str(config), "--node-id", "flood", "--count",
                           str(count), "--toggle-every", str(toggle_every)],
                          log_path=tmp_path / "flood.log")
    return flood, nodes


def active_and_healthy(a: BridgeProcess, b: BridgeProcess) -> bool:
    """One of the two is active and healthy (its broker session up), the other stands by."""
    roles = {a.role(): a, b.role(): b}
    return set(roles) == {"active", "standby"} and roles["active"].healthy()


def stop_and_check_delivered(flood: Any, recorder: Recorder, monitor: MonitorDouble,
                             nodes: list[str]) -> None:
    """Stop the flood: every node's ``ready`` and ``disconnected`` reach the monitor, in
    order, with the node's newest status, and nothing older after anything newer."""
    stopped = time.monotonic()
    assert stop_process(flood) == 0
    for node in nodes:
        recorder.wait_for(f"yl/ar/nodes/{node}/state",
                          lambda d: d["state"] == "disconnected", after=stopped)
    def newest_delivered(node: str) -> bool:
        history = monitor.history(node)
        newest = recorder.last(f"yl/ar/nodes/{node}/status")
        return reasons(history)[-1:] == ["disconnected"] and newest is not None and \
            history[-1].body.get("gui") == newest.json()["gui"]

    wait_until(lambda: all(newest_delivered(n) for n in nodes), timeout=60,
               what="every node's disconnected and newest status delivered")
    for node in nodes:
        history = monitor.history(node)
        assert reasons(history) == ["ready", "disconnected"], node
        uptimes = [h.body["uptime"] for h in history if "uptime" in h.body]
        assert uptimes == sorted(uptimes), f"{node} went back in time"


def test_kill_9_of_the_active_bridge_in_a_flood_hands_over_within_seconds_losing_nothing(
        tmp_path: Path, broker: DevBroker, monitor: MonitorDouble, postgres: PostgresServer,
        pair: tuple[BridgeProcess, BridgeProcess]) -> None:
    a, b = pair
    broker.add_users(dict.fromkeys(FLOOD_NODES + FLAP_NODES, NODE_PASSWORD))
    recorder = Recorder(broker.host, broker.port).start()
    config = write_config(tmp_path / "nodes.yaml", config_dict(broker, "flood"))
    flood = start_process(["node", "-c", str(config), "--node-id", "flood", "--count", "100",
                           "--toggle-every", "0.01"], log_path=tmp_path / "flood.log")
    flap = None
    takeovers: list[float] = []
    try:
        def all_states(word: str, after: float) -> bool:
            return all(any(m.at >= after and m.payload and m.json()["state"] == word
                           for m in recorder.on(f"yl/ar/nodes/{n}/state")) for n in FLAP_NODES)

        active, standby = a, b
        for cycle in range(3):
            began = time.monotonic()
            flap = start_process(["node", "-c", str(config), "--node-id", "flap", "--count",
                                  "10"], log_path=tmp_path / f"flap-{cycle}.log")
            wait_until(lambda b=began: all_states("ready", b), timeout=30, what="flap ready")
            wait_until(lambda c=cycle: sum(1 for m in recorder.messages
                                           if m.topic.endswith("/status")) > 1000 * (c + 1),
                       timeout=60, what="a flood of statuses")
            killed = time.monotonic()
            active.kill()
            flap.kill()
            flap.wait()
            wait_until(lambda s=standby: s.role() == "active", timeout=TAKEOVER_LIMIT,
                       what="the standby to take over", interval=0.05)
            takeovers.append(time.monotonic() - killed)
            wait_until(lambda k=killed: all_states("lost", k), timeout=10, what="flap lost")
            active.start(wait=False)  # back as the standby
            wait_until(lambda s=active: s.role() == "standby", timeout=15,
                       what="the killed instance back as a standby")
            active, standby = standby, active
        stop_and_check_delivered(flood, recorder, monitor, FLOOD_NODES)
        wait_until(active.drained, timeout=30, what="outbox drained")
        for node in FLAP_NODES:
            assert reasons(monitor.history(node)) == ["ready", "lost"] * 3, node
        assert max(takeovers) < TAKEOVER_LIMIT, takeovers
        assert runs(senders(monitor)) == ["a", "b", "a", "b"]
        assert_one_sender_at_a_time(monitor, postgres)
    finally:
        if flap is not None:
            stop_process(flap)
        stop_process(flood)
        recorder.stop()


def test_a_cut_database_connection_or_a_database_restart_never_makes_two_senders(
        tmp_path: Path, broker: DevBroker, monitor: MonitorDouble, postgres: PostgresServer,
        pair: tuple[BridgeProcess, BridgeProcess]) -> None:
    a, b = pair
    recorder = Recorder(broker.host, broker.port).start()
    flood, nodes = start_flood(tmp_path, broker, 50, 0.01)
    try:
        wait_until(lambda: all(monitor.history(n) for n in nodes), timeout=30,
                   what="every node forwarded")
        for _ in range(3):
            assert postgres.terminate("yl-bridge a%") + postgres.terminate("yl-bridge b%") > 0
            wait_until(lambda: active_and_healthy(a, b), timeout=15, what="one active again")
            seen = monitor.request_total
            wait_until(lambda s=seen: monitor.request_total > s + 200, timeout=15,
                       what="forwarding again")
        postgres.restart()
        wait_until(lambda: active_and_healthy(a, b), timeout=20,
                   what="one active after restart")
        stop_and_check_delivered(flood, recorder, monitor, nodes)
        assert_one_sender_at_a_time(monitor, postgres)
    finally:
        stop_process(flood)
        recorder.stop()


def test_an_active_bridge_stopped_for_30_s_comes_back_as_a_standby_sending_nothing(
        tmp_path: Path, broker: DevBroker, monitor: MonitorDouble, postgres: PostgresServer,
        pair: tuple[BridgeProcess, BridgeProcess]) -> None:
    a, b = pair
    flood, _ = start_flood(tmp_path, broker, 20, 0.05)
    try:
        wait_until(lambda: "a" in senders(monitor), timeout=30, what="a forwarding")
        assert a.process is not None
        os.kill(a.process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_until(lambda: b.role() == "active", timeout=TAKEOVER_LIMIT, what="b takes over")
        wait_until(lambda: "b" in senders(monitor, stopped), timeout=10, what="b forwarding")
        wait_until(lambda: time.monotonic() - stopped >= 30, timeout=31, interval=0.5,
                   what="30 s")
        resumed = time.monotonic()
        os.kill(a.process.pid, signal.SIGCONT)
        wait_until(lambda: a.role() == "standby", timeout=10, what="a stands by")
        seen = monitor.request_total
        wait_until(lambda: monitor.request_total > seen + 100, timeout=15,
                   what="b still forwarding")
        assert "a" not in senders(monitor, stopped + 0.2), "the stopped instance sent after"
        assert b.role() == "active"
        assert b.healthy()
        assert "session taken over" not in b.log()
        assert resumed - stopped >= 30
    finally:
        stop_process(flood)


def test_each_instance_reports_its_role_in_healthz_metrics_and_retained_state(
        broker: DevBroker, postgres: PostgresServer,
        pair: tuple[BridgeProcess, BridgeProcess]) -> None:
    a, b = pair
    recorder = Recorder(broker.host, broker.port, topics=("yl/ar/bridges/#",)).start()

    def retained(topic: str) -> dict[str, object]:
        found = recorder.last(f"yl/ar/bridges/yl-bridge/{topic}")
        return found.json() if found is not None and found.payload else {}

    try:
        assert (a.metric("yl_bridge_active"), b.metric("yl_bridge_active")) == (1.0, 0.0)
        assert a.health()["active_instance"] == b.health()["active_instance"] == "a"
        wait_until(lambda: retained("instances/b").get("role") == "standby" and
                   retained("instances/a").get("role") == "active", timeout=10,
                   what="each instance's retained role")
        state = retained("state")
        assert (state.get("state"), state.get("role"), state.get("instance")) == \
            ("ready", "active", "a")

        a.kill()
        wait_until(lambda: b.role() == "active" and b.healthy(), timeout=TAKEOVER_LIMIT + 2,
                   what="b takes over")
        wait_until(lambda: retained("state").get("instance") == "b" and
                   retained("instances/a").get("role") == "lost" and
                   retained("instances/b").get("role") == "active", timeout=10,
                   what="the retained state after the takeover")
        assert b.metric("yl_bridge_active") == 1.0
        a.start(wait=False)
        wait_until(lambda: retained("instances/a").get("role") == "standby", timeout=15,
                   what="a back as a standby")
        assert a.metric("yl_bridge_active") == 0.0
        assert a.healthy()
    finally:
        recorder.stop()


def test_a_partition_from_the_database_fences_the_active_bridge_before_a_standby_starts(
        tmp_path: Path, broker: DevBroker, monitor: MonitorDouble,
        postgres: PostgresServer) -> None:
    """Every byte between ``a`` and PostgreSQL is held for 8 s: its queries hang rather than
    fail. ``b`` takes over; ``a`` stops sending on its own deadline, before ``b`` starts, and
    stands by once the partition heals."""
    proxy = PartitionProxy(("127.0.0.1", postgres.port)).start()
    through = postgres.url.replace(f":{postgres.port}/", f":{proxy.port}/")
    a = BridgeProcess(tmp_path, broker, monitor, outbox_url=through, instance="a")
    b = BridgeProcess(tmp_path, broker, monitor, outbox_url=postgres.url, instance="b")
    recorder = Recorder(broker.host, broker.port).start()
    flood = None
    try:
        start_in_turn(a, b)
        flood, nodes = start_flood(tmp_path, broker, 30, 0.02)
        wait_until(lambda: all(monitor.history(n) for n in nodes), timeout=30,
                   what="every node forwarded by a")
        cut = time.monotonic()
        proxy.partition()
        wait_until(lambda: b.role() == "active", timeout=TAKEOVER_LIMIT + 2, what="b active")
        wait_until(lambda: "b" in senders(monitor, cut), timeout=10, what="b forwarding")
        first_b = min(r[3] for r in list(monitor.requests)
                      if r[3] > cut and (r[4] or "").endswith("(instance b)"))
        last_a = max(r[3] for r in list(monitor.requests)
                     if (r[4] or "").endswith("(instance a)"))
        assert last_a < first_b, "a sent after b had started"
        wait_until(lambda: time.monotonic() - cut > 8, timeout=9, interval=0.2,
                   what="a long partition")
        proxy.heal()
        wait_until(lambda: a.role() == "standby", timeout=15, what="a stands by after it")
        assert "a" not in senders(monitor, first_b)
        stop_and_check_delivered(flood, recorder, monitor, nodes)
        assert runs(senders(monitor)) == ["a", "b"]
    finally:
        if flood is not None:
            stop_process(flood)
        recorder.stop()
        for bridge in (a, b):
            bridge.stop()
        proxy.stop()


def test_a_status_receiver_connects_only_before_its_bridges_lease_deadline(
        broker: DevBroker) -> None:
    """The child process holding the bridge's session is told the lease's deadline, not a
    mere "you may": a child told "you may" a moment before its bridge lost the lease could
    otherwise connect after the new active bridge's child and take its session."""
    config = make_config(broker, "yl-bridge")
    options = options_from_config(config.mqtt, BRIDGE_USER,
                                  username=BRIDGE_USER, password=BRIDGE_PASSWORD,
                                  clean_start=False, session_expiry=60, manual_ack=True)
    deadline = [time.monotonic() + 60]
    receiver = StatusReceiver(options, config.mqtt.topics, 1, lambda batch: None,
                              config.logging, lambda: deadline[0]).start()
    try:
        wait_until(lambda: receiver.connected, timeout=15, what="connected before the deadline")
        deadline[0] = time.monotonic() + 1.0  # the lease is not renewed any more
        wait_until(lambda: time.monotonic() > deadline[0], timeout=2, interval=0.05,
                   what="the deadline to pass")
        receiver.reconnect("the lease ran out")
        wait_until(lambda: not receiver.connected, timeout=5, what="disconnected")
        held = time.monotonic() + 1.5
        while time.monotonic() < held:
            assert not receiver.connected, "connected after its deadline"
            time.sleep(0.05)  # watching for a connection that must not come
        deadline[0] = time.monotonic() + 60
        wait_until(lambda: receiver.connected, timeout=15, what="connected once renewed")
    finally:
        receiver.stop(3.0)


def states_said(recorder: Recorder, node: str) -> list[str]:
    """What the node's sessions said at the broker, as the monitor should show it: ``online``
    for ``ready``, ``offline`` for ``lost`` and ``disconnected``, repeats folded."""
    words = ["online" if m.json()["state"] == "ready" else "offline"
             for m in recorder.on(f"yl/ar/nodes/{node}/state") if m.payload and not m.retain]
    return [w for i, w in enumerate(words) if i == 0 or words[i - 1] != w]


def shown(monitor: MonitorDouble, node: str) -> list[str]:
    words = [h.status or "" for h in monitor.history(node)]
    return [w for i, w in enumerate(words) if i == 0 or words[i - 1] != w]


def test_active_standby_on_a_default_mosquitto_tells_the_monitor_only_what_happened(
        tmp_path: Path, monitor: MonitorDouble, postgres: PostgresServer) -> None:
    """Twenty nodes (report intervals 1 s and 5 s) and four that are killed and started
    again every few seconds, on mosquitto with its defaults; meanwhile the active bridge is
    killed four times and frozen once, and PostgreSQL restarts. For every node the monitor's
    online/offline sequence is the real one; a node that never stopped is never offline; no
    snapshot older than one delivered; about one request per delivered item."""
    broker = DefaultMosquitto(tmp_path / "mosquitto").start()
    recorder = Recorder(broker.host, broker.port, topics=("yl/ar/nodes/+/state",)).start()
    a = BridgeProcess(tmp_path, broker, monitor, outbox_url=postgres.url, instance="a")
    b = BridgeProcess(tmp_path, broker, monitor, outbox_url=postgres.url, instance="b")
    steady: list[Any] = []
    flaps: dict[str, Any] = {}
    flap_nodes = [f"flap-{i}" for i in range(1, 5)]
    steady_nodes = [f"{base}-{i:04d}" for base in ("fast", "slow") for i in range(1, 11)]
    try:
        start_in_turn(a, b)
        for base, interval in (("fast", 1), ("slow", 5)):
            config = write_config(tmp_path / f"{base}.yaml", config_dict(
                broker, base, monitor={"report_interval": interval}))
            steady.append(start_process(["node", "-c", str(config), "--count", "10"],
                                        log_path=tmp_path / f"{base}.log"))
        flap_configs = {node: write_config(tmp_path / f"{node}.yaml", config_dict(
            broker, node, monitor={"report_interval": 1})) for node in flap_nodes}

        def start_flap(node: str) -> None:
            started = time.monotonic()
            flaps[node] = start_process(["node", "-c", str(flap_configs[node])],
                                        log_path=tmp_path / f"{node}.log")
            recorder.wait_for(f"yl/ar/nodes/{node}/state", lambda d: d["state"] == "ready",
                              timeout=15, after=started)

        for node in flap_nodes:
            start_flap(node)
        wait_until(lambda: all(monitor.is_online(n) for n in steady_nodes + flap_nodes),
                   timeout=30, what="every node online")

        def flap_all() -> None:
            killed = time.monotonic()
            for node in flap_nodes:
                flaps[node].kill()
                flaps[node].wait()
            for node in flap_nodes:
                recorder.wait_for(f"yl/ar/nodes/{node}/state",
                                  lambda d: d["state"] == "lost", after=killed)
                start_flap(node)

        def handed_over() -> None:
            wait_until(lambda: active_and_healthy(a, b), timeout=30,
                       what="one instance active and healthy, the other standing by")

        def active() -> BridgeProcess:
            return a if a.role() == "active" else b

        for fault in ("kill", "kill", "database", "kill", "freeze", "kill"):
            flap_all()
            victim = active()
            assert victim.process is not None
            if fault == "kill":
                victim.kill()
                wait_until(lambda v=victim: (b if v is a else a).role() == "active",
                           timeout=15, what="the standby to take over")
                victim.start(wait=False)
            elif fault == "freeze":
                os.kill(victim.process.pid, signal.SIGSTOP)
                wait_until(lambda v=victim: (b if v is a else a).role() == "active",
                           timeout=15, what="the standby to take over from a frozen one")
                os.kill(victim.process.pid, signal.SIGCONT)
            else:
                postgres.restart()
            handed_over()
            flap_all()
            wait_until(lambda: active().drained(), timeout=30, what="delivered")
        for process in [*flaps.values(), *steady]:
            assert stop_process(process) == 0
        wait_until(lambda: all(states_said(recorder, n)[-1:] == ["offline"]
                               for n in steady_nodes + flap_nodes),
                   timeout=15, what="every node's disconnected at the broker")
        wait_until(lambda: active().drained() and all(
            shown(monitor, n)[-1:] == ["offline"] for n in steady_nodes + flap_nodes),
                   timeout=30, what="every node's disconnected at the monitor")
        for node in steady_nodes + flap_nodes:
            assert shown(monitor, node) == states_said(recorder, node), \
                (node, [(h.status, h.reason, h.body["timestamp"]) for h in monitor.history(node)])
        for node in steady_nodes:
            assert shown(monitor, node) == ["online", "offline"], node
            uptimes = [h.body["uptime"] for h in monitor.history(node) if "uptime" in h.body]
            assert uptimes == sorted(uptimes), (node, "an older snapshot after a newer one")
        nodes = steady_nodes + flap_nodes
        delivered = sum(len(monitor.history(n)) for n in nodes)
        with monitor.lock:
            requests = sum(1 for r in monitor.requests
                           if any(f"/api/ar/nodes/{n}" in r[1] for n in nodes) or
                           r[1].endswith("/api/ar/nodes/register"))
        introductions = len(nodes)
        assert (requests - introductions) / delivered <= 1.05, (requests, delivered)
        assert_one_sender_at_a_time(monitor, postgres)
    finally:
        for process in [*flaps.values(), *steady]:
            stop_process(process)
        recorder.stop()
        for bridge in (a, b):
            if bridge.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(bridge.process.pid, signal.SIGCONT)
            bridge.stop()
        broker.stop()
