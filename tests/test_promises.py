"""The promises that nothing is lost, tested where they live: the bridge's writer
acknowledges a message only after its outbox commit, in arrival order (SQLite and
PostgreSQL); the forwarder marks an item done only on a 2xx and delivers it after a 5xx, a
timeout or a connection dropped while its request is out; a node's will is registered with
its first connection, with its payload, QoS and retain flag."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from testkit.postgres import PostgresServer
from testkit.support import Recorder, make_config, wait_until
from testkit.tcp_proxy import PartitionProxy

from bridge.incoming import Received
from bridge.outbox import Item, Outbox
from bridge.service import Bridge
from publisher import StatusPublisher
from tests.test_forwarder import config_for, forwarding
from tests.test_outbox import A, B, state, status
from yl_core import protocol
from yl_core.config import parse_config
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

NODES = ("n1", "n2", "n3")


class CommitChecker:
    """An acknowledger that, at each acknowledgement, reads the outbox through a
    connection of its own: every message acknowledged must be committed already."""

    def __init__(self, read: Any, sent: dict[tuple[str, int], Received]) -> None:
        self.read = read
        self.sent = sent
        self.acked: list[tuple[str, int, int]] = []
        self.problems: list[str] = []

    def for_session(self, session: str) -> Any:
        checker = self

        class Acks:
            def acknowledge(self, connection: int, messages: list[tuple[int, int]]) -> None:
                rows = checker.read()
                for mid, _qos in messages:
                    checker.acked.append((session, connection, mid))
                    message = checker.sent[(session, mid)]
                    node = message.topic.split("/")[3]
                    row = rows.get(node)
                    m = message.checked_by(protocol.Topics()).checked
                    assert m is not None
                    seq = getattr(m.message, "seq", None)
                    if row is None:
                        checker.problems.append(f"{session} {mid}: {node} not committed")
                    elif seq is not None and row[0] == getattr(m.message, "session", None) \
                            and row[1] < seq:
                        checker.problems.append(f"{session} {mid}: {node} seq {seq} acked, "
                                                f"{row[1]} committed")
        return Acks()


def sqlite_rows(path: Path) -> Any:
    def read() -> dict[str, tuple[str, int]]:
        conn = sqlite3.connect(path)
        try:
            return {node: (session, seq) for node, session, seq in
                    conn.execute("SELECT node_id, session, seq FROM nodes")}
        finally:
            conn.close()
    return read


def postgres_rows(url: str) -> Any:
    def read() -> dict[str, tuple[str, int]]:
        with psycopg.connect(url) as conn:
            return {node: (session, seq) for node, session, seq in
                    conn.execute("SELECT node_id, session, seq FROM nodes").fetchall()}
    return read


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_place(request: pytest.FixtureRequest, tmp_path: Path,
                 module_postgres: PostgresServer) -> tuple[str, Any]:
    if request.param == "sqlite":
        path = tmp_path / "outbox.sqlite3"
        return str(path), sqlite_rows(path)
    url = module_postgres.new_database()
    return url, postgres_rows(url)


def test_messages_are_acknowledged_only_after_their_commit_in_arrival_order(
        outbox_place: tuple[str, Any], tmp_path: Path) -> None:
    """Broken by acknowledging each batch before ``Outbox.record`` (the commit): the first
    acknowledgement reads a node that is not in the outbox."""
    where, read = outbox_place
    key = "outbox_url" if where.startswith("postgresql") else "outbox_path"
    config = parse_config({"bridge": {key: where, "metrics": ""},
                           "logging": {"level": "WARNING"}}, str(tmp_path / "bridge.yaml"))
    bridge = Bridge(config)
    sent: dict[tuple[str, int], Received] = {}
    checker = CommitChecker(read, sent)
    bridge.writer.acknowledger = checker.for_session("node")
    bridge.writer.start()
    order: list[tuple[str, int, int]] = []
    mids = [0]

    def numbered(message: Received, session: str) -> Received:
        mids[0] += 1
        numbered = Received(1, mids[0], 1, message.topic, message.payload, time.time())
        sent[(session, numbered.mid)] = numbered
        order.append((session, 1, numbered.mid))
        return numbered

    try:
        for seq in range(1, 31):
            for node in NODES:
                if seq == 1:
                    bridge.writer.put(numbered(state("ready", A, node), "node"))
                batch = [numbered(status(seq, A, node), "node")]
                if seq % 10 == 0:
                    batch.append(numbered(status(seq, B, node), "node"))
                bridge.writer.put(batch)
        wait_until(lambda: len(checker.acked) == len(order), timeout=20,
                   what="every message acknowledged")
    finally:
        bridge.writer.stop(10)
        bridge.outbox.close()
    assert checker.problems == []
    assert checker.acked == order, "acknowledged out of order"


def test_an_item_is_done_only_on_a_2xx_and_delivered_after_a_5xx_a_timeout_and_a_drop(
        tmp_path: Path) -> None:
    """Broken by marking an item done whatever the answer: after the first failure the
    status is gone and never reaches the monitor."""
    double = MonitorDouble().start()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    done: list[Item] = []
    original = outbox.done

    def recording_done(item: Item, *args: Any, **kwargs: Any) -> Any:
        done.append(item)
        return original(item, *args, **kwargs)

    outbox.done = recording_done  # type: ignore[method-assign]
    config = config_for(double.url, tmp_path)

    def more_than(asked: int) -> Callable[[], bool]:
        return lambda: double.request_count("/heartbeat") > asked

    def shown(seq: int) -> Callable[[], bool]:
        return lambda: double.history("n1")[-1].body.get("gui") == {"seq": seq}

    try:
        with forwarding(config, outbox) as forwarder:
            forwarder.notify(outbox.record([state("ready"), status(1)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=10, what="first delivery")
            faults: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
                "a 503": (lambda: double.fail_with(503), lambda: double.fail_with(None)),
                "a timeout": (double.hang, double.answer_again),
                "a dropped connection": (double.hang, double.answer_again),
            }
            for seq, (what, (fail, recover)) in enumerate(faults.items(), start=2):
                asked, held = double.request_count("/heartbeat"), double.held
                fail()
                forwarder.notify(outbox.record([status(seq)])[1])
                if what == "a 503":
                    wait_until(more_than(asked), timeout=5, what=f"the request met by {what}")
                else:
                    wait_until(lambda h=held: double.held > h, timeout=5, what="a request out")
                if what == "a dropped connection":
                    double.drop_connections()
                wait_until(lambda: not forwarder.reachable, timeout=10,
                           what=f"{what} counted as a failure")
                assert outbox.depth() == (0, 1), f"the status was dropped after {what}"
                recover()
                wait_until(shown(seq), timeout=15, what=f"the status delivered after {what}")
                wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="done")
    finally:
        double.answer_again()
        double.down()
        outbox.close()
    answered = [(h.body["reason"], h.body.get("gui")) for h in double.history("n1")]
    assert [(item.state, {"seq": item.seq} if item.kind == "status" else None)
            for item in done] == answered, "an item done that was not answered 2xx"


def test_the_will_is_registered_with_the_first_connection(broker: DevBroker) -> None:
    """Broken by registering the will only after connecting: the first connection, dropped,
    leaves the node ``ready`` at the broker."""
    proxy = PartitionProxy((broker.host, broker.port)).start()
    recorder = Recorder(broker.host, broker.port).start()
    config = make_config(SimpleNamespace(host="127.0.0.1", port=proxy.port), "node-1")
    publisher = StatusPublisher(config).start()
    topic = config.mqtt.topics.state("node-1")
    try:
        ready = recorder.wait_for(topic, lambda d: d["state"] == "ready", timeout=10)
        proxy.partition()  # its reconnection gets nowhere: the retained state stays the will
        proxy.cut()
        lost = recorder.wait_for(topic, lambda d: d["state"] == "lost", timeout=10,
                                 after=ready.at)
        assert lost.qos == 1
        assert lost.json()["session"] == publisher.session == ready.json()["session"]
        protocol.decode_state(lost.payload)
        late = Recorder(broker.host, broker.port, username="test-reader",
                        topics=(topic,)).start()
        try:
            first = wait_until(lambda: late.on(topic), timeout=5, what="the retained state")
            assert first[0].retain
            assert first[0].json()["state"] == "lost"
        finally:
            late.stop()
        proxy.heal()
    finally:
        publisher.stop()
        recorder.stop()
        proxy.stop()
