"""Delivery from the outbox to YL-monitor.

One thread runs an asyncio loop with ``bridge.http_concurrency`` workers, each with its own
keep-alive connection to the monitor: they deliver for several nodes at once, never two
requests for the same node (order per node is kept). Connecting, TLS and reading are
asyncio's, non-blocking, so a slow or silent monitor host holds up only the worker waiting on
it, for at most ``monitor.timeout``; answers are parsed by httptools (llhttp). A delivery is a
generator that yields the requests it needs (register, heartbeat, register again after a
404) and receives their answers. When the monitor is unreachable or failing, deliveries pause
with jittered exponential backoff (or the monitor's ``Retry-After``), and only one probe
request at a time goes out until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Any

from bridge.metrics import Metrics
from bridge.monitor_client import (
    NODES,
    NOT_ACTIVE,
    V1_NODES,
    Answer,
    MonitorClient,
    MonitorConnection,
    Outcome,
    decode_json,
    listed_node_ids,
)
from bridge.outbox import Item, NodeMark, Outbox
from yl_core import protocol, timestamps, truth
from yl_core.config import Config
from yl_core.link import backoff_delay

log = logging.getLogger(__name__)

TICK = 1.0
"""The longest the delivery loop waits before looking for work again."""
SILENCE_CHECK = 0.25
"""How often the loop looks for nodes that fell silent (``Outbox.silent_nodes``)."""

INACTIVE_POLL = 0.1
"""How often a bridge that may not send (not active) looks again."""

KNOWN_TTL = 30.0
"""How long a v1 monitor's list of the nodes it knows is trusted before it is read again."""
PROFILES = ("nodes-api", "v1")
"""The APIs ``monitor.profile: auto`` looks for, in this order."""
_DETECT = ""
"""Taken from the queue instead of a node (no node id is empty): find out the monitor's API."""

Delivery = Generator[bytes, Answer, bool]
"""Yields requests, receives their answers; returns True if the node has more to deliver."""


class Forwarder:
    def __init__(self, config: Config, outbox: Outbox, metrics: Metrics, *,
                 may_send: Callable[[], bool] | None = None,
                 instance: str | None = None) -> None:
        """``may_send``: asked before every request (an active/standby bridge's lease);
        nothing is sent while it says False."""
        self.outbox = outbox
        self.metrics = metrics
        self.client = MonitorClient(config.monitor, instance=instance)
        self._may_send: Callable[[], bool] = may_send or (lambda: True)
        self.reachable = True
        self.last_problem = ""
        self._values = config.monitor.status_values
        self._url = config.monitor.url
        self._auto = config.monitor.profile == "auto"
        self.profile: str | None = None if self._auto else config.monitor.profile
        """The API the monitor serves (None: not known yet)."""
        self._detecting = False
        self._logged_profile: str | None = None
        self._known: set[str] | None = None
        self._known_at = float("-inf")
        self.unknown_nodes: set[str] = set()
        """Nodes a v1 monitor does not list: it would answer 200 and store nothing."""
        self.metrics.api(self.profile)
        self._register_route: bool | None = None
        self._told: dict[str, str] = {}
        """Per node, the status word the monitor was last told (one entry per node); for a
        v1 monitor, which cannot be told, ``offline`` once a node is down and not posted."""
        self._v1_refresh = config.monitor.v1_refresh
        self._refresh: set[str] = set()
        """Nodes up at a v1 monitor due to be posted again (``monitor.v1_refresh``)."""
        self._backoff_initial = 0.2
        self._backoff_max = max(config.monitor.retry_delay, 0.5)
        self._failures = 0
        self._paused_until = 0.0
        self._probing = False
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._dirty: set[str] = set()
        self._inbox: deque[Iterable[str]] = deque()
        self._deferred: list[tuple[float, str]] = []
        """(when, node): nodes whose next item waits (a ``lost`` within its hold)."""
        self._stopping = False
        self._workers = config.bridge.http_concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self.tick = time.monotonic()
        """When the delivery loop last said it is alive (for the bridge's watchdog)."""
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
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                loop.call_soon_threadsafe(self._poke)

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # --- the delivery loop ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.critical("forwarding stopped after an unexpected error", exc_info=True)
            raise

    async def _main(self) -> None:
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(self._tick())
        try:
            await asyncio.gather(*(self._worker() for _ in range(self._workers)))
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        next_refresh = 0.0
        while True:
            self.tick = now = time.monotonic()
            silent = self.outbox.silent_nodes(now)
            if silent:
                self.notify(silent)
            if self.profile == "v1" and self._v1_refresh and now >= next_refresh:
                next_refresh = now + self._v1_refresh
                up = [node for node, word in self._told.items() if word == self._values.online]
                self._refresh.update(up)
                self.notify(up)
            await asyncio.sleep(SILENCE_CHECK)

    async def _worker(self) -> None:
        connection = MonitorConnection(self.client, self._may_send)
        try:
            while (taken := await self._next_node()) is not None:
                node, probe = taken
                if node == _DETECT:
                    try:
                        await self._drive(connection, self._detect(), "finding the API")
                    finally:
                        self._detecting = False
                        if self._changed is not None:
                            self._changed.set()
                    continue
                again = True
                try:
                    again = await self._serve(connection, node)
                finally:
                    self._release(node, again, probe)
        finally:
            connection.close()

    async def _next_node(self) -> tuple[str, bool] | None:
        """The next node to deliver for (and whether it is the probe), or None to stop."""
        assert self._changed is not None
        while True:
            self._take_notifications()
            if self._stopping:
                return None
            if not self._may_send():
                await asyncio.sleep(INACTIVE_POLL)
                continue
            now = time.monotonic()
            if self.profile is None:
                if not self._detecting and now >= self._paused_until:
                    self._detecting = True
                    return _DETECT, False
            elif self._ready and now >= self._paused_until and \
                    (self.reachable or not self._probing):
                node = self._ready.popleft()
                self._queued.discard(node)
                self._busy.add(node)
                probe = not self.reachable
                self._probing = self._probing or probe
                return node, probe
            due = [now + TICK]
            if self._paused_until > now:
                # Past the pause, only a probe or the API check in flight holds the workers
                # back; its end sets ``_changed``.
                due.append(self._paused_until)
            if self._deferred:
                due.append(self._deferred[0][0])
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(min(due) - now, 0.0))

    async def _serve(self, connection: MonitorConnection, node: str) -> bool:
        """Run one delivery of ``node``; whether the node has more to deliver."""
        return await self._drive(connection, self._deliver(node), f"delivery for node {node}")

    async def _drive(self, connection: MonitorConnection, delivery: Delivery, what: str) -> bool:
        answer: Answer | None = None
        try:
            while True:
                try:
                    request = delivery.send(answer)  # type: ignore[arg-type]
                except StopIteration as finished:
                    return bool(finished.value)
                if self._stopping:
                    delivery.close()
                    return False
                answer = await connection.exchange(request)
        except Exception:
            log.exception("%s failed unexpectedly", what)
            self._failed(Answer(Outcome.RETRY, None, "internal error"))
            return True

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

    def _release(self, node: str, again: bool, probe: bool) -> None:
        if probe:
            self._probing = False
        self._busy.discard(node)
        if again or node in self._dirty:
            self._dirty.discard(node)
            if node not in self._queued:
                self._queued.add(node)
                self._ready.append(node)
        if self._changed is not None:
            self._changed.set()

    def _succeeded(self) -> None:
        if not self.reachable:
            log.info("monitor reachable again")
        self._failures = 0
        self.reachable = True
        self.last_problem = ""

    def _failed(self, answer: Answer) -> float:
        """Pause all deliveries; returns the pause."""
        if answer.reason == NOT_ACTIVE:
            return INACTIVE_POLL
        self._failures += 1
        pause = backoff_delay(self._failures - 1, self._backoff_initial, self._backoff_max)
        if answer.retry_after is not None:
            pause = max(pause, min(answer.retry_after, 300.0))
        if self.reachable:
            log.warning("monitor unavailable (%s); pausing deliveries, retrying with backoff",
                        answer.reason)
        if self.reachable and self._auto:
            self.profile = None  # the monitor that comes back may be another release
        self.reachable = False
        self.last_problem = answer.reason
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        return pause

    # --- which API the monitor serves ---------------------------------------------------------

    def _detect(self) -> Delivery:
        """``monitor.profile: auto``: ask for each API's node list; the first that answers
        2xx is the one spoken."""
        answer = Answer(Outcome.NOT_FOUND, None, "")
        for profile in PROFILES:
            answer = yield self.client.nodes_request(profile)
            if answer.outcome is Outcome.RETRY:
                self._retry(answer)
                return False
            if answer.outcome is Outcome.DELIVERED:
                self.profile = profile
                self.client.use_profile(profile)
                self.metrics.api(profile)
                if profile == "v1":
                    self._remember_known(answer)
                if self._logged_profile != profile:
                    self._logged_profile = profile
                    log.info("monitor at %s serves the %s API; using it", self._url, profile)
                self._succeeded()
                return False
        problem = (f"monitor at {self._url} serves neither the nodes API (GET {NODES}) nor v1 "
                   f"(GET {V1_NODES}): {answer.reason}; check monitor.url")
        if self._logged_profile != "none":
            self._logged_profile = "none"
            log.error("%s; keeping every message until it does", problem)
        self.metrics.api("none")
        self.reachable = False
        self._failed(Answer(Outcome.RETRY, answer.status, problem))
        return False

    def _remember_known(self, answer: Answer) -> None:
        self._known = listed_node_ids(answer.body)
        self._known_at = time.monotonic()
        if self._known is None:
            log.warning("the monitor's node list (GET %s) has a shape not understood; "
                        "heartbeats are sent without checking that it knows the node", V1_NODES)

    def _knows(self, node: str) -> Generator[bytes, Answer, bool]:
        """Whether a v1 monitor lists ``node`` (True when it cannot be told)."""
        if time.monotonic() - self._known_at > KNOWN_TTL:
            answer = yield self.client.nodes_request("v1")
            if answer.outcome is Outcome.DELIVERED:
                self._remember_known(answer)
        if self._known is None or node in self._known:
            self.unknown_nodes.discard(node)
            return True
        if node not in self.unknown_nodes:
            self.unknown_nodes.add(node)
            log.warning("monitor at %s does not know node %s: it would answer 200 and store "
                        "nothing; add the node to the monitor's node list", self._url, node)
        return False

    # --- one node's delivery ----------------------------------------------------------------

    def _deliver(self, node: str) -> Delivery:
        """Deliver one item of ``node``."""
        profile = self.profile
        if profile is None:
            return True  # handed out again once the monitor's API is known
        nodes_api = profile == "nodes-api"
        item = self.outbox.next_item(node)
        refresh = node in self._refresh
        self._refresh.discard(node)
        if item is None:
            if refresh and profile == "v1" and self._told.get(node) == self._values.online:
                # 1.0.6's process scan marks a GUI it cannot see offline every 10 s, and only
                # a heartbeat marks it online again: a node that is up is posted again.
                answer = yield self.client.heartbeat_request(node, {})
                if answer.outcome is Outcome.RETRY:
                    return self._retry(answer)
                self._succeeded()
                self.metrics.inc("refreshed")
            return False
        if item.state == "lost":
            hold = truth.LOST_HOLD - (time.time() - item.received)
            if hold > 0:  # withdrawn if the node is back meanwhile
                self._defer(node, hold)
                return False
        mark = self.outbox.mark(node)
        # A transition registers first, every time: a monitor that lost its table (restarted
        # without it) would otherwise swallow it as an auto-registration.
        if nodes_api and mark is not None and \
                (not mark.registered or item.kind != "status"):
            answer = yield from self._register(node, mark)
            if answer.outcome is Outcome.RETRY:
                return self._retry(answer)
        body = self._body(item, mark)
        if not nodes_api:
            # v1 takes any heartbeat as "alive" and cannot be told otherwise: nothing is sent
            # for a node that is down, nor for one the monitor would not store.
            if body["status"] == self._values.online and not (yield from self._knows(node)):
                self.metrics.inc("rejected", reason="unknown_at_monitor")
            elif body["status"] == self._values.online:
                return (yield from self._send(node, item, mark, body, nodes_api))
            else:
                self._note_v1_silent(node, body["reason"])
            self.outbox.done(item)
            return not self.outbox.defers_writes or item.kind == "silence"
        return (yield from self._send(node, item, mark, body, nodes_api))

    def _send(self, node: str, item: Item, mark: NodeMark | None, body: dict[str, Any],
              nodes_api: bool) -> Delivery:
        request = self.client.heartbeat_request(node, body)
        answer = yield request
        if answer.outcome is Outcome.NOT_FOUND and nodes_api:
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
        if answer.outcome is Outcome.DELIVERED and item.kind == "silence":
            self.metrics.inc("forwarded", kind="silence")
        elif answer.outcome is Outcome.DELIVERED:
            self.metrics.delivered(item.kind, max(time.time() - item.received, 0.0))
            self._note_told(node, body)
        else:
            reason = f"http_{answer.status}" if answer.status else answer.outcome.value
            self.metrics.inc("rejected", reason=reason)
            log.warning("monitor refused %s of node %s (%s); dropped, the node's queue goes on",
                        item.kind, node, answer.reason)
        self.outbox.done(item)
        # A deferred write notifies the node again once it is on disk (a silence has none).
        return not self.outbox.defers_writes or item.kind == "silence"

    def _note_told(self, node: str, body: dict[str, Any]) -> None:
        """Log when what the monitor shows of ``node`` changes (one line per change)."""
        word = body["status"]
        if self._told.get(node) != word:
            self._told[node] = word
            log.info("node %s is %s at the monitor (%s)", node, word, body.get("reason"))

    def _note_v1_silent(self, node: str, reason: str) -> None:
        """Say once per outage that a v1 monitor cannot be told ``node`` is down."""
        if self._told.get(node) != self._values.offline:
            self._told[node] = self._values.offline
            log.info("node %s is down (%s): a v1 monitor cannot be told offline; it finds out "
                     "by its own process scan", node, reason)

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
            "node_id": node, "node_name": name, "timestamp": timestamps.utc_now_iso(),
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
        hung = snapshot.get("not_responding_since")
        if item.kind == "state":
            # A transition is its session's newest word, however long it waited here.
            verdict = truth.liveness(item.state, 0.0, None,  # type: ignore[arg-type]
                                     not_responding_since=hung)
        else:
            verdict = truth.liveness(mark.truth.state_of(item.session) if mark else None,
                                     max(time.time() - item.received, 0.0),
                                     snapshot.get("interval_s", mark and mark.interval_s),
                                     not_responding_since=hung)
        body["status"] = self._values.online if verdict.up else self._values.offline
        body["reason"] = verdict.reason
        if item.kind == "state" or "timestamp" not in body:
            body["timestamp"] = timestamps.iso_from_epoch(item.received)
        if "node_name" not in body:
            body["node_name"] = (mark.node_name if mark else "") or item.node_id
        return body
