"""``yl-status outbox migrate``: a stopped SQLite bridge's backlog, delivered by a bridge on
PostgreSQL (real processes, real PostgreSQL, real mosquitto)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess, reasons
from testkit.postgres import PostgresServer
from testkit.support import (
    NODE_PASSWORD,
    config_dict,
    incoming,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from bridge.incoming import Received
from bridge.migrate import migrate as migrate_outbox
from bridge.outbox import Outbox
from yl_core.protocol import StateMessage
from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

NODES = [f"mig-{i:04d}" for i in range(1, 21)]


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yl_status", "outbox", "migrate", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_migrated_backlog_is_delivered_by_the_postgresql_bridge(
        tmp_path: Path, broker: DevBroker, postgres: PostgresServer) -> None:
    broker.add_users(dict.fromkeys(NODES, NODE_PASSWORD))
    double = MonitorDouble().start()
    try:
        double.fail_with(503)  # the backlog builds up in the SQLite outbox
        sqlite_bridge = BridgeProcess(tmp_path, broker, double).start(wait=False)
        wait_until(lambda: sqlite_bridge.metric("yl_bridge_broker_connected") == 1, timeout=15,
                   what="both of the bridge's broker sessions up")
        config = write_config(tmp_path / "nodes.yaml", config_dict(broker, "mig"))
        nodes = start_process(["node", "-c", str(config), "--node-id", "mig", "--count", "20",
                               "--toggle-every", "0.05"], log_path=tmp_path / "nodes.log")
        wait_until(lambda: sqlite_bridge.metric("yl_bridge_outbox_transitions") >= 20 and
                   sqlite_bridge.metric('yl_bridge_received_total{kind="status"}') >= 100,
                   timeout=30, what="a backlog of ready transitions and statuses")
        assert stop_process(nodes) == 0
        wait_until(lambda: sqlite_bridge.metric("yl_bridge_outbox_transitions") >= 40,
                   timeout=30, what="the disconnected transitions in the backlog too")
        assert sqlite_bridge.stop() == 0
        outbox = tmp_path / "outbox.sqlite3"
        with sqlite3.connect(outbox) as db:
            snapshots = [(node, json.loads(payload)["uptime"]) for node, payload in db.execute(
                "SELECT node_id, snapshot FROM transitions WHERE snapshot IS NOT NULL UNION ALL "
                "SELECT node_id, snapshot FROM nodes WHERE pending_session IS NOT NULL")]
        assert snapshots, "the backlog carries the nodes' snapshots"

        refused = migrate("--from", f"sqlite:{tmp_path / 'missing.sqlite3'}",
                          "--to", postgres.url)
        assert refused.returncode == 3
        assert "no outbox file" in refused.stderr
        done = migrate("--from", f"sqlite:{outbox}", "--to", postgres.url)
        assert done.returncode == 0, done.stderr
        assert "moved 20 node(s), 40 pending transition(s)" in done.stdout
        again = migrate("--from", f"sqlite:{outbox}", "--to", postgres.url)
        assert again.returncode == 3
        assert "already holds 20 node(s)" in again.stderr

        double.fail_with(None)
        pg_bridge = BridgeProcess(tmp_path, broker, double, outbox_url=postgres.url,
                                  instance="pg").start(wait=False)
        try:
            wait_until(lambda: all(reasons(double.history(n)) == ["ready", "disconnected"]
                                   for n in NODES), timeout=30, what="the backlog delivered")
            wait_until(pg_bridge.drained, timeout=30, what="outbox drained")
            for node, uptime in snapshots:
                assert uptime in [h.body.get("uptime") for h in double.history(node)], node
        finally:
            assert pg_bridge.stop() == 0
    finally:
        double.down()


def test_a_migrated_node_keeps_its_stamp_its_silence_and_the_session_set_aside(
        tmp_path: Path, postgres: PostgresServer) -> None:
    """The columns an outbox gained after its schema version (``ADDED_COLUMNS``) move
    with the node: the newest stamp the monitor took, a silence not yet delivered, and the
    lost session a newer one set aside."""
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(str(path))

    def state(word: str, session: str) -> Received:
        return incoming("n1", StateMessage(state=word, session=session,  # type: ignore[arg-type]
                                           since="2026-01-01T00:00:00.000Z", node_name="GUI",
                                           version="1", interval_s=30.0), time.time())

    box.record([state("ready", "A"), state("lost", "A"), state("ready", "B")])
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE nodes SET stamped = 1.8e9, silent_since = 1.7e9, "
                   "silent_snapshot = x'7b7d'")
    url = postgres.new_database()
    migrate_outbox(f"sqlite:{path}", url, sys.stdout)
    moved = Outbox(url)
    try:
        mark = moved.mark("n1")
        assert mark is not None
        assert (mark.truth.session, mark.truth.state) == ("B", "ready")
        assert mark.truth.aside is not None
        assert (mark.truth.aside.session, mark.truth.aside.state) == ("A", "lost")
        assert moved.stamped("n1") == 1.8e9
        assert moved.marks["n1"].silent == 1.7e9
    finally:
        moved.close()
