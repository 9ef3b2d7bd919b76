"""The truth about a node, as the messages seen so far tell it: one model that the bridge's
outbox and the status app share (``NodeTruth``), and the one rule of "up" (``liveness``).

Pure: no I/O, no clocks read here; callers pass ages in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from yl_core.protocol import State, stale_after

MAX_ENDED_SESSIONS: Final = 32
"""Ended or superseded sessions remembered per node: a broker restored from an older save
can bring back the retained state of any of them."""
TERMINAL_STATES: Final = frozenset({"disconnected", "lost"})
TAKEOVER_GAP: Final = 0.25
"""A new session's ``ready`` this soon after the previous session's ``lost`` is a takeover:
the broker publishes a replaced connection's will just before the new one's birth (measured
1.9 ms, at most 2.8; a process restarted after a crash takes far longer to start)."""
TAKEOVER_WINDOW: Final = 2.0
"""Seconds after a takeover in which the replaced process may still come back once:
mosquitto 2.0 closes a replaced connection without saying why (no reason code 142), so that
process reconnects before it sees its rival, and its connect drops the new process for a
moment (measured 0.40 s after the takeover, at most 0.47 s: ``bench.bridge --only crash``)."""
TAKEOVER_HOLD: Final = 0.75
"""How long a ``lost`` within ``TAKEOVER_WINDOW`` waits for its session to come back before
it counts (measured: the new process is back 0.30 to 0.50 s later)."""


def lost_counts_from(lost_at: float, replaced_at: float | None) -> float:
    """When a ``lost`` taken at ``lost_at`` counts: at once (a crash shows at once), unless it
    came within ``TAKEOVER_WINDOW`` of a takeover at ``replaced_at``; then only if its
    session is not back ``TAKEOVER_HOLD`` later. Any one clock, both times on it."""
    if replaced_at is not None and 0.0 <= lost_at - replaced_at <= TAKEOVER_WINDOW:
        return lost_at + TAKEOVER_HOLD
    return lost_at


class Verdict(Enum):
    ACCEPT = "accept"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True)
class NodeTruth:
    """What the messages seen so far say about one node, in the order they arrived: one
    subscription to both of its topics, so a node's messages come in the order the broker got
    them (every observer, the bridge included, reads them so).

    ``session`` is the current session: the last one seen that had not ended. ``state`` is its
    last state (a status implies ``ready``, which a node publishes first) and ``seq`` its
    newest status (-1: none).
    ``ended`` lists sessions that are over, oldest first: stopped (``disconnected``), or
    superseded when a message of another session arrived. An ended session never comes
    back, whatever its id, its clock or a restored broker says.

    ``lost`` (the broker's last will) does not end a session: the same process may reconnect
    (a network outage, a broker restart). It comes back only with a live word: a live
    ``ready``, a newer live status, or, after a ``lost`` that came live, any status newer
    than the newest before it (``live_end``). A newer session first seen live sets a
    ``lost`` one aside rather than ending it: a process replaced while it was away
    reconnects, drops the newer one (whose will follows) and yields, and the newer one's
    return must count. Only a live word brings a session set aside back.

    Retained copies (``retained=True``, sent on subscribe) are claims, not events: they come
    per topic, in no order between a node's ``state`` and its ``status``, and may be a
    broker's restored copy of an older save. A retained ``ready`` or status never brings a
    ``lost`` session back. A retained status names no new session while one is current (the
    retained ``state`` names the newest one). A retained ``state`` of a session not seen
    before becomes current, but the session it replaces is only set aside, not ended: if a
    live message of that session comes later, the claim was old and that session is current
    again. A live word of the session set aside makes it current, and the claim ends, unless
    that claim is a session whose process has not spoken live either (``claim``; its will is
    the broker's word, not its own) or is ``lost``: that one is set aside in turn (a process
    that reconnects after another took its id while it was away drops the other, whose will
    is its ``lost``, and is dropped in turn when that one reconnects). Two processes with one
    node id drop each other's connection until the older one sees its rival and yields
    (mosquitto 2.0 does not tell a replaced connection why); an observer that reconnected
    meanwhile may hold the newer one's ``ready`` only as a retained copy when the older
    one's reconnect speaks live, and the newer one's own live ``ready`` that follows must
    still count.
    """

    session: str | None = None
    state: State | None = None
    seq: int = -1
    ended: tuple[str, ...] = ()
    aside: NodeTruth | None = None
    """What was current before a retained ``state`` of another session: a retained state of
    that session swaps them again; a live word of it makes it current for good."""
    live_end: bool = False
    """The current ``lost`` came live: every status published before it came
    before it, so a status newer than ``seq`` (even a retained copy, as an observer that
    reconnected gets the node's birth) was published after it: the node is back. Until a
    retained copy of that ``lost`` comes: the observer subscribed again, and the node may
    have come back and been lost again while it was away."""
    claim: bool = False
    """The current session is known only from retained copies and its will (a claim, see
    above): its own process has not spoken live."""

    def observe_state(self, session: str, state: State, *, retained: bool = False
                      ) -> tuple[Verdict, NodeTruth]:
        """``retained``: the message is a retained copy (sent on subscribe), not live. A
        verdict other than ``ACCEPT`` leaves the truth as it was, but for a retained copy of a
        ``lost`` that came live (``live_end`` ends)."""
        if session in self.ended:
            return Verdict.STALE, self
        if session == self.session:
            if state == self.state:
                if retained and self.live_end:
                    # The copy a new subscription brings: what was published while the
                    # observer was away (a revival, a status, the same end again) is unknown.
                    return Verdict.DUPLICATE, replace(self, live_end=False)
                return Verdict.DUPLICATE, self
            if self.state == "lost" and state == "ready" and retained:
                return Verdict.STALE, self
            return Verdict.ACCEPT, replace(self, state=state,
                                           ended=_bounded(self.ended, session, state),
                                           live_end=state == "lost" and not retained,
                                           claim=self.claim and (retained or state == "lost"))
        if self.aside is not None and session == self.aside.session:
            seen = self.aside.observe_state(session, state, retained=retained)
            return self._swapped(seen) if retained else self._back(seen)
        if not retained:
            return Verdict.ACCEPT, self._live_successor(session, state, -1)
        ended, aside = self.ended, self.aside
        if self.session is not None and self.session not in self.ended:
            aside = replace(self, aside=None)
            if self.aside is not None and self.aside.state == "lost" and \
                    self.aside.session is not None:
                ended = (*ended, self.aside.session)  # a lost session is not forgotten
        return Verdict.ACCEPT, NodeTruth(session, state, -1,
                                         _bounded(ended[-MAX_ENDED_SESSIONS:], session, state),
                                         aside, claim=True)

    def _swapped(self, seen: tuple[Verdict, NodeTruth]) -> tuple[Verdict, NodeTruth]:
        """A retained message of the session set aside, as that session's truth took it:
        the two claims swap. A repeated end of the session set aside swaps them too while the
        current session is only a claim itself: the later subscription's copy is what the
        broker holds now (a broker restored from one save, then from another), and an end
        is shown at once. A repeated ``ready`` changes nothing: only a live word brings a
        session back."""
        verdict, back = seen
        if verdict is Verdict.DUPLICATE and self.claim and back.state in TERMINAL_STATES:
            verdict = Verdict.ACCEPT
        if verdict is not Verdict.ACCEPT:
            return verdict, self
        return verdict, replace(back, aside=replace(self, aside=None))

    def _back(self, seen: tuple[Verdict, NodeTruth]) -> tuple[Verdict, NodeTruth]:
        """A live message of the session set aside, as that session's truth took it: that
        session is current; the one it replaces is over, or set aside in turn while no live
        word of its own has come (``claim``) or while it is ``lost``: two processes with one
        id, the one set aside reconnecting after the other took the id while it was away
        (a broker restart), drop each other's connection until one yields, and each drop is
        the other's will."""
        verdict, back = seen
        if verdict is Verdict.STALE or \
                (verdict is Verdict.DUPLICATE and back.state in TERMINAL_STATES):
            return verdict, self  # a repeated end is no word of its process
        if self.claim or self.state == "lost":
            ended = (*self.ended, *back.ended)
            aside: NodeTruth | None = replace(self, aside=None)
        else:
            ended, aside = (*self._superseded(), *back.ended), None
        return Verdict.ACCEPT, replace(back, aside=aside, claim=False, ended=tuple(
            dict.fromkeys(ended))[-MAX_ENDED_SESSIONS:])

    def _live_successor(self, session: str, state: State, seq: int) -> NodeTruth:
        """A session first seen live as the current one: the one it replaces is over, but
        for a ``lost`` one, which is set aside: its process may come back (a process replaced
        while it was away reconnects and drops the newer one, whose return must then count).
        """
        lost = self.state == "lost" and self.session is not None
        ended = self._superseded(with_aside=True, with_current=not lost)
        return NodeTruth(session, state, seq, _bounded(ended, session, state),
                         replace(self, aside=None) if lost else None,
                         live_end=state == "lost")

    def observe_status(self, session: str, seq: int, *, retained: bool = False
                       ) -> tuple[Verdict, NodeTruth]:
        """``retained``: a retained copy (a claim, see the class).

        A newer status of the current session counts even after it stopped or was lost (the
        last ones may come after the state); a live one after ``lost`` says the node is
        back."""
        if session != self.session and session in self.ended:
            return Verdict.STALE, self
        if self.aside is not None and session == self.aside.session and \
                session != self.session:
            if retained and not (self.aside.live_end and seq > self.aside.seq):
                return Verdict.STALE, self  # a claim of the session set aside
            return self._back(self.aside.observe_status(session, seq, retained=retained))
        if session == self.session:
            if seq <= self.seq:
                return Verdict.DUPLICATE if seq == self.seq else Verdict.STALE, self
            back = self.state == "lost" and (self.live_end or not retained)
            return Verdict.ACCEPT, NodeTruth(
                session, "ready" if back else self.state, seq, self.ended, self.aside,
                live_end=self.live_end and not back, claim=self.claim and retained)
        if retained and self.session is not None:
            return Verdict.STALE, self  # a claim the current session's state does not back
        # A node publishes ``ready`` before its first status; that one may have been lost.
        if retained:
            return Verdict.ACCEPT, NodeTruth(session, "ready", seq, self._superseded(),
                                             claim=True)
        return Verdict.ACCEPT, self._live_successor(session, "ready", seq)

    def lost_aside(self, session: str) -> bool:
        """``session`` is the ``lost`` one a newer one set aside (a process replaced while it
        was away, which may reconnect and fight the newer one for the id)."""
        return self.aside is not None and self.aside.session == session and \
            self.aside.state == "lost"

    @property
    def newest_status(self) -> tuple[str, int] | None:
        """``(session, seq)`` of the newest status taken."""
        if self.session is not None and self.seq >= 0:
            return self.session, self.seq
        return None

    def state_of(self, session: str) -> State | None:
        """The state of ``session`` as far as is known."""
        return self.state if session == self.session else None

    def _superseded(self, *, with_aside: bool = False, with_current: bool = True
                    ) -> tuple[str, ...]:
        """``ended`` with the current session (and the one set aside) added."""
        ended = self.ended
        if with_aside and self.aside is not None and self.aside.session is not None and \
                self.aside.session not in ended:
            ended = (*ended, self.aside.session)
        if not with_current or self.session is None or self.session in ended:
            return ended[-MAX_ENDED_SESSIONS:]
        return (*ended, self.session)[-MAX_ENDED_SESSIONS:]


def _bounded(ended: tuple[str, ...], session: str, state: State) -> tuple[str, ...]:
    if state != "disconnected":
        return ended
    return (*ended, session)[-MAX_ENDED_SESSIONS:]


class Health(str, Enum):
    """The words for a node's health, everywhere they are spoken: the status app's
    endpoints and page, ``watch``, the bridge's requests to the monitor, its metrics and the
    docs. Only ``READY`` is up."""

    READY = "ready"
    DISCONNECTED = "disconnected"
    """Stopped cleanly."""
    LOST = "lost"
    """Its will: the connection dropped without a goodbye."""
    STALE = "stale"
    """No fresh status: quiet for more than ``EXPIRY_FACTOR`` report intervals."""
    NOT_RESPONDING = "not_responding"
    """Connected and reporting, but its GUI's main loop does not turn."""
    UNKNOWN = "unknown"
    """Nothing known: no state, or nothing seen (an observer that cannot reach the broker
    knows nothing either; that is its own condition, not the node's)."""

    def __str__(self) -> str:
        return self.value

    @property
    def down(self) -> bool:
        """Known to be down (``UNKNOWN`` is neither up nor known to be down)."""
        return self not in (Health.READY, Health.UNKNOWN)


@dataclass(frozen=True)
class Liveness:
    """Whether a node is up, and if not, why (``reason``) and in words (``detail``)."""

    up: bool
    reason: Health
    detail: str = ""


def liveness(state: State | None, status_age: float | None, interval_s: float | None, *,
             not_responding_since: str | None = None) -> Liveness:
    """The one rule of "up": the current session is ``ready``, its newest word is younger
    than ``EXPIRY_FACTOR`` report intervals, and its newest status does not say the GUI is
    hung (``not_responding_since``). ``status_age`` is in seconds (None: nothing heard from
    the session); without ``interval_s`` no age is too old.

    A ``lost`` counts at once. When a second process takes a node id over, the broker
    publishes the first one's will a moment before the newcomer's ``ready``: the node was
    offline for that moment, and says so."""
    if state == "disconnected":
        return Liveness(False, Health.DISCONNECTED)
    if state == "lost":
        return Liveness(False, Health.LOST)
    if status_age is None:
        return Liveness(False, Health.STALE, "no status received")
    limit = None if interval_s is None else stale_after(interval_s)
    if limit is not None and status_age > limit:
        return Liveness(False, Health.STALE,
                        f"last status {status_age:.1f} s ago (limit {limit:g} s)")
    if state is None:
        return Liveness(False, Health.UNKNOWN, "no state received")
    if not_responding_since is not None:
        return Liveness(False, Health.NOT_RESPONDING,
                        f"GUI not responding since {not_responding_since}")
    return Liveness(True, Health.READY)
