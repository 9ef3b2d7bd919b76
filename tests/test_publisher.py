"""StatusPublisher against a real mosquitto started with the project's config."""

from __future__ import annotations

import itertools
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from testkit.support import (
    READER_USER,
    TEST_ACL,
    TEST_PASSWORD,
    Recorder,
    make_config,
    retained,
    wait_until,
)

from publisher import SessionTakenOverError, StatusPublisher
from publisher.resources import ResourceSampler
from yl_core import protocol
from yl_core.config import load_config, parse_config
from yl_status.dev_broker import DevBroker, free_port

pytestmark = pytest.mark.integration

STATE = "yl/ar/nodes/node-1/state"
STATUS = "yl/ar/nodes/node-1/status"


@pytest.fixture
def recorder(broker: DevBroker) -> Iterator[Recorder]:
    rec = Recorder(broker.host, broker.port).start()
    yield rec
    rec.stop()


@pytest.fixture
def publishers() -> Iterator[list[StatusPublisher]]:
    made: list[StatusPublisher] = []
    yield made
    for publisher in made:
        publisher.stop(timeout=2.0)


def started(publishers: list[StatusPublisher], publisher: StatusPublisher) -> StatusPublisher:
    publishers.append(publisher)
    return publisher.start()


def test_ready_and_status_are_retained_for_a_fresh_subscriber(
        broker: DevBroker, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(broker)))
    wait_until(lambda: publisher.stats()["report_count"] >= 1, what="first status acked")
    state = retained(broker.host, broker.port, STATE)
    assert state["state"] == "ready"
    assert state["session"] == publisher.session
    assert state["node_type"] == "user-gui"
    assert state["interval_s"] == 30.0
    status = retained(broker.host, broker.port, STATUS)
    assert status["node_id"] == "node-1"
    assert status["session"] == publisher.session
    assert status["seq"] >= 1
    assert set(status["gui"]) >= {"window_active", "video_running", "audio_running",
                                  "face_loaded"}
    assert set(status["resources"]) == {"cpu_percent", "memory_mb", "threads"}
    assert status["resources"]["memory_mb"] > 1
    assert status["resources"]["threads"] >= 2


def test_status_carries_a_message_expiry_of_three_intervals(
        broker: DevBroker, publishers: list[StatusPublisher]) -> None:
    config = make_config(broker, monitor={"report_interval": 2})
    started(publishers, StatusPublisher(config))
    expiry: list[int] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=READER_USER,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(READER_USER, TEST_PASSWORD)

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        expiry.append(getattr(msg.properties, "MessageExpiryInterval", -1))
        done.set()

    client.on_connect = lambda c, *a: c.subscribe(STATUS, qos=1)
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert done.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()
    full = protocol.status_expiry(2)
    assert full == 6
    assert expiry[0] in (full - 1, full)  # as published, less at most a second in transit


def test_stop_publishes_disconnected_and_is_idempotent(
        broker: DevBroker, recorder: Recorder) -> None:
    publisher = StatusPublisher(make_config(broker)).start()
    recorder.wait_for(STATE, lambda d: d["state"] == "ready")
    begun = time.monotonic()
    publisher.stop(timeout=2.0)
    assert time.monotonic() - begun < 2.5
    publisher.stop(timeout=2.0)
    assert retained(broker.host, broker.port, STATE)["state"] == "disconnected"
    assert publisher.stats()["running"] is False
    assert not [m for m in recorder.on(STATE) if m.json()["state"] == "lost"]


def test_start_returns_at_once_and_stop_is_bounded_with_a_black_holed_broker(
        tmp_path: Path) -> None:
    """A broker address that accepts TCP but never answers MQTT."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        config = make_config(type("B", (), {"host": "127.0.0.1",
                                            "port": hole.getsockname()[1]})())
        publisher = StatusPublisher(config)
        begun = time.monotonic()
        publisher.start()
        assert time.monotonic() - begun < 0.2
        update_begun = time.monotonic()
        for i in range(1000):
            publisher.update_gui_status(video_running=bool(i % 2))
        assert time.monotonic() - update_begun < 0.2
        assert publisher.connected is False
        begun = time.monotonic()
        publisher.stop(timeout=1.0)
        assert time.monotonic() - begun < 1.5
    finally:
        hole.close()


def test_broker_down_at_start_then_connects_when_it_appears(tmp_path: Path) -> None:
    from testkit.broker import broker_users
    broker = DevBroker(tmp_path / "late", users=broker_users(), extra_acl=TEST_ACL)
    publisher = StatusPublisher(make_config(broker)).start()
    try:
        wait_until(lambda: publisher.stats()["error_count"] >= 1, what="a failed attempt")
        assert publisher.stats()["running"] is True
        publisher.update_gui_status(face_loaded=True)
        broker.start()
        wait_until(lambda: publisher.connected, timeout=10, what="connection")
        wait_until(lambda: (retained(broker.host, broker.port, STATUS) or {}).get("gui", {})
                   .get("face_loaded") is True, what="current status after connect")
        assert retained(broker.host, broker.port, STATE)["state"] == "ready"
    finally:
        publisher.stop()
        broker.stop()


def test_a_burst_of_updates_is_coalesced_and_the_last_values_win(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(broker)))
    first = recorder.wait_for(STATUS)
    before = len(recorder.on(STATUS))
    begun = time.monotonic()
    for i in range(1000):
        publisher.update_gui_status(video_running=bool(i % 2), frame=i)
    burst = time.monotonic() - begun
    last = recorder.wait_for(STATUS, lambda d: d["gui"].get("frame") == 999, after=first.at)
    assert last.json()["gui"]["video_running"] is True
    sent = len(recorder.on(STATUS)) - before
    assert 1 <= sent <= 2 + int(burst / 0.02) + 2, f"{sent} messages for a {burst:.3f} s burst"
    seqs = [m.json()["seq"] for m in recorder.on(STATUS)]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


def test_every_single_change_goes_out_at_once(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(broker)))
    recorder.wait_for(STATUS)
    for value in (True, False, True):
        begun = time.monotonic()
        publisher.update_gui_status(audio_running=value)
        got = recorder.wait_for(STATUS, lambda d, v=value: d["gui"]["audio_running"] is v,
                                after=begun)
        assert got.at - begun < 1.0


@pytest.mark.parametrize("value", [[1], {"a": 1}, object(), b"bytes", (1,)])
def test_non_scalar_flags_raise_type_error_and_change_nothing(
        broker: DevBroker, value: object) -> None:
    publisher = StatusPublisher(make_config(broker))
    with pytest.raises(TypeError, match="camera"):
        publisher.update_gui_status(video_running=True, camera=value)  # type: ignore[arg-type]
    assert publisher.gui_status()["video_running"] is False
    assert "camera" not in publisher.gui_status()


def test_flag_names_and_count_are_limited(broker: DevBroker) -> None:
    publisher = StatusPublisher(make_config(broker))
    with pytest.raises(ValueError, match="not an identifier"):
        publisher.update_gui_status(**{"bad name": 1})
    with pytest.raises(ValueError, match="at most"):
        publisher.update_gui_status(**{f"f{i}": i for i in range(40)})


def test_rebirth_command_republishes_state_and_status(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(broker)))
    last = recorder.wait_for(STATUS)
    seq = last.json()["seq"]
    asked = time.monotonic()
    recorder.client.publish("yl/ar/nodes/node-1/cmd/rebirth", b"", qos=1)
    recorder.wait_for(STATE, lambda d: d["state"] == "ready", after=asked)
    recorder.wait_for(STATUS, lambda d: d["seq"] > seq, after=asked)
    assert publisher.connected


def test_set_error_reports_the_node_status_at_once_and_back(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(broker)))
    recorder.wait_for(STATUS, lambda d: d["status"] == "running")
    asked = time.monotonic()
    publisher.set_error()
    failed = recorder.wait_for(STATUS, lambda d: d["status"] == "error", after=asked)
    assert failed.at - asked < 1.0
    asked = time.monotonic()
    publisher.set_error(False)
    recorder.wait_for(STATUS, lambda d: d["status"] == "running", after=asked)


def test_session_takeover_stops_the_older_publisher_instead_of_fighting(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    errors: list[str] = []
    first = started(publishers, StatusPublisher(make_config(broker), on_error=errors.append))
    wait_until(lambda: first.connected, what="first connected")
    second = started(publishers, StatusPublisher(make_config(broker)))
    second.raise_if_fatal()
    wait_until(lambda: first.fatal_error is not None, what="takeover detected")
    assert "taken over" in (first.fatal_error or "")
    with pytest.raises(SessionTakenOverError, match="taken over"):
        first.raise_if_fatal()
    assert any("taken over" in e for e in errors)
    assert first.stats()["running"] is False
    wait_until(lambda: second.connected, what="second connected")
    recorder.wait_for(STATE, lambda d: d["state"] == "ready" and d["session"] == second.session)
    connects = second._link.connect_count
    settle = time.monotonic() + 2.0
    wait_until(lambda: time.monotonic() > settle, timeout=3, what="settling")
    assert second.connected
    assert second._link.connect_count == connects, "the two are still kicking each other"
    assert retained(broker.host, broker.port, STATE)["session"] == second.session


def test_broker_restart_brings_back_ready_and_a_current_status_not_stale_ones(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(broker)))
    recorder.wait_for(STATUS)
    broker.stop()
    wait_until(lambda: not publisher.connected, what="publisher noticing the outage")
    for i in range(50):
        publisher.update_gui_status(counter=i)
    restarted = time.monotonic()
    broker.start()
    recorder.wait_for(STATE, lambda d: d["state"] == "ready", after=restarted, timeout=10)
    first = recorder.wait_for(STATUS, after=restarted, timeout=10)
    assert first.json()["gui"]["counter"] == 49
    wait_until(lambda: publisher.stats()["report_count"] >= 2, what="acks after restart")
    after = [m.json() for m in recorder.on(STATUS) if m.at >= restarted]
    assert all(m["gui"]["counter"] == 49 for m in after), "a stale snapshot was replayed"


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "kill-9"])
def test_retained_state_survives_a_broker_restart(broker: DevBroker, hard: bool) -> None:
    publisher = StatusPublisher(make_config(broker)).start()
    wait_until(lambda: publisher.stats()["report_count"] >= 1, what="status acked")
    publisher.stop()
    wait_until(lambda: (retained(broker.host, broker.port, STATE) or {}).get("state")
               == "disconnected", what="disconnected before the restart")
    stopped_at = time.time()
    if hard:
        db = broker.workdir / "mosquitto.db"
        wait_until(lambda: db.exists() and db.stat().st_mtime > stopped_at + 0.01,
                   timeout=5, what="the broker's periodic save")
        broker.kill()
    else:
        broker.stop()
    broker.start()
    assert retained(broker.host, broker.port, STATE)["state"] == "disconnected"
    assert retained(broker.host, broker.port, STATUS)["node_id"] == "node-1"


def test_stats_report_counts_and_config(
        broker: DevBroker, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(broker)))
    wait_until(lambda: publisher.stats()["report_count"] >= 1, what="a report")
    stats = publisher.stats()
    assert stats["running"] is True
    assert stats["error_count"] == 0
    assert stats["last_report_time"].endswith("Z")
    assert stats["config"] == {"node_id": "node-1", "monitor_url": "http://localhost:5500",
                               "interval": 30.0}


def test_periodic_reports_follow_the_interval(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    started(publishers, StatusPublisher(make_config(broker, monitor={"report_interval": 0.3})))
    wait_until(lambda: len(recorder.on(STATUS)) >= 5, what="periodic statuses")
    times = [m.at for m in recorder.on(STATUS)[1:5]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.25 <= gap <= 1.0 for gap in gaps), gaps


def test_cpu_percent_is_primed() -> None:
    sampler = ResourceSampler()
    end = time.process_time() + 0.15
    while time.process_time() < end:
        pass
    assert sampler.sample().cpu_percent > 0.0


def test_unused_port_is_refused_quickly_and_counted() -> None:
    config = make_config(type("B", (), {"host": "127.0.0.1", "port": free_port()})())
    began = time.monotonic()
    publisher = StatusPublisher(config).start()
    try:
        wait_until(lambda: publisher.stats()["error_count"] >= 1, what="refused")
        assert time.monotonic() - began < 0.5
        wait_until(lambda: publisher.stats()["error_count"] >= 2, what="retries")
        assert time.monotonic() - began < 1.5
    finally:
        publisher.stop()


def test_a_disconnected_publisher_with_pending_changes_stays_idle() -> None:
    """Regression: the heartbeat thread busy-waited while a change was pending and the
    broker was unreachable, starving the GUI thread of the GIL."""
    config = make_config(type("B", (), {"host": "127.0.0.1", "port": free_port()})())
    publisher = StatusPublisher(config).start()
    try:
        publisher.update_gui_status(video_running=True)
        wait_until(lambda: publisher.stats()["error_count"] >= 1, what="a failed attempt")
        used = time.process_time()
        threading.Event().wait(1.0)
        assert time.process_time() - used < 0.3
    finally:
        publisher.stop()


def test_a_report_right_after_start_is_not_a_fake_zero() -> None:
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert ResourceSampler().sample().cpu_percent > 0.0


def test_a_status_the_broker_refuses_is_counted_and_reported(broker: DevBroker) -> None:
    """Logged in as node-1 but reporting as node-2: the ACL refuses every message."""
    errors: list[str] = []
    publisher = StatusPublisher(make_config(broker, "node-2"), username="node-1",
                                on_error=errors.append).start()
    try:
        wait_until(lambda: publisher.stats()["error_count"] >= 1, what="a refused status")
        assert publisher.stats()["report_count"] == 0
        assert any("reason code 135" in e for e in errors)
        assert retained(broker.host, broker.port, "yl/ar/nodes/node-2/status") is None
    finally:
        publisher.stop()


def test_an_unreachable_broker_is_logged_once_not_in_a_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(type("B", (), {"host": "127.0.0.1", "port": free_port()})())
    caplog.set_level("DEBUG", logger="yl_core.link")
    publisher = StatusPublisher(config).start()
    try:
        wait_until(lambda: publisher.stats()["error_count"] >= 4, what="several retries")
    finally:
        publisher.stop()
    warnings = [r for r in caplog.records
                if r.levelname == "WARNING" and "cannot reach broker" in r.getMessage()]
    assert len(warnings) == 1


class Loop:
    """An application main loop on a thread of its own: it turns every 50 ms (telling the
    publisher) until it is blocked, as a GUI thread stuck in a slot would be."""

    def __init__(self, publisher: StatusPublisher) -> None:
        self.publisher = publisher
        self.running = threading.Event()
        self.running.set()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-main-loop")
        self.thread.start()

    def _run(self) -> None:
        while not self.ended.is_set():
            self.running.wait()
            self.publisher.loop_turned()
            self.ended.wait(0.05)

    def close(self) -> None:
        self.ended.set()
        self.running.set()
        self.thread.join(5)


def test_a_loop_that_stops_turning_is_reported_not_responding_at_once_and_back(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    hang_after = 1.0
    publisher = started(publishers, StatusPublisher(make_config(
        broker, monitor={"gui_hang_after": hang_after, "report_interval": 1})))
    loop = Loop(publisher)
    try:
        recorder.wait_for(STATUS, lambda d: "not_responding_since" not in d)
        loop.running.clear()
        blocked = time.monotonic()
        hung = recorder.wait_for(STATUS, lambda d: d.get("not_responding_since") is not None,
                                 after=blocked, timeout=hang_after + 2)
        assert hung.at - blocked < hang_after + 1.0
        assert hung.json()["status"] == "running"
        beats = recorder.wait_for(STATUS, lambda d: d["seq"] >= hung.json()["seq"] + 2,
                                  after=hung.at, timeout=5)
        assert beats.json()["not_responding_since"] == hung.json()["not_responding_since"]
        loop.running.set()
        turned = time.monotonic()
        back = recorder.wait_for(STATUS, lambda d: "not_responding_since" not in d,
                                 after=turned)
        assert back.at - turned < 1.0
    finally:
        loop.close()


def test_without_a_watched_loop_nothing_is_ever_not_responding(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    publisher = started(publishers, StatusPublisher(make_config(
        broker, monitor={"gui_hang_after": 1, "report_interval": 0.5})))
    first = recorder.wait_for(STATUS)
    recorder.wait_for(STATUS, lambda d: d["seq"] >= first.json()["seq"] + 5, timeout=10)
    assert all("not_responding_since" not in m.json() for m in recorder.on(STATUS))
    assert publisher.connected


def test_a_pipeline_whose_beats_stop_while_running_is_stalled_until_the_next_beat(
        broker: DevBroker, recorder: Recorder, publishers: list[StatusPublisher]) -> None:
    period = 0.2
    publisher = started(publishers, StatusPublisher(make_config(
        broker, monitor={"pipelines": {"video": period}})))
    publisher.update_gui_status(video_running=True)
    beating = threading.Event()
    beating.set()
    done = threading.Event()

    def frames() -> None:
        while not done.is_set():
            beating.wait()
            publisher.beat("video")
            done.wait(period / 4)

    thread = threading.Thread(target=frames)
    thread.start()
    try:
        recorder.wait_for(STATUS, lambda d: d["gui"].get("video_stalled") is False)
        beating.clear()
        stopped = time.monotonic()
        stalled = recorder.wait_for(STATUS, lambda d: d["gui"].get("video_stalled") is True,
                                    after=stopped)
        assert stalled.at - stopped < 2 * period + 1.0
        assert set(stalled.json()["stalled_since"]) == {"video"}
        assert stalled.json()["gui"]["video_running"] is True
        beating.set()
        again = time.monotonic()
        cleared = recorder.wait_for(STATUS, lambda d: d["gui"].get("video_stalled") is False,
                                    after=again)
        assert cleared.at - again < 1.0
        assert "stalled_since" not in cleared.json()
        publisher.update_gui_status(video_running=False)
        beating.clear()
        idle = time.monotonic()
        recorder.wait_for(STATUS, lambda d: d["gui"]["video_running"] is False, after=idle)
        with pytest.raises(AssertionError, match="timed out"):
            recorder.wait_for(STATUS, lambda d: d["gui"].get("video_stalled") is True,
                              after=idle, timeout=4 * period + 1.0)
    finally:
        done.set()
        beating.set()
        thread.join(5)


def test_beat_refuses_a_bad_name_or_a_missing_period(
        broker: DevBroker, publishers: list[StatusPublisher]) -> None:
    publisher = StatusPublisher(make_config(broker))
    with pytest.raises(ValueError, match="not an identifier"):
        publisher.beat("no such name")
    with pytest.raises(ValueError, match=r"monitor\.pipelines\.video"):
        publisher.beat("video")
    with pytest.raises(ValueError, match=r"0\.05 to 3600"):
        publisher.beat("video", period=0.0)
    publisher.beat("video", period=0.5)
    assert publisher.gui_status()["video_stalled"] is False


def test_a_wall_clock_stepped_back_never_stamps_a_status_before_its_session_began(
        broker: DevBroker, publishers: list[StatusPublisher],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's own record is in time order: its first status no earlier than its session's
    ``since``, each status no earlier than the one before, even when the wall clock steps
    back (NTP) after the session began."""
    from types import SimpleNamespace

    from publisher import status_publisher
    from yl_core import timestamps

    publisher = StatusPublisher(make_config(broker))
    def stepped() -> float:
        return time.time() - 5.0

    monkeypatch.setattr(status_publisher, "time", SimpleNamespace(
        time=stepped, monotonic=time.monotonic, sleep=time.sleep))
    monkeypatch.setattr(timestamps, "utc_now_iso",
                        lambda: timestamps.iso_from_epoch(stepped()))
    started(publishers, publisher)
    wait_until(lambda: publisher.stats()["report_count"] >= 1, what="first status acked")
    publisher.update_gui_status(video_running=True)
    wait_until(lambda: publisher.stats()["report_count"] >= 2, what="second status acked")
    state = retained(broker.host, broker.port, STATE)
    status = retained(broker.host, broker.port, STATUS)
    assert status["seq"] >= 2
    assert status["timestamp"] == state["since"]


def test_new_pipelines_while_the_heartbeat_thread_judges_them_lose_no_status() -> None:
    """``beat()`` of a new pipeline adds it while the heartbeat thread builds a status and
    judges the pipelines: neither may see the pipelines change under it (threads switched
    as often as the interpreter allows, to make the race show)."""
    names = [f"p{i}" for i in range(protocol.MAX_GUI_FLAGS - 4)]
    failures: list[BaseException] = []

    def add(publisher: StatusPublisher, start: threading.Barrier, done: threading.Event
            ) -> None:
        start.wait()
        for name in names:
            publisher.beat(name, period=1.0)
            for _ in range(300):  # new pipelines spread over many rounds of the other side
                publisher.beat(name)
        done.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(40):
            publisher = StatusPublisher(parse_config({}, "<test>"))
            publisher._resources = ResourceSampler()
            go, added = threading.Barrier(2), threading.Event()
            adder = threading.Thread(target=add, args=(publisher, go, added))
            adder.start()
            go.wait()
            try:
                rounds = 0
                while not added.is_set():
                    publisher._judge()
                    rounds += 1
                    if rounds % 20 == 0:
                        publisher._status_message()
            except Exception as exc:  # noqa: BLE001
                failures.append(exc)
            adder.join()
            assert set(publisher._status_message().gui) >= {f"{n}_stalled" for n in names}
    finally:
        sys.setswitchinterval(switch)
    assert not failures, failures[:3]


def test_a_gui_beside_an_original_config_without_a_login_gets_one_error_naming_it(
        tmp_path: Path, broker: DevBroker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Started as upstream starts it (``cd user; python main.py``), with upstream's
    ``config/monitor_config.yaml`` (no ``mqtt:`` section, so no login): the lookup says which
    file it read and why, the layout warning says the login is missing, and the broker's
    refusals come to one error line naming the file and the keys to add."""
    folder = tmp_path / "user"
    (folder / "config").mkdir(parents=True)
    original = folder / "config" / "monitor_config.yaml"
    original.write_text("monitor:\n  url: http://127.0.0.1:5500\n  node_id: node-1\n"
                        "  report_interval: 30\nlocal_server:\n  port: 5502\n"
                        "logging:\n  file: logs/user_gui_monitor.log\n")
    monkeypatch.chdir(folder)
    monkeypatch.delenv("YL_STATUS_CONFIG", raising=False)
    monkeypatch.setenv("YL_MQTT_HOST", broker.host)
    monkeypatch.setenv("YL_MQTT_PORT", str(broker.port))
    caplog.set_level(logging.INFO)
    config = load_config()
    publisher = StatusPublisher(config).start()
    try:
        wait_until(lambda: publisher._link._failures >= 3, timeout=20,
                   what="three refused attempts")
    finally:
        publisher.stop()
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, f"config file {original}: found under the working directory "
                          "($YL_STATUS_CONFIG is not set)") in said
    layout = [m for level, m in said if "original layout" in m]
    assert len(layout) == 1
    assert "no broker login" in layout[0]
    assert "not by a GUI that embeds the publisher" in layout[0]
    errors = [m for level, m in said if level >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "user 'node-1' without a password" in errors[0]
    assert f"add mqtt.username and mqtt.password to {original} (or set $YL_STATUS_CONFIG" \
        in errors[0]


def test_without_any_config_file_the_lookup_says_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("YL_STATUS_CONFIG", raising=False)
    config = load_config()
    assert config.source == "<defaults>"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "config" / "monitor_config.yaml") in m and
               "built-in defaults (broker localhost:1883, no login)" in m for m in warned), warned


def test_no_status_goes_out_before_the_connection_s_ready(
        broker: DevBroker, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A status that overtakes its session's ``ready`` starts a life the state has not told
    of; readers in order (the bridge, the status app) rely on the birth coming first. The
    link makes its client available a moment before paho's thread runs the connect handler
    that asks for the birth; here that moment is stretched (a busy machine), while a GUI
    changes its flags as fast as it can, so a status is due all along, and its event loop
    turns, so the heartbeat thread wakes to judge it meanwhile."""
    original = StatusPublisher._handle_connect

    def slow_handler(self: StatusPublisher, client: mqtt.Client, present: bool) -> None:
        time.sleep(1.2)  # paho's thread held up before the handler runs
        original(self, client, present)

    monkeypatch.setattr(StatusPublisher, "_handle_connect", slow_handler)
    publisher = StatusPublisher(make_config(broker))
    stop = threading.Event()

    def churn() -> None:
        for value in itertools.cycle((True, False)):
            if stop.is_set():
                return
            publisher.update_gui_status(video_running=value)
            publisher.loop_turned()  # its event loop turns: the heartbeat thread watches it
            time.sleep(0.001)  # a GUI's pace, not a synchronisation

    changer = threading.Thread(target=churn, name="test-churn")
    changer.start()
    publisher.start()
    try:
        wait_until(lambda: publisher.stats()["report_count"] >= 2, timeout=10,
                   what="statuses acknowledged")
    finally:
        stop.set()
        changer.join()
        publisher.stop(timeout=2.0)
    mine = [m for m in recorder.messages if not m.retain and m.payload and
            m.json().get("session") == publisher.session]
    assert mine, "nothing of the session recorded"
    assert (mine[0].topic, mine[0].json().get("state")) == (STATE, "ready")
