"""Delivery from the outbox to YL-monitor.

One thread drives ``bridge.http_concurrency`` keep-alive connections: it delivers for several
nodes at once, never two requests for the same node (order per node is kept). A delivery is a
generator that yields the requests it needs (register, heartbeat, register again after a 404)
and receives their answers, so no thread waits on the monitor and nothing is handed between
threads per request. When the monitor is unreachable or failing, deliveries pause with
jittered exponential backoff (or the monitor's ``Retry-After``), and only one probe request at
a time goes out until it answers again.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable
from typing import Any

import httptools

from bridge.metrics import Metrics
from bridge.monitor_client import (
    Answer,
    ClosedError,
    Exchange,
    MonitorClient,
    Outcome,
    decode_json,
    describe_error,
)
from bridge.outbox import Item, NodeMark, Outbox
from publisher import protocol
from publisher.config import Config
from publisher.link import backoff_delay

log = logging.getLogger(__name__)

TICK = 1.0
"""The delivery thread goes round its loop at least this often."""

Delivery = Generator[bytes, Answer, bool]
"""Yields requests, receives their answers; returns True if the node has more to deliver."""


class _Slot:
    """One connection to the monitor and the delivery it is serving."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.node: str | None = None
        self.delivery: Delivery | None = None
        self.request = b""
        self.exchange: Exchange | None = None
        self.deadline = 0.0
        self.reused = False
        self.resent = False
        self.probe = False


class Forwarder:
    def __init__(self, config: Config, outbox: Outbox, metrics: Metrics) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.client = MonitorClient(config.monitor)
        self.reachable = True
        self.last_problem = ""
        self._values = config.monitor.status_values
        self._nodes_api = config.monitor.profile == "nodes-api"
        self._register_route: bool | None = None
        self._backoff_initial = 0.2
        self._backoff_max = max(config.monitor.retry_delay, 0.5)
        self._failures = 0
        self._paused_until = 0.0
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._dirty: set[str] = set()
        self._inbox: deque[Iterable[str]] = deque()
        self._deferred: list[tuple[float, str]] = []
        """(when, node): nodes whose next item waits (a ``lost`` within its hold)."""
        self._woken = False
        self._stopping = False
        self._slots = [_Slot() for _ in range(config.bridge.http_concurrency)]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.tick = time.monotonic()
        """When the delivery thread last went round its loop (for the bridge's watchdog)."""
        self._thread = threading.Thread(target=self._run, name="yl-bridge-forward",
                                        daemon=True)

    def start(self) -> Forwarder:
        self.notify(self.outbox.nodes_with_work())
        self._thread.start()
        return self

    def stop(self, timeout: float) -> None:
        """Start nothing new; wait up to ``timeout`` for the requests in flight."""
        self._stopping = True
        self._wake()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """False once the delivery thread has ended (stopped, or crashed: then logged)."""
        return self._thread.is_alive()

    def notify(self, nodes: Iterable[str]) -> None:
        """``nodes`` have something to deliver (any thread)."""
        self._inbox.append(nodes)
        self._wake()

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            with contextlib.suppress(OSError):
                self._wake_w.send(b"!")

    # --- the delivery thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self.tick = time.monotonic()
                self._take_notifications()
                if self._stopping:
                    if all(slot.node is None for slot in self._slots):
                        return
                else:
                    self._assign()
                for key, _ in self._selector.select(self._timeout()):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                        self._woken = False
                    else:
                        self._readable(key.data)
                self._expire()
        except Exception:
            log.critical("forwarding stopped after an unexpected error", exc_info=True)
            raise
        finally:
            for slot in self._slots:
                self._close(slot)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _defer(self, node: str, delay: float) -> None:
        heapq.heappush(self._deferred, (time.monotonic() + delay, node))

    def _take_notifications(self) -> None:
        now = time.monotonic()
        while self._deferred and self._deferred[0][0] <= now:
            self._inbox.append((heapq.heappop(self._deferred)[1],))
        while self._inbox:
            for node in self._inbox.popleft():
                if node in self._busy:
                    self._dirty.add(node)
                elif node not in self._queued:
                    self._queued.add(node)
                    self._ready.append(node)

    def _assign(self) -> None:
        """Start deliveries on idle connections (one that needs no request frees its
        connection at once)."""
        while self._ready and time.monotonic() >= self._paused_until:
            if not self.reachable and any(s.probe and s.node for s in self._slots):
                return
            slot = next((s for s in self._slots if s.node is None), None)
            if slot is None:
                return
            node = self._ready.popleft()
            self._queued.discard(node)
            self._busy.add(node)
            slot.node = node
            slot.probe = not self.reachable
            slot.delivery = self._deliver(node)
            self._advance(slot, None)

    def _timeout(self) -> float:
        """Until the next deadline, at most ``TICK`` (the watchdog's sign of life)."""
        now = time.monotonic()
        due = [slot.deadline for slot in self._slots if slot.exchange is not None]
        if self._ready and not self._stopping and self._paused_until > now:
            due.append(self._paused_until)
        if self._deferred:
            due.append(self._deferred[0][0])
        return max(min([*due, now + TICK]) - now, 0.0)

    def _advance(self, slot: _Slot, answer: Answer | None) -> None:
        """Resume the slot's delivery with ``answer``; send what it asks for next."""
        assert slot.delivery is not None
        try:
            request = slot.delivery.send(answer)  # type: ignore[arg-type]
        except StopIteration as finished:
            self._release(slot, bool(finished.value))
            return
        except Exception:
            log.exception("delivery for node %s failed unexpectedly", slot.node)
            self._failed(Answer(Outcome.RETRY, None, "internal error"))
            self._release(slot, True)
            return
        if self._stopping:
            slot.delivery.close()
            self._release(slot, False)
            return
        slot.request = request
        slot.resent = False
        self._transmit(slot)

    def _transmit(self, slot: _Slot) -> None:
        slot.exchange = Exchange()
        slot.deadline = time.monotonic() + self.client.timeout
        slot.reused = slot.sock is not None
        try:
            if slot.sock is None:
                slot.sock = self.client.connect()
                self._selector.register(slot.sock, selectors.EVENT_READ, slot)
            slot.sock.sendall(slot.request)
        except (ConnectionResetError, BrokenPipeError) as exc:
            self._lost(slot, exc)
        except OSError as exc:
            self._close(slot)
            self._advance(slot, Answer(Outcome.RETRY, None, describe_error(exc)))

    def _readable(self, slot: _Slot) -> None:
        assert slot.sock is not None
        exchange = slot.exchange
        if exchange is None:
            # An idle connection: the monitor closed it (or sent something unasked).
            self._close(slot)
            return
        try:
            complete = exchange.feed(slot.sock.recv(65536))
            while not complete and isinstance(slot.sock, ssl.SSLSocket) and \
                    slot.sock.pending():
                complete = exchange.feed(slot.sock.recv(65536))
        except ssl.SSLWantReadError:
            return
        except (ConnectionResetError, BrokenPipeError, ClosedError) as exc:
            self._lost(slot, exc)
            return
        except (OSError, httptools.HttpParserError) as exc:
            self._close(slot)
            self._advance(slot, Answer(Outcome.RETRY, None, describe_error(exc)))
            return
        if complete:
            slot.exchange = None
            if not exchange.keep_alive:
                self._close(slot)
            self._advance(slot, exchange.answer())

    def _lost(self, slot: _Slot, exc: Exception) -> None:
        """The connection broke; a kept-alive one the monitor had closed is replaced once."""
        self._close(slot)
        if slot.reused and not slot.resent:
            slot.resent = True
            self._transmit(slot)
        else:
            self._advance(slot, Answer(Outcome.RETRY, None, f"connection lost: {exc}"))

    def _expire(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.exchange is not None and now >= slot.deadline:
                self._close(slot)
                self._advance(slot, Answer(Outcome.RETRY, None, "timed out"))

    def _close(self, slot: _Slot) -> None:
        slot.exchange = None
        if slot.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(slot.sock)
            with contextlib.suppress(OSError):
                slot.sock.close()
            slot.sock = None

    def _release(self, slot: _Slot, again: bool) -> None:
        node = slot.node
        slot.node = slot.delivery = None
        slot.probe = False
        if node is None:
            return
        self._busy.discard(node)
        if again or node in self._dirty:
            self._dirty.discard(node)
            if node not in self._queued:
                self._queued.add(node)
                self._ready.append(node)

    def _succeeded(self) -> None:
        if not self.reachable:
            log.info("monitor reachable again")
        self._failures = 0
        self.reachable = True
        self.last_problem = ""

    def _failed(self, answer: Answer) -> float:
        """Pause all deliveries; returns the pause."""
        self._failures += 1
        pause = backoff_delay(self._failures - 1, self._backoff_initial, self._backoff_max)
        if answer.retry_after is not None:
            pause = max(pause, min(answer.retry_after, 300.0))
        if self.reachable:
            log.warning("monitor unavailable (%s); pausing deliveries, retrying with backoff",
                        answer.reason)
        self.reachable = False
        self.last_problem = answer.reason
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        return pause

    # --- one node's delivery ----------------------------------------------------------------

    def _deliver(self, node: str) -> Delivery:
        """Deliver one item of ``node``."""
        item = self.outbox.next_item(node)
        if item is None:
            return False
        if item.state == "lost":
            hold = protocol.LOST_HOLD - (time.time() - item.received)
            if hold > 0:  # withdrawn if the node is back meanwhile
                self._defer(node, hold)
                return False
        mark = self.outbox.mark(node)
        # A transition registers first, every time: a monitor that lost its table (restarted
        # without it) would otherwise swallow it as an auto-registration.
        if self._nodes_api and mark is not None and \
                (not mark.registered or item.kind == "state"):
            answer = yield from self._register(node, mark)
            if answer.outcome is Outcome.RETRY:
                return self._retry(answer)
        request = self.client.heartbeat_request(node, self._body(item, mark))
        answer = yield request
        if answer.outcome is Outcome.NOT_FOUND and self._nodes_api:
            self.outbox.set_registered(node, False)
            registered = yield from self._register(node, mark)
            if registered.outcome is Outcome.RETRY:
                return self._retry(registered)
            answer = yield request
        if answer.outcome in (Outcome.REJECTED, Outcome.NOT_FOUND):
            # Refused: this message's fault, or the monitor's (a wrong URL, a misrouting
            # proxy)? A monitor that fails its own health check keeps everything.
            health = yield self.client.health_request()
            if health.outcome is not Outcome.DELIVERED:
                self._register_route = None
                return self._retry(Answer(
                    Outcome.RETRY, answer.status,
                    f"monitor refuses deliveries ({answer.reason}) and fails its health "
                    f"check ({health.reason}); check monitor.url and monitor.profile",
                    retry_after=health.retry_after))
        if answer.outcome is Outcome.RETRY:
            return self._retry(answer)
        self._succeeded()
        if answer.outcome is Outcome.DELIVERED:
            self.metrics.delivered(item.kind, max(time.time() - item.received, 0.0))
        else:
            reason = f"http_{answer.status}" if answer.status else answer.outcome.value
            self.metrics.inc("rejected", reason=reason)
            log.warning("monitor refused %s of node %s (%s); dropped, the node's queue goes on",
                        item.kind, node, answer.reason)
        self.outbox.done(item)
        # A deferred write notifies the node again once it is on disk.
        return not self.outbox.defers_writes

    def _retry(self, answer: Answer) -> bool:
        self.metrics.inc("retries")
        self._failed(answer)
        return True

    def _register(self, node: str, mark: NodeMark | None) -> Generator[bytes, Answer, Answer]:
        """Make the monitor know ``node`` so its next heartbeat counts.

        A monitor without ``/api/ar/nodes/register`` auto-registers a node on its first
        heartbeat and does not record that heartbeat; then one heartbeat is sent to register.
        """
        name = (mark.node_name if mark else "") or node
        if self._register_route is not False:
            answer = yield self.client.register_request(node, name, protocol.NODE_TYPE)
            if answer.outcome is Outcome.RETRY:
                return answer
            if answer.outcome is Outcome.DELIVERED:
                self._register_route = True
                self._registered(node)
                return answer
            if answer.outcome is Outcome.NOT_FOUND:
                if self._register_route is None:
                    log.info("monitor has no register route; relying on auto-registration")
                self._register_route = False
            else:
                log.warning("monitor refused to register node %s (%s)", node, answer.reason)
        online = mark is None or mark.truth.state in (None, "ready")
        answer = yield self.client.heartbeat_request(node, {
            "node_id": node, "node_name": name, "timestamp": protocol.utc_now_iso(),
            "status": self._values.online if online else self._values.offline})
        if answer.outcome is Outcome.DELIVERED:
            self._registered(node)
        return answer

    def _registered(self, node: str) -> None:
        self.outbox.set_registered(node, True)
        self.metrics.inc("registered")

    def _body(self, item: Item, mark: NodeMark | None) -> dict[str, Any]:
        # The snapshot was validated when it was recorded.
        snapshot: dict[str, Any] = decode_json(item.payload) if item.payload else {}
        body: dict[str, Any] = {k: snapshot[k] for k in protocol.HEARTBEAT_FIELDS
                                if k in snapshot}
        body["node_id"] = item.node_id
        if item.kind == "state":
            # A transition is its session's newest word, however long it waited here.
            verdict = protocol.liveness(item.state, 0.0, None)  # type: ignore[arg-type]
        else:
            verdict = protocol.liveness(mark.truth.state_of(item.session) if mark else None,
                                        max(time.time() - item.received, 0.0),
                                        snapshot.get("interval_s"))
        body["status"] = self._values.online if verdict.up else self._values.offline
        body["reason"] = verdict.reason
        if item.kind == "state" or "timestamp" not in body:
            body["timestamp"] = protocol.iso_from_epoch(item.received)
        if "node_name" not in body:
            body["node_name"] = (mark.node_name if mark else "") or item.node_id
        return body
