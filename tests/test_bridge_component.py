"""The bridge in-process, for faults that are hard to cause from outside."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.bridge_process import last_gui
from testkit.broker import broker_users
from testkit.support import (
    BRIDGE_PASSWORD,
    BRIDGE_USER,
    TEST_ACL,
    config_dict,
    make_config,
    wait_until,
)

from bridge import service
from bridge.outbox import Outbox
from bridge.service import Bridge
from publisher import StatusPublisher
from yl_core.config import Config, parse_config
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration


def bridge_config(tmp_path: Path, broker: DevBroker, double: MonitorDouble,
                  **bridge: Any) -> Config:
    return parse_config(config_dict(
        broker, "bridge-cfg", monitor={"url": double.url},
        mqtt={"username": BRIDGE_USER, "password": BRIDGE_PASSWORD},
        bridge={"outbox_path": str(tmp_path / "outbox.sqlite3"), "metrics": "", **bridge}),
        "<test>")


@contextlib.contextmanager
def bridge_and_node(config: Config, broker: DevBroker, double: MonitorDouble
                    ) -> Iterator[tuple[Bridge, StatusPublisher]]:
    """The bridge in this process and a node publishing; all stopped after."""
    bridge = Bridge(config).start()
    publisher = StatusPublisher(make_config(broker, "node-1")).start()
    try:
        yield bridge, publisher
    finally:
        publisher.stop()
        bridge.stop()
        bridge.outbox.close()
        double.down()


def test_a_failed_outbox_write_is_not_acknowledged_and_comes_back(
        tmp_path: Path, broker: DevBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    double = MonitorDouble().start()
    config = bridge_config(tmp_path, broker, double)
    failures = {"left": 3}
    original = Outbox.record

    def flaky_record(self: Outbox, batch: Any, **options: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, batch, **options)

    monkeypatch.setattr(Outbox, "record", flaky_record)
    with bridge_and_node(config, broker, double) as (bridge, publisher):
        publisher.update_gui_status(face_loaded=True)
        wait_until(lambda: last_gui(double, "node-1").get("face_loaded") is True, timeout=15,
                   what="delivered after the failed writes")
        assert failures["left"] == 0
        assert bridge.receiver.connects >= 2


def test_a_stalled_writer_is_reported_and_a_hung_one_stops_the_bridge(
        tmp_path: Path, broker: DevBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    double = MonitorDouble().start()
    config = bridge_config(tmp_path, broker, double)
    monkeypatch.setattr(service, "STALL_LIMIT", 1.5)
    monkeypatch.setattr(service, "HANG_LIMIT", 4.0)
    with bridge_and_node(config, broker, double) as (bridge, publisher):
        wait_until(lambda: bridge.health()["ok"], timeout=10, what="healthy")
        with bridge.outbox._write_lock:  # a disk that does not answer
            publisher.update_gui_status(face_loaded=True)
            wait_until(lambda: "outbox writer thread stalled" in bridge.health()["problem"],
                       timeout=5, what="the stall reported")
            assert not bridge.stopping.is_set()
            assert bridge.stopping.wait(6.0)
        assert bridge.failure is not None
        assert "outbox writer" in bridge.failure


def test_a_status_receiver_on_a_thread_delivers_is_restarted_and_ends_with_the_bridge(
        tmp_path: Path, broker: DevBroker) -> None:
    """``bridge.status_receiver: thread``: the same session on a thread of the bridge's
    process; ended, it is started again; and nothing of it outlives the bridge (the leak
    fixture)."""
    double = MonitorDouble().start()
    config = bridge_config(tmp_path, broker, double, status_receiver="thread")
    with bridge_and_node(config, broker, double) as (bridge, publisher):
        publisher.update_gui_status(face_loaded=True)
        wait_until(lambda: last_gui(double, "node-1").get("face_loaded") is True, timeout=15,
                   what="a status delivered")
        receiver = bridge.receiver._process
        assert receiver is not None
        assert not hasattr(receiver, "pid"), "no child process"
        receiver.kill()
        wait_until(lambda: bridge.receiver._process is not receiver and
                   bridge.receiver.connected, timeout=15, what="the receiver started again")
        publisher.update_gui_status(face_loaded=False)
        wait_until(lambda: last_gui(double, "node-1").get("face_loaded") is False, timeout=15,
                   what="a status delivered by the new receiver")


def test_a_login_the_acl_lets_read_states_only_is_named_in_the_health(
        tmp_path: Path) -> None:
    """An ACL written for a release before 2026-12-08 lets the bridge's login read the
    states only (its statuses came on a second login). mosquitto grants the subscription
    and sends nothing of it: the bridge says so, naming the login and the topic, once a
    round of retained messages brought a node that is up and no status."""
    workdir = tmp_path / "broker"
    old = DevBroker(workdir, users=broker_users(), extra_acl=TEST_ACL)
    acl = (workdir / "acl").read_text()
    block = f"user {BRIDGE_USER}\ntopic read yl/ar/nodes/+/state\n"
    assert block + "topic read yl/ar/nodes/+/status\n" in acl
    (workdir / "acl").write_text(acl.replace(block + "topic read yl/ar/nodes/+/status\n",
                                             block))
    old.start()
    double = MonitorDouble().start()
    try:
        config = bridge_config(tmp_path, old, double)
        with bridge_and_node(config, old, double) as (bridge, _publisher):
            wait_until(lambda: double.is_online("node-1"), timeout=15,
                       what="online from its state alone")
            bridge.receiver.reconnect("a new round of retained messages")
            problem = wait_until(lambda: bridge.receiver.unread, timeout=15,
                                 what="the unread topic named")
            assert f"'{BRIDGE_USER}'" in problem
            assert "yl/ar/nodes/+/status" in problem
            assert problem in bridge.health()["problem"]
            assert not bridge.health()["ok"]
    finally:
        old.stop()
