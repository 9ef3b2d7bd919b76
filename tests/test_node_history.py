"""A node's history in the status app: state timeline, per-minute samples, bounds."""

from __future__ import annotations

from flask.testing import FlaskClient

from status_app import NodeView
from status_app.node_history import MAX_TRANSITIONS, SAMPLES, NodeHistory
from tests.test_status_app import OLDER, Clock, client, clock, feed, state, status, view
from yl_core.truth import Health

__all__ = ["client", "clock", "view"]  # fixtures

EPOCH = 1_700_000_000.0


def walls(view: NodeView, clock: Clock) -> None:
    view.wall_clock = lambda: clock.now + EPOCH


def timeline(client: FlaskClient) -> list[tuple[float, str]]:
    body = client.get("/nodes/gui-1/history").get_json()
    return [(round(e["at"] - EPOCH, 3), e["state"]) for e in body["timeline"]]


def test_the_timeline_holds_every_change_with_its_time(
        client: FlaskClient, view: NodeView, clock: Clock) -> None:
    walls(view, clock)
    feed(view, "gui-1", "state", state("ready", OLDER))
    feed(view, "gui-1", "status", status(1, OLDER))
    clock.now += 10
    feed(view, "gui-1", "state", state("lost", OLDER))
    clock.now += 5
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    clock.now += 20
    feed(view, "gui-1", "state", state("disconnected"))
    assert timeline(client) == [(1000.0, "ready"), (1010.0, "lost"), (1015.0, "ready"),
                                (1035.0, "disconnected")]


def test_a_takeover_is_a_short_lost_band_and_one_flap(
        client: FlaskClient, view: NodeView, clock: Clock) -> None:
    walls(view, clock)
    feed(view, "gui-1", "state", state("ready", OLDER))
    clock.now += 10
    feed(view, "gui-1", "state", state("lost", OLDER))
    clock.now += 0.25
    feed(view, "gui-1", "state", state("ready"))
    assert timeline(client) == [(1000.0, "ready"), (1010.0, "lost"), (1010.25, "ready")]
    assert client.get("/nodes/gui-1").get_json()["flaps_1h"] == 1


def test_a_silence_is_a_stale_band_from_three_intervals_after_the_last_status(
        client: FlaskClient, view: NodeView, clock: Clock) -> None:
    walls(view, clock)
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    clock.now += 200
    described = client.get("/nodes/gui-1").get_json()
    assert (described["health"], described["down_for_s"]) == ("stale", 110.0)
    assert timeline(client) == [(1000.0, "ready"), (1090.0, "stale")]
    feed(view, "gui-1", "status", status(2))
    assert timeline(client) == [(1000.0, "ready"), (1090.0, "stale"), (1200.0, "ready")]
    described = client.get("/nodes/gui-1").get_json()
    assert (described["down_since"], described["flaps_1h"]) == (None, 1)


def test_down_for_and_flaps_in_the_last_hour(
        client: FlaskClient, view: NodeView, clock: Clock) -> None:
    walls(view, clock)
    feed(view, "gui-1", "state", state("ready", OLDER))
    for _ in range(4):
        clock.now += 600
        feed(view, "gui-1", "state", state("lost", OLDER))
        clock.now += 60
        feed(view, "gui-1", "state", state("ready", OLDER))
        feed(view, "gui-1", "status", status(int(clock.now), OLDER))
    clock.now += 60
    feed(view, "gui-1", "state", state("lost", OLDER))
    clock.now += 180
    described = client.get("/nodes/gui-1").get_json()
    assert described["down_for_s"] == 180.0
    assert described["flaps_1h"] == 5
    clock.now += 3000
    assert client.get("/nodes/gui-1").get_json()["flaps_1h"] == 1


def test_samples_are_one_a_minute_with_cpu_memory_and_flags(
        client: FlaskClient, view: NodeView, clock: Clock) -> None:
    walls(view, clock)
    clock.now = 1200.0
    feed(view, "gui-1", "state", state("ready"))
    for seq, (step, video) in enumerate([(0, False), (30, True), (30, False), (5, True)], 1):
        clock.now += step
        feed(view, "gui-1", "status", status(seq, video_running=video))
    samples = client.get("/nodes/gui-1/history").get_json()["samples"]
    assert [round(t - EPOCH) for t in samples["at"]] == [1230, 1265]
    assert samples["flags"] == {"video_running": [True, True]}
    assert samples["cpu_percent"] == [3.5, 3.5]
    assert samples["memory_mb"] == [120.0, 120.0]


def test_history_is_bounded() -> None:
    history = NodeHistory()
    for minute in range(SAMPLES + 100):
        history.sample(minute * 60.0, float(minute), 1.0, {"a": True})
    for i in range(MAX_TRANSITIONS + 10):
        history.state(float(i), Health.READY if i % 2 else Health.LOST)
    exported = history.export(now=(SAMPLES + 99) * 60.0)
    assert len(exported["samples"]["at"]) == SAMPLES
    assert exported["samples"]["cpu_percent"][0] == 100.0
    assert exported["samples"]["cpu_percent"][-1] == float(SAMPLES + 99)
    assert len(history.timeline) == MAX_TRANSITIONS


def test_the_detail_page_is_served_to_browsers_and_json_to_the_rest(
        client: FlaskClient, view: NodeView) -> None:
    feed(view, "gui-1", "state", state("ready"))
    page = client.get("/nodes/gui-1", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.mimetype == "text/html"
    assert b"history" in page.data
    assert client.get("/nodes/gui-1").get_json()["node_id"] == "gui-1"
    assert client.get("/nodes/nobody/history").status_code == 404
    assert client.get("/nodes/bad%20id/history").status_code == 400
    assert client.get("/nodes/gui-1/history").get_json()["last_status"] is None
