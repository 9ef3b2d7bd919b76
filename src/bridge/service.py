"""``yl-status bridge``: broker → outbox → YL-monitor, as one long-running service.

One persistent MQTT session, ``{client_id}``, reads every node's ``state`` and ``status`` in
the order the broker got them, and carries the bridge's own state; it runs in a child
process (``status_receiver``). Threads: the receiver's reader only queues incoming batches;
the outbox writer (``writer``) records them in order and acknowledges them (in arrival
order) once committed; the forwarder (``forwarder``) delivers from the outbox. This module
puts them together and watches them. One shutdown path: ``stop()``, which the signal handler
triggers by setting an event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from bridge.database import session_names
from bridge.forwarder import Forwarder
from bridge.incoming import Received
from bridge.lease import Lease
from bridge.metrics import Metrics, MetricsServer
from bridge.outbox import Outbox, OutboxError
from bridge.receiver_messages import Presence
from bridge.status_receiver import StatusReceiver
from bridge.writer import OutboxWriter
from yl_core import protocol, timestamps
from yl_core.config import Config
from yl_core.errors import ConfigError
from yl_core.link import Will, options_from_config
from yl_core.protocol import StateMessage
from yl_core.version import PACKAGE_VERSION

log = logging.getLogger(__name__)

BRIDGE_NODE_TYPE = "yl-bridge"
IN_FLIGHT = 1000
"""Unacknowledged messages the broker may send the bridge's session at once (MQTT
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
    """The bridge's work: its broker session, outbox, forwarding.

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
        state_topic = protocol.bridge_state_topic(client_id)
        self._caught_up = False
        username, password = config.bridge_login()
        self.receiver = StatusReceiver(
            options_from_config(config.mqtt, client_id, source=config.source,
                                clean_start=False, session_expiry=config.bridge.session_expiry,
                                manual_ack=True, receive_maximum=IN_FLIGHT,
                                username=username, password=password,
                                will=Will(state_topic, self._state("lost"))),
            self.topics, protocol.MQTT_QOS, self._on_messages, config.logging,
            None if lease is None else lease.valid_until,
            on_caught_up=self._session,
            in_thread=config.bridge.status_receiver == "thread",
            on_missed=lambda: self.metrics.inc("retained_rereads"),
            presence=Presence(state_topic, self._state("ready"),
                              self._state("disconnected")))
        self.writer = OutboxWriter(self.outbox, self.metrics, self.topics,
                                   max_nodes=config.bridge.max_nodes,
                                   notify=self.forwarder.notify, session=self.receiver,
                                   acknowledger=self.receiver,
                                   give_up=None if lease is None else lease.give_up)
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
        self.receiver.start()
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
        self.receiver.stop(min(2.0, timeout / 2), goodbye=not fenced)
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

    @property
    def connected(self) -> bool:
        return self.receiver.connected

    def health(self) -> dict[str, Any]:
        """``ok`` only while the bridge can do its whole job: its broker session up and
        reading both topics, every thread and the receiver going, the outbox writable, the
        monitor answering. ``problem`` says what is not."""
        transitions, statuses = self.outbox.depth()
        outbox_error = self.outbox.last_error
        problems = self._stalled()
        if self.receiver.problem:
            problems.append(self.receiver.problem)
        if self.receiver.unread:
            problems.append(self.receiver.unread)
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
        """The broker session has caught up with what the broker kept for it, retained
        copies included, since it last connected."""
        return self._caught_up

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

    # --- the receiver's reader thread ---------------------------------------------------

    def _on_messages(self, batch: list[Received]) -> None:
        self.writer.put(batch)

    def _session(self, caught_up: bool) -> None:
        """Silences are counted from when the broker session was last caught up: never
        across a broker outage, nor from an earlier term."""
        if caught_up != self._caught_up:
            self._caught_up = caught_up
            self.outbox.caught_up(time.monotonic() if caught_up else None)
            if caught_up:
                log.debug("broker session caught up: silences are counted from now")
        self.writer.wake()  # silences are due at other times now
