"""What the monitor and /health say under faults of the world around the node: a broker
restored from an older save, and nodes whose clocks are years off. Real mosquitto, real
bridge, status app and node processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from testkit.bridge_process import BridgeProcess
from testkit.broker import broker_users, running_broker
from testkit.support import (
    NODE_PASSWORD,
    config_dict,
    http_get,
    retained,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_core import protocol, timestamps
from yl_core.link import new_properties
from yl_core.protocol import ReporterCounters, Resources, StatusMessage
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

STATE = "yl/ar/nodes/node-1/state"
YEARS_4 = "1460d"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DevBroker]:
    """The project's broker, saving its database only when told to (SIGUSR1), so that a
    kill -9 restores exactly the save the test chose."""
    yield from running_broker(tmp_path / "broker", broker_users(),
                              settings={"autosave_interval": "3600"})


def node(tmp_path: Path, broker: DevBroker, name: str, clock: str | None = None,
         interval: float = 30) -> subprocess.Popen[bytes]:
    config = write_config(tmp_path / f"{name}.yaml", config_dict(
        broker, "node-1", monitor={"report_interval": interval}))
    args = ["node", "-c", str(config), "--toggle-every", "0.5"]
    if clock is None:
        return start_process(args, log_path=tmp_path / f"{name}.log")
    library = next(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"), None)
    if library is None:
        pytest.fail("libfaketime is not installed (run.sh installs Debian's faketime)")
    return start_process(args, log_path=tmp_path / f"{name}.log",
                         env={"LD_PRELOAD": str(library), "FAKETIME": clock,
                              "FAKETIME_DONT_RESET": "1", "DONT_FAKE_MONOTONIC": "1"})


def save_now(broker: DevBroker) -> None:
    """Make the broker write its database now (SIGUSR1) and wait until it has."""
    database = broker.workdir / "mosquitto.db"
    saved = database.stat().st_mtime_ns if database.exists() else 0
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGUSR1)
    wait_until(lambda: database.exists() and database.stat().st_mtime_ns != saved,
               what="the broker's save with the node ready")


def offline_everywhere(double: MonitorDouble, served: str) -> bool:
    view = double.node_view("node-1") or {}
    return view.get("status") == "offline" and http_get(served + "/health")[0] == 503


def test_a_broker_restored_from_an_older_save_does_not_resurrect_a_stopped_node(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
        served: str) -> None:
    gui = node(tmp_path, broker, "gui")
    try:
        wait_until(lambda: double.is_online("node-1") and
                   http_get(served + "/health")[0] == 200, timeout=15, what="online")
        save_now(broker)
    finally:
        assert stop_process(gui) == 0
    wait_until(lambda: offline_everywhere(double, served), timeout=5, what="offline")
    assert retained(broker.host, broker.port, STATE)["state"] == "disconnected"
    broker.kill()
    broker.start()
    assert retained(broker.host, broker.port, STATE)["state"] == "ready"  # the older save
    wait_until(bridge.healthy, timeout=15, what="the bridge back on the broker")
    wait_until(lambda: http_get(served + "/nodes")[1]["broker"]["connected"], timeout=15,
               what="the status app back on the broker")
    watched_until = time.monotonic() + 3.0
    while time.monotonic() < watched_until:
        assert offline_everywhere(double, served), (double.node_view("node-1"),
                                                    http_get(served + "/health"))
        time.sleep(0.1)
    assert double.history("node-1")[-1].reason == "disconnected"


def test_a_node_that_stops_while_the_broker_is_down_is_shown_offline_once_silent(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
        served: str) -> None:
    """Neither its ``disconnected`` nor its will reaches the broker, which comes back with
    the node's retained ``ready`` and last status: the bridge reports it offline (stale)
    once three report intervals pass without a word (by a recorded silence, or by that
    status itself when the broker took longer than that to come back: under load)."""
    interval = 1.0
    gui = node(tmp_path, broker, "gui", interval=interval)
    try:
        wait_until(lambda: double.is_online("node-1") and
                   http_get(served + "/health")[0] == 200, timeout=15, what="online")
        save_now(broker)
        broker.kill()
    finally:
        assert stop_process(gui) == 0
    broker.start()
    assert retained(broker.host, broker.port, STATE)["state"] == "ready"
    wait_until(bridge.healthy, timeout=15, what="the bridge back on the broker")
    back = time.monotonic()
    wait_until(lambda: offline_everywhere(double, served), timeout=3 * interval + 3,
               what="offline at the monitor and in /health")
    assert time.monotonic() - back <= 3 * interval + 3
    last = double.history("node-1")[-1]
    assert (last.status, last.reason) == ("offline", "stale")


def test_a_silence_recorded_before_a_restart_reaches_the_monitor_before_what_followed(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble,
        bridge: BridgeProcess) -> None:
    """A silence is a fact of the node's story that the outbox keeps: a node frozen long
    enough to fall silent while the monitor refuses everything, a bridge killed -9 and
    started again, the node thawed: once the monitor answers it is told that the node was
    offline (stale, stamped when it went stale), then that it is online again. Broken by a
    silence kept in memory only: the new term never knew of it, and the monitor was told
    only that the node is online."""
    interval = 2.0
    config = write_config(tmp_path / "gui.yaml", config_dict(
        broker, "node-1", monitor={"report_interval": interval}, mqtt={"keepalive": 120}))
    gui = start_process(["node", "-c", str(config)], log_path=tmp_path / "gui.log")
    try:
        wait_until(lambda: double.is_online("node-1"), timeout=15, what="online")
        gui.send_signal(signal.SIGSTOP)
        frozen = time.time()
        # A status still waiting would say for itself that it is stale: no silence then.
        last = retained(broker.host, broker.port, "yl/ar/nodes/node-1/status")["uptime"]
        wait_until(lambda: double.history("node-1")[-1].body.get("uptime") == last,
                   timeout=5, what="the node's last status delivered")
        double.fail_with(503)
        wait_until(lambda: bridge.metric("yl_bridge_silences_total") == 1, timeout=15,
                   what="the silence recorded")
        bridge.kill()
        bridge.start(wait=False)
        gui.send_signal(signal.SIGCONT)
        wait_until(lambda: bridge.metric('yl_bridge_received_total{kind="status"}') >= 2,
                   timeout=15, what="the thawed node's statuses at the new bridge")
        seen = len(double.history("node-1"))
        double.fail_with(None)
        wait_until(lambda: double.is_online("node-1") and
                   len(double.history("node-1")) >= seen + 2, timeout=15,
                   what="the silence and the node back at the monitor")
    finally:
        gui.send_signal(signal.SIGCONT)
        assert stop_process(gui) == 0
    told = double.history("node-1")[seen:]
    assert [(h.status, h.reason) for h in told[:2]] == [("offline", "stale"),
                                                       ("online", "ready")], told
    went_stale = timestamps.epoch_from_iso(told[0].body["timestamp"])
    assert frozen - interval <= went_stale - 3 * interval <= frozen + interval
    assert bridge.metric("yl_bridge_silences_total") == 0, "told by what the outbox kept"


def run_until_shown(tmp_path: Path, broker: DevBroker, double: MonitorDouble, served: str,
                    name: str, clock: str | None = None) -> None:
    """Run node-1 until the monitor and /health show it up, then stop it cleanly."""
    process = node(tmp_path, broker, name, clock=clock)
    try:
        wait_until(lambda: double.is_online("node-1") and
                   http_get(served + "/health")[0] == 200, timeout=15, what=f"{name} online")
    finally:
        assert stop_process(process) == 0
    wait_until(lambda: offline_everywhere(double, served), timeout=5, what=f"{name} stopped")


@pytest.mark.parametrize("skew", [f"+{YEARS_4}", f"-{YEARS_4}"])
def test_a_node_clock_years_off_never_hides_the_node(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
        served: str, skew: str) -> None:
    """Sessions are ordered by arrival, never by a node's clock: a run with a clock years
    off, and the correct run after it, are each shown as they are; the skew is reported
    once and the node's timestamps are forwarded as they are."""
    run_until_shown(tmp_path, broker, double, served, "before")
    skewed = node(tmp_path, broker, "skewed", clock=skew)
    try:
        wait_until(lambda: double.is_online("node-1") and
                   http_get(served + "/health")[0] == 200, timeout=15, what="skewed online")
        this_year = time.strftime("%Y", time.gmtime())
        wait_until(lambda: any(h.body["timestamp"][:4] != this_year
                               for h in double.history("node-1")),
                   timeout=5, what="the node's own timestamp, forwarded as it is")
        assert bridge.metric("yl_bridge_max_clock_skew_seconds") > 1000 * 86400
    finally:
        assert stop_process(skewed) == 0
    wait_until(lambda: offline_everywhere(double, served), timeout=5, what="skewed stopped")
    run_until_shown(tmp_path, broker, double, served, "after")
    assert bridge.metric("yl_bridge_max_clock_skew_seconds") < 60
    assert bridge.metric("yl_bridge_clock_skew_reports_total") == 1
    assert bridge.log().count("its clock is") == 1


def test_a_retained_status_of_any_age_is_no_clock_skew(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble) -> None:
    """A restarted bridge reads every node's retained status again; one published minutes
    ago says nothing of the node's clock (only a live message is compared)."""
    status = StatusMessage(
        node_id="node-1", node_name="GUI", status="running", version="1", uptime=1.0,
        timestamp=timestamps.iso_from_epoch(time.time() - 600),
        resources=Resources(1.0, 1.0, 1), gui={}, reporter=ReporterCounters(1, 0, None),
        session=protocol.new_session_id(), seq=1, interval_s=300.0)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="node-1",
                            protocol=mqtt.MQTTv5)
    publisher.username_pw_set("node-1", NODE_PASSWORD)
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    try:
        properties = new_properties(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = protocol.status_expiry(300.0)
        publisher.publish(protocol.Topics().status("node-1"), protocol.encode(status), qos=1,
                          retain=True, properties=properties).wait_for_publish(5)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    bridge = BridgeProcess(tmp_path, broker, double).start()
    try:
        wait_until(lambda: double.history("node-1"), timeout=10, what="the retained status")
        assert bridge.metric("yl_bridge_clock_skew_reports_total") == 0
        assert bridge.metric("yl_bridge_max_clock_skew_seconds") == 0
        assert "clock is" not in bridge.log()
    finally:
        assert bridge.stop() == 0
