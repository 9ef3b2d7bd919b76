"""Every retained message once more after a (re)connect, past a full broker queue.

While the bridge is away, the broker queues what its persistent session misses, up to its
``max_queued_messages`` (mosquitto's default is 1000), and drops the rest, newest first. The
retained copies a QoS 1 subscription brings on reconnecting are queued behind that backlog
and dropped as well; with more nodes than the queue holds, some are dropped even from an
empty queue. Copies sent at QoS 0 are not queued: they go out at once. So the session, on
every connect, subscribes to its topics once more at QoS 0 next to its QoS 1 subscription
(which asks for no retained copies of its own), and ends that extra subscription when the
SUBACK of a later one says every copy has been sent.

The round starts once the session has caught up with what the broker kept for it: nothing
received for ``IDLE`` seconds, a live message that did not wait at the broker (``live``:
the broker sends a session's messages in order, so what it queued before has come; a busy
fleet is never idle), or ``LATEST`` seconds after the connect. Retained copies sent earlier
would overtake the queued messages they follow, and a state's transitions must arrive in
order.

A connected session can lose messages too: when it falls behind by more than the broker's
queue (an overload), mosquitto drops what comes next for it, and a node whose newest status
was dropped would keep an older one at the monitor until it reports again. A session that
may have missed something (``missed``: the status receiver calls it for a gap in a node's
``seq``, or for a status that waited ``BEHIND`` seconds at the broker) has one more round
once nothing has been missed for ``AFTER_MISS`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

IDLE = 0.5
"""A session that has received nothing for this long has caught up with its backlog."""
LATEST = 10.0
"""The round starts at the latest this long after the connect."""
BEHIND = 2.0
"""A session whose messages waited this long at the broker was far behind: its queue there may
have overflowed."""
AFTER_MISS = 1.0
"""A round for messages missed starts at the latest this long after the last one missed."""


def subscribe_without_retained(client: mqtt.Client, topics: list[str], qos: int) -> None:
    """The session's own subscriptions, in one SUBSCRIBE: live and queued messages only
    (retain handling 2). Not to the round's topic: ending the round unsubscribes that."""
    options = SubscribeOptions(qos=qos, retainHandling=2)
    client.subscribe([(topic, options) for topic in topics])


class RetainedRefresh:
    """The QoS 0 round of one session after each connect; call ``connected``, ``received``,
    ``subscribed`` and ``down`` from its link's callbacks."""

    def __init__(self, topic: str, sentinel: str, *, name: str,
                 on_round: Callable[[], None] | None = None) -> None:
        """``on_round``: called (on paho's thread) each time a round is complete: the
        session has caught up with what the broker kept, retained copies included."""
        self.topic = topic
        self._on_round = on_round
        self.sentinel = sentinel
        self.rounds = 0
        """Rounds completed (every retained copy received)."""
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._sentinel_mid: int | None = None
        self._due = False
        self._for_connect = False
        """The round due is the connect's (``live`` may start it)."""
        self._start_by = 0.0
        """When the round due starts even if messages still come (``time.monotonic()``)."""
        self._last_message = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set when a round becomes due or is stopped: the watch sleeps until then."""
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)

    def start(self) -> RetainedRefresh:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(1.0)

    def connected(self, client: mqtt.Client) -> None:
        with self._lock:
            self._client = client
            self._last_message = time.monotonic()
            self._start_by = self._last_message + LATEST
            self._due = self._for_connect = True
        self._wake.set()

    def live(self) -> None:
        """A live message came that did not wait at the broker: the connect's round may
        start (what the broker queued for the session before it has come)."""
        if self._due and self._for_connect:
            with self._lock:
                self._start_by = min(self._start_by, time.monotonic())
            self._wake.set()

    def missed(self) -> bool:
        """Messages were lost on the way to the session: read every retained copy once more
        when nothing has been missed for ``AFTER_MISS`` (or the session is idle). True if
        this asks for a round; False if the session is down or one is asked for already
        (a later miss still puts its start back)."""
        with self._lock:
            if self._client is None:
                return False
            asked = not self._due
            if asked:
                self._due, self._for_connect = True, False
            self._start_by = max(self._start_by, time.monotonic() + AFTER_MISS)
        if asked:
            self._wake.set()
        return asked

    def received(self) -> None:
        self._last_message = time.monotonic()

    def subscribed(self, client: mqtt.Client, mid: int) -> None:
        with self._lock:
            if mid != self._sentinel_mid or client is not self._client:
                return
            self._sentinel_mid = None
            self.rounds += 1
        client.unsubscribe([self.topic, self.sentinel])
        log.debug("retained copies of %s read again (round %d)", self.topic, self.rounds)
        if self._on_round is not None:
            self._on_round()

    def down(self) -> None:
        with self._lock:
            self._client = None
            self._sentinel_mid = None
            self._due = False

    def _begin(self, client: mqtt.Client) -> None:
        """Start a round (the caller holds the lock)."""
        client.subscribe(self.topic, qos=0)
        self._sentinel_mid = client.subscribe(self.sentinel, qos=0)[1]

    def _watch(self) -> None:
        """Sleep until a round is due (``_wake``); then until it may start: at ``start_by``,
        or once nothing has come for ``IDLE`` (looked at every ``IDLE / 5`` while it
        waits)."""
        wait: float | None = None
        while True:
            self._wake.wait(wait)
            if self._stop.is_set():
                return
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                client = self._client
                if not self._due or client is None:
                    wait = None
                    continue
                if self._sentinel_mid is None and \
                        (now - self._last_message >= IDLE or now >= self._start_by):
                    self._due = False
                    self._begin(client)
                    wait = None
                    continue
                wait = max(min(self._start_by - now, IDLE / 5), 0.01)
