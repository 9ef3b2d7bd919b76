"""``yl-status node`` as a real process: last will on kill -9 and SIGSTOP, clean stop."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from testkit.support import (
    Recorder,
    config_dict,
    retained,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_status.dev_broker import DevBroker
from yl_status.simulated_node import TOGGLED_FLAGS

pytestmark = pytest.mark.integration


def node_config(tmp_path: Path, broker: DevBroker, keepalive: int = 5) -> Path:
    data = config_dict(broker, mqtt={"keepalive": keepalive}, logging={"level": "DEBUG"})
    return write_config(tmp_path / "node.yaml", data)


def state_topic(node_id: str) -> str:
    return f"yl/ar/nodes/{node_id}/state"


def test_kill_9_of_a_node_shows_lost_in_under_a_second(tmp_path: Path,
                                                       broker: DevBroker) -> None:
    recorder = Recorder(broker.host, broker.port).start()
    process = start_process(["node", "-c", str(node_config(tmp_path, broker))],
                            log_path=tmp_path / "node.log")
    try:
        ready = recorder.wait_for(state_topic("node-1"), lambda d: d["state"] == "ready",
                                  timeout=15)
        killed = time.monotonic()
        process.kill()
        process.wait()
        lost = recorder.wait_for(state_topic("node-1"), lambda d: d["state"] == "lost",
                                 after=killed)
        assert lost.at - killed < 1.0
        assert lost.json()["session"] == ready.json()["session"]
        assert retained(broker.host, broker.port, state_topic("node-1"))["state"] == "lost"
    finally:
        stop_process(process)
        recorder.stop()


def test_a_frozen_node_is_lost_after_one_and_a_half_to_two_and_a_half_keepalives(
        tmp_path: Path, broker: DevBroker) -> None:
    keepalive = 2
    recorder = Recorder(broker.host, broker.port).start()
    process = start_process(["node", "-c", str(node_config(tmp_path, broker, keepalive))],
                            log_path=tmp_path / "node.log")
    try:
        recorder.wait_for(state_topic("node-1"), lambda d: d["state"] == "ready", timeout=15)
        frozen = time.monotonic()
        os.kill(process.pid, signal.SIGSTOP)
        lost = recorder.wait_for(state_topic("node-1"), lambda d: d["state"] == "lost",
                                 after=frozen, timeout=6 * keepalive)
        elapsed = lost.at - frozen
        # mosquitto drops a client 1.5 keepalives after its last packet, which came at most
        # one keepalive before the freeze; it checks about once a second
        assert 1.5 * keepalive <= elapsed <= 2.5 * keepalive + 1.0, f"lost after {elapsed:.2f} s"
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait()
        recorder.stop()


def test_sigterm_publishes_disconnected_and_exits_zero(tmp_path: Path,
                                                       broker: DevBroker) -> None:
    recorder = Recorder(broker.host, broker.port).start()
    process = start_process(["node", "-c", str(node_config(tmp_path, broker))],
                            log_path=tmp_path / "node.log")
    try:
        recorder.wait_for(state_topic("node-1"), lambda d: d["state"] == "ready", timeout=15)
        assert stop_process(process) == 0
        assert retained(broker.host, broker.port,
                        state_topic("node-1"))["state"] == "disconnected"
        assert not [m for m in recorder.on(state_topic("node-1")) if m.json()["state"] == "lost"]
    finally:
        stop_process(process)
        recorder.stop()


def test_count_runs_several_nodes_each_with_its_own_will(tmp_path: Path,
                                                         broker: DevBroker) -> None:
    ids = [f"sim-{i:04d}" for i in range(1, 4)]
    broker.add_users(dict.fromkeys(ids, "node-secret"))
    recorder = Recorder(broker.host, broker.port).start()
    process = start_process(["node", "-c", str(node_config(tmp_path, broker)), "--node-id",
                             "sim", "--count", "3", "--toggle-every", "0.2"],
                            log_path=tmp_path / "node.log")
    try:
        for node_id in ids:
            recorder.wait_for(state_topic(node_id), lambda d: d["state"] == "ready", timeout=15)
        recorder.wait_for(f"yl/ar/nodes/{ids[0]}/status",
                          lambda d: d["gui"]["window_active"] and d["seq"] >= 3)
        killed = time.monotonic()
        process.kill()
        process.wait()
        for node_id in ids:
            recorder.wait_for(state_topic(node_id), lambda d: d["state"] == "lost", after=killed)
    finally:
        stop_process(process)
        recorder.stop()


def test_a_second_process_with_the_same_id_makes_the_first_exit_with_an_error(
        tmp_path: Path, broker: DevBroker) -> None:
    config = node_config(tmp_path, broker)
    first = start_process(["node", "-c", str(config), "--toggle-every", "0.1"],
                          log_path=tmp_path / "first.log")
    second = None
    try:
        wait_until(lambda: (retained(broker.host, broker.port, state_topic("node-1")) or {})
                   .get("state") == "ready", timeout=15, what="first node ready")
        second = start_process(["node", "-c", str(config)], log_path=tmp_path / "second.log")
        assert first.wait(timeout=15) == 3
        assert "session taken over" in (tmp_path / "first.log").read_text()
        assert second.poll() is None
    finally:
        stop_process(first)
        if second is not None:
            assert stop_process(second) == 0


@pytest.mark.parametrize("toggle", [[], ["--toggle-every", "0"]],
                         ids=["quiet unless asked", "0 means never"])
def test_a_node_changes_no_flag_unless_asked(tmp_path: Path, broker: DevBroker,
                                            toggle: list[str]) -> None:
    recorder = Recorder(broker.host, broker.port).start()
    process = start_process(["node", "-c", str(node_config(tmp_path, broker)),
                             *toggle, "--duration", "6"],
                            log_path=tmp_path / "node.log")
    try:
        assert process.wait(timeout=20) == 0
        statuses = recorder.on("yl/ar/nodes/node-1/status")
        assert 1 <= len(statuses) <= 4, len(statuses)
        flags = {tuple(m.json()["gui"].get(f) for f in TOGGLED_FLAGS)
                 for m in statuses if m.payload}
        assert len(flags) == 1, flags
    finally:
        stop_process(process)
        recorder.stop()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_toggle_period_that_is_not_a_time_is_a_config_error(
        tmp_path: Path, broker: DevBroker, value: str) -> None:
    process = start_process(["node", "-c", str(node_config(tmp_path, broker)),
                             "--toggle-every", value], log_path=tmp_path / "node.log")
    assert process.wait(timeout=15) == 2
    assert "--toggle-every" in (tmp_path / "node.log").read_text()
