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
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, get_args

from bridge.database import (
    SCHEMA_VERSION,
    Database,
    NotActiveError,
    OutboxError,
    SqliteDatabase,
    open_database,
    redact,
)
from bridge.incoming import Received, StatusHead
from yl_core import truth as truth_rules
from yl_core.protocol import State, StateMessage, stale_after
from yl_core.truth import Health, NodeTruth, Verdict

log = logging.getLogger(__name__)

MAX_TRANSITIONS_PER_NODE = 1000

__all__ = ["SCHEMA_VERSION", "NotActiveError", "Outbox", "OutboxError"]


@dataclass
class NodeMark:
    """What the bridge knows of one node (kept in memory, mirrored in ``nodes``).

    ``truth`` and ``pending_row`` follow the writer's transaction; ``pending`` (the status
    to deliver) and ``transitions`` (ids of the transitions to deliver) follow what is
    committed, so forwarders find a node's next item without reading the disk.
    """

    truth: NodeTruth = field(default_factory=NodeTruth)
    node_name: str = ""
    registered: bool = False
    """The monitor knows the node: a heartbeat for it is recorded, not taken as its
    registration."""
    interval_s: float | None = None
    told: Told = ""
    """What the monitor was last told of the node: ``up``, ``down`` (empty: nothing)."""
    lost_at: float | None = None
    """When (wall clock) the newest ``lost`` was taken."""
    replaced_at: float | None = None
    """When (wall clock) the current session took over from a process the broker had just
    dropped for it (``truth.TAKEOVER_GAP``)."""
    lost: tuple[int, float] | None = None
    """The node's newest transition if it is a ``lost`` that does not count yet: (id, when
    it counts), see ``truth.lost_counts_from``."""
    pending_row: tuple[str, int, float] | None = None
    """The node's undelivered status as its row says: (session, seq, received)."""
    pending: Item | None = None
    transitions: set[int] = field(default_factory=set)
    heard: float | None = None
    """When this outbox last took a message of the node (monotonic); None: not since it
    opened. Never read from disk: a term counts silences from its own start."""
    silent: float | None = None
    """The node fell silent after it was last heard at this time (wall clock): a fact of its
    story, recorded (``nodes.silent_since``) and not yet delivered. Recorded only while
    nothing of the node waits, so it comes before anything recorded after it."""
    told_at: float = 0.0
    """When ``told`` last changed (monotonic)."""
    stamped: float = 0.0
    """The newest ``timestamp`` (epoch seconds) of a request about the node that the monitor
    took, kept across restarts and takeovers: a node's requests go forward in time."""
    retell: bool = False
    """The monitor forgot the node, or shows it otherwise than it was told: it is to be told
    the node's current truth again (``Outbox.reconcile``; kept in memory only: the next
    look after a restart finds the same)."""


Told = Literal["", "up", "down"]
"""What the monitor was last told of a node (``""``: nothing yet), as the outbox keeps it."""
TOLD_WORDS: tuple[Told, ...] = get_args(Told)


STATE_WORDS: tuple[State, ...] = get_args(State)
Word = TypeVar("Word", bound=str)


def _one_of(value: object, words: tuple[Word, ...], what: str) -> Word:
    """``value`` read back from the outbox's database as one of ``words``."""
    for word in words:
        if value == word:
            return word
    raise ValueError(f"outbox: {what} is {value!r}, not one of {words}")


def told_word(value: object) -> Told:
    """A ``told`` read back from the outbox's database."""
    return _one_of(value, TOLD_WORDS, "a node's 'told'")


def state_word(value: object) -> State:
    """A transition's ``state`` read back from the outbox's database."""
    return _one_of(value, STATE_WORDS, "a transition's 'state'")


ItemKind = Literal["state", "status", "silence", "retell"]
"""A transition, the pending status, a silence (the node's newest status gone stale, as
recorded), or the node's current truth told again to a monitor that forgot it or shows it
otherwise."""


@dataclass(frozen=True)
class Item:
    """One thing to deliver: a transition (``transition_id``), the pending status, or
    (``silence``, ``retell``) the node's newest status, last heard at ``received``.

    Every item states the node as of itself: ``state`` (the transition's, or its session's
    when the status was taken), ``status_age`` (how old the node's newest status was then;
    ``inf``: stale) and ``stamp`` (the time it states the node at, wall clock; None: a
    status's own ``timestamp``)."""

    node_id: str
    kind: ItemKind
    session: str
    seq: int
    state: State | None
    payload: bytes | None
    received: float
    transition_id: int | None = None
    counts_from: float = 0.0
    """Not to be sent before this (wall clock): a ``lost`` its session may yet withdraw."""
    status_age: float = 0.0
    stamp: float | None = None


class _Committed(NamedTuple):
    """A change to a mark, made once the batch is committed."""

    mark: NodeMark
    pending: Item | None = None
    """The node's pending status from now on (when ``added`` is None)."""
    added: int | None = None
    """A transition added."""
    dropped: Iterable[int] = ()
    """Transitions dropped with it."""


class _Deliveries(NamedTuple):
    """What a flush writes: per node, what it had delivered and columns of its row."""

    done: dict[str, _Delivered]
    updates: dict[str, dict[str, Any]]


@dataclass
class _Delivered:
    """What a node had delivered since the last flush."""

    transitions: set[int] = field(default_factory=set)
    statuses: set[tuple[str, int]] = field(default_factory=set)
    silence: float | None = None
    """The ``silent_since`` of the silence delivered."""
    stamped: float = 0.0
    """The newest ``timestamp`` the monitor took among them."""

    def merge(self, other: _Delivered) -> None:
        self.transitions |= other.transitions
        self.statuses |= other.statuses
        if other.silence is not None:
            self.silence = other.silence
        self.stamped = max(self.stamped, other.stamped)


@dataclass
class IngestResult:
    accepted: int = 0
    coalesced: int = 0
    stale: int = 0
    duplicates: int = 0
    dropped: int = 0
    too_many_nodes: int = 0
    withdrawn: int = 0


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
        self._node_updates: dict[str, dict[str, Any]] = {}
        """Per node, columns of ``nodes`` set by the forwarder (``registered``, ``told``),
        written at the next ``flush()``."""
        self._marks_behind = False
        self._silence: list[tuple[float, str]] = []
        """(earliest time the node may be silent, node): a heap with at most one entry per
        node (those in ``_watched``), checked lazily."""
        self._watched: set[str] = set()
        self.silence_from: float | None = None
        """Since when (monotonic) the bridge's broker session is connected and caught up
        with what the broker kept for it; None while it is not. No node is judged
        silent before ``stale_after`` its interval past this."""
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
        delivered: dict[str, _Delivered] = {}
        for done in (self._done, self._flushing):
            for node_id, items in done.items():
                delivered.setdefault(node_id, _Delivered()).merge(items)
        nothing = _Delivered()
        for node_id, name, session, seq, state, state_session, registered, ended, interval, \
                told, stamped, silent, aside_session, aside_state, aside_seq in \
                self._db.execute(
                    "SELECT node_id, node_name, session, seq, state, state_session, registered,"
                    " ended, interval_s, told, stamped, silent_since, aside_session,"
                    " aside_state, aside_seq FROM nodes"):
            # Rows written before schema 2 kept the status and the state session apart and
            # took the greater id for the newer; the other one is over.
            current = max(filter(None, (session, state_session)), default=None)
            over = tuple(ended.split()) + tuple(
                s for s in (session, state_session) if s and s != current)
            truth = NodeTruth(current, state if state_session == current else None,
                              -1 if seq is None or session != current else seq,
                              tuple(dict.fromkeys(over)),
                              None if aside_session is None else NodeTruth(
                                  aside_session,
                                  None if aside_state is None else state_word(aside_state),
                                  -1 if aside_seq is None else aside_seq))
            updates = self._node_updates.get(node_id, {})
            marks[node_id] = mark = NodeMark(
                truth, name, bool(updates.get("registered", registered)), interval,
                told_word(updates.get("told", told)), stamped=float(stamped or 0.0))
            if silent is not None and delivered.get(node_id, nothing).silence != silent:
                mark.silent = float(silent)
            old = self.marks.get(node_id)
            if old is not None:  # what this term saw, kept across a reload
                mark.heard = old.heard
                mark.lost_at, mark.replaced_at = old.lost_at, old.replaced_at
                mark.stamped = max(mark.stamped, old.stamped)
            self._watch(node_id)
        # Delivered but not yet written (when reloading after a failed write): not pending.
        for node_id, session, seq, payload, received in self._db.execute(
                "SELECT node_id, pending_session, pending_seq, snapshot, pending_received "
                "FROM nodes WHERE pending_session IS NOT NULL"):
            mark = marks[node_id]
            mark.pending_row = (session, seq, received)
            if (session, seq) not in delivered.get(node_id, nothing).statuses:
                mark.pending = Item(node_id, "status", session, seq,
                                    mark.truth.state_of(session), payload, received)
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

    def record(self, batch: Iterable[Received], *, flush: bool = False
               ) -> tuple[IngestResult, set[str]]:
        """Record a batch of valid, checked messages in one committed transaction; returns
        counts and the nodes to notify: those touched and (with ``flush``, whose writes go in
        the same transaction) those whose deliveries were written and have a next item.

        What forwarders send (a mark's ``pending`` and ``transitions``) changes only after the
        commit, so nothing uncommitted is ever sent; the rest of a mark (read for the body
        and the registration) changes before it, so the commit, which waits for the disk,
        does not hold up the forwarders."""
        result = IngestResult()
        touched: set[str] = set()
        committed: list[_Committed] = []
        deliveries = self._take_deliveries() if flush else None
        with self._write_lock:
            db = self._db
            assert db is not None
            try:
                if self._marks_behind:
                    with self._marks_lock:
                        self._load_marks()
                    self._marks_behind = False
                with db.pipeline():
                    db.begin()
                    if deliveries is not None:
                        self._write_deliveries(db, deliveries)
                    self._record_batch(db, batch, result, touched, committed)
                    db.commit()
            except BaseException as exc:
                if deliveries is not None:
                    self._give_back(deliveries)
                self._failed(exc)
                if isinstance(exc, self._errors) and not isinstance(exc, OutboxError):
                    raise OutboxError(f"outbox {self.where}: write failed: {exc}") from exc
                raise
            self.last_error = None
            with self._marks_lock:
                for change in committed:
                    if change.added is None:
                        change.mark.pending = change.pending
                    else:
                        change.mark.transitions.add(change.added)
                        change.mark.transitions.difference_update(change.dropped)
        if deliveries is not None:
            touched |= self._written(deliveries)
        return result, touched

    def _record_batch(self, db: Database, batch: Iterable[Received], result: IngestResult,
                      touched: set[str], committed: list[_Committed]) -> None:
        writes = _StatusWrites()
        with self._marks_lock:
            for incoming in batch:
                checked = incoming.checked
                assert checked is not None
                assert checked.node_id is not None
                node_id, message = checked.node_id, checked.message
                raw, received = incoming.payload, incoming.sent
                mark = self.marks.get(node_id)
                if mark is None:
                    if len(self.marks) >= self.max_nodes:
                        result.too_many_nodes += 1
                        continue
                    mark = self.marks[node_id] = NodeMark()
                changed = False
                if isinstance(message, StateMessage):
                    writes.flush(db)  # a state reads what the statuses wrote
                    changed = self._record_state(db, node_id, mark, message,
                                                 incoming.retained, received, result,
                                                 committed)
                elif message is not None:
                    seen = mark.truth.observe_status(message.session, message.seq,
                                                     retained=incoming.retained)
                    if _stays_ended(mark.truth, message.session, seen):
                        writes.flush(db)
                        changed = self._record_last_words(db, node_id, mark, message, seen,
                                                          raw, received, result, committed)
                    elif not incoming.retained and _starts(mark.truth, message.session, seen):
                        writes.flush(db)
                        changed = self._record_start(db, node_id, mark, message, seen[1],
                                                     raw, received, result, committed)
                    else:
                        changed = self._record_status(writes, node_id, mark, message, seen,
                                                      raw, received, result, committed)
                if changed:
                    touched.add(node_id)
            writes.flush(db)

    def _record_status(self, writes: _StatusWrites, node_id: str, mark: NodeMark,
                       message: StatusHead, seen: tuple[Verdict, NodeTruth], raw: bytes,
                       received: float, result: IngestResult,
                       committed: list[_Committed]) -> bool:
        """``seen``: what ``mark.truth.observe_status`` made of the status."""
        verdict, truth = seen
        if verdict is not Verdict.ACCEPT:
            _count(result, verdict)
            return False
        if mark.pending_row is not None:
            result.coalesced += 1
        mark.pending_row = (message.session, message.seq, received)
        mark.truth = truth
        mark.node_name = message.node_name or mark.node_name
        mark.interval_s = message.interval_s
        self._heard(node_id, mark, received)
        writes.nodes[node_id] = _node_row(node_id, mark, raw)
        committed.append(_Committed(mark, pending=Item(
            node_id, "status", message.session, message.seq, truth.state_of(message.session),
            raw, received)))
        result.accepted += 1
        return True

    def _record_start(self, db: Database, node_id: str, mark: NodeMark, message: StatusHead,
                      truth: NodeTruth, raw: bytes, received: float, result: IngestResult,
                      committed: list[_Committed]) -> bool:
        """A live status that starts its session (``_starts``) before that session's
        ``ready`` came: the start is a ``ready`` transition of the node's story all the same,
        carrying the status (so a life that ends before its status went out was still told
        online first); the ``ready`` that may follow is a duplicate. ``truth``: the node's
        truth after the status."""
        if mark.pending_row is not None:  # an earlier session's: superseded
            result.coalesced += 1
            mark.pending_row = None
            committed.append(_Committed(mark))
        mark.truth = truth
        mark.node_name = message.node_name or mark.node_name
        mark.interval_s = message.interval_s
        self._heard(node_id, mark, received)
        self._save_node(db, node_id, mark, raw)
        added = _insert_transition(db, node_id, message.session, "ready", raw, received)
        committed.append(_Committed(mark, added=added))
        result.accepted += 1
        return True

    def _record_last_words(self, db: Database, node_id: str, mark: NodeMark,
                           message: StatusHead, seen: tuple[Verdict, NodeTruth], raw: bytes,
                           received: float, result: IngestResult,
                           committed: list[_Committed]) -> bool:
        """A status of a session that has ended and stays so (``_stays_ended``): a retained
        copy newer than what came before the end (the session's queue at the broker
        overflowed, or a retained ``lost`` told of the end first). Nothing of a life goes to
        the monitor after its ``offline`` but that ``offline``: the status becomes the
        snapshot of the end while the end has not been handed out (``_not_handed_out``);
        otherwise the end is told once more, with it. ``seen``: what
        ``mark.truth.observe_status`` made of the status."""
        verdict, truth = seen
        if verdict is not Verdict.ACCEPT:
            _count(result, verdict)
            return False
        mark.truth = truth
        last = db.execute("SELECT id, session FROM transitions WHERE node_id = ? "
                          "ORDER BY id DESC LIMIT 1", (node_id,)).fetchone()
        self._save_node(db, node_id, mark, raw)
        result.coalesced += 1
        if last is not None and last[1] == message.session and \
                _not_handed_out(mark, last[0], committed):
            db.execute("UPDATE transitions SET snapshot = ? WHERE id = ?", (raw, last[0]))
            return False
        state = truth.state_of(message.session)
        if state is None:
            return False
        added = _insert_transition(db, node_id, message.session, state, raw, received)
        committed.append(_Committed(mark, added=added))
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
        if mark.lost is not None and message.state == "ready" and not retained and \
                received < mark.lost[1] and (message.session == mark.truth.session or
                                             mark.truth.lost_aside(message.session)):
            # Before the held ``lost`` counts, the process dropped by its replaced rival's one
            # reconnect is back, or that rival (whose reconnect it was) spoke: a takeover
            # fight, one blip.
            withdrawn.append(mark.lost[0])
            db.execute("DELETE FROM transitions WHERE id = ?", (mark.lost[0],))
            result.withdrawn += 1
        if message.state == "ready" and mark.truth.state == "lost" and \
                message.session != mark.truth.session and mark.lost_at is not None and \
                received - mark.lost_at <= truth_rules.TAKEOVER_GAP:
            mark.replaced_at = received
        snapshot = self._snapshot_for(db, node_id, mark, message.session, result, committed)
        added = _insert_transition(db, node_id, message.session, message.state, snapshot,
                                   received)
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
        counts_from = truth_rules.lost_counts_from(received, mark.replaced_at)
        if message.state == "lost":
            mark.lost_at = received
        mark.lost = (added, counts_from) if message.state == "lost" and \
            counts_from > received else None
        self._heard(node_id, mark, received)
        self._save_node(db, node_id, mark, None)
        committed.append(_Committed(mark, added=added, dropped=[*dropped, *withdrawn]))
        result.accepted += 1
        return True

    def _snapshot_for(self, db: Database, node_id: str, mark: NodeMark,
                      session: str, result: IngestResult,
                      committed: list[_Committed]) -> bytes | None:
        """The newest status of ``session`` to send along with a transition of that session.

        A pending status of the same session is folded into the transition (it would only be
        sent right after it); one of the session this transition supersedes is dropped.
        """
        truth = mark.truth
        pending = mark.pending_row
        folded = pending is not None and pending[0] == session
        if folded or (pending is not None and session != truth.session and
                      pending[0] == truth.session):
            mark.pending_row = None  # written with the node's row
            committed.append(_Committed(mark))  # no pending status
            result.coalesced += 1
        newest = truth.newest_status
        if not folded and (newest is None or newest[0] != session):
            return None
        row = db.execute("SELECT snapshot FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def _heard(self, node_id: str, mark: NodeMark, sent: float) -> None:
        """The node spoke at ``sent`` (wall clock, when the broker got it)."""
        now = time.monotonic()
        mark.heard = now - min(max(time.time() - sent, 0.0), now)
        self._watch(node_id)

    def _watch(self, node_id: str) -> None:
        """Make sure ``record_silences`` looks at the node (one heap entry per node)."""
        if node_id not in self._watched:
            self._watched.add(node_id)
            heapq.heappush(self._silence, (0.0, node_id))

    def caught_up(self, at: float | None) -> None:
        """The bridge's broker session is connected and caught up since ``at``
        (monotonic), or (None) is not: see ``silence_from``."""
        with self._marks_lock:
            self.silence_from = at

    def next_silence_check(self) -> float | None:
        """When (monotonic) ``record_silences`` has something to look at next; None: not
        while the broker session is not caught up, or no node is watched."""
        with self._marks_lock:
            if self.silence_from is None or not self._silence:
                return None
            return self._silence[0][0]

    def record_silences(self, now: float | None = None) -> list[str]:
        """Record, as a fact of each node's story, that a node fell silent: the monitor was
        last told it is up, its current session is ``ready``, nothing of it waits, and its
        newest message is older than ``stale_after`` its report interval (counted from no
        earlier than ``silence_from``). Returns the nodes recorded (each silence once).

        Neither a will nor ``disconnected`` reaches the broker when a node stops while its
        link is down (a broker restart); its retained ``ready`` and last status would keep it
        online at the monitor for good. The writer's thread only."""
        now = time.monotonic() if now is None else now
        found: dict[str, float] = {}
        with self._marks_lock:
            since = self.silence_from
            if since is None:
                return []
            while self._silence and self._silence[0][0] < now:
                _, node_id = heapq.heappop(self._silence)
                mark = self.marks.get(node_id)
                if mark is None or mark.interval_s is None:
                    self._watched.discard(node_id)
                    continue
                heard = since if mark.heard is None else max(mark.heard, since)
                silent_at = heard + stale_after(mark.interval_s)
                if silent_at >= now:  # not older than the limit yet (liveness's rule)
                    heapq.heappush(self._silence, (silent_at, node_id))
                    continue
                self._watched.discard(node_id)
                newest = mark.truth.newest_status
                session = newest[0] if newest else mark.truth.session
                state = None if session is None else mark.truth.state_of(session)
                verdict = truth_rules.liveness(state, now - heard, mark.interval_s)
                if verdict.reason is Health.STALE and mark.told == "up" and \
                        mark.pending is None and mark.pending_row is None and \
                        not mark.transitions and mark.silent is None:
                    found[node_id] = time.time() - (now - heard)
        if not found:
            return []
        def watch_again() -> None:
            with self._marks_lock:
                for node_id in found:
                    self._watch(node_id)

        with self._write_lock:
            self._commit(lambda db: db.executemany(
                "UPDATE nodes SET silent_since = ?, silent_snapshot = snapshot "
                "WHERE node_id = ?", [(heard, node) for node, heard in found.items()]),
                watch_again)
            with self._marks_lock:
                for node_id, heard in found.items():
                    mark = self.marks.get(node_id)
                    if mark is not None:
                        mark.silent = heard
        return list(found)

    @staticmethod
    def _save_node(db: Database, node_id: str, mark: NodeMark,
                   snapshot: bytes | None) -> None:
        db.execute(_SAVE_NODE, _node_row(node_id, mark, snapshot))

    def flush(self) -> set[str]:
        """Write the deliveries and registrations reported since the last flush; returns
        the nodes written that have a next item to hand out now."""
        deliveries = self._take_deliveries()
        if deliveries is None:
            return set()
        with self._write_lock:
            self._commit(lambda db: self._write_deliveries(db, deliveries),
                         lambda: self._give_back(deliveries))
        return self._written(deliveries)

    def _commit(self, write: Callable[[Database], None], undo: Callable[[], None]) -> None:
        """``write`` in one committed transaction (the caller holds ``_write_lock``). On a
        failure: roll back, ``undo`` what memory was to take from it, and raise (an
        ``OutboxError`` for the database's errors)."""
        db = self._db
        assert db is not None
        try:
            with db.pipeline():
                db.begin()
                write(db)
                db.commit()
        except BaseException as exc:
            self._rollback(exc)
            undo()
            if isinstance(exc, self._errors) and not isinstance(exc, OutboxError):
                raise OutboxError(f"outbox {self.where}: write failed: {exc}") from exc
            raise
        self.last_error = None

    def _take_deliveries(self) -> _Deliveries | None:
        """What ``done`` and ``_update`` reported since the last flush, now being written."""
        with self._marks_lock:
            if not (self._done or self._node_updates):
                return None
            deliveries = _Deliveries(self._done, self._node_updates)
            self._done, self._node_updates = {}, {}
            self._flushing = deliveries.done
            return deliveries

    @staticmethod
    def _write_deliveries(db: Database, deliveries: _Deliveries) -> None:
        done = deliveries.done
        db.executemany("DELETE FROM transitions WHERE id = ?",
                       [(t,) for d in done.values() for t in d.transitions])
        db.executemany("UPDATE nodes SET silent_since = NULL, silent_snapshot = NULL "
                       "WHERE node_id = ? AND silent_since = ?",
                       [(node, d.silence) for node, d in done.items()
                        if d.silence is not None])
        db.executemany("UPDATE nodes SET pending_session = NULL, pending_seq = NULL, "
                       "pending_received = NULL, stamped = ? WHERE node_id = ? AND "
                       "pending_session = ? AND pending_seq = ?",
                       [(d.stamped, node, s, q) for node, d in done.items()
                        for s, q in d.statuses])
        # A status replaced meanwhile leaves the stamp to its successor's delivery.
        db.executemany("UPDATE nodes SET stamped = ? WHERE node_id = ?",
                       [(d.stamped, node) for node, d in done.items()
                        if d.transitions or d.silence is not None])
        for column in ("registered", "told"):
            db.executemany(f"UPDATE nodes SET {column} = ? WHERE node_id = ?",  # noqa: S608
                           [(_column_value(u[column]), node)
                            for node, u in deliveries.updates.items() if column in u])

    def _give_back(self, deliveries: _Deliveries) -> None:
        """A write of ``deliveries`` failed: they are written with the next one."""
        with self._marks_lock:
            for node, columns in deliveries.updates.items():
                newer = self._node_updates.setdefault(node, {})
                for column, value in columns.items():
                    newer.setdefault(column, value)
            for node, delivered in deliveries.done.items():
                self._done.setdefault(node, _Delivered()).merge(delivered)
            self._flushing = {}

    def _written(self, deliveries: _Deliveries) -> set[str]:
        """``deliveries`` are on disk: the nodes among them that have a next item."""
        with self._marks_lock:
            self._flushing = {}
            marks = self.marks
            return {node for node in deliveries.done
                    if (mark := marks.get(node)) is not None and
                    (mark.pending is not None or mark.transitions or
                     mark.silent is not None)}

    # --- delivery (forwarder threads) -----------------------------------------------------

    def next_item(self, node_id: str) -> Item | None:
        """The node's oldest undelivered fact: its silence, else its oldest transition, else
        its pending status (else its truth to tell again, ``reconcile``).

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
                silent = mark.silent
                if silent is None and not mark.transitions and \
                        (mark.pending is not None or not mark.retell):
                    return mark.pending
                first = min(mark.transitions, default=None)
            if silent is not None:
                return self._silence_item(node_id, mark, silent)
            if first is None:
                return self._retell_item(node_id, mark)
            row = self._read_transition(first)
            if row is not None:
                lost = mark.lost
                return Item(node_id, "state", row[0], -1, state_word(row[1]), row[2], row[3],
                            first, lost[1] if lost is not None and lost[0] == first else 0.0,
                            stamp=row[3])
            with self._marks_lock:  # dropped meanwhile (too many transitions)
                mark.transitions.discard(first)

    def _read_transition(self, transition_id: int) -> Any:
        """(session, state, snapshot, received) of a transition, None if it is gone."""
        return self._read("SELECT session, state, snapshot, received FROM transitions "
                          "WHERE id = ?", (transition_id,))

    def _read(self, query: str, parameters: tuple[Any, ...]) -> Any:
        """One row read on the forwarder's connection, None if there is none; a connection
        cut meanwhile is opened again once."""
        for attempt in (1, 2):
            with self._read_lock:
                assert self._reader_db is not None
                try:
                    return self._reader_db.execute(query, parameters).fetchone()
                except self._errors as exc:
                    if attempt == 2:
                        raise OutboxError(f"outbox {self.where}: read failed: {exc}") from exc
                    log.warning("outbox %s: read failed (%s); trying again", self.where, exc)
        return None

    def _silence_item(self, node_id: str, mark: NodeMark, since: float) -> Item:
        """The silence recorded: the node's newest status then, last heard at ``since``
        (wall clock), stale from ``stale_after`` its interval later."""
        session, seq, snapshot = self._newest_status(node_id, mark, "silent_snapshot")
        interval = mark.interval_s
        return Item(node_id, "silence", session, seq, "ready", snapshot, since,
                    status_age=math.inf,
                    stamp=since + (0.0 if interval is None else stale_after(interval)))

    def _newest_status(self, node_id: str, mark: NodeMark, column: str = "snapshot"
                       ) -> tuple[str, int, bytes | None]:
        """(session, seq, payload) of the node's newest status, the payload from its row's
        ``column`` (``silent_snapshot``: the one that went stale)."""
        node = mark.truth
        session, seq = node.newest_status or (node.session or "", -1)
        row = self._read(f"SELECT {column} FROM nodes WHERE node_id = ?",  # noqa: S608
                         (node_id,))
        return session, seq, bytes(row[0]) if row is not None and row[0] is not None else None

    def _retell_item(self, node_id: str, mark: NodeMark) -> Item:
        """The node's current truth: its newest status, last heard at ``received`` (wall
        clock), to tell a monitor that forgot the node or shows it otherwise."""
        session, seq, snapshot = self._newest_status(node_id, mark)
        now, wall = time.monotonic(), time.time()
        with self._marks_lock:
            heard = mark.heard if self.silence_from is None or mark.heard is None \
                else max(mark.heard, self.silence_from)
            if heard is None:
                heard = self.silence_from
        received = wall if heard is None else wall - (now - heard)
        return Item(node_id, "retell", session, seq, mark.truth.state_of(session), snapshot,
                    received, status_age=max(wall - received, 0.0), stamp=wall)

    def done(self, item: Item, stamped: float = 0.0) -> bool:
        """The item reached the monitor (or was refused for good): it is never handed out
        again, and is removed from disk at the next ``flush()``. ``stamped``: the
        ``timestamp`` (epoch seconds) of the request the monitor took, kept as the node's
        newest (``stamped``) if it is. Returns whether the node's next item waits for that
        write (``defers_writes``; the writer notifies the node once it is on disk)."""
        if item.kind == "retell":
            with self._marks_lock:
                mark = self.marks.get(item.node_id)
                if mark is not None:
                    mark.retell = False
            return False
        with self._marks_lock:
            delivered = self._done.setdefault(item.node_id, _Delivered())
            mark = self.marks.get(item.node_id)
            if mark is not None and stamped > mark.stamped:
                mark.stamped = stamped
            delivered.stamped = max(delivered.stamped, mark.stamped if mark else stamped)
            if item.kind == "silence":
                delivered.silence = item.received
                if mark is not None and mark.silent == item.received:
                    mark.silent = None
            elif item.transition_id is not None:
                delivered.transitions.add(item.transition_id)
                if mark is not None:
                    mark.transitions.discard(item.transition_id)
            else:
                delivered.statuses.add((item.session, item.seq))
                if mark is not None:
                    if mark.pending_row is not None and \
                            mark.pending_row[:2] == (item.session, item.seq):
                        mark.pending_row = None  # nothing newer is being recorded
                    if mark.pending is not None and \
                            (mark.pending.session, mark.pending.seq) == (item.session, item.seq):
                        mark.pending = None
        self._changed()
        return self.defers_writes

    def settled(self, node_id: str) -> bool:
        """Nothing of the node is recorded beyond what it was last told: no transition, no
        status (being recorded or to deliver), no silence, no retelling pending."""
        with self._marks_lock:
            mark = self.marks.get(node_id)
            return mark is not None and not mark.transitions and mark.pending is None and \
                mark.pending_row is None and mark.silent is None and not mark.retell and \
                node_id not in self._done and node_id not in self._flushing

    def set_registered(self, node_id: str, registered: bool) -> None:
        """Whether the monitor knows the node (written at the next ``flush()``)."""
        self._update(node_id, "registered", registered)

    def mark_told(self, node_id: str, told: Told) -> bool:
        """What the monitor now shows of the node: ``up`` or ``down`` (written at the next
        ``flush()``); whether that is a change."""
        return self._update(node_id, "told", told)

    def stamped(self, node_id: str) -> float:
        """The newest ``timestamp`` of a request about the node the monitor took (0.0:
        none)."""
        with self._marks_lock:
            mark = self.marks.get(node_id)
            return 0.0 if mark is None else mark.stamped

    def know_only(self, listed: Iterable[str]) -> None:
        """The monitor listed these nodes, and no others: every node's ``registered``
        follows."""
        listed = set(listed)
        with self._marks_lock:
            changed = [(node, node in listed) for node, mark in self.marks.items()
                       if mark.registered != (node in listed)]
        for node, registered in changed:
            self.set_registered(node, registered)

    def reconcile(self, shown: Mapping[str, str | None], words: Mapping[Told, str],
                  since: float) -> list[str]:
        """The monitor's node list, asked for at ``since`` (monotonic): ``shown`` is the
        status word it shows for each node it lists (None: it shows none); ``words`` the
        word each ``told`` stands for there. Every node's ``registered`` follows the list.
        A node told something before ``since`` that the monitor no longer lists, or shows
        otherwise, is to be told its current truth again (once it has nothing else to
        deliver): those nodes are returned."""
        self.know_only(shown)
        again: list[str] = []
        with self._marks_lock:
            for node, mark in self.marks.items():
                if mark.told not in words or mark.told_at > since or mark.retell:
                    continue
                listed = node in shown
                word = shown.get(node)
                if not listed or (word is not None and word != words[mark.told]):
                    mark.retell = True
                    again.append(node)
        return again

    def _update(self, node_id: str, column: str, value: Any) -> bool:
        with self._marks_lock:
            mark = self.marks.get(node_id)
            if mark is None:
                return False
            if column == "told":
                self._watch(node_id)
            if getattr(mark, column) == value:
                return False
            if column == "told":
                mark.told_at = time.monotonic()
            setattr(mark, column, value)
            self._node_updates.setdefault(node_id, {})[column] = value
        self._changed()
        return True

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
                            found.told, pending_row=found.pending_row,
                            heard=found.heard)

    def nodes_told(self, word: Told) -> list[str]:
        """The nodes the monitor was last told are ``word`` (``up``, ``down``)."""
        with self._marks_lock:
            return [node for node, mark in self.marks.items() if mark.told == word]

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


_SAVE_NODE = (
    "INSERT INTO nodes (node_id, node_name, session, seq, state, state_session, "
    "snapshot, ended, interval_s, pending_session, pending_seq, "
    "pending_received, aside_session, aside_state, aside_seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name, "
    "session = excluded.session, seq = excluded.seq, state = excluded.state, "
    "state_session = excluded.state_session, "
    "snapshot = COALESCE(excluded.snapshot, nodes.snapshot), ended = excluded.ended, "
    "interval_s = excluded.interval_s, pending_session = excluded.pending_session, "
    "pending_seq = excluded.pending_seq, pending_received = excluded.pending_received, "
    "aside_session = excluded.aside_session, aside_state = excluded.aside_state, "
    "aside_seq = excluded.aside_seq")


def _node_row(node_id: str, mark: NodeMark, snapshot: bytes | None) -> tuple[Any, ...]:
    truth = mark.truth
    aside = truth.aside
    return (node_id, mark.node_name, truth.session, truth.seq, truth.state, truth.session,
            snapshot, " ".join(truth.ended), mark.interval_s,
            *(mark.pending_row or (None, None, None)),
            *((None, None, None) if aside is None else (aside.session, aside.state, aside.seq)))


@dataclass
class _StatusWrites:
    """The rows a batch's statuses write, per node the newest, written together (one round
    trip to PostgreSQL for the batch, not one per status)."""

    nodes: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def flush(self, db: Database) -> None:
        if self.nodes:
            db.executemany(_SAVE_NODE, list(self.nodes.values()))
            self.nodes.clear()


def _insert_transition(db: Database, node_id: str, session: str, state: State,
                       snapshot: bytes | None, received: float) -> int:
    """Add a transition to the node's story; its id."""
    return int(db.execute("INSERT INTO transitions (node_id, session, state, snapshot, "
                          "received) VALUES (?, ?, ?, ?, ?) RETURNING id",
                          (node_id, session, state, snapshot, received)).fetchone()[0])


def _not_handed_out(mark: NodeMark, transition_id: int, committed: list[_Committed]) -> bool:
    """The node's transition ``transition_id`` has not been handed out to a forwarder: it
    was recorded in this very batch, or it waits behind an older transition of the node (a
    node's transitions go out oldest first, one at a time)."""
    if any(c.added == transition_id for c in committed):
        return True
    return transition_id in mark.transitions and transition_id != min(mark.transitions)


def _starts(truth: NodeTruth, session: str, seen: tuple[Verdict, NodeTruth]) -> bool:
    """A live status of ``session`` that, in a node's known story, makes it ``ready`` when
    it was not (``seen``: what ``truth.observe_status`` made of it): a new session, or a
    ``lost`` one back (its ``ready`` was lost on the way, or a node published a status
    before it)."""
    verdict, after = seen
    return truth.session is not None and truth.state_of(session) != "ready" and \
        verdict is Verdict.ACCEPT and after.state_of(session) == "ready"


def _stays_ended(truth: NodeTruth, session: str, seen: tuple[Verdict, NodeTruth]) -> bool:
    """A status of the node's current ``session``, which has ended (``lost``,
    ``disconnected``), that does not bring it back (``seen``: what
    ``truth.observe_status`` made of it)."""
    verdict, after = seen
    return truth.state_of(session) in truth_rules.TERMINAL_STATES and (
        verdict is not Verdict.ACCEPT or after.state_of(session) in truth_rules.TERMINAL_STATES)


def _column_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _count(result: IngestResult, verdict: Verdict) -> None:
    if verdict is Verdict.DUPLICATE:
        result.duplicates += 1
    else:
        result.stale += 1

