"""``yl-status bridge``: broker → outbox → YL-monitor, as one long-running service.

Two persistent MQTT sessions: ``{client_id}`` for the ``state`` topics and
``{client_id}-status`` for ``status``. A broker queues a limited number of messages for an
absent client; keeping the rare state transitions out of the status flood means a bridge
outage can overflow only the status queue, whose newest message per node comes back as a
retained message anyway. The status session runs in a child process (``status_receiver``).

Threads: paho's network thread (and the status receiver's reader) only queue incoming
messages; the outbox writer records them in batches and acknowledges them (in arrival order)
once committed; the forwarder delivers from the outbox. One shutdown path: ``stop()``, which
the signal handler triggers by setting an event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from bridge.database import session_names
from bridge.forwarder import Forwarder
from bridge.incoming import Received, StatusHead
from bridge.lease import Lease
from bridge.metrics import Metrics, MetricsServer
from bridge.outbox import NotActiveError, Outbox, OutboxError
from bridge.receiver_messages import Passed
from bridge.refresh import RetainedRefresh, subscribe_without_retained
from bridge.status_receiver import StatusReceiver
from yl_core import protocol, timestamps
from yl_core.config import Config
from yl_core.errors import ConfigError
from yl_core.link import Link, LinkDown, Will, options_from_config
from yl_core.protocol import StateMessage
from yl_core.version import PACKAGE_VERSION

log = logging.getLogger(__name__)

BRIDGE_NODE_TYPE = "yl-bridge"
MAX_BATCH = 1000
IN_FLIGHT = 1000
"""Unacknowledged messages the broker may send each of the bridge's sessions at once (MQTT
5 Receive Maximum). A message is acknowledged once its batch is committed, so this window
over the time from the broker to the commit bounds the rate the bridge can take in: with
mosquitto's own limit (20) an outbox's commit latency, not the CPU, was the ceiling."""
FLUSH = "flush"
"""Queued to wake the writer when deliveries are waiting to be written."""
FLUSH_DELAY = 0.002
"""Deliveries are written in batches at most this long after the first; a node's next item
waits for its previous delivery to be written."""
STALL_LIMIT = 10.0
"""A thread that has not gone round its loop for this long is reported as stalled."""
HANG_LIMIT = 60.0
"""A thread stalled this long is taken as hung: the bridge stops with an error, and its
service manager starts it again (nothing acknowledged is lost)."""
TICK = 1.0
FLUSH_RETRY = 0.5
"""A failed write of deliveries is tried again this soon."""
CLOCK_SKEW_LIMIT = 60.0
"""A node whose clock is further than this from the bridge's is logged (once)."""
BARRIER_WAIT = 1.0
"""The longest a node whose session ended waits for the status session's barrier (its last
statuses, on their way on the other session, become the end's snapshot) before its end is
delivered all the same, while that session is connected and caught up."""
BARRIER_WAIT_DOWN = 10.0
"""The same while the status session is not (yet) connected and caught up: after a restart
or a takeover, the state session may connect first, and the statuses the broker queued for
the other come only once it has (the end of its first retained round passes the barrier)."""


class Acknowledger(Protocol):
    def acknowledge(self, connection: int, messages: list[tuple[int, int]]) -> None: ...


class _LinkAcknowledger:
    """Acknowledges the state session's messages, on the connection they came over only."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.current: tuple[mqtt.Client, int] | None = None
        self.connections = 0

    def connected(self, client: mqtt.Client) -> None:
        self.connections += 1
        self.current = (client, self.connections)

    def number(self, client: mqtt.Client) -> int:
        current = self.current
        return current[1] if current is not None and current[0] is client else 0

    def acknowledge(self, connection: int, messages: list[tuple[int, int]]) -> None:
        current = self.current
        client = self.link.client
        if current is None or current[1] != connection or current[0] is not client:
            return
        for mid, qos in messages:
            current[0].ack(mid, qos)


class RejectLog:
    """Logs the first few rejections of each reason, then one in a thousand."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __call__(self, reason: str, topic: str, message: str) -> None:
        count = self._counts.get(reason, 0) + 1
        self._counts[reason] = count
        if count <= 10 or count % 1000 == 0:
            log.warning("rejected message reason=%s topic=%r count=%d: %s", reason,
                        topic[:120], count, message)


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
        self._incoming: queue.Queue[Received | list[Received] | Passed | str | None] = \
            queue.Queue()
        self._barrier = 0
        self._barrier_asked: dict[int, float] = {}
        """Barriers asked of the status session and when their nodes are released anyway
        (the writer's own)."""
        self._flush_requested = threading.Event()
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
        self._reject_log = RejectLog()
        self._writer = threading.Thread(target=self._write_loop, name="yl-bridge-outbox",
                                        daemon=True)
        self._writer_tick = time.monotonic()
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
        self._link_acks = _LinkAcknowledger(self.link)
        self._acknowledgers: dict[str, Acknowledger] = {"states": self._link_acks}
        self.statuses = StatusReceiver(
            options_from_config(config.mqtt, protocol.bridge_status_identity(client_id),
                                source=config.source, **persistent,
                                username=protocol.bridge_status_identity(username),
                                password=password),
            self.topics, protocol.MQTT_QOS, self._on_statuses, config.logging,
            None if lease is None else lease.valid_until,
            on_caught_up=lambda caught_up: self._session("statuses", caught_up),
            in_thread=config.bridge.status_receiver == "thread",
            on_passed=lambda number: self._incoming.put(Passed(number)),
            on_missed=lambda: self.metrics.inc("retained_rereads"))
        self._acknowledgers["statuses"] = self.statuses
        self.metrics_server: MetricsServer | None = None
        if config.bridge.metrics and lease is None:
            self.metrics_server = MetricsServer(config.bridge.metrics, self.metrics, self.health,
                                                source=config.source)
        self._skew: dict[str, float] = {}
        self._skew_reported: set[str] = set()
        if lease is None:
            self.metrics.gauge("active", lambda: 1.0)
        self.metrics.gauge("outbox_transitions", lambda: self.outbox.depth()[0])
        self.metrics.gauge("outbox_statuses", lambda: self.outbox.depth()[1])
        self.metrics.gauge("nodes_known", self.outbox.known_nodes)
        self.metrics.gauge("monitor_reachable", lambda: float(self.forwarder.reachable))
        self.metrics.gauge("broker_connected", lambda: float(self.connected))
        self.metrics.gauge("outbox_ok", lambda: float(self.outbox.last_error is None))
        self.metrics.gauge("max_clock_skew_seconds",
                           lambda: max(map(abs, list(self._skew.values())), default=0.0))

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
        self._writer.start()
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
        self._incoming.put(None)
        self._writer.join(max(min(1.0, deadline - time.monotonic()), 0.0))
        self.forwarder.stop(max(deadline - time.monotonic() - 0.3, 0.0))
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self._watchdog.is_alive():
            self._watchdog.join(TICK + 0.5)
        depth = self.outbox.depth()
        # The writer is the only thread that writes the outbox: flush here only once it
        # has ended.
        self.outbox.close(flush=not fenced and not self._writer.is_alive())
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
        now = time.monotonic()
        found = []
        for name, alive, tick in (("outbox writer", self._writer.is_alive(), self._writer_tick),
                                  ("forwarder", self.forwarder.alive, self.forwarder.tick)):
            if not alive:
                if not self.stopping.is_set():
                    found.append(f"{name} thread has ended")
            elif now - tick > limit:
                found.append(f"{name} thread stalled for {now - tick:.0f} s")
        return found

    def _watch(self) -> None:
        """Report stalled threads; stop the service when one is hung or has ended."""
        while not self.stopping.wait(TICK):
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
        self._incoming.put(Received(
            "states", self._link_acks.number(client), message.mid, message.qos, message.topic,
            bytes(message.payload), time.time(), bool(message.retain),
            getattr(message.properties, "MessageExpiryInterval", None)))

    def _on_statuses(self, batch: list[Received]) -> None:
        self._incoming.put(batch)

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

    # --- outbox writer --------------------------------------------------------------------

    def _request_flush(self) -> None:
        if not self._flush_requested.is_set():
            self._flush_requested.set()
            self._incoming.put(FLUSH)

    def _write_loop(self) -> None:
        """The only thread that writes the outbox: incoming batches at once (they are
        acknowledged after the commit), deliveries within ``FLUSH_DELAY`` (losing those in a
        crash only means sending them again), or with the next batch if that comes first:
        one transaction for both."""
        flush_due: float | None = None
        reported = ""
        while True:
            self._writer_tick = time.monotonic()
            due = [d for d in (flush_due, self._barrier_due()) if d is not None]
            timeout = min(max(min(due) - time.monotonic(), 0.0), TICK) if due else TICK
            try:
                batch = [self._incoming.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._incoming.get_nowait())
                except queue.Empty:
                    break
            messages: list[Received] = []
            passed = 0
            for entry in batch:
                if isinstance(entry, Received):
                    messages.append(entry)
                elif isinstance(entry, list):
                    messages.extend(entry)
                elif isinstance(entry, Passed):
                    passed = max(passed, entry.number)
            stopping = None in batch
            if FLUSH in batch and flush_due is None:
                flush_due = time.monotonic() + FLUSH_DELAY
            failed = self.outbox.last_error is not None
            flushing = False
            try:
                if flush_due is not None and \
                        (messages or stopping or time.monotonic() >= flush_due):
                    flushing = True
                    flush_due = None
                    self._flush_requested.clear()
                if messages:
                    self._record(messages, flush=flushing)
                elif flushing:
                    self.forwarder.notify(self.outbox.flush())
            except NotActiveError as exc:
                if not failed or str(exc) != reported:
                    reported = str(exc)
                    log.error("%s", exc)  # noqa: TRY400
                if self.lease is not None:
                    self.lease.give_up("the outbox refused a write: the lease was taken over")
                if stopping:
                    return
                continue
            except Exception as exc:
                self.metrics.inc("outbox_errors")
                if not isinstance(exc, OutboxError):
                    log.exception("outbox write failed")
                elif not failed or str(exc) != reported:
                    reported = str(exc)
                    log.error("%s; retrying (nothing unwritten is acknowledged)", exc)  # noqa: TRY400
                if flushing:
                    # The nodes delivered to wait for this write: try it again soon.
                    flush_due = time.monotonic() + FLUSH_RETRY
                if messages and not stopping:
                    # The broker redelivers unacknowledged messages only on a new connection.
                    self.link.reconnect("outbox write failed")
                    self.statuses.reconnect("outbox write failed")
            else:
                if failed and self.outbox.last_error is None:
                    log.info("outbox writes work again")
            self._release(passed)
            if stopping:
                return

    def _barrier_wait(self) -> float:
        with self._caught_up_lock:
            return BARRIER_WAIT if self._caught_up["statuses"] else BARRIER_WAIT_DOWN

    def _barrier_due(self) -> float | None:
        """When the oldest barrier asked for has been waited for long enough."""
        if not self._barrier_asked:
            return None
        return min(self._barrier_asked.values()) + self._barrier_wait()

    def _release(self, passed: int) -> None:
        """Hand out again the nodes held for barriers passed, or waited for long enough."""
        if not self._barrier_asked:
            return
        waited = time.monotonic() - self._barrier_wait()
        upto = max([min(passed, self._barrier),
                    *(n for n, asked in self._barrier_asked.items() if asked <= waited)])
        if upto <= 0:
            return
        for number in [n for n in self._barrier_asked if n <= upto]:
            del self._barrier_asked[number]
        released = self.outbox.release(upto)
        log.debug("nodes held up to barrier %d released (%s): %s", upto,
                  "passed" if passed >= upto else "waited for", ", ".join(sorted(released)))
        self.forwarder.notify(released)

    def _record(self, messages: list[Received], *, flush: bool = False) -> None:
        valid: list[Received] = []
        received: dict[str, int] = {}
        for message in messages:
            m = message.checked_by(self.topics)
            checked = m.checked
            assert checked is not None
            if checked.kind == "rebirth":
                continue
            if checked.kind is not None:
                received[checked.kind] = received.get(checked.kind, 0) + 1
            if checked.reason is not None:
                self.metrics.inc("rejected", reason=checked.reason)
                self._reject_log(checked.reason, m.topic, checked.detail)
            elif checked.message is not None and checked.node_id is not None:
                valid.append(m)
                if isinstance(checked.message, StatusHead) and not m.retained:
                    self._note_clock(checked.node_id, m.sent - checked.message.timestamp)
        for kind, count in received.items():
            self.metrics.inc("received", count, kind=kind)
        hold = self._barrier + 1
        result, touched = self.outbox.record(valid, flush=flush, hold=hold)
        if result.ended:
            # Their last statuses may still be on their way on the status session.
            self._barrier = hold
            self._barrier_asked[hold] = time.monotonic()
            log.debug("sessions ended (%s): held for barrier %d", ", ".join(result.ended), hold)
            # Not connected: passed when the session has caught up, or waited for.
            self.statuses.barrier(hold)
        self.metrics.inc("coalesced", result.coalesced)
        self.metrics.inc("rejected", result.stale, reason="stale")
        self.metrics.inc("duplicates", result.duplicates)
        self.metrics.inc("withdrawn", result.withdrawn)
        self.metrics.inc("dropped", result.dropped, reason="transition_cap")
        self.metrics.inc("dropped", result.too_many_nodes, reason="too_many_nodes")
        if result.too_many_nodes:
            log.error("outbox: %d message(s) from new nodes dropped: more than %d nodes",
                      result.too_many_nodes, self.config.bridge.max_nodes)
        acks: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for m in messages:
            if m.qos > 0:
                acks.setdefault((m.session, m.connection), []).append((m.mid, m.qos))
        for (session, connection), pairs in acks.items():
            self._acknowledgers[session].acknowledge(connection, pairs)
        self.forwarder.notify(touched)

    def _note_clock(self, node_id: str, skew: float) -> None:
        """Remember how far the node's clock is from ours; its timestamps are forwarded as
        they are, and nothing is ordered by them."""
        if node_id not in self._skew and len(self._skew) >= self.config.bridge.max_nodes:
            return
        self._skew[node_id] = skew
        if abs(skew) > CLOCK_SKEW_LIMIT and node_id not in self._skew_reported:
            self._skew_reported.add(node_id)
            self.metrics.inc("clock_skew_reports")
            log.warning("node %s: its clock is %+.0f s from the bridge's; its timestamps are "
                        "forwarded as they are", node_id, -skew)
