"""The bridge's outbox: what was acknowledged to the broker but not yet delivered.

SQLite in WAL mode. Per node it holds the ordered state transitions still to deliver and the
newest status (older ones are coalesced away), plus what the bridge knows of the node (newest
session and seq, current state, last snapshot, whether the monitor has it registered). A batch
of messages is committed with ``synchronous=FULL`` before the broker gets its acks, so a
``kill -9`` at any instant loses nothing that was acknowledged. Disk use is bounded by the
number of nodes (and ``MAX_TRANSITIONS_PER_NODE``); memory holds one mark per node, with
its undelivered status and the ids of its undelivered transitions.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.incoming import StatusHead
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
    """What the bridge knows of one node (kept in memory, mirrored in ``nodes``).

    ``pending_status`` follows the writer's transaction; ``pending`` (the status to deliver)
    and ``transitions`` (ids of the transitions to deliver) follow what is committed, so
    forwarders find a node's next item without reading the disk.
    """

    session: str | None = None
    seq: int = -1
    state: str | None = None
    state_session: str | None = None
    node_name: str = ""
    registered: bool = False
    pending_status: bool = False
    pending: Item | None = None
    transitions: set[int] = field(default_factory=set)


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


_Committed = tuple[NodeMark, "Item | None", "int | None", "Iterable[int]"]
"""A change to a mark once the batch is committed: (mark, new pending status, transition
added or None, transitions dropped)."""


@dataclass
class _Delivered:
    """What a node had delivered since the last flush."""

    transitions: set[int] = field(default_factory=set)
    statuses: set[tuple[str, int]] = field(default_factory=set)

    def merge(self, other: _Delivered) -> None:
        self.transitions |= other.transitions
        self.statuses |= other.statuses


@dataclass
class IngestResult:
    accepted: int = 0
    coalesced: int = 0
    stale: int = 0
    duplicates: int = 0
    dropped: int = 0
    too_many_nodes: int = 0


Incoming = tuple[str, "StateMessage | StatusMessage | StatusHead", bytes, float]
"""(node_id, decoded message, raw payload, wall-clock receive time)."""


class Outbox:
    def __init__(self, path: str | Path, *, max_nodes: int = 100_000,
                 on_change: Callable[[], None] | None = None) -> None:
        """``on_change`` is called when deliveries await ``flush()``; without it, every
        ``done()`` is written at once (one transaction each)."""
        self.path = str(path)
        self.max_nodes = max_nodes
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open("FULL")
        self._write_lock = threading.Lock()
        self._readers = threading.local()
        self._readers_all: list[sqlite3.Connection] = []
        self._marks_lock = threading.Lock()
        self._on_change = on_change
        self.marks: dict[str, NodeMark] = {}
        self._done: dict[str, _Delivered] = {}
        self._flushing: dict[str, _Delivered] = {}
        self._registered: dict[str, bool] = {}
        self._load_marks()

    def _open(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.executescript(_SCHEMA)
        return conn

    def _reader(self) -> sqlite3.Connection:
        """A read connection per thread: WAL readers never wait for the writer."""
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._readers.conn = conn
            with self._marks_lock:
                self._readers_all.append(conn)
        return conn

    def _load_marks(self) -> None:
        rows = self._db.execute(
            "SELECT node_id, node_name, session, seq, state, state_session, registered "
            "FROM nodes").fetchall()
        for node_id, name, session, seq, state, state_session, registered in rows:
            self.marks[node_id] = NodeMark(session, -1 if seq is None else seq, state,
                                           state_session, name, bool(registered))
        # Delivered but not yet written (when reloading after a failed write): not pending.
        delivered: dict[str, _Delivered] = {}
        for done in (self._done, self._flushing):
            for node_id, items in done.items():
                delivered.setdefault(node_id, _Delivered()).merge(items)
        nothing = _Delivered()
        for node_id, session, seq, payload, received in self._db.execute(
                "SELECT node_id, session, seq, payload, received FROM pending_status"):
            mark = self.marks.setdefault(node_id, NodeMark())
            mark.pending_status = True
            if (session, seq) not in delivered.get(node_id, nothing).statuses:
                mark.pending = Item(node_id, "status", session, seq, None, payload, received)
        for node_id, transition_id in self._db.execute("SELECT node_id, id FROM transitions"):
            if transition_id not in delivered.get(node_id, nothing).transitions:
                self.marks.setdefault(node_id, NodeMark()).transitions.add(transition_id)

    def close(self) -> None:
        self.flush()
        with self._write_lock, self._marks_lock:
            self._db.close()
            for conn in self._readers_all:
                conn.close()

    # --- writing (the writer thread) -----------------------------------------------------

    def record(self, batch: Iterable[Incoming]) -> tuple[IngestResult, set[str]]:
        """Record a batch in one committed transaction; returns counts and touched nodes.

        What forwarders send (a mark's ``pending`` and ``transitions``) changes only after the
        commit, so nothing uncommitted is ever sent; the rest of a mark (read for the body
        and the registration) changes before it, so the commit, which waits for the disk,
        does not hold up the forwarders."""
        result = IngestResult()
        touched: set[str] = set()
        committed: list[_Committed] = []
        with self._write_lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                with self._marks_lock:
                    for node_id, message, raw, received in batch:
                        mark = self.marks.get(node_id)
                        if mark is None:
                            if len(self.marks) >= self.max_nodes:
                                result.too_many_nodes += 1
                                continue
                            mark = self.marks[node_id] = NodeMark()
                        if isinstance(message, StateMessage):
                            changed = self._record_state(db, node_id, mark, message,
                                                         received, result, committed)
                        else:
                            changed = self._record_status(db, node_id, mark, message, raw,
                                                          received, result, committed)
                        if changed:
                            touched.add(node_id)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                with self._marks_lock:
                    self.marks.clear()
                    self._load_marks()
                raise
            with self._marks_lock:
                for mark, pending, added, dropped in committed:
                    if added is None:
                        mark.pending = pending
                    else:
                        mark.transitions.add(added)
                        mark.transitions.difference_update(dropped)
        return result, touched

    def _record_status(self, db: sqlite3.Connection, node_id: str, mark: NodeMark,
                       message: StatusMessage | StatusHead, raw: bytes, received: float,
                       result: IngestResult, committed: list[_Committed]) -> bool:
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
        committed.append((mark, Item(node_id, "status", message.session, message.seq, None,
                                     raw, received), None, ()))
        result.accepted += 1
        return True

    def _record_state(self, db: sqlite3.Connection, node_id: str, mark: NodeMark,
                      message: StateMessage, received: float, result: IngestResult,
                      committed: list[_Committed]) -> bool:
        """States are ordered among themselves only: statuses travel on another session and
        may overtake them, so a state older than the newest *status* is still a transition."""
        if mark.state_session is not None and message.session < mark.state_session:
            result.stale += 1
            return False
        if (message.session, message.state) == (mark.state_session, mark.state):
            result.duplicates += 1
            return False
        snapshot = self._snapshot_for(db, node_id, mark, message.session, result, committed)
        added = db.execute("INSERT INTO transitions (node_id, session, state, snapshot, "
                           "received) VALUES (?, ?, ?, ?, ?)",
                           (node_id, message.session, message.state, snapshot, received)
                           ).lastrowid
        assert added is not None
        pending = db.execute("SELECT COUNT(*) FROM transitions WHERE node_id = ?",
                             (node_id,)).fetchone()[0]
        dropped: list[int] = []
        if pending > MAX_TRANSITIONS_PER_NODE:
            excess = pending - MAX_TRANSITIONS_PER_NODE
            dropped = [r[0] for r in db.execute(
                "SELECT id FROM transitions WHERE node_id = ? ORDER BY id LIMIT ?",
                (node_id, excess))]
            db.executemany("DELETE FROM transitions WHERE id = ?", [(i,) for i in dropped])
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
        committed.append((mark, None, added, dropped))
        result.accepted += 1
        return True

    def _snapshot_for(self, db: sqlite3.Connection, node_id: str, mark: NodeMark,
                      session: str, result: IngestResult,
                      committed: list[_Committed]) -> bytes | None:
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
            committed.append((mark, None, None, ()))
            result.coalesced += 1
            if row is not None:
                return bytes(row[0])
        row = db.execute("SELECT snapshot FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def flush(self) -> set[str]:
        """Write the deliveries and registrations reported since the last flush; returns
        the nodes whose next item can now be handed out."""
        with self._marks_lock:
            done = self._done
            self._done = {}
            self._flushing = done
            registered = dict(self._registered)
            self._registered.clear()
        transitions = [(t,) for d in done.values() for t in d.transitions]
        statuses = [(node, s, q) for node, d in done.items() for s, q in d.statuses]
        if not (transitions or statuses or registered):
            with self._marks_lock:
                self._flushing = {}
            return set()
        with self._write_lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM transitions WHERE id = ?", transitions)
                db.executemany("DELETE FROM pending_status WHERE node_id = ? AND session = ? "
                               "AND seq = ?", statuses)
                db.executemany("UPDATE nodes SET registered = ? WHERE node_id = ?",
                               [(int(v), k) for k, v in registered.items()])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                with self._marks_lock:
                    for node, value in registered.items():
                        self._registered.setdefault(node, value)
                    for node, delivered in done.items():
                        self._done.setdefault(node, _Delivered()).merge(delivered)
                    self._flushing = {}
                raise
        with self._marks_lock:
            self._flushing = {}
        return set(done)

    # --- delivery (forwarder threads) -----------------------------------------------------

    def next_item(self, node_id: str) -> Item | None:
        """The node's oldest undelivered transition, else its pending status.

        None also while the node's last delivery is not yet on disk: a crash may then only
        repeat the newest message a node had delivered, never an older one after it.
        """
        while True:
            with self._marks_lock:
                if node_id in self._done or node_id in self._flushing:
                    return None
                mark = self.marks.get(node_id)
                if mark is None:
                    return None
                if not mark.transitions:
                    return mark.pending
                first = min(mark.transitions)
            row = self._reader().execute(
                "SELECT session, state, snapshot, received FROM transitions WHERE id = ?",
                (first,)).fetchone()
            if row is not None:
                return Item(node_id, "state", row[0], -1, row[1], row[2], row[3], first)
            with self._marks_lock:  # dropped meanwhile (too many transitions)
                mark.transitions.discard(first)

    def done(self, item: Item) -> None:
        """The item reached the monitor (or was refused for good): it is never handed out
        again, and is removed from disk at the next ``flush()``."""
        with self._marks_lock:
            delivered = self._done.setdefault(item.node_id, _Delivered())
            mark = self.marks.get(item.node_id)
            if item.transition_id is not None:
                delivered.transitions.add(item.transition_id)
                if mark is not None:
                    mark.transitions.discard(item.transition_id)
            else:
                delivered.statuses.add((item.session, item.seq))
                if mark is not None and (mark.session, mark.seq) == (item.session, item.seq):
                    mark.pending_status = False
                if mark is not None and mark.pending is not None and \
                        (mark.pending.session, mark.pending.seq) == (item.session, item.seq):
                    mark.pending = None
        self._changed()

    def set_registered(self, node_id: str, registered: bool) -> None:
        with self._marks_lock:
            mark = self.marks.get(node_id)
            if mark is not None:
                mark.registered = registered
            self._registered[node_id] = registered
        self._changed()

    @property
    def defers_writes(self) -> bool:
        """True if deliveries wait for ``flush()`` (whose caller then notifies the nodes)."""
        return self._on_change is not None

    def _changed(self) -> None:
        if self._on_change is None:
            self.flush()
        else:
            self._on_change()

    def mark(self, node_id: str) -> NodeMark | None:
        """A copy of the node's mark, without its pending items."""
        with self._marks_lock:
            found = self.marks.get(node_id)
            if found is None:
                return None
            return NodeMark(found.session, found.seq, found.state, found.state_session,
                            found.node_name, found.registered, found.pending_status)

    def nodes_with_work(self) -> list[str]:
        with self._marks_lock:
            return [node for node, mark in self.marks.items()
                    if mark.pending is not None or mark.transitions]

    def depth(self) -> tuple[int, int]:
        """(undelivered transitions, undelivered statuses)."""
        reader = self._reader()
        transitions = reader.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
        statuses = reader.execute("SELECT COUNT(*) FROM pending_status").fetchone()[0]
        with self._marks_lock:
            done_t = sum(len(d.transitions) for p in (self._done, self._flushing)
                         for d in p.values())
            done_s = sum(len(d.statuses) for p in (self._done, self._flushing)
                         for d in p.values())
        return max(int(transitions) - done_t, 0), max(int(statuses) - done_s, 0)

    def known_nodes(self) -> int:
        with self._marks_lock:
            return len(self.marks)
