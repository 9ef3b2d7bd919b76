"""The bridge outbox on a real SQLite file: coalescing, order, stale guard, persistence."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.postgres import PostgresServer, running_postgres
from testkit.support import incoming, received

from bridge.database import Database, open_database
from bridge.incoming import Received
from bridge.outbox import MAX_TRANSITIONS_PER_NODE, Item, Outbox, OutboxError, Told
from yl_core.protocol import (
    ReporterCounters,
    Resources,
    StateMessage,
    StatusMessage,
)
from yl_core.truth import TAKEOVER_HOLD

A = "000000000010-aaaaaaaaaaaa"
B = "000000000020-bbbbbbbbbbbb"
C = "000000000030-cccccccccccc"

Entry = Received
"""One checked message as ``Outbox.record`` takes it."""


def state(word: str, session: str = A, node: str = "n1", *, retained: bool = False
          ) -> Received:
    message = StateMessage(state=word, session=session,  # type: ignore[arg-type]
                           since="2026-01-01T00:00:00.000Z", node_name="GUI", version="1",
                           interval_s=30.0)
    return incoming(node, message, received(), retained)


def status_message(seq: int, session: str = A, node: str = "n1") -> StatusMessage:
    return StatusMessage(
        node_id=node, node_name="GUI", timestamp="2026-01-01T00:00:00.000Z", status="running",
        version="1", uptime=1.0, resources=Resources(1.0, 1.0, 1), gui={"seq": seq},
        reporter=ReporterCounters(0, 0, None), session=session, seq=seq, interval_s=30.0)


def status(seq: int, session: str = A, node: str = "n1", *, retained: bool = False
           ) -> Received:
    message = status_message(seq, session, node)
    return incoming(node, message, received(), retained)


def drain(outbox: Outbox, node: str = "n1") -> list[tuple[str, str | None, int]]:
    out: list[tuple[str, str | None, int]] = []
    while (item := outbox.next_item(node)) is not None:
        out.append((item.kind, item.state, item.seq))
        outbox.done(item)
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[PostgresServer | None]:
    """The outbox's engine: SQLite (None), or a real PostgreSQL for the module's tests."""
    if request.param == "sqlite":
        yield None
        return
    yield from running_postgres()




@pytest.fixture
def where(engine: PostgresServer | None, tmp_path: Path) -> str:
    """Where an outbox lives: an SQLite file, or a fresh database on the PostgreSQL."""
    if engine is None:
        return str(tmp_path / "o.db")
    return engine.new_database()


def test_statuses_coalesce_to_the_newest(where: str) -> None:
    box = Outbox(where)
    result, touched = box.record([status(i) for i in range(1, 101)])
    assert result.accepted == 100
    assert result.coalesced == 99
    assert touched == {"n1"}
    assert drain(box) == [("status", "ready", 100)]
    assert box.depth() == (0, 0)


def test_transitions_keep_their_order_and_come_before_the_status(where: str) -> None:
    box = Outbox(where)
    box.record([state("ready"), status(1), status(2), state("lost"), state("ready", B),
                status(1, B)])
    assert drain(box) == [("state", "ready", -1), ("state", "lost", -1), ("state", "ready", -1),
                          ("status", "ready", 1)]


def test_a_transition_carries_the_snapshot_it_superseded(where: str) -> None:
    box = Outbox(where)
    box.record([state("ready"), status(7), state("lost")])
    first = box.next_item("n1")
    assert first is not None
    box.done(first)
    lost = box.next_item("n1")
    assert lost is not None
    assert lost.state == "lost"
    assert b'"seq":7' in (lost.payload or b"")


def test_older_and_duplicate_messages_are_dropped(where: str) -> None:
    box = Outbox(where)
    box.record([state("ready", A), state("ready", B), status(5, B)])
    result, _ = box.record([status(4, B), status(5, B), status(9, A), state("lost", A),
                            state("ready", B)])
    assert result.stale == 3
    assert result.duplicates == 2
    assert drain(box) == [("state", "ready", -1), ("state", "ready", -1), ("status", "ready", 5)]


def test_session_ids_do_not_order_sessions(where: str) -> None:
    """A node whose clock was years ahead, or a hand-made id like ``zzzz``, must not make
    the next correct session look stale."""
    box = Outbox(where)
    box.record([state("ready", "zzzz"), status(7, "zzzz"), state("lost", "zzzz")])
    result, _ = box.record([state("ready", "0000"), status(1, "0000")])
    assert (result.accepted, result.stale) == (2, 0)
    mark = box.mark("n1")
    assert mark is not None
    assert (mark.truth.session, mark.truth.state, mark.truth.seq) == ("0000", "ready", 1)
    drain(box)
    restored = [state("ready", "zzzz", retained=True),
                incoming("n1", status_message(7, "zzzz"), received(), True)]
    late, _ = box.record(restored)
    assert late.stale == 2
    box.close()
    reopened = Outbox(where)
    again, _ = reopened.record(restored)
    assert again.stale == 2, "the lost session set aside is kept across a restart"
    back, _ = reopened.record([state("ready", "zzzz")])
    assert back.accepted == 1, "its process reconnecting (a live ready) is back"
    mark = reopened.mark("n1")
    assert mark is not None
    assert (mark.truth.session, mark.truth.state) == ("zzzz", "ready")
    assert "0000" in mark.truth.ended


def test_a_restored_ready_of_an_ended_session_is_stale(where: str) -> None:
    """A broker killed before its next save restarts with the older retained ``ready``."""
    box = Outbox(where)
    box.record([state("ready", A), status(1, A), state("disconnected", A)])
    box.close()
    reopened = Outbox(where)
    result, touched = reopened.record([state("ready", A), status(1, A)])
    assert (result.accepted, result.stale, result.duplicates) == (0, 1, 1)
    assert touched == set()


def test_a_newer_status_after_delivery_is_delivered_again(where: str) -> None:
    box = Outbox(where)
    box.record([status(1)])
    assert drain(box) == [("status", "ready", 1)]
    box.record([status(1)])
    assert drain(box) == []
    box.record([status(2)])
    assert drain(box) == [("status", "ready", 2)]


def test_everything_survives_reopening(where: str) -> None:
    box = Outbox(where)
    box.record([state("ready"), status(3), status(4), state("lost")])
    box.set_registered("n1", True)
    box.close()
    again = Outbox(where)
    assert again.nodes_with_work() == ["n1"]
    mark = again.mark("n1")
    assert mark is not None
    assert mark.registered
    assert (mark.truth.session, mark.truth.seq, mark.truth.state) == (A, 4, "lost")
    result, _ = again.record([status(3)])
    assert result.stale == 1
    assert drain(again) == [("state", "ready", -1), ("state", "lost", -1)]


def test_an_outbox_of_schema_3_keeps_its_undelivered_statuses(where: str) -> None:
    """Schema 3 kept them in a table of their own; opening it moves them into the nodes'
    rows, each delivered once."""
    box = Outbox(where)
    box.record([state("ready"), status(3), status(5, node="n2")])
    box.close()
    db = open_database(where)
    try:
        db.begin()
        for sql in (
                "CREATE TABLE pending_status (node_id TEXT PRIMARY KEY, session TEXT NOT NULL, "
                "seq BIGINT NOT NULL, payload BYTEA NOT NULL, received DOUBLE PRECISION "
                "NOT NULL)",
                "INSERT INTO pending_status SELECT node_id, pending_session, pending_seq, "
                "snapshot, pending_received FROM nodes WHERE pending_session IS NOT NULL",
                "ALTER TABLE nodes DROP COLUMN pending_session",
                "ALTER TABLE nodes DROP COLUMN pending_seq",
                "ALTER TABLE nodes DROP COLUMN pending_received",
                "PRAGMA user_version = 3" if "://" not in where else
                "UPDATE schema_version SET version = 3"):
            db.execute(sql)
        db.commit()
        if "://" in where:  # what a standby's lease does: it leaves the upgrade alone
            db.prepare(upgrade=False)
            assert db.execute("SELECT version FROM schema_version").fetchone()[0] == 3
            assert db.execute("SELECT COUNT(*) FROM pending_status").fetchone()[0] == 2
    finally:
        db.close()
    again = Outbox(where)
    try:
        assert again.depth() == (1, 2)
        assert drain(again) == [("state", "ready", -1), ("status", "ready", 3)]
        assert drain(again, "n2") == [("status", "ready", 5)]
        again.flush()
        assert again.depth() == (0, 0)
    finally:
        again.close()
    reopened = Outbox(where)
    try:
        assert reopened.depth() == (0, 0)
        assert reopened.mark("n2") is not None
    finally:
        reopened.close()


def test_done_keeps_a_newer_status_that_arrived_meanwhile(where: str) -> None:
    box = Outbox(where)
    box.record([status(1)])
    item = box.next_item("n1")
    assert item is not None
    box.record([status(2)])
    box.done(item)
    assert drain(box) == [("status", "ready", 2)]


def test_transition_cap_drops_the_oldest_and_counts(where: str) -> None:
    box = Outbox(where)
    words = ["ready", "lost"] * (MAX_TRANSITIONS_PER_NODE // 2 + 5)
    sessions = [f"{i:012x}-cccccccccccc" for i in range(len(words))]
    result, _ = box.record([state(w, s) for w, s in zip(words, sessions, strict=True)])
    assert result.dropped == 10
    assert box.depth()[0] == MAX_TRANSITIONS_PER_NODE


def test_a_transition_dropped_while_in_flight_leaves_the_rest_in_order(
        where: str) -> None:
    box = Outbox(where)
    sessions = [f"{i:012x}-cccccccccccc" for i in range(MAX_TRANSITIONS_PER_NODE + 1)]
    words = ["ready", "lost"] * (len(sessions) // 2 + 1)
    box.record([state(w, s) for w, s in zip(words, sessions[:-1], strict=False)])
    in_flight = box.next_item("n1")
    assert in_flight is not None
    assert in_flight.session == sessions[0]
    result, _ = box.record([state(words[len(sessions) - 1], sessions[-1])])
    assert result.dropped == 1
    box.done(in_flight)
    delivered = []
    while (item := box.next_item("n1")) is not None:
        delivered.append(item.session)
        box.done(item)
    assert delivered == sessions[1:]


def test_a_failed_write_keeps_what_was_committed_next(where: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(where)
    box.record([state("ready"), status(1)])
    first = box.next_item("n1")
    assert first is not None
    assert first.kind == "state"
    box.done(first)

    def failing(*args: object) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(box, "_record_status", failing)
    with pytest.raises(OutboxError, match="disk I/O error"):
        box.record([status(2)])
    monkeypatch.undo()
    assert drain(box) == [("status", "ready", 1)]
    box.record([status(3)])
    assert drain(box) == [("status", "ready", 3)]


def test_node_count_is_bounded(where: str) -> None:
    box = Outbox(where, max_nodes=2)
    result, _ = box.record([status(1, node=f"n{i}") for i in range(4)])
    assert result.too_many_nodes == 2
    assert box.known_nodes() == 2


def test_a_node_waits_for_its_last_delivery_to_be_written(where: str) -> None:
    """So that a crash can only repeat a node's newest delivered message, never an older
    one after a newer one."""
    box = Outbox(where, on_change=lambda: None)
    box.record([state("ready"), status(1)])
    first = box.next_item("n1")
    assert first is not None
    assert first.state == "ready"
    box.done(first)
    assert box.next_item("n1") is None
    crashed = Outbox(where)
    again = crashed.next_item("n1")
    assert again is not None
    assert again.transition_id == first.transition_id
    assert box.flush() == {"n1"}
    after = box.next_item("n1")
    assert after is not None
    assert (after.kind, after.seq) == ("status", 1)
    box.done(after)
    assert box.flush() == set()  # written, and nothing more to hand out
    assert box.next_item("n1") is None


class _CommitFails:
    """A database whose COMMIT fails the way a full disk makes it fail: SQLite has already
    rolled the transaction back when the error comes."""

    def __init__(self, real: Database) -> None:
        self.real = real
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def commit(self) -> None:
        if self.failing:
            self.real.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        self.real.commit()


def test_a_failed_commit_leaves_memory_as_on_disk(where: str) -> None:
    """Redelivered messages must be recorded again, not taken for duplicates."""
    box = Outbox(where)
    box.record([state("ready", A)])
    real = box._db
    assert real is not None
    failing = _CommitFails(real)
    box._db = failing  # type: ignore[assignment]
    batch: list[Entry] = [status(1, A), state("lost", A), state("ready", B), status(1, B)]
    with pytest.raises(OutboxError, match="disk is full"):
        box.record(batch)
    assert box.last_error == "OperationalError: database or disk is full"
    mark = box.mark("n1")
    assert mark is not None
    assert (mark.truth.session, mark.truth.state, mark.truth.ended) == (A, "ready", ())
    failing.failing = False
    result, _ = box.record(batch)
    assert (result.accepted, result.duplicates, result.stale) == (4, 0, 0)
    assert box.last_error is None
    box._db = real
    assert [(i[0], i[1]) for i in drain(box)] == [("state", "ready"), ("state", "lost"),
                                                 ("state", "ready"), ("status", "ready")]


def test_deliveries_written_with_a_batch_are_kept_when_its_commit_fails(where: str) -> None:
    """``record(flush=True)`` writes a batch and the deliveries in one transaction: a failed
    commit gives the deliveries back for the next write, and the node waits for it."""
    box = Outbox(where, on_change=lambda: None)
    box.record([state("ready", A), status(1, A)])
    first = box.next_item("n1")
    assert first is not None
    box.done(first)
    real = box._db
    assert real is not None
    failing = _CommitFails(real)
    box._db = failing  # type: ignore[assignment]
    with pytest.raises(OutboxError, match="disk is full"):
        box.record([status(1, A, node="n2")], flush=True)
    assert box.next_item("n1") is None  # its delivery is still not on disk
    failing.failing = False
    _, notify = box.record([status(1, A, node="n2")], flush=True)
    assert notify == {"n1", "n2"}
    box._db = real
    assert drain(box) == [("status", "ready", 1)]
    assert box.flush() == set()
    box.close()
    again = Outbox(where)
    try:
        assert again.depth() == (0, 1)  # n2's status; n1's transition was written delivered
        assert drain(again) == []
    finally:
        again.close()


def told_up(box: Outbox, node: str = "n1") -> float:
    """Deliver everything of ``node`` as the forwarder does (the monitor shows it up);
    returns when the node was last heard."""
    drain(box, node)
    box.mark_told(node, "up")
    heard = box.marks[node].heard
    assert heard is not None
    return heard


def watched(where: str) -> tuple[Outbox, float]:
    """An outbox whose sessions are caught up, and node ``n1`` ready with status 1, delivered
    and shown up; and when ``n1`` was last heard."""
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([state("ready"), status(1)])
    return box, told_up(box)


def test_a_ready_node_silent_for_three_intervals_is_reported_once(where: str) -> None:
    box, spoke = watched(where)
    assert box.record_silences(spoke + 89.9) == []
    assert box.record_silences(spoke + 90.1) == ["n1"]
    assert box.record_silences(spoke + 200) == []
    silence = box.next_item("n1")
    assert silence is not None
    assert (silence.kind, silence.state, silence.seq) == ("silence", "ready", 1)
    assert silence.payload == status(1).payload
    box.done(silence)
    box.mark_told("n1", "down")
    assert box.next_item("n1") is None
    assert box.record_silences(spoke + 300) == []
    box.record([status(2)])
    again = told_up(box)
    assert box.record_silences(again + 89.9) == []
    assert box.record_silences(again + 90.1) == ["n1"]


def test_a_node_is_settled_only_while_nothing_newer_than_its_last_delivery_is_recorded(
        where: str) -> None:
    """What a v1 refresh (a heartbeat repeated for a node that is up) is judged by: never
    while a newer word of the node (a hang, a will) is recorded but not delivered."""
    box = Outbox(where)
    box.record([state("ready"), status(1)])
    assert not box.settled("n1")
    told_up(box)
    assert box.settled("n1")
    box.record([status(2)])
    assert not box.settled("n1"), "a status to deliver"
    drain(box)
    assert box.settled("n1")
    box.record([state("lost")])
    assert not box.settled("n1"), "a transition to deliver"
    assert not box.settled("n2"), "a node never seen"


def test_a_status_of_a_life_that_ended_is_its_end_s_snapshot_never_a_status_after_it(
        where: str) -> None:
    """A retained status newer than what came before the node's end, which only a retained
    copy told (the session's queue at the broker overflowed: the bridge reads the retained
    messages again): folded into the end while that is undelivered; after it went out, the
    end is told once more, with it."""
    box = Outbox(where)
    box.record([state("ready"), status(1)])
    drain(box)
    box.record([state("lost", retained=True), status(2, retained=True)])
    end = box.next_item("n1")
    assert end is not None
    assert (end.kind, end.state, end.payload) == ("state", "lost", status(2).payload)
    box.done(end)
    assert box.next_item("n1") is None
    box.record([status(3, retained=True)])
    again = box.next_item("n1")
    assert again is not None
    assert (again.kind, again.state, again.payload) == ("state", "lost", status(3).payload)
    box.done(again)
    box.record([status(3, retained=True)])
    assert box.next_item("n1") is None, "a duplicate says nothing more"


def test_a_live_status_after_a_live_end_is_the_node_back(where: str) -> None:
    """One ordered stream: what the node published before its will came before it, so a
    newer live status after a live ``lost`` was published after it (its ``ready`` was lost
    on the way): the node is back, and told so."""
    box = Outbox(where)
    box.record([state("ready"), status(1)])
    drain(box)
    box.record([state("lost"), status(2)])
    items = drain_items(box)
    assert [(i.kind, i.state) for i in items] == [("state", "lost"), ("state", "ready")]
    assert items[1].payload == status(2).payload
    box.record([state("ready")])
    assert box.next_item("n1") is None, "the ready that follows is a duplicate"
    box.close()


def test_a_new_session_s_status_before_its_ready_starts_it_with_that_status(
        where: str) -> None:
    """A node's next life whose ``ready`` came after its first status (or never): its start
    is a transition carrying the status, so a life that ends before its status went out is
    still told online first, then offline."""
    box = Outbox(where)
    box.record([state("ready", A), status(1, A), state("lost", A)])
    drain(box)
    box.record([status(1, B), state("ready", B), status(2, B), state("lost", B)])
    items = drain_items(box)
    assert [(i.kind, i.state, i.session) for i in items] == [
        ("state", "ready", B), ("state", "lost", B)]
    assert items[0].payload == status(1, B).payload
    assert items[1].payload == status(2, B).payload
    box.close()


WORDS: dict[Told, str] = {"up": "online", "down": "offline"}


def test_a_node_the_monitor_forgot_or_shows_otherwise_is_told_again_once(where: str) -> None:
    """``reconcile``: the monitor's node list against what each node was told, as of when
    the list was asked for; the retelling comes after everything queued, with the newest
    snapshot."""
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([state("ready", node=n) for n in ("n1", "n2", "n3", "n4")] +
               [status(1, node=n) for n in ("n1", "n2", "n3", "n4")])
    for node in ("n1", "n2", "n3"):
        told_up(box, node)
    asked = time.monotonic()
    box.record([state("lost", node="n3")])
    drain(box, "n3")
    box.mark_told("n3", "down")  # after the list was asked for: it cannot show it yet
    shown = {"n1": "online", "n2": "unknown", "n3": "online", "n4": None}
    assert sorted(box.reconcile(shown, WORDS, asked)) == ["n2"]
    assert box.reconcile(shown, WORDS, asked) == [], "one retelling at a time"
    box.record([status(2, node="n2")])
    assert drain(box, "n2") == [("status", "ready", 2), ("retell", "ready", 2)]
    assert box.reconcile({"n2": "online"}, WORDS, time.monotonic()) == ["n1", "n3"]
    assert not box.marks["n1"].registered
    retell = box.next_item("n3")
    assert retell is not None
    assert (retell.kind, retell.state, retell.seq) == ("retell", "lost", 1)
    assert retell.payload == status(1, node="n3").payload
    box.done(retell)
    assert box.next_item("n3") is None


@pytest.mark.parametrize("told", ["down", "up"])
@pytest.mark.parametrize("last", ["disconnected", "lost"])
def test_a_node_that_said_it_is_down_never_falls_silent(where: str, last: str,
                                                        told: Told) -> None:
    """Whatever the monitor was last told: a silence is judged from the node's session."""
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([state("ready"), status(1)])
    heard = told_up(box)
    box.record([state(last)])
    drain(box)
    box.mark_told("n1", told)
    assert box.record_silences(heard + 1000) == []


def test_undelivered_work_is_not_a_silence(where: str) -> None:
    """A status still to deliver says for itself that it is stale (the forwarder judges its
    age); no second word about the same silence follows it."""
    box, spoke = watched(where)
    box.record([status(2)])
    assert box.record_silences(spoke + 1000) == []
    assert drain(box) == [("status", "ready", 2)]


def test_no_silence_while_the_broker_sessions_are_not_caught_up(where: str) -> None:
    box = Outbox(where)
    box.record([state("ready"), status(1)])
    spoke = told_up(box)
    assert box.record_silences(spoke + 1000) == []
    box.caught_up(spoke + 500)
    assert box.record_silences(spoke + 589) == []
    box.caught_up(None)
    assert box.record_silences(spoke + 1000) == []
    box.caught_up(spoke + 2000)
    assert box.record_silences(spoke + 2089) == []
    assert box.record_silences(spoke + 2091) == ["n1"]


def test_a_new_term_counts_silences_from_its_own_start(where: str) -> None:
    """What the monitor was told survives a restart (or a takeover); when a node was last
    heard does not: an outbox reopened long after counts from when its sessions caught up."""
    first = Outbox(where)
    first.record([state("ready"), status(1)])
    told_up(first)
    first.close()
    box = Outbox(where)
    assert box.marks["n1"].told == "up"
    assert box.marks["n1"].heard is None
    caught_up = time.monotonic() + 1000
    assert box.record_silences(caught_up) == []
    box.caught_up(caught_up)
    assert box.record_silences(caught_up + 89) == []
    assert box.record_silences(caught_up + 91) == ["n1"]


def test_memory_for_silences_is_one_entry_per_node(where: str) -> None:
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([status(seq, node=f"n{i}") for seq in range(1, 40) for i in range(5)])
    for seq in range(40, 80):
        box.record([status(seq, node=f"n{i}") for i in range(5)])
    assert len(box._silence) == 5


def test_deliveries_are_written_only_with_a_flush(where: str) -> None:
    box = Outbox(where, on_change=lambda: None)
    box.record([state("ready"), status(1)])
    drain(box)
    box.record([status(2)])
    other = Outbox(where)
    try:
        assert other.depth() == (1, 1), "delivered, but not written before a flush"
        box.flush()
        other.close()
        other = Outbox(where)
        assert other.depth() == (0, 1)
    finally:
        other.close()
        box.close()


class _CommitBug(_CommitFails):
    def commit(self) -> None:
        self.real.execute("ROLLBACK")
        raise RuntimeError("a bug, not the database")


def test_an_error_that_is_not_the_databases_is_raised_as_it_is(where: str) -> None:
    box = Outbox(where)
    real = box._db
    assert real is not None
    box._db = _CommitBug(real)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="a bug, not the database"):
        box.record([state("ready")])
    assert box.last_error == "RuntimeError: a bug, not the database"
    box._db = real
    box.close()


def test_a_transition_is_done_at_once_and_carries_when_the_broker_got_it(where: str) -> None:
    box = Outbox(where)
    ready = state("ready")
    box.record([ready])
    item = box.next_item("n1")
    assert item is not None
    assert (item.received, item.counts_from) == (ready.received, 0.0)
    box.done(item)
    assert box.depth() == (0, 0)
    box.close()


def states_from(at: float) -> Callable[[str, str, float], Received]:
    """A node's state messages as the broker got them ``offset`` seconds after ``at``."""
    def at_time(word: str, session: str, offset: float) -> Received:
        message = StateMessage(state=word, session=session,  # type: ignore[arg-type]
                               since="2026-01-01T00:00:00.000Z", node_name="GUI",
                               version="1", interval_s=30.0)
        return incoming("n1", message, at + offset)
    return at_time


def test_a_lost_just_after_a_takeover_counts_only_after_the_hold(where: str) -> None:
    box = Outbox(where)
    at = time.time() - 5.0
    at_time = states_from(at)
    box.record([at_time("ready", A, 0.0), at_time("lost", A, 1.0), at_time("ready", B, 1.001),
                at_time("lost", B, 1.5)])
    items = drain_items(box)
    assert [(i.state, i.counts_from) for i in items] == [
        ("ready", 0.0), ("lost", 0.0), ("ready", 0.0), ("lost", at + 1.5 + TAKEOVER_HOLD)]
    box.close()


def test_a_takeover_fight_is_one_blip(where: str) -> None:
    """B takes A's id; A, closed without a reason, reconnects once (dropping B) and yields
    when B reconnects (dropping A). Every ``lost`` after the takeover waits the hold, and a
    ``ready`` within it withdraws it: the monitor sees one ``offline`` and the node back."""
    box = Outbox(where)
    at_time = states_from(time.time() - 5.0)
    result, _ = box.record([
        at_time("ready", A, 0.0), at_time("lost", A, 1.0), at_time("ready", B, 1.001),
        at_time("lost", B, 1.4), at_time("ready", A, 1.401), at_time("lost", A, 1.8),
        at_time("ready", B, 1.801)])
    assert result.withdrawn == 2
    items = drain_items(box)
    assert [(i.state, i.session) for i in items] == [
        ("ready", A), ("lost", A), ("ready", B), ("ready", A), ("ready", B)]
    mark = box.mark("n1")
    assert mark is not None
    assert (mark.truth.session, mark.truth.state) == (B, "ready")
    box.close()


def test_a_held_lost_is_withdrawn_only_by_the_fight_not_by_a_next_life(where: str) -> None:
    """A process restarted within ``TAKEOVER_GAP`` of its crash looks like a takeover, so
    its next ``lost`` is held; a third life's ``ready`` within the hold is no reconnect of
    the fight: the ``lost`` stays, and counts at once (a next life began)."""
    box = Outbox(where)
    at_time = states_from(time.time() - 5.0)
    result, _ = box.record([
        at_time("ready", A, 0.0), at_time("lost", A, 1.0), at_time("ready", B, 1.1),
        at_time("lost", B, 1.5), at_time("ready", C, 1.6)])  # a third life
    assert result.withdrawn == 0
    items = drain_items(box)
    assert [(i.state, i.session, i.counts_from) for i in items] == [
        ("ready", A, 0.0), ("lost", A, 0.0), ("ready", B, 0.0),
        ("lost", B, 0.0), ("ready", C, 0.0)]
    box.close()


def drain_items(box: Outbox, node: str = "n1") -> list[Item]:
    out = []
    while (item := box.next_item(node)) is not None:
        out.append(item)
        box.done(item)
    return out


def test_a_transition_gone_from_disk_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.record([state("ready"), status(1)])
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM transitions")
    item = box.next_item("n1")
    assert item is not None
    assert (item.kind, item.seq) == ("status", 1)
    box.close()


def test_silence_is_judged_by_liveness_s_rule_at_its_exact_limit(where: str) -> None:
    box, spoke = watched(where)
    assert box.record_silences() == []
    assert box.record_silences(spoke + 90.0) == [], "three intervals old is not stale yet"
    assert box.record_silences(spoke + 90.001) == ["n1"]
    silence = box.next_item("n1")
    assert silence is not None
    assert abs(silence.received - (time.time() - 90.001)) < 5.0, "last heard, wall clock"
    box.close()


def test_a_node_heard_again_is_judged_from_then_up_to_the_exact_limit(where: str) -> None:
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([state("ready"), status(1)])
    told_up(box)
    assert box.record_silences() == []
    box.record([status(2)])
    again = told_up(box)
    assert box.record_silences(again + 90.0) == []
    assert box.record_silences(again + 90.001) == ["n1"]
    box.close()


def test_a_node_heard_again_does_not_hold_up_the_silence_of_another(where: str) -> None:
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([state("ready", node="n1"), status(1, node="n1")])
    box.record([state("ready", node="n2"), status(1, node="n2")])
    told_up(box, "n1")
    quiet = told_up(box, "n2")
    for later in (0.0, 10.0, 20.0):  # the forwarder looks every second or so
        assert box.record_silences(quiet + later) == []
    box.record([status(2, node="n1")])
    told_up(box, "n1")
    assert box.record_silences(quiet + 90.1) == ["n2"]
    box.close()


def test_a_silence_comes_before_what_the_node_said_after_it(where: str) -> None:
    """A silence is a fact of the node's story: when the node speaks again before the
    silence reached the monitor, the monitor is told both, in the order they happened, the
    silence with the status that went stale."""
    box, spoke = watched(where)
    assert box.record_silences(spoke + 90.1) == ["n1"]
    box.record([status(2)])
    silence = box.next_item("n1")
    assert silence is not None
    assert (silence.kind, silence.payload) == ("silence", status(1).payload)
    assert box.done(silence) is False, "no deferred writes: written at once"
    box.mark_told("n1", "down")
    after = box.next_item("n1")
    assert after is not None
    assert (after.kind, after.seq) == ("status", 2)
    box.done(after)
    box.mark_told("n1", "up")
    heard = box.marks["n1"].heard
    assert heard is not None
    assert box.record_silences(heard + 90.1) == ["n1"]
    again = box.next_item("n1")
    assert again is not None
    assert (again.kind, again.payload) == ("silence", status(2).payload)
    box.close()


def test_a_silence_recorded_outlives_a_restart_until_it_is_delivered(where: str) -> None:
    box, spoke = watched(where)
    assert box.record_silences(spoke + 90.1) == ["n1"]
    box.close()
    box = Outbox(where)
    silence = box.next_item("n1")
    assert silence is not None
    assert (silence.kind, silence.payload) == ("silence", status(1).payload)
    assert silence.status_age == math.inf
    assert silence.stamp == silence.received + 90.0, "stamped when it went stale"
    box.done(silence)
    box.mark_told("n1", "down")
    box.close()
    box = Outbox(where)
    assert box.next_item("n1") is None
    assert box.marks["n1"].silent is None
    box.close()


def test_a_failed_write_of_a_silence_keeps_it_to_record_again(where: str) -> None:
    box, spoke = watched(where)

    def refuse(*args: object, **kwargs: object) -> object:
        raise OSError("disk full")

    real, box._db.executemany = box._db.executemany, refuse  # type: ignore[union-attr,method-assign]
    with pytest.raises(OutboxError, match="disk full"):
        box.record_silences(spoke + 90.1)
    box._db.executemany = real  # type: ignore[union-attr,method-assign]
    assert box.next_item("n1") is None
    assert box.record_silences(spoke + 90.2) == ["n1"]
    box.close()


def test_a_node_without_a_known_interval_is_not_judged_and_others_are(tmp_path: Path) -> None:
    """Rows written before the interval was kept have none: such a node is not judged until
    a status says its interval."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    for node in ("n0", "n1"):
        box.record([state("ready", node=node), status(1, node=node)])
        told_up(box, node)
    box.flush()
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE nodes SET interval_s = NULL WHERE node_id = 'n0'")
    box = Outbox(path)
    box.caught_up(0.0)
    assert box.record_silences(time.monotonic() + 1000) == ["n1"]
    box.record([status(2, node="n0")])
    heard = told_up(box, "n0")
    assert box.record_silences(heard + 90.1) == ["n0"]
    box.close()


def test_a_new_session_whose_state_has_not_come_falls_silent_as_itself(where: str) -> None:
    """A status names a session whose ``ready`` never came (the broker lost it): that
    session's silence is judged, not the ended one's before it."""
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([state("ready", A), status(1, A)])
    told_up(box)
    box.record([state("lost", A)])
    drain(box)
    box.mark_told("n1", "down")
    box.record([status(1, B)])
    heard = told_up(box)
    assert box.marks["n1"].truth.newest_status == (B, 1)
    assert box.record_silences(heard + 90.1) == ["n1"]
    box.close()


def test_a_node_that_only_said_ready_falls_silent_too(where: str) -> None:
    box = Outbox(where)
    box.caught_up(0.0)
    box.record([state("ready")])
    heard = told_up(box)
    assert box.marks["n1"].truth.newest_status is None
    assert box.record_silences(heard + 90.1) == ["n1"]
    silence = box.next_item("n1")
    assert silence is not None
    assert (silence.kind, silence.seq, silence.payload) == ("silence", -1, None)
    box.close()


def test_the_newest_stamp_the_monitor_took_is_kept_across_a_reopen(where: str) -> None:
    """``done(item, stamped)``: the node's newest request time, never lowered by an older
    one, written with the delivery (of a status or a transition) and read back on open, so
    that a node's requests go forward in time across a restart or a takeover."""
    box = Outbox(where)
    box.record([state("ready"), status(1)])
    for item, stamp in ((box.next_item("n1"), None), (box.next_item("n1"), 200.0)):
        assert item is not None
        if stamp is None:
            box.done(item)
            assert box.stamped("n1") == 0.0, "no stamp given, none kept"
        else:
            box.done(item, stamp)
    assert box.stamped("n1") == 200.0
    box.record([status(2)])
    older = box.next_item("n1")
    assert older is not None
    box.done(older, 150.0)
    assert box.stamped("n1") == 200.0
    box.close()
    box = Outbox(where)
    assert box.stamped("n1") == 200.0
    box.record([state("lost")])
    end = box.next_item("n1")
    assert end is not None
    assert end.state == "lost"
    box.done(end, 300.0)
    box.close()
    box = Outbox(where)
    try:
        assert box.stamped("n1") == 300.0
        assert box.stamped("unknown") == 0.0
    finally:
        box.close()
