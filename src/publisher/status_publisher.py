"""``StatusPublisher``: what the GUI embeds to report its status over MQTT.

The GUI thread only ever touches a lock-protected dict of flags and, at most once per burst,
an event. A heartbeat thread turns that into ``status`` messages (coalesced, rate limited and
periodic); a ``Link`` keeps the broker connection, with ``lost`` registered as last will.

Threads and what they share: the caller's (``update_gui_status``, ``set_error``, ``stop``),
the heartbeat thread, the link's supervisor and paho's network thread of the current
connection (the link callbacks; ``on_down`` may also run on the supervisor or on the thread
that called ``abandon``). ``_lock`` guards the flags, the node status and the two requests
between them (``_pending``, ``_need_birth``), whether the connection's birth went out
(``_born``: no status goes before it) and the suspected rival (``_rival``);
``_stats_lock`` the counters and the in-flight message ids. ``_earlier_sessions`` is touched
only on paho's network thread (one connection, so one such thread, at a time). Neither lock
is held while the other is taken, nor while publishing.

Liveness of the application itself: ``loop_turned()`` (the application's main loop) and
``beat(name)`` (any thread) only store a monotonic time, a single assignment each; the first
``beat`` of a new pipeline adds it under ``_lock``, and the heartbeat thread reads the
pipelines only under ``_lock``. The heartbeat thread alone judges them (``_judge``) and owns
``_hung``, ``_not_responding_since`` and ``_stalled_since``, which the callers only read to
wake it at once on a recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from publisher.resources import ResourceSampler
from yl_core import protocol, timestamps, truth
from yl_core.config import Config
from yl_core.errors import ProtocolError, SessionTakenOverError
from yl_core.link import (
    Link,
    LinkDown,
    Will,
    call_listener,
    new_properties,
    options_from_config,
    publish_ok,
)
from yl_core.protocol import (
    JSON_SCALARS,
    ReporterCounters,
    StateMessage,
    StatusMessage,
    encode,
)
from yl_core.version import PACKAGE_VERSION

log = logging.getLogger(__name__)

_SCALAR_TYPES: Final = frozenset(JSON_SCALARS)
WATCH_EVERY: Final = 0.5
"""How often the heartbeat thread judges a watched loop and pipelines (more often for a
pipeline whose period is short: half its period, at least every 50 ms)."""
STALL_FACTOR: Final = 2.0
"""A pipeline is stalled after this many of its periods without a beat."""

LinkListener = Callable[[bool, str], None]
ErrorListener = Callable[[str], None]


class StatusPublisher:
    """Reports one GUI node's state and status to the broker.

    ``start()`` returns at once; ``update_gui_status(**flags)`` is safe and cheap from any
    thread; ``stop()`` publishes ``disconnected`` and never takes longer than its timeout.
    ``on_link_change(connected, reason)`` and ``on_error(message)`` are called from
    background threads; they must be short and must not touch widgets directly.
    """

    def __init__(
        self,
        config: Config,
        *,
        node_id: str | None = None,
        version: str = PACKAGE_VERSION,
        username: str | None = None,
        min_gap: float = 0.02,
        on_link_change: LinkListener | None = None,
        on_error: ErrorListener | None = None,
    ) -> None:
        self.config = config
        self.node_id = protocol.check_node_id(node_id or config.monitor.node_id)
        self.version = version
        self.interval = config.monitor.report_interval
        self.session = protocol.new_session_id()
        self._stamped = time.time()
        """The newest time stamped on a message of this session (statuses never go back in
        time, nor before the session's ``since``, whatever the wall clock does)."""
        self._since = timestamps.iso_from_epoch(self._stamped)
        self._topics = config.mqtt.topics
        self._min_gap = min_gap
        self._on_link_change = on_link_change
        self._on_error = on_error

        self._lock = threading.Lock()
        self._gui: dict[str, protocol.GuiValue] = dict(protocol.DEFAULT_GUI_FLAGS)
        self._node_status: protocol.NodeStatus = "running"
        self._pending = False

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._need_birth = False
        self._born = False
        """The birth (``ready``) went out on the current connection: statuses may follow."""
        self._started = False
        self._stopped = False
        self._fatal: str | None = None
        self._earlier_sessions: set[str] = set()
        self._rival: str | None = None

        self._stats_lock = threading.Lock()
        self._seq = 0
        self._report_count = 0
        self._error_count = 0
        self._last_report_time: str | None = None
        self._status_mids: set[int] = set()
        self._early_acks: dict[int, int] = {}

        self._hang_after = config.monitor.gui_hang_after
        self._periods = dict(config.monitor.pipelines)
        self._loop_turn: float | None = None
        self._beats: dict[str, list[float]] = {}
        """Pipeline name -> [monotonic time of its last beat, expected period]."""
        self._watch_every = WATCH_EVERY
        self._hung = False
        self._not_responding_since: str | None = None
        self._stalled_since: dict[str, str] = {}

        self._resources: ResourceSampler | None = None
        will = Will(self._topics.state(self.node_id), encode(self._state_message("lost")),
                    expiry=protocol.STATE_EXPIRY)
        self._link = Link(
            options_from_config(config.mqtt, self.node_id, source=config.source,
                                username=username or config.mqtt.username or self.node_id,
                                will=will),
            on_connect=self._handle_connect,
            on_message=self._handle_message,
            on_down=self._handle_down,
            on_publish=self._handle_publish,
            name=f"yl-status-link-{self.node_id}",
        )
        self._heartbeat = threading.Thread(target=self._run_heartbeat, daemon=True,
                                           name=f"yl-status-heartbeat-{self.node_id}")

    # --- GUI-facing API -------------------------------------------------------------------

    def start(self) -> StatusPublisher:
        """Start reporting in the background; returns at once, even with no broker. With
        ``monitor.enabled: false`` nothing is started and nothing is reported."""
        if not self.config.monitor.enabled:
            log.info("node %s: monitor.enabled is false in %s; not reporting", self.node_id,
                     self.config.source)
            return self
        with self._lock:
            if self._started:
                return self
            self._started = True
        self._resources = ResourceSampler()
        self._heartbeat.start()
        self._link.start()
        return self

    def update_gui_status(self, **flags: protocol.GuiValue) -> None:
        """Merge GUI flags and schedule a fresh ``status`` (coalesced with other updates).

        Values must be JSON scalars (str, int, float, bool, None); anything else raises
        ``TypeError`` and nothing is changed.
        """
        for name, value in flags.items():
            if type(value) not in _SCALAR_TYPES:
                raise TypeError(f"GUI flag {name!r} must be a JSON scalar "
                                f"(str, int, float, bool or None), not {type(value).__name__}")
        if not flags.keys() <= self._gui.keys():
            self._check_new_flags(flags)
        with self._lock:
            self._gui.update(flags)
            was_pending = self._pending
            self._pending = True
        if not was_pending:
            self._wake.set()

    def loop_turned(self) -> None:
        """Say that the application's main loop turned: call it from that loop (a timer, an
        idle callback, once per frame), at least every second. Costs a fraction of a
        microsecond. From the first call on, a loop that does not turn for
        ``monitor.gui_hang_after`` seconds makes the node *not responding*: published at once
        (``not_responding_since`` in the status) and cleared at once when it turns again.
        Without it, nothing is judged and nothing changes."""
        self._loop_turn = time.monotonic()
        if self._hung:
            self._wake.set()

    def beat(self, name: str, period: float | None = None) -> None:
        """One sign of life of pipeline ``name`` (``"video"``: a frame arrived), from any
        thread, in microseconds. ``period``: the seconds expected between beats (else
        ``monitor.pipelines[name]``). While the GUI flag ``<name>_running`` is true and no
        beat came for twice the period, the status says ``gui.<name>_stalled: true`` and
        ``stalled_since[name]``; the next beat clears it at once."""
        entry = self._beats.get(name)
        if entry is None or (period is not None and period != entry[1]):
            entry = self._new_pipeline(name, period)
        entry[0] = time.monotonic()
        if name in self._stalled_since:
            self._wake.set()

    def _new_pipeline(self, name: str, period: float | None) -> list[float]:
        if not protocol.is_valid_flag_name(name):
            raise ValueError(f"pipeline name {name!r} is not an identifier")
        period = self._periods.get(name) if period is None else period
        if period is None:
            raise ValueError(f"no period for pipeline {name!r}: pass period= or set "
                             f"monitor.pipelines.{name} in {self.config.source}")
        if type(period) not in (int, float) or not 0.05 <= period <= 3600:
            raise ValueError(f"period of pipeline {name!r} must be 0.05 to 3600 s, "
                             f"not {period!r}")
        with self._lock:
            added = name not in self._beats
            if added:
                self._check_new_flags({f"{name}_stalled": False})
                self._gui[f"{name}_stalled"] = False
            entry = self._beats[name] = [time.monotonic(), float(period)]
            self._watch_every = min(self._watch_every, max(period / 2, 0.05))
            was_pending, self._pending = self._pending, self._pending or added
        if added and not was_pending:
            self._wake.set()  # a new flag is a change: the next status says it at once
        return entry

    def set_error(self, failed: bool = True) -> None:
        """Report the node's overall status as ``error`` (or back to ``running``)."""
        with self._lock:
            self._node_status = "error" if failed else "running"
            self._pending = True
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Publish the final flags (if they changed since the last status) and
        ``disconnected``, wait for them at most ``timeout`` s, and disconnect."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join(max(min(0.2, deadline - time.monotonic()), 0.0))
        remaining = max(deadline - time.monotonic(), 0.0)
        if not self._link.stop(remaining, farewell=self._publish_disconnected):
            log.warning("node %s: stop did not finish within %.1f s", self.node_id, timeout)
        if self._heartbeat.is_alive():
            self._heartbeat.join(max(deadline - time.monotonic(), 0.0))

    @property
    def connected(self) -> bool:
        return self._link.connected

    @property
    def fatal_error(self) -> str | None:
        """Why the publisher gave up for good (its node id was taken over), else None."""
        return self._fatal

    def gui_status(self) -> dict[str, protocol.GuiValue]:
        with self._lock:
            return dict(self._gui)

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "running": self._started and not self._stopped and self._fatal is None,
                "report_count": self._report_count,
                "error_count": self._error_count,
                "last_report_time": self._last_report_time,
                "config": {
                    "node_id": self.node_id,
                    "monitor_url": self.config.monitor.url,
                    "interval": self.interval,
                },
            }

    # --- internals ------------------------------------------------------------------------

    def _check_new_flags(self, flags: dict[str, Any]) -> None:
        for name in flags.keys() - self._gui.keys():
            if not protocol.is_valid_flag_name(name):
                raise ValueError(f"GUI flag name {name!r} is not an identifier")
        if len(self._gui.keys() | flags.keys()) > protocol.MAX_GUI_FLAGS:
            raise ValueError(f"at most {protocol.MAX_GUI_FLAGS} GUI flags can be reported")

    def _state_message(self, state: protocol.State) -> StateMessage:
        return StateMessage(state=state, session=self.session, since=self._since,
                            node_name=self.config.monitor.node_name, version=self.version,
                            interval_s=self.interval)

    def _status_message(self) -> StatusMessage:
        assert self._resources is not None
        resources = self._resources.sample()
        stalled = dict(self._stalled_since)
        with self._lock:
            self._pending = False
            gui = dict(self._gui)
            node_status = self._node_status
            pipelines = list(self._beats)
        for name in pipelines:
            gui[f"{name}_stalled"] = name in stalled
        with self._stats_lock:
            self._seq += 1
            seq = self._seq
            self._stamped = stamp = max(time.time(), self._stamped)
            counters = ReporterCounters(self._report_count, self._error_count,
                                        self._last_report_time)
        return StatusMessage(
            node_id=self.node_id, node_name=self.config.monitor.node_name,
            timestamp=timestamps.iso_from_epoch(stamp), status=node_status, version=self.version,
            uptime=self._resources.uptime(), resources=resources, gui=gui,
            reporter=counters, session=self.session, seq=seq, interval_s=self.interval,
            not_responding_since=self._not_responding_since, stalled_since=stalled,
        )

    def _judge(self) -> bool:
        """Judge the watched loop and pipelines (heartbeat thread); whether that changed."""
        now, wall = time.monotonic(), time.time()
        changed = False
        turn = self._loop_turn
        hung = turn is not None and now - turn > self._hang_after
        if hung != self._hung:
            changed = True
            self._hung = hung
            if turn is not None and hung:
                self._not_responding_since = timestamps.iso_from_epoch(wall - (now - turn))
                log.warning("node %s: GUI not responding: its loop last turned %.1f s ago",
                            self.node_id, now - turn)
            else:
                self._not_responding_since = None
                log.info("node %s: GUI responding again", self.node_id)
        if self._beats:
            with self._lock:
                beats = [(name, entry[0], entry[1], self._gui.get(f"{name}_running") is True)
                         for name, entry in self._beats.items()]
            stalled: dict[str, str] = {}
            for name, last, period, running in beats:
                if running and now - last > STALL_FACTOR * period:
                    stalled[name] = self._stalled_since.get(name) or \
                        timestamps.iso_from_epoch(wall - (now - last))
            if stalled.keys() != self._stalled_since.keys():
                changed = True
            self._stalled_since = stalled
        return changed

    def _run_heartbeat(self) -> None:
        next_periodic = float("inf")
        last_status = float("-inf")
        while not self._stopping.is_set():
            now = time.monotonic()
            wait: float | None = None
            if self._link.client is not None:
                wait = next_periodic - now
                with self._lock:
                    due = self._pending or self._need_birth
                if due:
                    wait = min(wait, last_status + self._min_gap - now)
                wait = None if wait == float("inf") else max(min(wait, 3600.0), 0.0)
            if self._loop_turn is not None or self._beats:
                wait = self._watch_every if wait is None else min(wait, self._watch_every)
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping.is_set():
                break
            if (self._loop_turn is not None or self._beats) and self._judge():
                with self._lock:
                    self._pending = True
            client = self._link.client
            if client is None:
                next_periodic = float("inf")
                continue
            now = time.monotonic()
            try:
                with self._lock:
                    birth, self._need_birth = self._need_birth, False
                    pending = self._pending
                    born = self._born = self._born or birth
                if birth:
                    self._publish_state(client, "ready")
                elif not born:
                    continue  # connected, and the connect's birth not yet asked for
                elif not (pending and now - last_status >= self._min_gap) and \
                        now < next_periodic:
                    continue
                self._publish_status(client)
            except Exception as exc:
                self._count_error(f"publish failed: {exc}")
                log.exception("node %s: heartbeat publish failed", self.node_id)
            last_status = time.monotonic()
            next_periodic = last_status + self.interval

    def _publish_status(self, client: mqtt.Client) -> None:
        message = self._status_message()
        props = new_properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = protocol.status_expiry(self.interval)
        info = self._publish(client, self._topics.status(self.node_id), encode(message), props)
        if info is None:
            return
        problem = None
        with self._stats_lock:
            reason = self._early_acks.pop(info.mid, None)
            if reason is None:
                self._status_mids.add(info.mid)
            else:
                problem = self._record_ack(reason)
        if problem:
            self._notify_error(problem)

    def _publish(self, client: mqtt.Client, topic: str, payload: bytes,
                 props: Properties | None = None) -> mqtt.MQTTMessageInfo | None:
        info = client.publish(topic, payload, qos=protocol.MQTT_QOS, retain=True,
                              properties=props)
        if not publish_ok(info):
            self._count_error(f"publish to {topic} refused locally: {mqtt.error_string(info.rc)}")
            return None
        return info

    def _publish_state(self, client: mqtt.Client, state: protocol.State
                       ) -> mqtt.MQTTMessageInfo | None:
        props = new_properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = protocol.STATE_EXPIRY
        return self._publish(client, self._topics.state(self.node_id),
                             encode(self._state_message(state)), props)

    def _publish_disconnected(self, client: mqtt.Client) -> mqtt.MQTTMessageInfo | None:
        """The last word of the session (the link's thread, on stop): a status with the final
        flags if any changed since the last one (a window's ``closeEvent`` stops its camera),
        then ``disconnected``; QoS 1 on one connection keeps them in that order."""
        with self._lock:
            pending = self._pending
        if pending:
            try:
                self._publish_status(client)
            except Exception as exc:
                self._count_error(f"final status not published: {exc}")
                log.exception("node %s: final status failed", self.node_id)
        return self._publish_state(client, "disconnected")

    def _record_ack(self, reason: int) -> str | None:
        """Count a PUBACK (caller holds the stats lock); returns an error to report."""
        if reason >= 128:
            self._error_count += 1
            return f"broker rejected status: reason code {reason}"
        self._report_count += 1
        self._last_report_time = timestamps.utc_now_iso()
        return None

    def _count_error(self, message: str) -> None:
        with self._stats_lock:
            self._error_count += 1
        self._notify_error(message)

    def _notify_error(self, message: str) -> None:
        call_listener(self._on_error, message, name=f"node {self.node_id} on_error")

    def _notify_link(self, connected: bool, reason: str) -> None:
        call_listener(self._on_link_change, connected, reason,
                      name=f"node {self.node_id} on_link_change")

    # --- link callbacks (paho's or the link's thread) -------------------------------------

    def _handle_connect(self, client: mqtt.Client, session_present: bool) -> None:
        with self._stats_lock:
            self._status_mids.clear()
            self._early_acks.clear()
        with self._lock:
            self._rival = None
        client.subscribe([(self._topics.state(self.node_id), protocol.MQTT_QOS),
                          (self._topics.rebirth(self.node_id), protocol.MQTT_QOS)])
        with self._lock:
            self._need_birth, self._born = True, False
        self._wake.set()
        self._notify_link(True, "connected")

    def _handle_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._topics.state(self.node_id):
            self._check_takeover(bytes(message.payload), retained=bool(message.retain))
        elif message.topic == self._topics.rebirth(self.node_id):
            log.info("node %s: rebirth requested", self.node_id)
            with self._lock:
                self._need_birth = True
            self._wake.set()

    def _check_takeover(self, payload: bytes, *, retained: bool) -> None:
        """Stop if another process is using this node id.

        The broker drops the older of two connections with one client id. MQTT 5 brokers may
        say so with reason code 142 (handled by the link); mosquitto 2.0 just closes the
        socket and publishes the dropped connection's will. Sessions are told apart by
        what this process has seen, never by their ids or clocks: the states retained at the
        first connect belong to earlier runs. After a reconnect, a state of any other session
        means another process: at once if it arrives live, and if it is only the retained
        copy (a broker restored from an older save also shows one), when this connection
        is dropped again.
        """
        if not payload:
            return
        try:
            state = protocol.decode_state(payload)
        except ProtocolError:
            return
        if state.session == self.session or state.session in self._earlier_sessions:
            return
        if self._link.connect_count < 2:
            if len(self._earlier_sessions) < truth.MAX_ENDED_SESSIONS:
                self._earlier_sessions.add(state.session)
            return
        if state.state == "disconnected":
            return
        if retained:
            with self._lock:
                self._rival = state.session
        else:
            self._abandon_to(state.session)

    def _abandon_to(self, session: str) -> None:
        self._link.abandon(
            f"another process connected as node {self.node_id!r} (session {session}): "
            "session taken over; stopping instead of fighting over the id")

    def _handle_publish(self, mid: int, reason: int) -> None:
        problem = None
        with self._stats_lock:
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                problem = self._record_ack(reason)
            elif len(self._early_acks) < 1000:
                self._early_acks[mid] = reason
        if problem:
            self._notify_error(problem)

    def _handle_down(self, event: LinkDown) -> None:
        with self._lock:
            rival, self._rival = self._rival, None
            self._born = False
        if rival is not None and not event.fatal and not self._stopping.is_set():
            self._abandon_to(rival)
            return
        if event.fatal:
            self._fatal = event.reason
            self._stopping.set()
            self._wake.set()
            self._notify_error(event.reason)
        elif not self._stopping.is_set():
            self._count_error(event.reason)
        self._notify_link(False, event.reason)

    def raise_if_fatal(self) -> None:
        """Raise ``SessionTakenOverError`` if the publisher gave up because of a takeover."""
        if self._fatal is not None:
            raise SessionTakenOverError(self._fatal)
