"""The truth model: which session is current, and the one rule of "up". Pure tests."""

from __future__ import annotations

import pytest

from yl_core import protocol
from yl_core.truth import MAX_ENDED_SESSIONS, NodeTruth, Verdict, liveness

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
    pytest.param([("state", "A", "ready", "accept"), ("status", "A", 4, "accept"),
                  ("state", "A", "lost", "accept"), ("apart", "A", 5, "accept")],
                 ("A", "lost", 5, ()),
                 id="a status received apart from the states may predate the will"),
    pytest.param([("state", "A", "ready", "accept"), ("apart", "B", 1, "accept"),
                  ("apart", "A", 3, "accept"), ("state", "A", "lost", "accept"),
                  ("apart", "B", 2, "accept"), ("state", "B", "ready", "accept"),
                  ("state", "A", "ready", "stale")],
                 ("B", "ready", 2, ("A",)),
                 id="apart from the states, a new session's status runs ahead and ends nothing; "
                    "one of the current session after it was no run ahead"),
    pytest.param([("state", "A", "ready", "accept"), ("state", "B", "ready", "accept"),
                  ("state", "A", "lost", "stale"), ("status", "A", 5, "stale"),
                  ("state", "A", "ready", "stale")],
                 ("B", "ready", -1, ("A",)), id="the will of a replaced process is ignored"),
    pytest.param([("state", "zzzz", "ready", "accept"), ("state", "zzzz", "lost", "accept"),
                  ("state", "0000", "ready", "accept"), ("state", "zzzz", "ready", "stale")],
                 ("0000", "ready", -1, ("zzzz",)),
                 id="ids never order sessions: a later 0000 beats an earlier zzzz"),
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
                  ("state", "B", "ready", "accept"), ("state", "A", "ready", "stale")],
                 ("B", "ready", -1, ("A",)),
                 id="a retained state of an unknown session only sets the current one aside: "
                    "a live word of it means the claim was an older save's"),
    pytest.param([("state", "A", "ready", "accept"), ("retained", "B", "ready", "accept"),
                  ("claim", "B", 2, "accept"), ("retained", "B", "lost", "accept")],
                 ("B", "lost", 2, ()), id="a reconnected observer takes the newer session "
                                          "the broker kept, and its end"),
    pytest.param([("state", "A", "ready", "accept"), ("apart", "B", 1, "accept"),
                  ("claim", "A", 2, "stale"), ("apart", "A", 3, "accept"),
                  ("state", "B", "ready", "accept")],
                 ("B", "ready", -1, ("A",)),
                 id="apart: a newer live status of the current session drops the one held "
                    "ahead (its state may never come)"),
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
                                                  in_order=kind != "apart",
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
