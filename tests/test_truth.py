"""The truth model: which session is current, and the one rule of "up". Pure tests."""

from __future__ import annotations

import pytest

from yl_core import protocol
from yl_core.truth import (
    MAX_ENDED_SESSIONS,
    TAKEOVER_HOLD,
    TAKEOVER_WINDOW,
    NodeTruth,
    Verdict,
    liveness,
    lost_counts_from,
)

Step = tuple[str, str, "str | int", str]
"""(kind, session, state or seq, expected verdict)."""


@pytest.mark.parametrize(("steps", "final"), [
    pytest.param([("state", "A", "ready", "accept"), ("status", "A", 1, "accept"),
                  ("status", "A", 2, "accept")], ("A", "ready", 2, ()), id="a normal session"),
    pytest.param([("status", "A", 2, "accept"), ("status", "A", 1, "stale"),
                  ("status", "A", 2, "duplicate")], ("A", "ready", 2, ()),
                 id="within a session the higher seq wins; a status implies ready"),
    pytest.param([("state", "A", "ready", "accept"), ("state", "A", "ready", "duplicate")],
                 ("A", "ready", -1, ()), id="a rebirth repeats ready"),
    pytest.param([("state", "A", "ready", "accept"), ("status", "A", 4, "accept"),
                  ("state", "A", "disconnected", "accept"), ("state", "A", "ready", "stale"),
                  ("state", "A", "lost", "stale"), ("status", "A", 3, "stale"),
                  ("status", "A", 4, "duplicate")], ("A", "disconnected", 4, ("A",)),
                 id="a stopped session stays dead (restored broker, late will)"),
    pytest.param([("state", "A", "ready", "accept"), ("status", "A", 4, "accept"),
                  ("state", "A", "disconnected", "accept"), ("status", "A", 5, "accept")],
                 ("A", "disconnected", 5, ("A",)),
                 id="a last status that comes after its stop is news, and stays stopped"),
    pytest.param([("state", "A", "ready", "accept"), ("status", "A", 4, "accept"),
                  ("state", "A", "lost", "accept"), ("retained", "A", "ready", "stale"),
                  ("status", "A", 3, "stale"), ("state", "A", "ready", "accept")],
                 ("A", "ready", 4, ()), id="after lost, a live ready revives the session"),
    pytest.param([("state", "A", "ready", "accept"), ("status", "A", 4, "accept"),
                  ("state", "A", "lost", "accept"), ("retained", "A", "ready", "stale"),
                  ("status", "A", 5, "accept")],
                 ("A", "ready", 5, ()), id="after lost, a newer status revives the session"),
    pytest.param([("state", "A", "ready", "accept"), ("state", "B", "ready", "accept"),
                  ("state", "A", "lost", "stale"), ("status", "A", 5, "stale"),
                  ("state", "A", "ready", "stale")],
                 ("B", "ready", -1, ("A",)), id="the will of a replaced process is ignored"),
    pytest.param([("state", "zzzz", "ready", "accept"), ("state", "zzzz", "lost", "accept"),
                  ("state", "0000", "ready", "accept"), ("retained", "zzzz", "ready", "stale")],
                 ("0000", "ready", -1, ()),
                 id="ids never order sessions: a later 0000 beats an earlier zzzz"),
    pytest.param([("state", "A", "ready", "accept"), ("state", "A", "lost", "accept"),
                  ("state", "B", "ready", "accept"), ("status", "B", 0, "accept"),
                  ("state", "B", "lost", "accept"), ("state", "A", "ready", "accept"),
                  ("state", "A", "lost", "accept"), ("state", "B", "ready", "accept"),
                  ("status", "B", 1, "accept")],
                 ("B", "ready", 1, ()),
                 id="a process replaced while it was away reconnects (dropping the newer one), "
                    "is dropped in turn and yields: each lost session is set aside, not ended, "
                    "and each comes back with a live word"),
    pytest.param([("state", "A", "ready", "accept"), ("state", "A", "lost", "accept"),
                  ("state", "B", "ready", "accept"), ("state", "A", "ready", "accept"),
                  ("state", "B", "ready", "stale")],
                 ("A", "ready", -1, ("B",)),
                 id="a lost session's live ready after a newer one's (which went without a "
                    "will) is its process back: the newer one is over"),
    pytest.param([("state", "0000", "ready", "accept"), ("state", "zzzz", "ready", "accept"),
                  ("state", "0000", "ready", "stale")], ("zzzz", "ready", -1, ("0000",)),
                 id="a superseded session stays dead"),
    pytest.param([("state", "A", "ready", "accept"), ("status", "B", 1, "accept"),
                  ("state", "A", "disconnected", "stale"), ("state", "B", "ready", "duplicate"),
                  ("state", "B", "lost", "accept")],
                 ("B", "lost", 1, ("A",)), id="a status of a new session supersedes"),
    pytest.param([("state", "A", "disconnected", "accept"), ("state", "A", "ready", "stale")],
                 ("A", "disconnected", -1, ("A",)), id="a session first seen ended"),
    pytest.param([("retained", "A", "lost", "accept"), ("claim", "A", 7, "accept")],
                 ("A", "lost", 7, ()), id="late observer: a retained status after a retained "
                                          "lost is its newest word, not its return"),
    pytest.param([("claim", "A", 7, "accept"), ("retained", "A", "lost", "accept")],
                 ("A", "lost", 7, ()), id="late observer: the retained copies in the other "
                                          "order tell the same"),
    pytest.param([("state", "A", "ready", "accept"), ("state", "A", "lost", "accept"),
                  ("claim", "A", 3, "accept"), ("status", "A", 4, "accept")],
                 ("A", "ready", 4, ()), id="only a live word brings a lost session back"),
    pytest.param([("state", "B", "ready", "accept"), ("claim", "A", 9, "stale"),
                  ("retained", "B", "ready", "duplicate")],
                 ("B", "ready", -1, ()),
                 id="a retained status names no new session while one is current"),
    pytest.param([("state", "B", "ready", "accept"), ("retained", "A", "ready", "accept"),
                  ("state", "B", "ready", "accept"), ("state", "B", "lost", "accept"),
                  ("retained", "A", "ready", "duplicate")],
                 ("B", "lost", -1, ()),
                 id="a retained state of an unknown session only sets the current one aside: "
                    "a live word of the current one means the claim may be an older save's, "
                    "set aside in turn until it speaks live"),
    pytest.param([("state", "A", "ready", "accept"), ("retained", "B", "ready", "accept"),
                  ("state", "B", "lost", "accept"), ("state", "A", "ready", "accept"),
                  ("state", "A", "lost", "accept"), ("state", "B", "ready", "accept"),
                  ("state", "A", "lost", "duplicate")],
                 ("B", "ready", -1, ()),
                 id="a takeover fight seen by an observer that reconnected during it: the "
                    "newer process, known by its retained ready, is dropped by the older one's "
                    "reconnect and comes back; the older one yields"),
    pytest.param([("state", "A", "ready", "accept"), ("retained", "B", "ready", "accept"),
                  ("state", "B", "lost", "accept"), ("state", "B", "ready", "accept"),
                  ("state", "A", "ready", "accept")],
                 ("A", "ready", -1, ("B",)),
                 id="a claim whose process spoke live (a ready, not its will) is no claim: "
                    "the live word of the session set aside ends it"),
    pytest.param([("retained", "A", "ready", "accept"), ("retained", "B", "ready", "accept"),
                  ("state", "A", "lost", "accept"), ("state", "B", "ready", "accept")],
                 ("B", "ready", -1, ()),
                 id="a session brought back by a live word is no claim, even by its will; "
                    "lost, it is set aside again by the other's live word, not ended"),
    pytest.param([("claim", "A", 3, "accept"), ("retained", "B", "ready", "accept"),
                  ("retained", "A", "lost", "accept"), ("state", "B", "ready", "accept")],
                 ("B", "ready", -1, ()),
                 id="a session known from a retained status alone is a claim: set aside"),
    pytest.param([("state", "A", "ready", "accept"), ("retained", "B", "ready", "accept"),
                  ("claim", "B", 2, "accept"), ("retained", "B", "lost", "accept")],
                 ("B", "lost", 2, ()), id="a reconnected observer takes the newer session "
                                          "the broker kept, and its end"),
])
def test_node_truth_follows_arrival_order(steps: list[Step],
                                          final: tuple[object, ...]) -> None:
    node = NodeTruth()
    for kind, session, value, expected in steps:
        if kind in ("state", "retained"):
            verdict, node = node.observe_state(session, value,  # type: ignore[arg-type]
                                                 retained=kind == "retained")
        else:
            before = node
            verdict, node = node.observe_status(session, int(value),
                                                  retained=kind == "claim")
            if verdict is not Verdict.ACCEPT:
                assert node == before
        assert verdict.value == expected, (kind, session, value)
    assert (node.session, node.state, node.seq, node.ended) == final


def test_ended_sessions_are_bounded_and_the_newest_kept() -> None:
    node = NodeTruth()
    for i in range(MAX_ENDED_SESSIONS * 3):
        _, node = node.observe_state(f"s{i}", "ready")
    assert len(node.ended) == MAX_ENDED_SESSIONS
    assert node.ended[-1] == f"s{MAX_ENDED_SESSIONS * 3 - 2}"
    verdict, _ = node.observe_state(node.ended[0], "ready")
    assert verdict is Verdict.STALE


@pytest.mark.parametrize(("state", "age", "interval", "up", "reason"), [
    ("ready", 1.0, 10.0, True, "ready"),
    ("ready", 29.9, 10.0, True, "ready"),
    ("ready", 30.1, 10.0, False, "stale"),
    ("ready", None, 10.0, False, "stale"),
    ("lost", 0.0, 10.0, False, "lost"),
    ("disconnected", 0.0, 10.0, False, "disconnected"),
    (None, 1.0, 10.0, False, "unknown"),
    (None, None, None, False, "stale"),
    ("ready", 0.0, None, True, "ready"),
    ("lost", None, None, False, "lost"),
])
def test_liveness_is_ready_and_a_fresh_status(state: protocol.State | None, age: float | None,
                                              interval: float | None, up: bool,
                                              reason: str) -> None:
    verdict = liveness(state, age, interval)
    assert (verdict.up, verdict.reason) == (up, reason)


@pytest.mark.parametrize("state", ["lost", "disconnected"])
def test_a_terminal_state_counts_at_once_however_fresh_the_status(
        state: protocol.State) -> None:
    verdict = liveness(state, 0.0, 10.0)
    assert (verdict.up, verdict.reason) == (False, state)


def test_a_hung_gui_is_down_only_while_the_session_is_otherwise_up() -> None:
    since = "2026-01-01T00:00:05.000Z"
    verdict = liveness("ready", 1.0, 10.0, not_responding_since=since)
    assert (verdict.up, verdict.reason) == (False, "not_responding")
    assert verdict.detail == f"GUI not responding since {since}"
    assert liveness("lost", 1.0, 10.0, not_responding_since=since).reason == "lost"
    assert liveness("ready", 99.0, 10.0, not_responding_since=since).reason == "stale"
    assert liveness("ready", 1.0, 10.0, not_responding_since=None).up


def run(steps: list[tuple[str, str, str | int]]) -> tuple[list[str], NodeTruth]:
    """Feed ``steps`` (kind, session, state or seq) to a new truth: the verdicts and the
    truth at the end. ``status`` is live, ``claim`` a retained status, ``default`` a
    status with no keyword given."""
    node, verdicts = NodeTruth(), []
    for kind, session, value in steps:
        if kind in ("state", "retained"):
            verdict, node = node.observe_state(session, value,  # type: ignore[arg-type]
                                                 retained=kind == "retained")
        elif kind == "default":
            verdict, node = node.observe_status(session, int(value))
        else:
            verdict, node = node.observe_status(session, int(value),
                                                  retained=kind == "claim")
        verdicts.append(verdict.value)
    return verdicts, node


A_READY = NodeTruth("A", "ready", 1)
"""Session A, ``ready``, with its status 1 (set aside in several cases below)."""
B_CLAIM = NodeTruth("B", "ready", claim=True)
"""Session B known only from its retained ``ready`` (set aside in several cases below)."""


@pytest.mark.parametrize(("steps", "verdicts", "final"), [
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("state", "A", "lost")],
                 ["accept"] * 3, NodeTruth("A", "lost", 1, live_end=True),
                 id="a live lost is a live end"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("state", "A", "lost"),
                  ("claim", "A", 2)], ["accept"] * 4, NodeTruth("A", "ready", 2),
                 id="after a live end, a newer status, even retained, is the node back"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("state", "A", "lost"),
                  ("retained", "A", "lost"), ("claim", "A", 2)],
                 ["accept"] * 3 + ["duplicate", "accept"], NodeTruth("A", "lost", 2),
                 id="after a live end seen again as a retained copy (a new subscription), a "
                    "newer retained status is only a claim: the node may have been back and "
                    "lost again meanwhile"),
    pytest.param([("retained", "A", "lost"), ("claim", "A", 2), ("default", "A", 3)],
                 ["accept"] * 3, NodeTruth("A", "ready", 3),
                 id="a retained lost is no live end; a status given no keyword is live"),
    pytest.param([("state", "A", "ready"), ("state", "B", "lost")], ["accept"] * 2,
                 NodeTruth("B", "lost", -1, ("A",), live_end=True),
                 id="a new session's live lost is a live end"),
    pytest.param([("state", "A", "disconnected"), ("state", "B", "ready")], ["accept"] * 2,
                 NodeTruth("B", "ready", -1, ("A",)), id="an ended session stays ended"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("retained", "B", "ready")],
                 ["accept"] * 3, NodeTruth("B", "ready", -1, aside=A_READY, claim=True),
                 id="a retained state of an unknown session sets the current one aside"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("retained", "B", "ready"),
                  ("status", "A", 2), ("claim", "A", 3)], ["accept"] * 5,
                 NodeTruth("A", "ready", 3, aside=B_CLAIM),
                 id="a live status of the session set aside makes it current; the claim "
                    "that had no live word of its own is set aside in turn"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("retained", "B", "ready"),
                  ("status", "B", 1), ("state", "B", "lost"), ("state", "A", "ready"),
                  ("state", "A", "lost"), ("state", "B", "ready"), ("status", "B", 2)],
                 ["accept"] * 8 + ["accept"],
                 NodeTruth("B", "ready", 2,
                           aside=NodeTruth("A", "lost", 1, live_end=True)),
                 id="a fight over the id after a broker restart: the process set aside "
                    "reconnects and drops the one that took the id while it was away, which "
                    "comes back; neither is ended"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("retained", "B", "ready"),
                  ("claim", "A", 3)], ["accept"] * 3 + ["stale"],
                 NodeTruth("B", "ready", -1, aside=A_READY, claim=True),
                 id="a retained status of the session set aside is only a claim"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("retained", "B", "ready"),
                  ("retained", "A", "lost")], ["accept"] * 4,
                 NodeTruth("A", "lost", 1, aside=B_CLAIM),
                 id="a retained state of the session set aside swaps the two claims"),
    pytest.param([("retained", "B", "lost"), ("retained", "A", "ready"),
                  ("retained", "B", "lost")], ["accept"] * 3,
                 NodeTruth("B", "lost", -1, aside=NodeTruth("A", "ready", -1, claim=True),
                           claim=True),
                 id="a repeated retained end of the session set aside, while the current one "
                    "is a claim, is what the broker holds now (restored from one save, then "
                    "from another)"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("retained", "B", "ready"),
                  ("retained", "A", "ready")], ["accept"] * 3 + ["duplicate"],
                 NodeTruth("B", "ready", -1, aside=A_READY, claim=True),
                 id="a retained repeat of the aside session's state changes nothing"),
    pytest.param([("state", "A", "ready"), ("retained", "B", "ready"),
                  ("retained", "C", "ready")], ["accept"] * 3,
                 NodeTruth("C", "ready", -1, aside=B_CLAIM, claim=True),
                 id="a third claim sets the second aside"),
    pytest.param([("state", "A", "disconnected"), ("retained", "C", "ready")], ["accept"] * 2,
                 NodeTruth("C", "ready", -1, ("A",), claim=True),
                 id="an ended session is not set aside"),
    pytest.param([("state", "A", "ready"), ("retained", "B", "disconnected")], ["accept"] * 2,
                 NodeTruth("B", "disconnected", -1, ("B",), aside=NodeTruth("A", "ready"),
                           claim=True),
                 id="a retained stop of an unknown session ends it"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("state", "A", "lost"),
                  ("state", "B", "ready"), ("claim", "A", 2)], ["accept"] * 5,
                 NodeTruth("A", "ready", 2, ("B",)),
                 id="after a live end of the lost session set aside, a newer status of it, even "
                    "retained, is that process back (published after its will)"),
    pytest.param([("state", "A", "ready"), ("status", "A", 1), ("state", "A", "lost"),
                  ("state", "B", "ready"), ("claim", "A", 1)], ["accept"] * 4 + ["stale"],
                 NodeTruth("B", "ready", -1, aside=NodeTruth("A", "lost", 1, live_end=True)),
                 id="a retained status of it no newer than before its end is only a claim"),
    pytest.param([("state", "A", "ready"), ("retained", "B", "ready"), ("state", "C", "ready")],
                 ["accept"] * 3, NodeTruth("C", "ready", -1, ("A", "B")),
                 id="a live state of a new session ends the current one and the one aside"),
    pytest.param([("state", "A", "ready"), ("retained", "B", "ready"), ("status", "C", 1)],
                 ["accept"] * 3, NodeTruth("C", "ready", 1, ("A", "B")),
                 id="a live status of a new session ends the current one and the one aside"),
])
def test_node_truth_whole(steps: list[tuple[str, str, str | int]], verdicts: list[str],
                          final: NodeTruth) -> None:
    """Every field of the truth, not only the current session's."""
    assert run(steps) == (verdicts, final)


def test_liveness_says_why_in_words() -> None:
    assert liveness("ready", None, 10.0).detail == "no status received"
    assert liveness("ready", 30.25, 10.0).detail == "last status 30.2 s ago (limit 30 s)"
    assert liveness(None, 1.0, 10.0).detail == "no state received"
    assert liveness("ready", 30.0, 10.0).up, "a status exactly three intervals old is fresh"


@pytest.mark.parametrize(("lost_at", "replaced_at", "counts_from"), [
    (1000.0, None, 1000.0),
    (1000.0, 1000.0, 1000.0 + TAKEOVER_HOLD),
    (1000.5, 1000.0, 1000.5 + TAKEOVER_HOLD),
    (1000.0 + TAKEOVER_WINDOW, 1000.0, 1000.0 + TAKEOVER_WINDOW + TAKEOVER_HOLD),
    (1000.0 + TAKEOVER_WINDOW + 0.01, 1000.0, 1000.0 + TAKEOVER_WINDOW + 0.01),
    (999.5, 1000.0, 999.5),
])
def test_a_lost_waits_only_within_the_takeover_window(
        lost_at: float, replaced_at: float | None, counts_from: float) -> None:
    assert lost_counts_from(lost_at, replaced_at) == counts_from
