"""The truth every observer tells of a node, checked against a reference model of the node's
real life (Hypothesis stateful testing).

The machine plays a node's processes (start, status, crash, clean stop, takeover by a second
process), a broker (down and up again, keeping its retained messages, losing them, or restored
from an older save) and observers that start at any moment: the status app's ``NodeView``
(one subscription: a node's messages in the order the broker got them) and a bridge-like
``NodeTruth`` that reads them the same way on a persistent session, which the broker keeps
while the observer is away. On subscribe each observer gets the retained copies in an order
drawn by Hypothesis (the bridge-like one states first, as the bridge passes a round on);
deliveries are drawn one at a time.

Checked at every step: an observer never shows a session ready after it received that
session's end (``lost`` or ``disconnected``) and no live word of it since (see
``Observer._note`` for what counts as one). Checked once an observer has everything the
broker sent it: a process that is up is shown ready with its newest status (unless the
observer received its ``lost`` and no live word since: the rule above); a node whose
last session ended while the broker's retained state still says so is shown ended, for
that reason.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from status_app import NodeView
from yl_core.protocol import (
    ReporterCounters,
    Resources,
    StateMessage,
    StatusMessage,
    Topics,
    encode,
)
from yl_core.truth import NodeTruth

NODE = "gui-1"
TOPICS = Topics()
ENDS = ("lost", "disconnected")


@dataclass(frozen=True)
class Message:
    """One message as the broker has it: ``kind`` is ``state`` or ``status``; ``value`` the
    state word or the seq."""

    kind: str
    session: str
    value: str | int

    def payload(self) -> bytes:
        if self.kind == "state":
            return encode(StateMessage(
                state=self.value, session=self.session,  # type: ignore[arg-type]
                since="2026-01-01T00:00:00.000Z", node_name="GUI", version="2.1",
                interval_s=30.0))
        assert isinstance(self.value, int)
        return encode(StatusMessage(
            node_id=NODE, node_name="GUI", timestamp="2026-01-01T00:00:00.000Z",
            status="running", version="2.1", uptime=1.0,
            resources=Resources(cpu_percent=1.0, memory_mb=100.0, threads=4), gui={},
            reporter=ReporterCounters(self.value, 0, None), session=self.session,
            seq=self.value, interval_s=30.0))


@dataclass
class Process:
    session: str
    seq: int = -1
    connected: bool = False
    session_kept: bool = False
    """The broker keeps a session for it while it is away (the bridge's persistent one)."""


@dataclass
class Observer:
    """One observer: its streams of (message, retained) still to be delivered, and the
    sessions whose end it received with no live word of them since."""

    name: str
    persistent: bool
    """The broker keeps a session for it while it is away (the bridge's)."""
    view: NodeView | None = None
    truth: NodeTruth = field(default_factory=NodeTruth)
    stream: deque[tuple[Message, bool]] = field(default_factory=deque)
    ended_seen: dict[str, tuple[str, bool, int]] = field(default_factory=dict)
    """Per session whose end the observer received: (the end, whether it came live, the
    newest seq seen before it)."""
    seqs: dict[str, int] = field(default_factory=dict)
    connected: bool = False
    session_kept: bool = False
    """The broker keeps its session now."""

    def take(self, message: Message, retained: bool) -> None:
        if self.view is not None:
            self.view.ingest(TOPICS.state(NODE) if message.kind == "state"
                             else TOPICS.status(NODE), message.payload(), retained=retained)
        elif message.kind == "state":
            _, self.truth = self.truth.observe_state(
                message.session, message.value, retained=retained)  # type: ignore[arg-type]
        else:
            assert isinstance(message.value, int)
            _, self.truth = self.truth.observe_status(message.session, message.value,
                                                      retained=retained)
        self._note(message, retained)

    def _note(self, message: Message, retained: bool) -> None:
        """What the rules say this observer now knows of the session's end: a ``lost``
        ends nothing for good; the session is back with a live ``ready``, with a newer live
        status or, after a live ``lost``, any status newer
        than the newest before it (everything published before a live ``lost`` came
        before it)."""
        session = message.session
        if message.kind == "state" and message.value in ENDS:
            assert isinstance(message.value, str)
            if self.ended_seen.get(session, ("",))[0] != "disconnected":
                self.ended_seen[session] = (message.value, not retained,
                                            self.seqs.get(session, -1))
            return
        end = self.ended_seen.get(session)
        if message.kind == "status":
            assert isinstance(message.value, int)
            newer = message.value > self.seqs.get(session, -1)
            self.seqs[session] = max(message.value, self.seqs.get(session, -1))
            if end is None or end[0] != "lost":
                return
            if (not retained and newer) or (end[1] and message.value > end[2]):
                del self.ended_seen[session]
        elif end is not None and end[0] == "lost" and not retained:
            del self.ended_seen[session]

    def shown(self) -> tuple[str | None, str | None, int | None]:
        """(session, state, newest seq) the observer shows as current."""
        if self.view is not None:
            node = self.view.describe(NODE)
            if node is None:
                return None, None, None
            return node["session"], node["state"], node["seq"]
        session = self.truth.session
        if session is None:
            return None, None, None
        newest = self.truth.newest_status
        seq = newest[1] if newest is not None and newest[0] == session else None
        return session, self.truth.state_of(session), seq

    def health(self) -> str | None:
        return None if self.view is None else self.view.health(NODE).reason

    def idle(self) -> bool:
        return not self.stream


class NodeLife(RuleBasedStateMachine):
    """A node's real life, a broker and late observers; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.process: Process | None = None
        self.sessions = 0
        self.broker_up = True
        self.retained: dict[str, Message] = {}
        self.saves: list[dict[str, Message]] = []
        self.observers: list[Observer] = []
        self.last_session: str | None = None
        self.last_end: Message | None = None
        self.replaced: Process | None = None

    # --- the world ------------------------------------------------------------------------

    def _publish(self, message: Message) -> None:
        assert self.broker_up
        self.retained[message.kind] = message
        for observer in self.observers:
            if observer.connected or observer.session_kept:
                observer.stream.append((message, False))

    def _birth(self, process: Process) -> None:
        process.connected = True
        process.seq += 1
        self._publish(Message("state", process.session, "ready"))
        self._publish(Message("status", process.session, process.seq))

    def _subscribe(self, observer: Observer, order: list[int]) -> None:
        observer.connected = True
        observer.session_kept = observer.persistent
        copies = list(self.retained.values())
        drawn = [copies[index] for index in order if index < len(copies)]
        if observer.persistent:
            # The bridge passes a round's copies on in one batch, states first.
            drawn.sort(key=lambda copy: copy.kind != "state")
        observer.stream.extend((copy, True) for copy in drawn)

    @rule(name=st.text("abcdefghij0123456789", min_size=1, max_size=6))
    def start(self, name: str) -> None:
        """A process starts; if one is connected, it takes that one's place (the broker
        publishes the replaced connection's will first)."""
        self.sessions += 1
        session = f"{name}-{self.sessions}"
        old = self.process
        if old is not None and old.connected and self.broker_up:
            self._end(Message("state", old.session, "lost"))
        self.replaced = old
        self.process = Process(session)
        self.last_session, self.last_end = session, None
        if self.broker_up:
            self._birth(self.process)

    @precondition(lambda self: self.process is not None and self.process.connected)
    @rule(flag_changes=st.integers(1, 3))
    def status(self, flag_changes: int) -> None:
        assert self.process is not None
        self.status_of(self.process, flag_changes)

    @precondition(lambda self: self.process is not None)
    @rule(clean=st.booleans())
    def process_ends(self, clean: bool) -> None:
        """A clean stop publishes ``disconnected``; a crash makes the broker publish the
        will. With the link down, neither reaches the broker."""
        assert self.process is not None
        process, self.process, self.replaced = self.process, None, None
        if process.connected and self.broker_up:
            self._end(Message("state", process.session, "disconnected" if clean else "lost"))

    @precondition(lambda self: self.replaced is not None and self.broker_up and
                  self.process is not None and self.process.connected)
    @rule(flag_changes=st.integers(0, 2), dropped=st.booleans())
    def rival_reconnects(self, flag_changes: int, dropped: bool) -> None:
        """The process replaced (while it was away, or by a takeover: mosquitto 2.0 closes a
        replaced connection without saying why) reconnects: its connect drops the newer one
        (whose will the broker publishes), it speaks, and it yields on seeing its rival:
        dropped by the newer one's reconnect (its will) or gone first (no will); the newer
        one is born again."""
        assert self.replaced is not None
        assert self.process is not None
        rival, self.replaced = self.replaced, None
        self._publish(Message("state", self.process.session, "lost"))
        self._birth(rival)
        self.status_of(rival, flag_changes)
        if dropped:
            self._publish(Message("state", rival.session, "lost"))
        self._birth(self.process)

    def status_of(self, process: Process, flag_changes: int) -> None:
        for _ in range(flag_changes):
            process.seq += 1
            self._publish(Message("status", process.session, process.seq))

    def _end(self, message: Message) -> None:
        self._publish(message)
        self.last_end = message

    @precondition(lambda self: self.broker_up)
    @rule(keep_retained=st.booleans(), save=st.booleans(), delivered=st.booleans())
    def broker_down(self, keep_retained: bool, save: bool, delivered: bool) -> None:
        """The broker stops: SIGTERM (it publishes the wills of the clients still
        connected, saves and keeps its retained messages) or ``kill -9`` (no will; the
        retained messages only as of an earlier save, or none). What was queued for an
        observer reaches it before its connection closes (``delivered``) or is lost; the
        bridge-like observer keeps it in its persistent session when the broker keeps its
        state."""
        if keep_retained and self.process is not None and self.process.connected:
            self._publish(Message("state", self.process.session, "lost"))
        if save:
            self.saves.append(dict(self.retained))
        self.broker_up = False
        if not keep_retained:
            self.retained = {}
        if self.process is not None:
            self.process.connected = False
        for observer in self.observers:
            observer.connected = False
            observer.session_kept = observer.session_kept and keep_retained
            if delivered and (not observer.persistent or keep_retained):
                self._deliver_all(observer)
            if not observer.persistent or not keep_retained:
                observer.stream.clear()

    @precondition(lambda self: not self.broker_up)
    @rule(restore=st.integers(-1, 3), node_first=st.booleans(),
          order=st.permutations([0, 1]))
    def broker_up_again(self, restore: int, node_first: bool, order: list[int]) -> None:
        """The broker is back, perhaps restored from an older save (``restore``); the node
        and the observers connect again, in either order."""
        if 0 <= restore < len(self.saves):
            self.retained = dict(self.saves[restore])
        self.broker_up = True
        if node_first and self.process is not None:
            self._birth(self.process)
        for observer in self.observers:
            self._subscribe(observer, order)
        if not node_first and self.process is not None:
            self._birth(self.process)

    @precondition(lambda self: len(self.observers) < 4)
    @rule(bridge=st.booleans(), order=st.permutations([0, 1]))
    def observer_starts(self, bridge: bool, order: list[int]) -> None:
        """An observer starts late: the status app (or ``watch``), or a bridge with a fresh
        outbox."""
        name = f"{'bridge' if bridge else 'view'}-{len(self.observers)}"
        if bridge:
            observer = Observer(name, True)
        else:
            view = NodeView(clock=lambda: 1000.0, wall_clock=lambda: 1.8e9)
            view.set_broker(True, "connected")
            observer = Observer(name, False, view=view)
        self.observers.append(observer)
        if self.broker_up:
            self._subscribe(observer, order)

    @precondition(lambda self: any(not o.idle() for o in self.observers))
    @rule(which=st.integers(0, 3), count=st.integers(1, 3))
    def deliver(self, which: int, count: int) -> None:
        """The next messages of one observer (MQTT keeps its stream's order)."""
        busy = [o for o in self.observers if not o.idle()]
        observer = busy[which % len(busy)]
        for _ in range(min(count, len(observer.stream))):
            observer.take(*observer.stream.popleft())

    @rule()
    def deliver_everything(self) -> None:
        for observer in self.observers:
            self._deliver_all(observer)

    @staticmethod
    def _deliver_all(observer: Observer) -> None:
        while observer.stream:
            observer.take(*observer.stream.popleft())

    # --- what every observer must say -----------------------------------------------------

    @invariant()
    def no_session_shown_ready_after_its_end(self) -> None:
        for observer in self.observers:
            session, state, _ = observer.shown()
            if session in observer.ended_seen:
                assert state != "ready", (
                    f"{observer.name} shows {session} ready after it received its end")

    @invariant()
    def an_observer_with_everything_tells_the_truth(self) -> None:
        if not self.broker_up:
            return
        for observer in self.observers:
            if not observer.idle():
                continue
            session, state, seq = observer.shown()
            process = self.process
            if process is not None and process.connected:
                ended = observer.ended_seen.get(process.session)
                if ended is not None and ended[0] == "lost":
                    # The observer received the session's ``lost`` and no live word of it
                    # since: only a live word brings it back (a retained ``ready`` may be a
                    # restored broker's older copy). A broker that lost everything, with the
                    # node reconnected before the observer, leaves only retained copies;
                    # the node's next status (one report interval) brings it back.
                    continue
                assert (session, state, seq) == (process.session, "ready", process.seq), (
                    f"{observer.name} shows {(session, state, seq)} of a node up as "
                    f"{(process.session, process.seq)}")
                if observer.view is not None:
                    assert observer.health() == "ready"
            elif process is None and self.last_end is not None and \
                    self.retained.get("state") == self.last_end:
                end = self.last_end
                assert (session, state) == (end.session, end.value), (
                    f"{observer.name} shows {(session, state)} of a node whose session "
                    f"{end.session} ended {end.value}")
                if observer.view is not None:
                    assert observer.health() == end.value


NodeLife.TestCase.settings = settings(max_examples=400, stateful_step_count=40,
                                      deadline=None)
test_every_observer_tells_the_node_s_true_story = NodeLife.TestCase
