"""``yl-status bridge``: broker → outbox → YL-monitor, as one long-running service.

Two persistent MQTT sessions: ``{client_id}`` for the ``state`` topics and
``{client_id}-status`` for ``status``. A broker queues a limited number of messages for an
absent client; keeping the rare state transitions out of the status flood means a bridge
outage can overflow only the status queue, whose newest message per node comes back as a
retained message anyway. The status session runs in a child process (``status_receiver``).

Threads: paho's network thread (and the status receiver's reader) only queue incoming
messages; the outbox writer (``writer``) records them in batches and acknowledges them (in
arrival order) once committed; the forwarder (``forwarder``) delivers from the outbox. This
module puts them together and watches them. One shutdown path: ``stop()``, which the signal
handler triggers by setting an event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from bridge.database import session_names
from bridge.forwarder import Forwarder
from bridge.incoming import Received
from bridge.lease import Lease
from bridge.metrics import Metrics, MetricsServer
from bridge.outbox import Outbox, OutboxError
from bridge.receiver_messages import Passed
from bridge.refresh import RetainedRefresh, subscribe_without_retained
from bridge.status_receiver import StatusReceiver
from bridge.writer import Acknowledger, LinkAcknowledger, OutboxWriter
from yl_core import protocol, timestamps
from yl_core.config import Config
from yl_core.errors import ConfigError
from yl_core.link import Link, LinkDown, Will, options_from_config
from yl_core.protocol import StateMessage
from yl_core.version import PACKAGE_VERSION

log = logging.getLogger(__name__)

BRIDGE_NODE_TYPE = "yl-bridge"
IN_FLIGHT = 1000
"""Unacknowledged messages the broker may send each of the bridge's sessions at once (MQTT
5 Receive Maximum). A message is acknowledged once its batch is committed, so this window
over the time from the broker to the commit bounds the rate the bridge can take in: with
mosquitto's own limit (20) an outbox's commit latency, not the CPU, was the ceiling."""
STALL_LIMIT = 10.0
"""A thread that has not gone round its loop for this long is reported as stalled."""
HANG_LIMIT = 60.0
"""A thread stalled this long is taken as hung: the bridge stops with an error, and its
service manager starts it again (nothing acknowledged is lost)."""
WATCH_EVERY = 5.0
"""The watchdog looks at the threads this often, or every tenth of ``HANG_LIMIT`` if that is
shorter."""


class Bridge:
    """The bridge's work: broker sessions, outbox, forwarding.

    With a ``lease`` (a PostgreSQL outbox shared by active/standby instances, see
    ``bridge.failover``) it is built when the instance becomes active and stopped, fenced,
    when it stops being so: it connects and forwards only while ``lease.valid()``, and every
    outbox write checks the lease's epoch."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None,
                 lease: Lease | None = None) -> None:
        self.config = config
        self.topics = config.mqtt.topics
        self.metrics = metrics or Metrics()
        self.lease = lease
        self._allow: Callable[[], bool] | None = None if lease is None else lease.valid
        location, key = (config.bridge.outbox_url, "bridge.outbox_url") \
            if config.bridge.outbox_url else (config.bridge.outbox_path, "bridge.outbox_path")
        try:
            self.outbox = Outbox(location, max_nodes=config.bridge.max_nodes,
                                 on_change=self._request_flush,
                                 epoch=None if lease is None else lease.epoch,
                                 name=session_names(config.bridge.instance_name)[0])
        except OutboxError as exc:
            raise ConfigError(str(exc), key=key, source=config.source) from exc
        self.forwarder = Forwarder(config, self.outbox, self.metrics, may_send=self._allow,
                                   instance=None if lease is None else lease.instance)
        self.stopping = threading.Event()
        """Set to stop the service (by a signal, or by the watchdog with ``failure``)."""
        self.failure: str | None = None
        self._watchdog = threading.Thread(target=self._watch, name="yl-bridge-watchdog",
                                          daemon=True)
        self.session = protocol.new_session_id()
        self._since = timestamps.utc_now_iso()
        client_id = config.bridge.client_id
        self._state_topic = protocol.bridge_state_topic(client_id)
        persistent = {"clean_start": False, "session_expiry": config.bridge.session_expiry,
                      "manual_ack": True, "receive_maximum": IN_FLIGHT}
        self._caught_up = {"states": False, "statuses": False}
        self._caught_up_lock = threading.Lock()
        self.refresh = RetainedRefresh(self.topics.all_nodes,
                                       protocol.bridge_sentinel_topic(client_id),
                                       name="yl-bridge-states-refresh",
                                       on_round=lambda: self._session("states", True))
        username, password = config.bridge_login()
        self.link = Link(
            options_from_config(config.mqtt, client_id, source=config.source, **persistent,
                                username=username,
                                password=password,
                                will=Will(self._state_topic, self._state("lost"))),
            on_connect=self._on_connect_states,
            on_message=self._on_message,
            on_down=self._on_down,
            on_subscribe=self.refresh.subscribed,
            name="yl-bridge-states",
            allow=self._allow,
        )
        self._link_acks = LinkAcknowledger(self.link)
        acknowledgers: dict[str, Acknowledger] = {"states": self._link_acks}
        self.writer = OutboxWriter(self.outbox, self.metrics, self.topics,
                                   max_nodes=config.bridge.max_nodes,
                                   notify=self.forwarder.notify, sessions=self,
                                   acknowledgers=acknowledgers,
                                   give_up=None if lease is None else lease.give_up)
        self.statuses = StatusReceiver(
            options_from_config(config.mqtt, protocol.bridge_status_identity(client_id),
                                source=config.source, **persistent,
                                username=protocol.bridge_status_identity(username),
                                password=password),
            self.topics, protocol.MQTT_QOS, self._on_statuses, config.logging,
            None if lease is None else lease.valid_until,
            on_caught_up=lambda caught_up: self._session("statuses", caught_up),
            in_thread=config.bridge.status_receiver == "thread",
            on_passed=lambda number: self.writer.put(Passed(number)),
            on_missed=lambda: self.metrics.inc("retained_rereads"))
        acknowledgers["statuses"] = self.statuses
        self.metrics_server: MetricsServer | None = None
        if config.bridge.metrics and lease is None:
            self.metrics_server = MetricsServer(config.bridge.metrics, self.metrics, self.health,
                                                source=config.source)
        if lease is None:
            self.metrics.gauge("active", lambda: 1.0)
        self.metrics.gauge("outbox_transitions", lambda: self.outbox.depth()[0])
        self.metrics.gauge("outbox_statuses", lambda: self.outbox.depth()[1])
        self.metrics.gauge("nodes_known", self.outbox.known_nodes)
        self.metrics.gauge("monitor_reachable", lambda: float(self.forwarder.reachable))
        self.metrics.gauge("broker_connected", lambda: float(self.connected))
        self.metrics.gauge("outbox_ok", lambda: float(self.outbox.last_error is None))
        self.metrics.gauge("max_clock_skew_seconds",
                           lambda: max(map(abs, list(self.writer.skew.values())), default=0.0))

    def _request_flush(self) -> None:
        self.writer.request_flush()

    def _state(self, state: protocol.State) -> bytes:
        message = StateMessage(
            state=state, session=self.session, since=self._since,
            node_name=self.config.bridge.client_id, version=PACKAGE_VERSION, interval_s=30.0,
            node_type=BRIDGE_NODE_TYPE)
        if self.lease is None:
            return protocol.encode(message)
        return protocol.encode_bridge_state(message, role="active",
                                            instance=self.lease.instance)

    def start(self) -> Bridge:
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.writer.start()
        self.forwarder.start()
        self.refresh.start()
        self.link.start()
        self.statuses.start()
        self._watchdog.start()
        log.info("bridge started client_id=%s monitor=%s profile=%s outbox=%s",
                 self.config.bridge.client_id, self.config.monitor.url,
                 self.config.monitor.profile, self.outbox.where)
        return self

    def stop(self, timeout: float = 4.0, *, fenced: bool = False) -> None:
        """Stop taking messages, keep what is not delivered in the outbox, and return within
        ``timeout`` seconds. ``fenced``: the lease was taken over; say goodbye to no one and
        write nothing more (the active instance owns the bridge's state and the outbox)."""
        deadline = time.monotonic() + timeout
        self.stopping.set()
        if fenced:
            self.forwarder.stop(0.0)
        self.statuses.stop(min(1.5, timeout / 3))
        self.link.stop(min(1.5, timeout / 3), farewell=None if fenced else self._farewell)
        self.refresh.stop()
        self.writer.stop(max(min(1.0, deadline - time.monotonic()), 0.0))
        self.forwarder.stop(max(deadline - time.monotonic() - 0.3, 0.0))
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self._watchdog.is_alive():
            self._watchdog.join(1.0)
        depth = self.outbox.depth()
        # The writer is the only thread that writes the outbox: flush here only once it
        # has ended.
        self.outbox.close(flush=not fenced and not self.writer.alive)
        log.info("bridge stopped; outbox keeps %d transition(s) and %d status(es)", *depth)

    def _farewell(self, client: mqtt.Client) -> mqtt.MQTTMessageInfo:
        return client.publish(self._state_topic, self._state("disconnected"), qos=1,
                              retain=True)

    @property
    def connected(self) -> bool:
        return self.link.connected and self.statuses.connected

    def health(self) -> dict[str, Any]:
        """``ok`` only while the bridge can do its whole job: both broker sessions up, every
        thread and the status receiver going, the outbox writable, the monitor answering.
        ``problem`` says what is not."""
        transitions, statuses = self.outbox.depth()
        outbox_error = self.outbox.last_error
        problems = self._stalled()
        if self.statuses.problem:
            problems.append(self.statuses.problem)
        if not self.connected:
            problems.append("not connected to the broker")
        if not self.forwarder.reachable:
            problems.append(f"monitor: {self.forwarder.last_problem}")
        if outbox_error is not None:
            problems.append(f"outbox: {outbox_error}")
        if self.lease is not None and not self.lease.valid():
            problems.append(f"lease not renewed ({self.lease.problem or 'taken over'}): "
                            "forwarding paused")
        return {"ok": not problems, "problem": "; ".join(problems),
                "broker_connected": self.connected,
                "caught_up": self.caught_up,
                "monitor_reachable": self.forwarder.reachable,
                "monitor_problem": self.forwarder.last_problem,
                "monitor_api": self.forwarder.profile,
                "monitor_unknown_nodes": sorted(self.forwarder.unknown_nodes)[:100],
                "outbox_ok": outbox_error is None, "outbox_problem": outbox_error or "",
                "outbox_transitions": transitions, "outbox_statuses": statuses,
                "nodes_known": self.outbox.known_nodes()}

    @property
    def caught_up(self) -> bool:
        """Both broker sessions have caught up with what the broker kept for them, retained
        copies included, since they last connected."""
        with self._caught_up_lock:
            return all(self._caught_up.values())

    def _stalled(self, limit: float | None = None) -> list[str]:
        limit = STALL_LIMIT if limit is None else limit
        found = []
        for name, alive, stalled in (
                ("outbox writer", self.writer.alive, self.writer.stalled_for()),
                ("forwarder", self.forwarder.alive, self.forwarder.stalled_for())):
            if not alive:
                if not self.stopping.is_set():
                    found.append(f"{name} thread has ended")
            elif stalled > limit:
                found.append(f"{name} thread stalled for {stalled:.0f} s")
        return found

    def _watch(self) -> None:
        """Report stalled threads; stop the service when one is hung or has ended."""
        while not self.stopping.wait(min(WATCH_EVERY, HANG_LIMIT / 10)):
            hung = self._stalled(HANG_LIMIT)
            if hung:
                self.failure = "; ".join(hung)
                log.critical("%s; stopping so that the service manager starts the bridge "
                             "again", self.failure)
                self.stopping.set()
                return

    # --- MQTT (paho's thread) -------------------------------------------------------------

    def _on_connect_states(self, client: mqtt.Client, session_present: bool) -> None:
        self._link_acks.connected(client)
        subscribe_without_retained(client, self.topics.all_states, protocol.MQTT_QOS)
        self.refresh.connected(client)
        client.publish(self._state_topic, self._state("ready"), qos=1, retain=True)
        log.info("bridge subscribed to states session_present=%s", session_present)

    def _on_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        self.refresh.received()
        self.writer.put(Received(
            "states", self._link_acks.number(client), message.mid, message.qos, message.topic,
            bytes(message.payload), time.time(), bool(message.retain),
            getattr(message.properties, "MessageExpiryInterval", None)))

    def _on_statuses(self, batch: list[Received]) -> None:
        self.writer.put(batch)

    def _on_down(self, event: LinkDown) -> None:
        self.refresh.down()
        self._session("states", False)
        log.debug("broker link down: %s", event.reason)

    def _session(self, name: str, caught_up: bool) -> None:
        """Silences are counted from when both broker sessions were last caught up: never
        across a broker outage, nor from an earlier term."""
        with self._caught_up_lock:
            before = all(self._caught_up.values())
            self._caught_up[name] = caught_up
            after = all(self._caught_up.values())
            if after and not before:
                self.outbox.caught_up(time.monotonic())
                log.debug("both broker sessions caught up: silences are counted from now")
            elif before and not after:
                self.outbox.caught_up(None)
        self.writer.wake()  # silences and barriers are due at other times now

    # --- what the writer asks of the sessions (``writer.Sessions``) -------------------------

    def barrier(self, number: int) -> None:
        self.statuses.barrier(number)

    def status_session_caught_up(self) -> bool:
        with self._caught_up_lock:
            return self._caught_up["statuses"]

    def reconnect(self, reason: str) -> None:
        self.link.reconnect(reason)
        self.statuses.reconnect(reason)
