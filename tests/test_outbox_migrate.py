"""``yl-status outbox migrate``: a stopped SQLite bridge's backlog, delivered by a bridge on
PostgreSQL (real processes, real PostgreSQL, real mosquitto)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess, reasons
from testkit.postgres import PostgresServer
from testkit.support import (
    NODE_PASSWORD,
    config_dict,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

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
