"""Status app routes through ``app.test_client()`` on a view fed with protocol messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from status_app import NodeView, create_app
from yl_core import timestamps
from yl_core.config import parse_config
from yl_core.protocol import (
    ReporterCounters,
    Resources,
    StateMessage,
    StatusMessage,
    encode,
)

SESSION = "000000000010-aaaaaaaaaaaa"
OLDER = "000000000001-bbbbbbbbbbbb"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(word: str, session: str = SESSION) -> bytes:
    return encode(StateMessage(state=word, session=session,  # type: ignore[arg-type]
                               since="2026-01-01T00:00:00.000Z", node_name="GUI",
                               version="2.1", interval_s=30.0))


def status(seq: int, session: str = SESSION, node_id: str = "gui-1", **gui: Any) -> bytes:
    return encode(StatusMessage(
        node_id=node_id, node_name="GUI", timestamp="2026-01-01T00:00:00.000Z",
        status="running", version="2.1", uptime=5.0,
        resources=Resources(cpu_percent=3.5, memory_mb=120.0, threads=9),
        gui={"video_running": False, **gui},
        reporter=ReporterCounters(seq, 1, "2026-01-01T00:00:00.000Z"),
        session=session, seq=seq, interval_s=30.0))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def view(clock: Clock) -> NodeView:
    v = NodeView(clock=clock)
    v.set_broker(True, "connected")
    return v


@pytest.fixture
def client(view: NodeView) -> Iterator[FlaskClient]:
    config = parse_config({"monitor": {"node_id": "gui-1", "url": "http://mon:5500"}}, "<test>")
    app = create_app(config, view)
    with app.test_client() as c:
        yield c


def feed(view: NodeView, node: str, kind: str, payload: bytes) -> bool:
    return view.ingest(f"yl/ar/nodes/{node}/{kind}", payload)


def test_health_is_healthy_while_ready_and_fresh(client: FlaskClient, view: NodeView) -> None:
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["service"] == "user-gui"
    assert body["version"] == "2.1"
    assert body["timestamp"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("word", ["lost", "disconnected"])
def test_health_is_503_with_the_state_as_reason(client: FlaskClient, view: NodeView,
                                                clock: Clock, word: str) -> None:
    feed(view, "gui-1", "status", status(1))
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "state", state(word))
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unhealthy"
    assert response.get_json()["reason"] == word


def test_health_goes_stale_after_three_intervals(client: FlaskClient, view: NodeView,
                                                 clock: Clock) -> None:
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    clock.now += 89
    assert client.get("/health").status_code == 200
    clock.now += 2
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "stale"


def test_health_of_a_node_never_seen_is_unknown(client: FlaskClient, view: NodeView) -> None:
    feed(view, "other", "state", state("ready"))
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "unknown"


def test_health_without_the_broker_is_503_broker_unreachable(client: FlaskClient,
                                                             view: NodeView) -> None:
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    view.set_broker(False, "connection refused")
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert (body["reason"], body["detail"]) == ("unknown", "broker unreachable: connection refused")


def test_status_returns_the_snapshot_as_published(client: FlaskClient, view: NodeView) -> None:
    payload = status(7, video_running=True)
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", payload)
    response = client.get("/status")
    assert response.status_code == 200
    body = response.get_json()
    published = json.loads(payload)
    assert {k: body[k] for k in published} == published
    assert (body["state"], body["up"]) == ("ready", True)
    for key in ("node_id", "node_name", "timestamp", "status", "version", "uptime",
                "resources", "gui", "reporter"):
        assert key in body
    assert body["gui"]["video_running"] is True


@pytest.mark.parametrize("word", ["lost", "disconnected"])
def test_status_of_a_node_that_is_down_says_so_and_since_when(
        client: FlaskClient, view: NodeView, clock: Clock, word: str) -> None:
    view.wall_clock = lambda: clock.now + 1_700_000_000
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(3))
    clock.now += 40
    feed(view, "gui-1", "state", state(word))
    changed = timestamps.iso_from_epoch(clock.now + 1_700_000_000)
    clock.now += 90
    response = client.get("/status")
    assert response.status_code == 503
    body = response.get_json()
    assert (body["state"], body["state_changed_at"], body["up"], body["reason"]) == \
        (word, changed, False, word)
    assert body["status"] == word, "the snapshot's 'running' is not what is true now"
    assert body["seq"] == 3
    assert client.get("/health").get_json()["detail"] == f"node {word} since {changed}"


def test_status_without_a_snapshot_is_503(client: FlaskClient) -> None:
    response = client.get("/status")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unknown"


def test_stats_keep_the_original_field_names(client: FlaskClient, view: NodeView) -> None:
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(4))
    body = client.get("/stats").get_json()
    assert body == {"running": True, "report_count": 4, "error_count": 1,
                    "last_report_time": "2026-01-01T00:00:00.000Z",
                    "config": {"node_id": "gui-1", "monitor_url": "http://mon:5500",
                               "interval": 30.0}}


def test_an_older_message_never_overwrites_a_newer_one(client: FlaskClient,
                                                       view: NodeView) -> None:
    assert feed(view, "gui-1", "status", status(9, session=OLDER))
    assert feed(view, "gui-1", "status", status(5, frame=5))
    assert not feed(view, "gui-1", "status", status(4, frame=4))
    assert not feed(view, "gui-1", "status", status(5, frame=99))
    assert not feed(view, "gui-1", "status", status(10, session=OLDER))
    assert client.get("/status").get_json()["gui"]["frame"] == 5
    assert feed(view, "gui-1", "status", status(6, frame=6))
    assert client.get("/status").get_json()["gui"]["frame"] == 6


def test_the_will_of_a_replaced_session_is_ignored(client: FlaskClient, view: NodeView) -> None:
    feed(view, "gui-1", "state", state("ready", session=OLDER))
    feed(view, "gui-1", "status", status(3, session=OLDER))
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    assert not feed(view, "gui-1", "state", state("lost", session=OLDER))
    assert client.get("/health").status_code == 200


def test_a_restored_ready_of_an_ended_session_does_not_resurrect(
        client: FlaskClient, view: NodeView) -> None:
    """A broker killed before its next save comes back with the older retained ``ready``
    (and a status that has not expired yet)."""
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    feed(view, "gui-1", "state", state("disconnected"))
    assert not feed(view, "gui-1", "state", state("ready"))
    assert not feed(view, "gui-1", "status", status(1))
    answer = client.get("/health")
    assert answer.status_code == 503
    assert answer.get_json()["reason"] == "disconnected"


@pytest.mark.parametrize("word", ["lost", "disconnected"])
@pytest.mark.parametrize("state_first", [True, False], ids=["state first", "status first"])
def test_a_status_app_started_after_a_node_ended_says_so_at_once(
        client: FlaskClient, view: NodeView, word: str, state_first: bool) -> None:
    """Started after a crash (or a clean stop), the view gets the retained copies in either
    order: the status is the node's last word, not its return."""
    copies = [("state", state(word)), ("status", status(4))]
    for kind, payload in copies if state_first else copies[::-1]:
        view.ingest(f"yl/ar/nodes/gui-1/{kind}", payload, retained=True)
    answer = client.get("/health")
    assert answer.status_code == 503
    assert answer.get_json()["reason"] == word
    assert client.get("/nodes/gui-1").get_json()["state"] == word
    assert client.get("/status").get_json()["seq"] == 4
    feed(view, "gui-1", "state", state("ready", session=OLDER))
    feed(view, "gui-1", "status", status(1, session=OLDER))
    assert client.get("/health").status_code == 200, "a new process, live, is up"


def test_a_reconnected_status_app_takes_the_session_the_broker_kept_in_either_order(
        client: FlaskClient, view: NodeView) -> None:
    """The view knew one session; while it was away the node restarted: the retained status
    of the new session may come before its retained state, and is not lost."""
    feed(view, "gui-1", "state", state("ready", session=OLDER))
    feed(view, "gui-1", "status", status(9, session=OLDER))
    view.ingest("yl/ar/nodes/gui-1/status", status(2), retained=True)
    view.ingest("yl/ar/nodes/gui-1/state", state("ready"), retained=True)
    assert client.get("/health").status_code == 200
    assert client.get("/status").get_json()["seq"] == 2
    assert client.get("/nodes/gui-1").get_json()["session"] == SESSION


def test_session_ids_never_order_sessions(client: FlaskClient, view: NodeView) -> None:
    """An earlier run with a clock years ahead (or a hand-made id) must not hide the next."""
    feed(view, "gui-1", "state", state("ready", session="zzzz"))
    feed(view, "gui-1", "state", state("lost", session="zzzz"))
    assert feed(view, "gui-1", "state", state("ready", session="0000"))
    assert feed(view, "gui-1", "status", status(1, session="0000"))
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("yl/ar/nodes/gui-1/status", b"{broken", "json"),
    ("yl/ar/nodes/gui-1/status", b'{"v": NaN}', "json"),
    ("yl/ar/nodes/gui-1/status", status(1, node_id="gui-2"), "node_id"),
    ("yl/ar/nodes/gui-1/status", b"[" * 50_000, "json"),
    ("yl/ar/nodes/gui-1/status", b"x" * 2_000_000, "too_large"),
    ("yl/ar/nodes/gui-1/state", b'{"v":1,"state":"zombie"}', "schema"),
    ("yl/ar/nodes/../status", status(1), "node_id"),
    ("yl/ar/nodes/nodé/status", status(1), "node_id"),
])
def test_malformed_messages_are_counted_and_change_nothing(
        client: FlaskClient, view: NodeView, topic: str, payload: bytes, reason: str) -> None:
    feed(view, "gui-1", "status", status(1, frame=1))
    assert not view.ingest(topic, payload)
    assert view.counters()["rejected"] == {reason: 1}
    assert client.get("/status").get_json()["gui"]["frame"] == 1


def test_nodes_lists_every_node_with_state_and_age(client: FlaskClient, view: NodeView,
                                                   clock: Clock) -> None:
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1, video_running=True))
    feed(view, "gui-2", "state", state("lost"))
    clock.now += 3
    body = client.get("/nodes").get_json()
    assert body["broker"]["connected"] is True
    nodes = {n["node_id"]: n for n in body["nodes"]}
    assert nodes["gui-1"]["health"] == "ready"
    assert nodes["gui-1"]["status_age_s"] == 3.0
    assert nodes["gui-1"]["gui"]["video_running"] is True
    assert nodes["gui-2"]["health"] == "lost"
    assert [n["node_id"] for n in body["nodes"]] == ["gui-2", "gui-1"], "problems first"
    one = client.get("/nodes/gui-2")
    assert one.status_code == 200
    assert one.get_json()["state"] == "lost"


def test_unknown_node_and_bad_ids_are_json_errors(client: FlaskClient) -> None:
    missing = client.get("/nodes/nobody")
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "not_found"
    for hostile in ("a.b", "x" * 65, "-lead", "n%C3%A9"):
        bad = client.get(f"/nodes/{hostile}")
        assert bad.status_code == 400, hostile
        assert bad.get_json() == {"error": "bad_request", "message": "invalid node id"}


def test_unknown_routes_and_methods_are_json(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    response = client.post("/health")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"


def test_foreign_host_headers_are_refused(client: FlaskClient) -> None:
    response = client.get("/health", headers={"Host": "evil.example:5502"})
    assert response.status_code == 400
    assert client.get("/health", headers={"Host": "127.0.0.1:5502"}).status_code in (200, 503)
    assert client.get("/health", headers={"Host": "localhost:5502"}).status_code in (200, 503)


def test_oversized_requests_are_refused(client: FlaskClient) -> None:
    """Refused on any route, before a handler runs (the routes read no body)."""
    response = client.get("/health", data=b"x" * 100_000)
    assert response.status_code == 413
    assert response.get_json()["error"] == "request_entity_too_large"
    small = client.get("/health", data=b"x" * 100)
    assert small.status_code == client.get("/health").status_code


def test_live_page_is_self_contained(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'role="table"' in page
    assert "fetch(\"nodes\"" in page
    assert "http://" not in page
    assert "https://" not in page


def test_the_node_page_needs_nothing_from_elsewhere(client: FlaskClient, view: NodeView) -> None:
    feed(view, "gui-1", "state", state("ready"))
    page = client.get("/nodes/gui-1", headers={"Accept": "text/html"}).get_data(as_text=True)
    assert "<svg" in page
    assert "<script src" not in page
    assert "<link" not in page
    assert "https://" not in page


def test_view_is_bounded_by_node_count(clock: Clock) -> None:
    view = NodeView(clock=clock, max_nodes=3)
    for i in range(5):
        feed(view, f"n{i}", "state", state("ready"))
    assert len(view.node_ids()) == 3
    assert view.counters()["rejected"] == {"too_many_nodes": 2}


def test_empty_retained_payload_clears(view: NodeView) -> None:
    feed(view, "gui-1", "state", state("ready"))
    assert feed(view, "gui-1", "state", b"")
    assert view.node_ids() == []
    assert json.loads(state("ready"))["state"] == "ready"


def test_a_will_counts_at_once_and_a_replacement_is_up_at_once(
        client: FlaskClient, view: NodeView, clock: Clock) -> None:
    feed(view, "gui-1", "state", state("ready", session=OLDER))
    feed(view, "gui-1", "status", status(1, session=OLDER))
    feed(view, "gui-1", "state", state("lost", session=OLDER))
    answer = client.get("/health")
    assert (answer.status_code, answer.get_json()["reason"]) == (503, "lost")
    clock.now += 0.01
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    assert client.get("/health").status_code == 200
    feed(view, "gui-1", "state", state("lost"))
    answer = client.get("/health")
    assert answer.status_code == 503
    assert answer.get_json()["reason"] == "lost"


def test_a_retained_will_counts_at_once(client: FlaskClient, view: NodeView) -> None:
    view.ingest("yl/ar/nodes/gui-1/status", status(1), retained=True)
    view.ingest("yl/ar/nodes/gui-1/state", state("lost"), retained=True)
    assert client.get("/health").status_code == 503


def test_the_monitors_own_application_check_host_is_served(client: FlaskClient) -> None:
    assert client.get("/health", headers={"Host": "0.0.0.0:5502"}).status_code == 503
    assert client.get("/health", headers={"Host": "0.0.0.0:5502"}).get_json()["reason"] == \
        "unknown"


def test_cors_answers_the_monitors_origin_and_no_other(client: FlaskClient) -> None:
    mine = client.get("/health", headers={"Origin": "http://mon:5500"})
    assert mine.headers["Access-Control-Allow-Origin"] == "http://mon:5500"
    other = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options("/status", headers={
        "Origin": "http://mon:5500", "Access-Control-Request-Method": "GET"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://mon:5500"
    assert "POST" not in preflight.headers.get("Access-Control-Allow-Methods", "")


def test_a_loopback_monitors_dashboard_reads_health_at_any_loopback_spelling(
        view: NodeView) -> None:
    config = parse_config({"monitor": {"node_id": "gui-1", "url": "http://localhost:5500"}},
                          "<test>")
    with create_app(config, view).test_client() as c:
        for origin in ("http://localhost:5500", "http://0.0.0.0:5500", "http://127.0.0.1:5500",
                       "http://[::1]:5500"):
            answer = c.get("/health", headers={"Origin": origin})
            assert answer.headers["Access-Control-Allow-Origin"] == origin
            assert "Origin" in answer.headers.get("Vary", "")
        for origin in ("http://localhost:5501", "https://localhost:5500",
                       "http://127.0.0.2:5500"):
            assert "Access-Control-Allow-Origin" not in \
                c.get("/health", headers={"Origin": origin}).headers


def test_configured_origins_are_allowed_besides_the_monitors(view: NodeView) -> None:
    config = parse_config({"monitor": {"node_id": "gui-1", "url": "https://mon.example/api"},
                           "local_server": {"cors_origins": ["http://dash.example:8080/"]}},
                          "<test>")
    with create_app(config, view).test_client() as c:
        for origin in ("https://mon.example", "http://dash.example:8080"):
            answer = c.get("/health", headers={"Origin": origin})
            assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert "Access-Control-Allow-Origin" not in \
            c.get("/health", headers={"Origin": "http://dash.example"}).headers


def test_a_status_before_its_sessions_ready_shows_the_node_up(
        client: FlaskClient, view: NodeView) -> None:
    """A new session's status may reach the view before its ``ready`` (or the ready may have
    been replaced at the broker meanwhile): the node is up, as NodeTruth says."""
    feed(view, "gui-1", "state", state("ready", OLDER))
    feed(view, "gui-1", "status", status(1, OLDER))
    feed(view, "gui-1", "state", state("disconnected", OLDER))
    feed(view, "gui-1", "status", status(1))
    assert client.get("/health").status_code == 200
    assert client.get("/nodes/gui-1").get_json()["state"] == "ready"
    feed(view, "gui-1", "state", state("ready"))
    described = client.get("/nodes/gui-1").get_json()
    assert (described["health"], described["state_since"]) == \
        ("ready", "2026-01-01T00:00:00.000Z")
    feed(view, "gui-1", "state", state("lost"))
    assert client.get("/health").get_json()["reason"] == "lost"


def hung_status(seq: int, since: str | None) -> bytes:
    data = json.loads(status(seq))
    if since is not None:
        data["not_responding_since"] = since
    return json.dumps(data).encode()


def test_a_hung_gui_is_503_not_responding_everywhere_and_a_band_in_its_history(
        client: FlaskClient, view: NodeView, clock: Clock) -> None:
    since = "2026-01-01T00:00:05.000Z"
    feed(view, "gui-1", "state", state("ready"))
    feed(view, "gui-1", "status", status(1))
    clock.now += 10
    feed(view, "gui-1", "status", hung_status(2, since))
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["reason"] == "not_responding"
    assert health.get_json()["detail"] == f"GUI not responding since {since}"
    current = client.get("/status")
    assert current.status_code == 503
    assert current.get_json()["not_responding_since"] == since
    feed(view, "gui-1", "status", hung_status(3, since))
    node = client.get("/nodes").get_json()["nodes"][0]
    assert node["health"] == "not_responding"
    assert node["down_since"] is not None
    feed(view, "gui-1", "status", hung_status(4, None))
    assert client.get("/health").status_code == 200
    bands = [entry["state"] for entry in
             client.get("/nodes/gui-1/history").get_json()["timeline"]]
    assert bands[-2:] == ["not_responding", "ready"]
