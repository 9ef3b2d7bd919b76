"""The bridge as a real process: real mosquitto, real publishers, the SPEC §4 monitor double."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from testkit.bridge_process import BridgeProcess, last_gui, reasons
from testkit.support import (
    Recorder,
    config_dict,
    http_get,
    make_config,
    retained,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from publisher import StatusPublisher
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration


@pytest.fixture
def publishers() -> Iterator[list[StatusPublisher]]:
    made: list[StatusPublisher] = []
    yield made
    for p in made:
        p.stop()


def node_process(tmp_path: Path, broker: DevBroker, node_id: str, *extra: str) -> object:
    config = write_config(tmp_path / f"{node_id}.yaml", config_dict(broker, node_id))
    return start_process(["node", "-c", str(config), *extra],
                         log_path=tmp_path / f"{node_id}.log")


def test_a_new_node_is_online_within_a_second_and_changes_follow(
        broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
        publishers: list[StatusPublisher]) -> None:
    recorder = Recorder(broker.host, broker.port).start()
    try:
        publisher = StatusPublisher(make_config(broker, "node-1"))
        publishers.append(publisher.start())
        first = recorder.wait_for("yl/ar/nodes/node-1/status")
        wait_until(lambda: double.is_online("node-1"), timeout=5, what="online at monitor",
                   interval=0.005)
        assert time.monotonic() - first.at < 1.0
        for value in (True, False, True):
            changed = time.monotonic()
            publisher.update_gui_status(video_running=value)
            wait_until(lambda v=value: last_gui(double, "node-1").get("video_running") is v,
                       timeout=5, interval=0.005, what="flag change at the monitor")
            assert time.monotonic() - changed < 1.0
        body = double.history("node-1")[-1].body
        assert body["status"] == "online"
        assert body["reason"] == "ready"
        assert body["node_id"] == "node-1"
        assert set(body["resources"]) == {"cpu_percent", "memory_mb", "threads"}
    finally:
        recorder.stop()


def test_kill_9_and_clean_stop_show_offline_with_the_reason(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess) -> None:
    node = node_process(tmp_path, broker, "node-2")
    try:
        wait_until(lambda: double.is_online("node-2"), timeout=15, what="node-2 online")
        killed = time.monotonic()
        node.kill()  # type: ignore[attr-defined]
        node.wait()  # type: ignore[attr-defined]
        wait_until(lambda: double.node_view("node-2")["status"] == "offline",  # type: ignore[index]
                   timeout=2, what="node-2 offline", interval=0.005)
        assert time.monotonic() - killed < 2.0
        assert double.history("node-2")[-1].reason == "lost"
    finally:
        stop_process(node)  # type: ignore[arg-type]
    publisher = StatusPublisher(make_config(broker, "node-3")).start()
    wait_until(lambda: double.is_online("node-3"), timeout=10, what="node-3 online")
    publisher.stop()
    wait_until(lambda: not double.is_online("node-3"), timeout=2, what="node-3 offline")
    assert double.history("node-3")[-1].reason == "disconnected"
    assert double.history("node-3")[-1].body["status"] == "offline"


OUTAGE = 6.0


@pytest.mark.parametrize("outage", ["refused", "http-500", "http-404"])
def test_a_monitor_outage_loses_nothing_and_never_regresses(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
        outage: str) -> None:
    steady = StatusPublisher(make_config(broker, "node-1")).start()
    try:
        wait_until(lambda: double.is_online("node-1"), timeout=10, what="node-1 online")
        began = time.monotonic()
        if outage == "refused":
            double.down()
        else:
            double.fail_with(int(outage.removeprefix("http-")))
        for i in range(20):
            steady.update_gui_status(step=i)
        dying = node_process(tmp_path, broker, "node-2")
        wait_until(lambda: retained(broker.host, broker.port, "yl/ar/nodes/node-2/state"),
                   timeout=15, what="node-2 ready")
        dying.kill()  # type: ignore[attr-defined]
        dying.wait()  # type: ignore[attr-defined]
        leaving = StatusPublisher(make_config(broker, "node-3")).start()
        wait_until(lambda: leaving.stats()["report_count"] >= 1, what="node-3 reported")
        leaving.stop()
        steady.update_gui_status(step=99)
        remaining = OUTAGE - (time.monotonic() - began)
        wait_until(lambda: time.monotonic() - began >= OUTAGE, timeout=remaining + 1,
                   what="the outage to last", interval=0.2)
        assert bridge.metric("yl_bridge_monitor_reachable") == 0
        assert not bridge.healthy()
        assert bridge.health()["monitor_problem"]
        if outage == "refused":
            double.start()
        else:
            double.fail_with(None)
        wait_until(lambda: last_gui(double, "node-1").get("step") == 99,
                   timeout=15, what="node-1's newest status")
        wait_until(lambda: reasons(double.history("node-3"))[-1:] == ["disconnected"],
                   timeout=10, what="node-3 disconnected")
        wait_until(lambda: reasons(double.history("node-2"))[-1:] == ["lost"], timeout=10,
                   what="node-2 lost")
        assert reasons(double.history("node-2")) == ["ready", "lost"]
        assert reasons(double.history("node-3")) == ["ready", "disconnected"]
        steps = [h.body.get("gui", {}).get("step", -1) for h in double.history("node-1")]
        assert steps == sorted(steps), f"node-1 regressed: {steps}"
        wait_until(bridge.drained, timeout=10, what="outbox drained")
        assert bridge.metric("yl_bridge_monitor_reachable") == 1
        assert bridge.metric("yl_bridge_retries_total") >= 1
        assert not bridge.rejected()
        wait_until(bridge.healthy, timeout=5, what="healthz ok again")
    finally:
        steady.stop()


def test_a_monitor_that_forgot_its_nodes_still_records_the_next_transition(
        broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess) -> None:
    """A monitor restarted without its table auto-registers a node by its next heartbeat and
    does not record that heartbeat."""
    publisher = StatusPublisher(make_config(broker, "node-1")).start()
    try:
        wait_until(lambda: double.is_online("node-1"), timeout=10, what="node-1 online")
        publisher.update_gui_status(last=True)
        wait_until(lambda: last_gui(double, "node-1").get("last") is True and bridge.drained(),
                   timeout=5, what="everything delivered")
        double.forget()
    finally:
        publisher.stop()
    wait_until(lambda: (double.node_view("node-1") or {}).get("status") == "offline",
               timeout=5, what="node-1 offline at the forgetful monitor")
    assert double.history("node-1")[-1].reason == "disconnected"


def test_a_monitor_that_forgets_behind_a_kept_connection_shows_the_next_stop_within_a_look(
        tmp_path: Path, broker: DevBroker) -> None:
    """The monitor loses its nodes while the bridge's connection stays open (a restart
    behind a keep-alive proxy, a database reset) and has no register route; the node then
    stops. Its ``offline``, on the connection that stayed open, only registers it there: the
    bridge's next look tells it again."""
    double = MonitorDouble(register_route=False).start()
    bridge = BridgeProcess(tmp_path, broker, double, look_interval=2,
                           bridge={"http_concurrency": 1}).start()
    try:
        publisher = StatusPublisher(make_config(broker, "node-1")).start()
        try:
            wait_until(lambda: double.is_online("node-1"), timeout=10, what="node-1 online")
            publisher.update_gui_status(last=True)
            wait_until(lambda: last_gui(double, "node-1").get("last") is True and
                       bridge.drained(), timeout=5, what="everything delivered")
            double.forget(keep_connections=True)
        finally:
            publisher.stop()
        wait_until(lambda: (double.node_view("node-1") or {}).get("status") == "offline",
                   timeout=8, what="node-1 offline at the monitor that forgot it")
        assert double.history("node-1")[-1].reason == "disconnected"
        assert bridge.metric("yl_bridge_retold_total") == 1
    finally:
        assert bridge.stop() == 0
        double.down()


def test_a_node_refused_by_the_monitor_is_dropped_and_others_go_on(
        broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
        publishers: list[StatusPublisher]) -> None:
    good = StatusPublisher(make_config(broker, "node-1"))
    bad = StatusPublisher(make_config(broker, "node-4"))
    publishers.extend([good.start(), bad.start()])
    wait_until(lambda: double.is_online("node-1") and double.is_online("node-4"), timeout=10,
               what="both online")
    double.refuse_node("node-4", 422)
    bad.update_gui_status(face_loaded=True)
    good.update_gui_status(face_loaded=True)
    wait_until(lambda: last_gui(double, "node-1").get("face_loaded") is True,
               what="good node forwarded")
    wait_until(lambda: bridge.metrics().get('yl_bridge_rejected_total{reason="http_422"}', 0)
               >= 1, what="422 counted")
    double.refuse_node("node-4", None)
    bad.update_gui_status(audio_running=True)
    wait_until(lambda: last_gui(double, "node-4").get("audio_running") is True,
               what="node-4 forwarded again")
    assert "http_422" in bridge.log() or "HTTP 422" in bridge.log()


def test_without_a_register_route_a_new_node_is_still_online_at_once(
        tmp_path: Path, broker: DevBroker, publishers: list[StatusPublisher]) -> None:
    double = MonitorDouble(register_route=False).start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    try:
        publisher = StatusPublisher(make_config(broker, "node-5"))
        started = time.monotonic()
        publishers.append(publisher.start())
        wait_until(lambda: double.is_online("node-5"), timeout=10, what="online",
                   interval=0.005)
        assert time.monotonic() - started < 1.5
    finally:
        assert bridge.stop() == 0
        double.down()


def test_profile_v1_posts_to_the_deployed_endpoint(
        tmp_path: Path, broker: DevBroker, publishers: list[StatusPublisher]) -> None:
    double = MonitorDouble(known=("node-6",)).start()
    bridge = BridgeProcess(tmp_path, broker, double, profile="v1").start()
    try:
        publishers.append(StatusPublisher(make_config(broker, "node-6")).start())
        wait_until(lambda: double.history("node-6"), timeout=10, what="v1 heartbeat")
        assert double.request_count("/api/v1/ar/heartbeat?node_id=node-6") >= 1
        assert double.request_count("/api/ar/nodes") == 0
    finally:
        assert bridge.stop() == 0
        double.down()


def test_against_the_deployed_v1_monitor_a_killed_node_gets_no_heartbeat(
        tmp_path: Path, broker: DevBroker) -> None:
    """The deployed monitor (1.0.6) takes any POST as "alive": with the default profile the
    bridge finds it speaks v1 and sends nothing once the node is down."""
    double = MonitorDouble(api="v1", known=("node-6",)).start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    node = start_process(["node", "-c", str(write_config(tmp_path / "n.yaml",
                                                         config_dict(broker, "node-6")))],
                         log_path=tmp_path / "node.log")
    try:
        wait_until(lambda: double.history("node-6"), timeout=15, what="v1 heartbeat")
        assert bridge.health()["monitor_api"] == "v1"
        states = bridge.metric('yl_bridge_received_total{kind="state"}')
        node.kill()
        node.wait()
        killed = time.monotonic()
        wait_until(lambda: bridge.metric('yl_bridge_received_total{kind="state"}') > states,
                   timeout=5, what="the will at the bridge")
        wait_until(lambda: time.monotonic() > killed + 3 and bridge.drained(), timeout=10,
                   what="the will handled")
        with double.lock:
            after = [r for r in double.requests if r[0] == "POST" and r[3] > killed + 0.5]
        assert after == []
        assert "profile=auto" in bridge.log_path.read_text()
        assert "serves the v1 API; using it" in bridge.log_path.read_text()
    finally:
        stop_process(node)
        assert bridge.stop() == 0
        double.down()


def test_a_monitor_url_serving_neither_api_fails_health_loudly(
        tmp_path: Path, broker: DevBroker, publishers: list[StatusPublisher]) -> None:
    double = MonitorDouble().start()
    double.fail_with(404)
    bridge = BridgeProcess(tmp_path, broker, double)
    try:
        bridge.start(wait=False)
        publishers.append(StatusPublisher(make_config(broker, "node-8")).start())
        wait_until(lambda: "serves neither" in bridge.health()["problem"], timeout=15,
                   what="health names the problem")
        assert not bridge.healthy()
        assert bridge.metric('yl_bridge_monitor_api{profile="none"}') == 1
        wait_until(lambda: bridge.metric("yl_bridge_outbox_statuses") == 1, timeout=10,
                   what="the status kept")
        double.fail_with(None)
        wait_until(lambda: double.is_online("node-8"), timeout=15, what="delivered after")
        assert bridge.log_path.read_text().count("serves neither") == 1
    finally:
        assert bridge.stop() == 0
        double.down()


def outbox_status(tmp_path: Path, node_id: str) -> dict[str, object] | None:
    """The GUI flags of the status the bridge's outbox holds for ``node_id``, read from its
    file as a restarted bridge would."""
    with sqlite3.connect(tmp_path / "outbox.sqlite3", timeout=5) as db:
        row = db.execute("SELECT snapshot FROM nodes WHERE node_id = ? AND "
                         "pending_session IS NOT NULL", (node_id,)).fetchone()
    return None if row is None else dict(json.loads(row[0])["gui"])


def test_sigterm_exits_zero_within_five_seconds_and_keeps_the_outbox(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble) -> None:
    bridge = BridgeProcess(tmp_path, broker, double).start()
    publisher = StatusPublisher(make_config(broker, "node-7")).start()
    try:
        wait_until(lambda: double.is_online("node-7"), timeout=10, what="online")
        double.fail_with(503)
        for i in range(10):
            publisher.update_gui_status(step=i)
        wait_until(lambda: bridge.metric("yl_bridge_retries_total") >= 1, what="retrying")
        wait_until(lambda: (outbox_status(tmp_path, "node-7") or {}).get("step") == 9,
                   what="the newest status in the outbox")
        stopping = time.monotonic()
        assert bridge.stop() == 0
        assert time.monotonic() - stopping < 5.0
        assert (outbox_status(tmp_path, "node-7") or {}).get("step") == 9
        publisher.update_gui_status(step=10)
        double.fail_with(None)
        bridge.start()
        wait_until(lambda: last_gui(double, "node-7").get("step") == 10,
                   timeout=10, what="newest status after restart")
    finally:
        publisher.stop()
        bridge.stop()


def test_broker_kill_9_and_restart_under_traffic(
        broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess) -> None:
    publisher = StatusPublisher(make_config(broker, "node-8")).start()
    try:
        wait_until(lambda: double.is_online("node-8"), timeout=10, what="online")
        for i in range(50):
            publisher.update_gui_status(step=i)
        broker.kill()
        broker.start()
        wait_until(lambda: publisher.connected, timeout=15, what="publisher back")
        wait_until(bridge.healthy, timeout=15, what="bridge back")
        publisher.update_gui_status(step=1000)
        wait_until(lambda: last_gui(double, "node-8").get("step") == 1000,
                   timeout=10, what="traffic after the broker restart")
    finally:
        publisher.stop()


def test_bridge_announces_itself_with_a_last_will(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble) -> None:
    bridge = BridgeProcess(tmp_path, broker, double).start()
    topic = "yl/ar/bridges/yl-bridge/state"
    try:
        assert retained(broker.host, broker.port, topic)["state"] == "ready"
        bridge.kill()
        wait_until(lambda: (retained(broker.host, broker.port, topic) or {}).get("state")
                   == "lost", what="bridge lost")
        orphaned = wait_until(lambda: [line for line in bridge.log().splitlines()
                                       if "the bridge is gone" in line],
                              what="its status receiver to see the bridge gone")
        assert all("ERROR" not in line for line in orphaned), orphaned
        bridge.start()
    finally:
        assert bridge.stop() == 0
    assert retained(broker.host, broker.port, topic)["state"] == "disconnected"


def test_metrics_and_healthz(broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
                             publishers: list[StatusPublisher]) -> None:
    publishers.append(StatusPublisher(make_config(broker, "node-9")).start())
    wait_until(lambda: double.is_online("node-9"), timeout=10, what="online")
    m = bridge.metrics()
    assert m['yl_bridge_received_total{kind="state"}'] >= 1
    assert m['yl_bridge_forwarded_total{kind="state"}'] >= 1
    assert m["yl_bridge_broker_connected"] == 1
    assert m["yl_bridge_monitor_reachable"] == 1
    assert m['yl_bridge_delivery_lag_seconds_bucket{le="+Inf"}'] >= 1
    assert "yl_bridge_outbox_statuses" in m
    assert "bridge-secret" not in bridge.log()


def test_unreachable_broker_makes_healthz_fail(broker: DevBroker, double: MonitorDouble,
                                               bridge: BridgeProcess) -> None:
    broker.stop()
    wait_until(lambda: not bridge.healthy(), what="healthz failing")
    broker.start()
    wait_until(bridge.healthy, timeout=15, what="healthz recovering")


def test_a_frozen_bridge_does_not_block_nodes(tmp_path: Path, broker: DevBroker,
                                              double: MonitorDouble) -> None:
    bridge = BridgeProcess(tmp_path, broker, double).start()
    assert bridge.process is not None
    os.kill(bridge.process.pid, signal.SIGSTOP)
    try:
        publisher = StatusPublisher(make_config(broker, "node-10")).start()
        wait_until(lambda: publisher.stats()["report_count"] >= 1, what="publishing anyway")
        publisher.update_gui_status(video_running=True)
    finally:
        os.kill(bridge.process.pid, signal.SIGCONT)
    try:
        wait_until(lambda: last_gui(double, "node-10").get("video_running") is True,
                   timeout=15, what="delivered after the bridge thawed")
    finally:
        publisher.stop()
        bridge.stop()


def receiver_of(bridge: BridgeProcess) -> psutil.Process:
    assert bridge.process is not None
    children = psutil.Process(bridge.process.pid).children()
    assert len(children) == 1
    assert "bridge.status_receiver" in " ".join(children[0].cmdline())
    return children[0]


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_status_receiver_is_restarted_and_ends_with_the_bridge(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble) -> None:
    bridge = BridgeProcess(tmp_path, broker, double).start()
    publisher = StatusPublisher(make_config(broker, "node-11")).start()
    try:
        wait_until(lambda: double.is_online("node-11"), timeout=10, what="online")
        first = receiver_of(bridge)
        first.kill()
        wait_until(lambda: gone(first), what="receiver killed")
        publisher.update_gui_status(step=1)
        wait_until(lambda: last_gui(double, "node-11").get("step") == 1, timeout=15,
                   what="statuses through a new receiver")
        second = receiver_of(bridge)
        assert second.pid != first.pid
        assert "starting it again" in bridge.log()
        bridge.kill()
        wait_until(lambda: gone(second), timeout=5, what="receiver gone with the bridge")
        bridge.start()
        publisher.update_gui_status(step=2)
        wait_until(lambda: last_gui(double, "node-11").get("step") == 2, timeout=15,
                   what="statuses after the bridge restarted")
    finally:
        publisher.stop()
        assert bridge.stop() == 0


def test_a_hung_status_receiver_is_reported_and_replaced(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble) -> None:
    bridge = BridgeProcess(tmp_path, broker, double).start()
    publisher = StatusPublisher(make_config(broker, "node-12")).start()
    try:
        wait_until(lambda: double.is_online("node-12"), timeout=10, what="online")
        frozen = receiver_of(bridge)
        frozen.suspend()
        publisher.update_gui_status(step=1)
        wait_until(lambda: not bridge.healthy(), timeout=10, what="healthz reports the hang")
        assert "status receiver" in bridge.health()["problem"]
        wait_until(lambda: last_gui(double, "node-12").get("step") == 1, timeout=20,
                   what="statuses through a new receiver")
        assert receiver_of(bridge).pid != frozen.pid
        assert gone(frozen)
        assert "not answered" in bridge.log()
        wait_until(bridge.healthy, timeout=10, what="healthy again")
    finally:
        publisher.stop()
        bridge.stop()


def test_a_takeover_shows_at_most_one_offline_then_online_in_order(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess) -> None:
    """A second process with the same node id replaces the first: the broker publishes the
    first one's will a moment before the second's ``ready`` (an honest blip), and the first
    one's single reconnect, which drops the second for a moment, shows nothing."""
    first = node_process(tmp_path, broker, "node-5", "--toggle-every", "0.2")
    second = None
    recorder = Recorder(broker.host, broker.port,
                        topics=("yl/ar/nodes/node-5/state",)).start()
    try:
        wait_until(lambda: double.is_online("node-5"), timeout=15, what="first online")
        before = len(double.history("node-5"))
        began = time.monotonic()
        config = write_config(tmp_path / "node-5-second.yaml", config_dict(broker, "node-5"))
        second = start_process(["node", "-c", str(config)], log_path=tmp_path / "second.log")
        assert first.wait(timeout=15) == 3  # type: ignore[attr-defined]
        session = wait_until(lambda: (retained(broker.host, broker.port,
                                               "yl/ar/nodes/node-5/state") or {})
                             .get("session"), timeout=5, what="second's state")
        wait_until(bridge.drained, timeout=5, what="everything delivered")
        after = [(h.reason, h.status) for h in double.history("node-5")[before:]]
        changes = [s for i, (_, s) in enumerate(after) if i == 0 or after[i - 1][1] != s]
        # What the broker published meanwhile, to tell a broken rule from a process that
        # was away longer than TAKEOVER_HOLD on a starved machine.
        said = [(round(m.at - began, 3), m.json()["session"][:8], m.json()["state"])
                for m in recorder.on("yl/ar/nodes/node-5/state") if not m.retain]
        assert changes.count("offline") <= 1, (after, said)
        assert changes[-1] == "online", after
        assert after.count(("lost", "offline")) <= 1, after
        assert double.is_online("node-5")
        assert retained(broker.host, broker.port, "yl/ar/nodes/node-5/state")["session"] \
            == session
    finally:
        recorder.stop()
        stop_process(first)  # type: ignore[arg-type]
        if second is not None:
            stop_process(second)


def test_thousands_of_scrapes_leave_open_files_and_memory_flat(
        bridge: BridgeProcess) -> None:
    assert bridge.process is not None
    process = psutil.Process(bridge.process.pid)
    base = f"http://127.0.0.1:{bridge.metrics_port}"
    for _ in range(100):  # warm up: lazily built things are built
        http_get(base + "/metrics")
        http_get(base + "/healthz")
    files, rss = process.num_fds(), process.memory_info().rss
    for _ in range(1500):
        assert http_get(base + "/metrics")[0] == 200
        assert http_get(base + "/healthz")[0] == 200
    assert process.num_fds() <= files + 2, (files, process.num_fds())
    grown = (process.memory_info().rss - rss) / 2**20
    assert grown < 4, f"RSS grew {grown:.1f} MiB over 3,000 scrapes"
    text = str(http_get(base + "/metrics")[1])
    assert "# HELP yl_bridge_forwarded_total" in text
    assert "# HELP yl_bridge_outbox_transitions" in text


def test_the_status_receiver_logs_under_its_module_name(
        broker: DevBroker, bridge: BridgeProcess) -> None:
    wait_until(bridge.healthy, timeout=15, what="bridge healthy")
    wait_until(lambda: "bridge subscribed to every node" in bridge.log(), timeout=10,
               what="the status receiver's first line")
    line = next(ln for ln in bridge.log().splitlines() if "bridge subscribed to every node" in ln)
    assert " bridge.status_receiver " in line
    assert "__main__" not in bridge.log()


@pytest.mark.parametrize("register_route", [False, True], ids=["no-register-route",
                                                                "register-route"])
def test_a_monitor_outage_while_a_node_starts_changes_and_dies_shows_only_what_happened(
        tmp_path: Path, broker: DevBroker, register_route: bool) -> None:
    """A 10 s monitor outage (500) while a node starts, changes its GUI flags and is killed:
    afterwards the monitor records exactly ``online, (changes), offline`` for it, in order,
    each with its own time; nothing made up before the first ``online``, nothing ``online``
    after the ``offline``."""
    double = MonitorDouble(register_route=register_route).start()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    node = None
    try:
        wait_until(bridge.healthy, timeout=10, what="bridge healthy")
        double.fail_with(500)
        outage = time.monotonic()
        node = node_process(tmp_path, broker, "node-8", "--toggle-every", "0.3")
        wait_until(lambda: (retained(broker.host, broker.port, "yl/ar/nodes/node-8/status")
                            or {}).get("seq", 0) >= 4, timeout=15, what="flags changed")
        node.kill()  # type: ignore[attr-defined]
        node.wait()  # type: ignore[attr-defined]
        wait_until(lambda: (retained(broker.host, broker.port, "yl/ar/nodes/node-8/state")
                            or {}).get("state") == "lost", timeout=5, what="the will")
        assert double.history("node-8") == []
        wait_until(lambda: time.monotonic() - outage >= 10.0, timeout=12,
                   what="the 10 s outage to end", interval=0.05)
        double.fail_with(None)
        wait_until(bridge.drained, timeout=15, what="everything delivered")
        history = double.history("node-8")
        words = [h.status for h in history]
        assert words, "nothing recorded"
        assert words[0] == "online", words
        assert words[-1] == "offline", words
        assert "online" not in words[words.index("offline"):], words
        assert history[-1].reason == "lost"
        stamps = [h.body["timestamp"] for h in history]
        assert stamps == sorted(stamps), stamps
        heartbeats = double.request_count("/api/ar/nodes/node-8/heartbeat")
        # One request per recorded item; without a register route one more: a node's first
        # heartbeat registers it and is not recorded (it was the first item itself).
        assert heartbeats == len(history) + (0 if register_route else 1)
    finally:
        if node is not None:
            stop_process(node)  # type: ignore[arg-type]
        assert bridge.stop() == 0
        double.down()
