"""The bridge's outbox: what was acknowledged to the broker but not yet delivered.

SQLite in WAL mode. Per node it holds the ordered state transitions still to deliver and the
newest status (older ones are coalesced away), plus what the bridge knows of the node (newest
session and seq, current state, last snapshot, whether the monitor has it registered). A batch
of messages is committed with ``synchronous=FULL`` before the broker gets its acks, so a
``kill -9`` at any instant loses nothing that was acknowledged. Disk use is bounded by the
number of nodes (and ``MAX_TRANSITIONS_PER_NODE``); memory holds one mark per node, with
its undelivered status and the ids of its undelivered transitions.

The same code runs on SQLite (``bridge.outbox_path``) and on PostgreSQL
(``bridge.outbox_url``, shared by active/standby bridges; see ``bridge.database``).

Which messages count is decided by ``truth.NodeTruth`` (arrival order, ended sessions stay
dead), the same model the status app uses. A write that fails (disk full, I/O error) leaves
memory as it is on disk, so the broker's redelivery of the unacknowledged messages is
recorded again rather than taken for a duplicate.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.database import (
    SCHEMA_VERSION,
    Database,
    NotActiveError,
    OutboxError,
    SqliteDatabase,
    open_database,
    redact,
)
from bridge.incoming import StatusHead
from yl_core.protocol import StateMessage, StatusMessage, stale_after
from yl_core.truth import LOST_HOLD, NodeTruth, Verdict

log = logging.getLogger(__name__)

MAX_TRANSITIONS_PER_NODE = 1000

__all__ = ["SCHEMA_VERSION", "NotActiveError", "Outbox", "OutboxError"]


@dataclass
class NodeMark:
    """What the bridge knows of one node (kept in memory, mirrored in ``nodes``).

    ``truth`` and ``pending_status`` follow the writer's transaction; ``pending`` (the status
    to deliver) and ``transitions`` (ids of the transitions to deliver) follow what is
    committed, so forwarders find a node's next item without reading the disk.
    """

    truth: NodeTruth = field(default_factory=NodeTruth)
    node_name: str = ""
    registered: bool = False
    interval_s: float | None = None
    lost: tuple[int, float] | None = None
    """The node's newest transition if it is a ``lost``: (id, wall-clock receive time)."""
    pending_status: bool = False
    pending: Item | None = None
    transitions: set[int] = field(default_factory=set)
    heard: float = field(default_factory=time.monotonic)
    """When the bridge last took a message of the node (monotonic; the outbox's start for a
    node known from disk)."""
    silence: str = ""
    """``due``: the node fell silent (see ``Outbox.silent_nodes``) and the monitor is to be
    told; ``told``: it was; empty while the node speaks."""


@dataclass(frozen=True)
class Item:
    """One thing to deliver: a transition (``transition_id``), the pending status, or
    (``silence``) word that a ``ready`` node has sent nothing for too long."""

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
    withdrawn: int = 0


Incoming = tuple[str, "StateMessage | StatusMessage | StatusHead", bytes, float, bool]
"""(node_id, decoded message, raw payload, wall-clock receive time, whether it is a retained
copy rather than a live message)."""


class Outbox:
    def __init__(self, path: str | Path, *, max_nodes: int = 100_000,
                 on_change: Callable[[], None] | None = None, epoch: int | None = None,
                 name: str = "yl-bridge") -> None:
        """``path``: an SQLite file, or a ``postgresql://`` URL. ``on_change`` is called when
        deliveries await ``flush()``; without it, every ``done()`` is written at once (one
        transaction each). ``epoch``: on PostgreSQL, the lease epoch every write checks."""
        self.path = str(path)
        self.where = redact(self.path)
        self.max_nodes = max_nodes
        # Lock order: _write_lock, then _read_lock, then _marks_lock; never the other way.
        # _write_lock: the writing connection and its transactions (the bridge's writer
        # thread; close). _read_lock: the reading connection (the forwarder's thread).
        # _marks_lock: the in-memory marks; held for dictionary work, and over I/O only to
        # reload them from disk after a failed write (under _write_lock).
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._marks_lock = threading.Lock()
        self._on_change = on_change
        self.marks: dict[str, NodeMark] = {}
        self._done: dict[str, _Delivered] = {}
        self._flushing: dict[str, _Delivered] = {}
        self._registered: dict[str, bool] = {}
        self._marks_behind = False
        self._silence: list[tuple[float, str, float]] = []
        """(when the node falls silent, node, its ``heard`` then): a heap, checked lazily."""
        self.last_error: str | None = None
        """Why the last write failed; None once a write succeeds again."""
        self._db: Database | None = None
        self._reader_db: Database | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError, *SqliteDatabase.errors)
        try:
            self._db = db = open_database(self.path, epoch=epoch, name=name)
            self._errors = (OSError, *SqliteDatabase.errors, *db.errors)
            db.prepare()
            self._reader_db = db.reader()
            self._load_marks()
        except OutboxError:
            self._close_connections()
            raise
        except Exception as exc:
            self._close_connections()
            if isinstance(exc, self._errors):
                raise OutboxError(f"outbox {self.where}: cannot open: {exc}") from exc
            raise

    def _close_connections(self) -> None:
        for db in (self._db, self._reader_db):
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()

    def _load_marks(self) -> None:
        """Rebuild every mark from disk (at start, and after a failed write)."""
        marks: dict[str, NodeMark] = {}
        assert self._db is not None
        for node_id, name, session, seq, state, state_session, registered, ended, interval, \
                ahead_session, ahead_seq in self._db.execute(
                    "SELECT node_id, node_name, session, seq, state, state_session, registered,"
                    " ended, interval_s, ahead_session, ahead_seq FROM nodes"):
            # Rows written before schema 2 kept the status and the state session apart and
            # took the greater id for the newer; the other one is over.
            current = max(filter(None, (session, state_session)), default=None)
            over = tuple(ended.split()) + tuple(
                s for s in (session, state_session) if s and s != current)
            truth = NodeTruth(current, state if state_session == current else None,
                              -1 if seq is None or session != current else seq,
                              tuple(dict.fromkeys(over)),
                              None if ahead_session is None else (ahead_session, ahead_seq))
            marks[node_id] = mark = NodeMark(truth, name, bool(self._registered.get(
                node_id, registered)), interval)
            old = self.marks.get(node_id)
            if old is not None:
                mark.heard, mark.silence = old.heard, old.silence
            else:
                self._listen(node_id, mark)
        # Delivered but not yet written (when reloading after a failed write): not pending.
        delivered: dict[str, _Delivered] = {}
        for done in (self._done, self._flushing):
            for node_id, items in done.items():
                delivered.setdefault(node_id, _Delivered()).merge(items)
        nothing = _Delivered()
        for node_id, session, seq, payload, received in self._db.execute(
                "SELECT node_id, session, seq, payload, received FROM pending_status"):
            mark = marks.setdefault(node_id, NodeMark())
            mark.pending_status = True
            if (session, seq) not in delivered.get(node_id, nothing).statuses:
                mark.pending = Item(node_id, "status", session, seq, None, payload, received)
        for node_id, transition_id in self._db.execute("SELECT node_id, id FROM transitions"):
            if transition_id not in delivered.get(node_id, nothing).transitions:
                marks.setdefault(node_id, NodeMark()).transitions.add(transition_id)
        self.marks = marks

    def close(self, *, flush: bool = True) -> None:
        """Write what was delivered (unless ``flush`` is False: a bridge that lost its lease
        writes nothing more) and close the connections."""
        if flush:
            with contextlib.suppress(*self._errors, OutboxError):
                self.flush()
        with self._write_lock, self._read_lock:
            self._close_connections()

    def _rollback(self, exc: BaseException) -> None:
        """Note a failed write and end its transaction, if the database has not already."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        assert self._db is not None
        self._db.rollback()

    def _failed(self, exc: BaseException) -> None:
        """After a failed write: end the transaction if SQLite has not, and make memory
        match the disk again (now, or before the next write)."""
        self._rollback(exc)
        self._marks_behind = True
        if isinstance(exc, NotActiveError):
            return
        with contextlib.suppress(*self._errors), self._marks_lock:
            self._load_marks()
            self._marks_behind = False

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
            assert db is not None
            try:
                if self._marks_behind:
                    with self._marks_lock:
                        self._load_marks()
                    self._marks_behind = False
                db.begin()
                with self._marks_lock:
                    for node_id, message, raw, received, retained in batch:
                        mark = self.marks.get(node_id)
                        if mark is None:
                            if len(self.marks) >= self.max_nodes:
                                result.too_many_nodes += 1
                                continue
                            mark = self.marks[node_id] = NodeMark()
                        if isinstance(message, StateMessage):
                            changed = self._record_state(db, node_id, mark, message, retained,
                                                         received, result, committed)
                        else:
                            changed = self._record_status(db, node_id, mark, message, raw,
                                                          received, result, committed)
                        if changed:
                            touched.add(node_id)
                db.commit()
            except NotActiveError as exc:
                self._failed(exc)
                raise
            except Exception as exc:
                self._failed(exc)
                if isinstance(exc, self._errors):
                    raise OutboxError(f"outbox {self.where}: write failed: {exc}") from exc
                raise
            except BaseException as exc:
                self._failed(exc)
                raise
            self.last_error = None
            with self._marks_lock:
                for mark, pending, added, dropped in committed:
                    if added is None:
                        mark.pending = pending
                    else:
                        mark.transitions.add(added)
                        mark.transitions.difference_update(dropped)
        return result, touched

    def _record_status(self, db: Database, node_id: str, mark: NodeMark,
                       message: StatusMessage | StatusHead, raw: bytes, received: float,
                       result: IngestResult, committed: list[_Committed]) -> bool:
        verdict, truth = mark.truth.observe_status(message.session, message.seq,
                                                   in_order=False)
        if verdict is not Verdict.ACCEPT:
            _count(result, verdict)
            return False
        if mark.pending_status:
            result.coalesced += 1
        db.execute("INSERT INTO pending_status (node_id, session, seq, payload, received) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                   "session = excluded.session, seq = excluded.seq, "
                   "payload = excluded.payload, received = excluded.received",
                   (node_id, message.session, message.seq, raw, received))
        mark.truth = truth
        mark.node_name = message.node_name or mark.node_name
        mark.interval_s = message.interval_s
        self._listen(node_id, mark, time.monotonic())
        self._save_node(db, node_id, mark, raw)
        mark.pending_status = True
        committed.append((mark, Item(node_id, "status", message.session, message.seq, None,
                                     raw, received), None, ()))
        result.accepted += 1
        return True

    def _record_state(self, db: Database, node_id: str, mark: NodeMark,
                      message: StateMessage, retained: bool, received: float,
                      result: IngestResult, committed: list[_Committed]) -> bool:
        verdict, truth = mark.truth.observe_state(message.session, message.state,
                                                  retained=retained)
        if verdict is not Verdict.ACCEPT:
            _count(result, verdict)
            return False
        withdrawn: list[int] = []
        if mark.lost is not None and message.state == "ready" and \
                received - mark.lost[1] < LOST_HOLD:
            # The node, or the process that replaced it, is back: the will was a moment's.
            withdrawn.append(mark.lost[0])
            db.execute("DELETE FROM transitions WHERE id = ?", (mark.lost[0],))
            result.withdrawn += 1
        snapshot = self._snapshot_for(db, node_id, mark, message.session, result, committed)
        added = int(db.execute("INSERT INTO transitions (node_id, session, state, snapshot, "
                               "received) VALUES (?, ?, ?, ?, ?) RETURNING id",
                               (node_id, message.session, message.state, snapshot, received)
                               ).fetchone()[0])
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
        mark.truth = truth
        mark.node_name = message.node_name or mark.node_name
        mark.interval_s = message.interval_s
        mark.lost = (added, received) if message.state == "lost" else None
        self._listen(node_id, mark, time.monotonic())
        self._save_node(db, node_id, mark, None)
        committed.append((mark, None, added, [*dropped, *withdrawn]))
        result.accepted += 1
        return True

    def _snapshot_for(self, db: Database, node_id: str, mark: NodeMark,
                      session: str, result: IngestResult,
                      committed: list[_Committed]) -> bytes | None:
        """The newest status of ``session`` to send along with a transition of that session.

        A pending status of the same session is folded into the transition (it would only be
        sent right after it); one of the session this transition supersedes is dropped; one
        of a session still ahead of the states stays pending.
        """
        truth = mark.truth
        if mark.pending_status:
            row = db.execute("SELECT session, payload FROM pending_status WHERE node_id = ?",
                             (node_id,)).fetchone()
            superseded = row is not None and session != truth.session and \
                row[0] == truth.session
            if row is None or row[0] == session or superseded:
                db.execute("DELETE FROM pending_status WHERE node_id = ?", (node_id,))
                mark.pending_status = False
                committed.append((mark, None, None, ()))
                result.coalesced += 1
                if row is not None and row[0] == session:
                    return bytes(row[1])
        newest = truth.newest_status
        if newest is None or newest[0] != session:
            return None
        row = db.execute("SELECT snapshot FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def _listen(self, node_id: str, mark: NodeMark, heard: float | None = None) -> None:
        """The node spoke at ``heard``: it falls silent ``stale_after`` its interval later."""
        if heard is not None:
            mark.heard, mark.silence = heard, ""
        if mark.interval_s is not None:
            heapq.heappush(self._silence, (mark.heard + stale_after(mark.interval_s),
                                           node_id, mark.heard))

    def silent_nodes(self, now: float | None = None) -> list[str]:
        """Nodes whose current session is ``ready`` but whose newest message is older than
        ``stale_after`` their report interval: the monitor is to be told they are offline.

        Neither a will nor ``disconnected`` reaches the broker when a node stops while its
        link is down (a broker restart); its retained ``ready`` and last status would keep it
        online at the monitor for good. Each silence is reported once."""
        now = time.monotonic() if now is None else now
        found: list[str] = []
        with self._marks_lock:
            while self._silence and self._silence[0][0] <= now:
                _, node_id, heard = heapq.heappop(self._silence)
                mark = self.marks.get(node_id)
                if mark is None or mark.heard != heard or mark.silence:
                    continue
                newest = mark.truth.newest_status
                session = newest[0] if newest else mark.truth.session
                if session is not None and mark.truth.state_of(session) == "ready":
                    mark.silence = "due"
                    found.append(node_id)
        return found

    @staticmethod
    def _save_node(db: Database, node_id: str, mark: NodeMark,
                   snapshot: bytes | None) -> None:
        truth = mark.truth
        ahead = truth.ahead or (None, None)
        db.execute(
            "INSERT INTO nodes (node_id, node_name, session, seq, state, state_session, "
            "snapshot, ended, interval_s, ahead_session, ahead_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name, "
            "session = excluded.session, seq = excluded.seq, state = excluded.state, "
            "state_session = excluded.state_session, "
            "snapshot = COALESCE(excluded.snapshot, nodes.snapshot), ended = excluded.ended, "
            "interval_s = excluded.interval_s, ahead_session = excluded.ahead_session, "
            "ahead_seq = excluded.ahead_seq",
            (node_id, mark.node_name, truth.session, truth.seq, truth.state, truth.session,
             snapshot, " ".join(truth.ended), mark.interval_s, *ahead))

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
            assert db is not None
            try:
                db.begin()
                db.executemany("DELETE FROM transitions WHERE id = ?", transitions)
                db.executemany("DELETE FROM pending_status WHERE node_id = ? AND session = ? "
                               "AND seq = ?", statuses)
                db.executemany("UPDATE nodes SET registered = ? WHERE node_id = ?",
                               [(int(v), k) for k, v in registered.items()])
                db.commit()
            except BaseException as exc:
                self._rollback(exc)
                with self._marks_lock:
                    for node, value in registered.items():
                        self._registered.setdefault(node, value)
                    for node, delivered in done.items():
                        self._done.setdefault(node, _Delivered()).merge(delivered)
                    self._flushing = {}
                if isinstance(exc, self._errors) and not isinstance(exc, OutboxError):
                    raise OutboxError(f"outbox {self.where}: write failed: {exc}") from exc
                raise
        self.last_error = None
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
                    if mark.pending is None and mark.silence == "due":
                        return self._silence_item(node_id, mark)
                    return mark.pending
                first = min(mark.transitions)
            row = self._read_transition(first)
            if row is not None:
                return Item(node_id, "state", row[0], -1, row[1], row[2], row[3], first)
            with self._marks_lock:  # dropped meanwhile (too many transitions)
                mark.transitions.discard(first)

    def _read_transition(self, transition_id: int) -> Any:
        """(session, state, snapshot, received) of a transition, None if it is gone; a
        connection cut meanwhile is opened again once."""
        for attempt in (1, 2):
            with self._read_lock:
                assert self._reader_db is not None
                try:
                    return self._reader_db.execute(
                        "SELECT session, state, snapshot, received FROM transitions "
                        "WHERE id = ?", (transition_id,)).fetchone()
                except self._errors as exc:
                    if attempt == 2:
                        raise OutboxError(f"outbox {self.where}: read failed: {exc}") from exc
                    log.warning("outbox %s: read failed (%s); trying again", self.where, exc)
        return None

    @staticmethod
    def _silence_item(node_id: str, mark: NodeMark) -> Item:
        truth = mark.truth
        session, seq = truth.newest_status or (truth.session or "", -1)
        heard = time.time() - (time.monotonic() - mark.heard)
        return Item(node_id, "silence", session, seq, "ready", None, heard)

    def done(self, item: Item) -> None:
        """The item reached the monitor (or was refused for good): it is never handed out
        again, and is removed from disk at the next ``flush()``."""
        if item.kind == "silence":
            with self._marks_lock:
                mark = self.marks.get(item.node_id)
                if mark is not None and mark.silence == "due":
                    mark.silence = "told"
            return
        with self._marks_lock:
            delivered = self._done.setdefault(item.node_id, _Delivered())
            mark = self.marks.get(item.node_id)
            if item.transition_id is not None:
                delivered.transitions.add(item.transition_id)
                if mark is not None:
                    mark.transitions.discard(item.transition_id)
            else:
                delivered.statuses.add((item.session, item.seq))
                if mark is not None:
                    truth = mark.truth
                    if truth.newest_status == (item.session, item.seq):
                        mark.pending_status = False  # nothing newer is being recorded
                    if mark.pending is not None and \
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
            return NodeMark(found.truth, found.node_name, found.registered, found.interval_s,
                            pending_status=found.pending_status)

    def nodes_with_work(self) -> list[str]:
        with self._marks_lock:
            return [node for node, mark in self.marks.items()
                    if mark.pending is not None or mark.transitions]

    def depth(self) -> tuple[int, int]:
        """(undelivered transitions, undelivered statuses), from memory."""
        with self._marks_lock:
            marks = list(self.marks.values())
        return (sum(len(m.transitions) for m in marks),
                sum(1 for m in marks if m.pending is not None))

    def known_nodes(self) -> int:
        with self._marks_lock:
            return len(self.marks)


def _count(result: IngestResult, verdict: Verdict) -> None:
    if verdict is Verdict.DUPLICATE:
        result.duplicates += 1
    else:
        result.stale += 1

