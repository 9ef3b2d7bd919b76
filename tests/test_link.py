"""``yl_core.link``: one supervised MQTT 5 connection, against a real mosquitto."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from testkit.support import (
    NODE_PASSWORD,
    NODE_USERS,
    READER_USER,
    TEST_PASSWORD,
    retained,
    wait_until,
)

from yl_core.link import Link, LinkDown, LinkOptions, Will, backoff_delay
from yl_status.dev_broker import DevBroker

NODE = NODE_USERS[0]
STATE = f"yl/ar/nodes/{NODE}/state"


class Events:
    """What a link's callbacks were called with, and on which thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connects: list[tuple[bool, str]] = []
        self.downs: list[tuple[LinkDown, str]] = []
        self.messages: list[str] = []

    def on_connect(self, client: mqtt.Client, session_present: bool) -> None:
        with self.lock:
            self.connects.append((session_present, threading.current_thread().name))

    def on_down(self, event: LinkDown) -> None:
        with self.lock:
            self.downs.append((event, threading.current_thread().name))

    def reasons(self) -> list[str]:
        with self.lock:
            return [event.reason for event, _ in self.downs]


def options(broker: DevBroker, **overrides: Any) -> LinkOptions:
    values: dict[str, Any] = {"client_id": NODE, "host": broker.host, "port": broker.port,
                              "username": NODE, "password": NODE_PASSWORD, "keepalive": 5,
                              "backoff_initial": 0.1, "backoff_max": 0.5}
    values.update(overrides)
    return LinkOptions(**values)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def links() -> Iterator[list[Link]]:
    started: list[Link] = []
    yield started
    for link in started:
        assert link.stop(2.0)


def started(links: list[Link], link: Link) -> Link:
    links.append(link)
    link.start()
    return link


def test_connects_off_the_callers_thread_and_calls_on_connect_on_pahos(
        broker: DevBroker, events: Events, links: list[Link]) -> None:
    link = started(links, Link(options(broker), on_connect=events.on_connect,
                               name="test-link"))
    wait_until(lambda: link.connected, what="connected")
    assert link.client is not None
    assert link.connect_count == 1
    session_present, thread = events.connects[0]
    assert session_present is False
    assert thread not in ("test-link", threading.current_thread().name)


def test_a_broker_restart_is_reported_down_and_the_link_comes_back(
        broker: DevBroker, events: Events, links: list[Link]) -> None:
    link = started(links, Link(options(broker), on_connect=events.on_connect,
                               on_down=events.on_down))
    wait_until(lambda: link.connected, what="connected")
    broker.stop()
    wait_until(lambda: not link.connected, what="down")
    assert link.client is None
    broker.start()
    wait_until(lambda: link.connect_count == 2 and link.connected, timeout=10,
               what="connected again")
    assert any(reason.startswith("connection lost") for reason in events.reasons())
    assert link.fatal is None


def test_a_refused_login_is_reported_and_tried_again(
        broker: DevBroker, events: Events, links: list[Link]) -> None:
    link = started(links, Link(options(broker, password="wrong"), on_down=events.on_down))
    wait_until(lambda: len(events.reasons()) >= 2, timeout=10, what="two refusals")
    assert all(reason.startswith("refused") for reason in events.reasons())
    assert not link.connected
    assert link.fatal is None


def test_a_login_without_a_username_is_told_anonymous_access_is_off(
        broker: DevBroker, events: Events, links: list[Link]) -> None:
    started(links, Link(options(broker, username=None, password=None),
                        on_down=events.on_down))
    wait_until(events.reasons, timeout=10, what="a refusal")
    assert "anonymous access is off" in events.reasons()[0]


def test_stop_sends_the_farewell_and_the_will_is_not_published(
        broker: DevBroker, links: list[Link]) -> None:
    link = Link(options(broker, will=Will(STATE, b'{"will":1}')))
    link.start()
    wait_until(lambda: link.connected, what="connected")

    def farewell(client: mqtt.Client) -> mqtt.MQTTMessageInfo:
        return client.publish(STATE, b'{"farewell":1}', qos=1, retain=True)

    assert link.stop(2.0, farewell=farewell)
    assert not link.connected
    assert retained(broker.host, broker.port, STATE) == {"farewell": 1}


def test_a_dropped_connection_publishes_the_will(broker: DevBroker, links: list[Link]) -> None:
    link = started(links, Link(options(broker, will=Will(STATE, b'{"will":1}'))))
    wait_until(lambda: link.connected, what="connected")
    client = link.client
    assert client is not None
    socket = client.socket()
    assert socket is not None
    socket.close()
    wait_until(lambda: retained(broker.host, broker.port, STATE) == {"will": 1}, timeout=10,
               what="the will")


def test_abandon_gives_up_for_good_and_says_so_on_the_callers_thread(
        broker: DevBroker, events: Events, links: list[Link]) -> None:
    link = started(links, Link(options(broker), on_down=events.on_down))
    wait_until(lambda: link.connected, what="connected")
    link.abandon("told to")
    wait_until(lambda: not link.connected, what="disconnected")
    assert link.fatal == LinkDown("told to", fatal=True)
    event, thread = events.downs[-1]
    assert event.fatal
    assert thread == threading.current_thread().name
    assert link.stop(2.0)
    assert link.connect_count == 1


def test_a_second_client_with_the_same_id_takes_the_session_over(
        broker: DevBroker, events: Events, links: list[Link]) -> None:
    first = started(links, Link(options(broker), on_down=events.on_down))
    wait_until(lambda: first.connected, what="first connected")
    second = started(links, Link(options(broker)))
    wait_until(lambda: second.connected, what="second connected")
    wait_until(lambda: not first.connected, what="first dropped")
    assert second.connect_count == 1


def test_a_receive_maximum_lets_the_broker_send_more_than_its_own_in_flight_limit(
        broker: DevBroker, links: list[Link]) -> None:
    """The project's mosquitto sends 20 unacknowledged QoS 1 messages at a time to a client
    that names no limit; a session that acknowledges only after a commit asks for more."""
    status = f"yl/ar/nodes/{NODE}/status"
    got: list[int] = []
    subscribed = threading.Event()

    def subscribe(client: mqtt.Client, _session_present: bool) -> None:
        client.subscribe(status, qos=1)

    reader = started(links, Link(
        options(broker, client_id=READER_USER, username=READER_USER, password=TEST_PASSWORD,
                manual_ack=True, receive_maximum=200),
        on_connect=subscribe, on_message=lambda _client, message: got.append(message.mid),
        on_subscribe=lambda _client, _mid: subscribed.set()))
    wait_until(subscribed.is_set, what="reader subscribed")
    publisher = started(links, Link(options(broker)))
    wait_until(lambda: publisher.connected, what="publisher connected")
    client = publisher.client
    assert client is not None
    for n in range(60):
        client.publish(status, str(n).encode(), qos=1)
    wait_until(lambda: len(got) == 60, timeout=10,
               what="60 messages received, none acknowledged")
    assert reader.connect_count == 1


def test_a_callback_that_raises_is_logged_and_the_link_goes_on(
        broker: DevBroker, links: list[Link], caplog: pytest.LogCaptureFixture) -> None:
    seen: list[bytes] = []

    def on_connect(client: mqtt.Client, session_present: bool) -> None:
        client.subscribe(STATE, qos=1)

    def on_message(client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        seen.append(bytes(message.payload))
        if message.payload == b"1":
            raise RuntimeError("a broken handler")

    link = started(links, Link(options(broker), on_connect=on_connect, on_message=on_message))
    wait_until(lambda: link.connected, what="connected")
    client = link.client
    assert client is not None
    for payload in (b"1", b"2"):
        client.publish(STATE, payload, qos=1)
    wait_until(lambda: seen[-2:] == [b"1", b"2"], what="both messages")
    assert link.connected
    assert "message handler failed" in caplog.text


def test_while_not_allowed_no_connection_is_attempted(
        broker: DevBroker, links: list[Link]) -> None:
    allowed = threading.Event()
    link = started(links, Link(options(broker), allow=allowed.is_set))
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: link.connected, timeout=0.5, what="connected")
    assert link.connect_count == 0
    allowed.set()
    wait_until(lambda: link.connected, what="connected once allowed")


def test_reconnect_backoff_is_jittered_exponential_and_capped() -> None:
    for attempt, ceiling in ((1, 0.5), (3, 2.0), (6, 16.0), (12, 30.0), (40, 30.0)):
        delays = [backoff_delay(attempt, 0.25, 30.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len(set(delays)) > 100, "no jitter"


def test_reconnects_the_owner_asks_for_do_not_grow_the_backoff(
        broker: DevBroker, links: list[Link]) -> None:
    """The bridge reconnects after a failed outbox write so that the broker sends the
    unacknowledged messages again; a run of such failures must not leave its sessions away
    for the seconds a run of broker failures would."""
    link = started(links, Link(options(broker, backoff_initial=0.25, backoff_max=30.0)))
    for _ in range(6):
        wait_until(lambda: link.connected, timeout=5, what="connected")
        asked = time.monotonic()
        link.reconnect("outbox write failed")
        wait_until(lambda: not link.connected, timeout=5, what="dropped")
        wait_until(lambda: link.connected, timeout=5, what="connected again")
        assert time.monotonic() - asked < 1.0
