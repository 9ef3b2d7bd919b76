"""The bridge's outbox: what was acknowledged to the broker but not yet delivered.

SQLite in WAL mode. Per node it holds the ordered state transitions still to deliver and the
newest status (older ones are coalesced away), plus what the bridge knows of the node (newest
session and seq, current state, last snapshot, whether the monitor has it registered). A batch
of messages is committed with ``synchronous=FULL`` before the broker gets its acks, so a
``kill -9`` at any instant loses nothing that was acknowledged. Disk use is bounded by the
number of nodes (and ``MAX_TRANSITIONS_PER_NODE``); memory holds one small mark per node.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from publisher import protocol
from publisher.protocol import StateMessage, StatusMessage

log = logging.getLogger(__name__)

MAX_TRANSITIONS_PER_NODE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    session TEXT NOT NULL,
    state TEXT NOT NULL,
    snapshot BLOB,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_node ON transitions (node_id, id);
CREATE TABLE IF NOT EXISTS pending_status (
    node_id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    node_name TEXT NOT NULL DEFAULT '',
    session TEXT,
    seq INTEGER,
    state TEXT,
    state_session TEXT,
    snapshot BLOB,
    registered INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass
class NodeMark:
    """What the bridge knows of one node (kept in memory, mirrored in ``nodes``)."""

    session: str | None = None
    seq: int = -1
    state: str | None = None
    state_session: str | None = None
    node_name: str = ""
    registered: bool = False
    pending_status: bool = False


@dataclass(frozen=True)
class Item:
    """One thing to deliver: a transition (``transition_id``) or the pending status."""

    node_id: str
    kind: str
    session: str
    seq: int
    state: str | None
    payload: bytes | None
    received: float
    transition_id: int | None = None


@dataclass
class IngestResult:
    accepted: int = 0
    coalesced: int = 0
    stale: int = 0
    duplicates: int = 0
    dropped: int = 0
    too_many_nodes: int = 0


Incoming = tuple[str, "StateMessage | StatusMessage", bytes, float]
"""(node_id, decoded message, raw payload, wall-clock receive time)."""


class Outbox:
    def __init__(self, path: str | Path, *, max_nodes: int = 100_000) -> None:
        self.path = str(path)
        self.max_nodes = max_nodes
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._ingest = self._open("FULL")
        self._delivery = self._open("NORMAL")
        self._ingest_lock = threading.Lock()
        self._delivery_lock = threading.Lock()
        self._marks_lock = threading.Lock()
        self.marks: dict[str, NodeMark] = {}
        self._load_marks()

    def _open(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.executescript(_SCHEMA)
        return conn

    def _load_marks(self) -> None:
        rows = self._ingest.execute(
            "SELECT node_id, node_name, session, seq, state, state_session, registered "
            "FROM nodes").fetchall()
        for node_id, name, session, seq, state, state_session, registered in rows:
            self.marks[node_id] = NodeMark(session, -1 if seq is None else seq, state,
                                           state_session, name, bool(registered))
        for (node_id,) in self._ingest.execute("SELECT node_id FROM pending_status"):
            self.marks.setdefault(node_id, NodeMark()).pending_status = True

    def close(self) -> None:
        with self._ingest_lock, self._delivery_lock:
            self._ingest.close()
            self._delivery.close()

    # --- ingest (one writer thread) -------------------------------------------------------

    def record(self, batch: Iterable[Incoming]) -> tuple[IngestResult, set[str]]:
        """Record a batch in one committed transaction; returns counts and touched nodes."""
        result = IngestResult()
        touched: set[str] = set()
        with self._ingest_lock, self._marks_lock:
            db = self._ingest
            db.execute("BEGIN IMMEDIATE")
            try:
                for node_id, message, raw, received in batch:
                    mark = self.marks.get(node_id)
                    if mark is None:
                        if len(self.marks) >= self.max_nodes:
                            result.too_many_nodes += 1
                            continue
                        mark = self.marks[node_id] = NodeMark()
                    if isinstance(message, StatusMessage):
                        changed = self._record_status(db, node_id, mark, message, raw,
                                                      received, result)
                    else:
                        changed = self._record_state(db, node_id, mark, message, received,
                                                     result)
                    if changed:
                        touched.add(node_id)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self.marks.clear()
                self._load_marks()
                raise
        return result, touched

    def _record_status(self, db: sqlite3.Connection, node_id: str, mark: NodeMark,
                       message: StatusMessage, raw: bytes, received: float,
                       result: IngestResult) -> bool:
        held = (mark.session, mark.seq) if mark.session is not None else None
        if not protocol.is_newer((message.session, message.seq), held):
            result.stale += 1
            return False
        if mark.state_session is not None and message.session < mark.state_session:
            result.stale += 1
            return False
        if mark.pending_status:
            result.coalesced += 1
        db.execute("INSERT OR REPLACE INTO pending_status VALUES (?, ?, ?, ?, ?)",
                   (node_id, message.session, message.seq, raw, received))
        db.execute(
            "INSERT INTO nodes (node_id, node_name, session, seq, snapshot) VALUES "
            "(?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name,"
            " session = excluded.session, seq = excluded.seq, snapshot = excluded.snapshot",
            (node_id, message.node_name, message.session, message.seq, raw))
        mark.session, mark.seq = message.session, message.seq
        mark.node_name = message.node_name or mark.node_name
        mark.pending_status = True
        result.accepted += 1
        return True

    def _record_state(self, db: sqlite3.Connection, node_id: str, mark: NodeMark,
                      message: StateMessage, received: float, result: IngestResult) -> bool:
        """States are ordered among themselves only: statuses travel on another session and
        may overtake them, so a state older than the newest *status* is still a transition."""
        if mark.state_session is not None and message.session < mark.state_session:
            result.stale += 1
            return False
        if (message.session, message.state) == (mark.state_session, mark.state):
            result.duplicates += 1
            return False
        snapshot = self._snapshot_for(db, node_id, mark, message.session, result)
        db.execute("INSERT INTO transitions (node_id, session, state, snapshot, received) "
                   "VALUES (?, ?, ?, ?, ?)",
                   (node_id, message.session, message.state, snapshot, received))
        pending = db.execute("SELECT COUNT(*) FROM transitions WHERE node_id = ?",
                             (node_id,)).fetchone()[0]
        if pending > MAX_TRANSITIONS_PER_NODE:
            excess = pending - MAX_TRANSITIONS_PER_NODE
            db.execute("DELETE FROM transitions WHERE id IN (SELECT id FROM transitions "
                       "WHERE node_id = ? ORDER BY id LIMIT ?)", (node_id, excess))
            result.dropped += excess
            log.error("outbox: node %s has more than %d undelivered transitions; dropped the "
                      "oldest %d", node_id, MAX_TRANSITIONS_PER_NODE, excess)
        db.execute(
            "INSERT INTO nodes (node_id, node_name, state, state_session) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name, "
            "state = excluded.state, state_session = excluded.state_session",
            (node_id, message.node_name or mark.node_name, message.state, message.session))
        mark.state, mark.state_session = message.state, message.session
        mark.node_name = message.node_name or mark.node_name
        result.accepted += 1
        return True

    def _snapshot_for(self, db: sqlite3.Connection, node_id: str, mark: NodeMark,
                      session: str, result: IngestResult) -> bytes | None:
        """The newest status of ``session`` to send along with a transition of that session.

        A pending status of the same session is folded into the transition (it would only be
        sent right after it); one of another session stays pending.
        """
        if mark.session != session:
            return None
        if mark.pending_status:
            row = db.execute("SELECT payload FROM pending_status WHERE node_id = ?",
                             (node_id,)).fetchone()
            db.execute("DELETE FROM pending_status WHERE node_id = ?", (node_id,))
            mark.pending_status = False
            result.coalesced += 1
            if row is not None:
                return bytes(row[0])
        row = db.execute("SELECT snapshot FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    # --- delivery (forwarder threads) -----------------------------------------------------

    def next_item(self, node_id: str) -> Item | None:
        with self._delivery_lock:
            row = self._delivery.execute(
                "SELECT id, session, state, snapshot, received FROM transitions "
                "WHERE node_id = ? ORDER BY id LIMIT 1", (node_id,)).fetchone()
            if row is not None:
                return Item(node_id, "state", row[1], -1, row[2], row[3], row[4], row[0])
            row = self._delivery.execute(
                "SELECT session, seq, payload, received FROM pending_status WHERE node_id = ?",
                (node_id,)).fetchone()
        if row is None:
            return None
        return Item(node_id, "status", row[0], row[1], None, row[2], row[3])

    def done(self, item: Item) -> None:
        """The item reached the monitor (or was refused for good): remove it."""
        with self._delivery_lock:
            if item.transition_id is not None:
                self._delivery.execute("DELETE FROM transitions WHERE id = ?",
                                       (item.transition_id,))
                return
            cursor = self._delivery.execute(
                "DELETE FROM pending_status WHERE node_id = ? AND session = ? AND seq = ?",
                (item.node_id, item.session, item.seq))
        if cursor.rowcount:
            with self._marks_lock:
                mark = self.marks.get(item.node_id)
                if mark is not None and (mark.session, mark.seq) == (item.session, item.seq):
                    mark.pending_status = False

    def set_registered(self, node_id: str, registered: bool) -> None:
        with self._marks_lock:
            mark = self.marks.get(node_id)
            if mark is not None:
                mark.registered = registered
        with self._delivery_lock:
            self._delivery.execute("UPDATE nodes SET registered = ? WHERE node_id = ?",
                                   (int(registered), node_id))

    def mark(self, node_id: str) -> NodeMark | None:
        with self._marks_lock:
            found = self.marks.get(node_id)
            return None if found is None else NodeMark(**vars(found))

    def nodes_with_work(self) -> list[str]:
        with self._delivery_lock:
            rows = self._delivery.execute(
                "SELECT node_id FROM transitions UNION SELECT node_id FROM pending_status"
            ).fetchall()
        return [r[0] for r in rows]

    def depth(self) -> tuple[int, int]:
        """(pending transitions, pending statuses)."""
        with self._delivery_lock:
            transitions = self._delivery.execute("SELECT COUNT(*) FROM transitions").fetchone()
            statuses = self._delivery.execute("SELECT COUNT(*) FROM pending_status").fetchone()
        return int(transitions[0]), int(statuses[0])

    def known_nodes(self) -> int:
        with self._marks_lock:
            return len(self.marks)
