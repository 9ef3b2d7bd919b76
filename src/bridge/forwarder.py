"""Delivery from the outbox to YL-monitor.

One thread runs an asyncio loop with ``bridge.http_concurrency`` workers, each with its own
keep-alive connection to the monitor: they deliver for several nodes at once, never two
requests for the same node (order per node is kept). Connecting, TLS and reading are
asyncio's, non-blocking, so a slow or silent monitor host holds up only the worker waiting on
it, for at most ``monitor.timeout``; answers are parsed by httptools (llhttp).

A worker does one of two jobs. **Delivering** one item of one node: a generator that yields
the requests it needs and receives their answers. Every request about a node states that
node's state as of the item it carries, with that item's time; to a monitor that knows the
node, one request per item. **Looking** at the monitor (beside the node queue, one at a time):
its node list, which says which API it serves (``monitor.profile: auto``), that it answers,
and which nodes it knows. A look runs at start, every ``self._look_every``, and as the only probe
while the monitor is failing: after an outage nothing is delivered until a look has said
which nodes the monitor still knows (a monitor restarted without its table would take a
known node's next heartbeat as its registration, and not record it). Failures pause
deliveries with jittered exponential backoff (or the monitor's ``Retry-After``).
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
from typing import Any, Final

from bridge.breaker import Breaker
from bridge.fast_json import decode_json
from bridge.metrics import Metrics
from bridge.monitor_client import (
    NODES,
    V1_NODES,
    Answer,
    MonitorClient,
    MonitorConnection,
    Outcome,
    listed_nodes,
)
from bridge.outbox import Item, NodeMark, Outbox, Told
from yl_core import protocol, timestamps, truth
from yl_core.config import Config
from yl_core.errors import ProtocolError

log = logging.getLogger(__name__)

TICK = 1.0
"""The longest the delivery loop waits before looking for work again."""
SILENCE_CHECK = 0.25
"""How often the loop looks for nodes that fell silent (``Outbox.silent_nodes``)."""

INACTIVE_POLL = 0.1
"""How often a bridge that may not send (not active) looks again."""

PROFILES = ("nodes-api", "v1")
"""The APIs ``monitor.profile: auto`` looks for, in this order."""
STAMP_SLACK = 60.0
"""A node's request stamped this little before its previous one is stamped as that one."""
LOOK: Final = object()
"""The job of looking at the monitor (``Forwarder._look``)."""

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
        self._values = config.monitor.status_values
        self._url = config.monitor.url
        self._auto = config.monitor.profile == "auto"
        self.profile: str | None = None if self._auto else config.monitor.profile
        """The API the monitor serves (None: not known yet)."""
        self._looking = False
        self._look_due = 0.0
        """When the monitor is looked at next (at once after an outage)."""
        self._logged_profile: str | None = None
        self._known: set[str] | None = None
        """The nodes a v1 monitor lists (None: its list was not understood)."""
        self.unknown_nodes: set[str] = set()
        """Nodes a v1 monitor does not list: it would answer 200 and store nothing."""
        self._said_knows_none = False
        """A v1 monitor that knows no nodes at all was said to (once, until it knows one)."""
        self.metrics.api(self.profile)
        self._register_route: bool | None = None
        self._v1_refresh = config.monitor.v1_refresh
        self._look_every = config.monitor.look_interval
        """How often the monitor's node list is read again while all is well."""
        self._look_started = 0.0
        self._stamped: dict[str, float] = {}
        """The newest time stamped on a request about each node (``_in_time_order``)."""
        self._shown_otherwise: set[str] = set()
        """Nodes the monitor showed otherwise than told at the last look (logged once)."""
        self._refresh: set[str] = set()
        """Nodes up at a v1 monitor due to be posted again (``monitor.v1_refresh``)."""
        self.breaker = Breaker(0.2, max(config.monitor.retry_delay, 0.5))
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._dirty: set[str] = set()
        self._inbox: deque[Iterable[str]] = deque()
        self._deferred: list[tuple[float, str]] = []
        """(when, node): nodes whose next item may not be sent yet (``Item.counts_from``)."""
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
                up = self.outbox.nodes_told("up")
                self._refresh.update(up)
                self.notify(up)
            await asyncio.sleep(SILENCE_CHECK)

    async def _worker(self) -> None:
        connection = MonitorConnection(self.client, self._may_send)
        try:
            while (job := await self._next_job()) is not None:
                if job is LOOK:
                    try:
                        await self._drive(connection, self._look(), "looking at the monitor")
                    finally:
                        self._looking = False
                        if self._changed is not None:
                            self._changed.set()
                    continue
                assert isinstance(job, str)
                again = True
                try:
                    again = await self._serve(connection, job)
                finally:
                    self._release(job, again)
        finally:
            connection.close()

    async def _next_job(self) -> object | None:
        """``LOOK``, a node to deliver for, or None to stop."""
        assert self._changed is not None
        while True:
            self._take_notifications()
            if self._stopping:
                return None
            if not self._may_send():
                await asyncio.sleep(INACTIVE_POLL)
                continue
            now = time.monotonic()
            paused_until = self.breaker.paused_until
            if now >= paused_until and not self._looking and \
                    (self.profile is None or not self.reachable or now >= self._look_due):
                self._looking = True
                return LOOK
            if self.profile is not None and self.reachable and self._ready and \
                    now >= paused_until:
                node = self._ready.popleft()
                self._queued.discard(node)
                self._busy.add(node)
                return node
            due = [now + TICK]
            if paused_until > now:
                due.append(paused_until)
            if not self._looking and self.reachable:
                due.append(self._look_due)
            if self._deferred:
                due.append(self._deferred[0][0])
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(min(due) - now, 0.0))

    async def _serve(self, connection: MonitorConnection, node: str) -> bool:
        """Run one delivery of ``node``; whether the node has more to deliver."""
        return await self._drive(connection, self._deliver(node, not connection.is_open),
                                 f"delivery for node {node}")

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

    def _release(self, node: str, again: bool) -> None:
        self._busy.discard(node)
        if again or node in self._dirty:
            self._dirty.discard(node)
            if node not in self._queued:
                self._queued.add(node)
                self._ready.append(node)
        if self._changed is not None:
            self._changed.set()

    @property
    def reachable(self) -> bool:
        return self.breaker.reachable

    @property
    def last_problem(self) -> str:
        return self.breaker.last_problem

    def _failed(self, answer: Answer) -> None:
        """Pause all deliveries (not for a bridge that may not send: it waits for its
        lease)."""
        if answer.outcome is Outcome.NOT_ACTIVE:
            return
        if self.breaker.reachable and self._auto:
            self.profile = None  # the monitor that comes back may be another release
        self.breaker.failed(answer.reason, answer.retry_after)

    # --- looking at the monitor ---------------------------------------------------------------

    def _look(self) -> Delivery:
        """Read the monitor's node list: which API it serves (the first of ``PROFILES`` whose
        list answers 2xx, for ``monitor.profile: auto``), that it answers, and which nodes
        it knows."""
        answer = Answer(Outcome.NOT_FOUND, None, "")
        for profile in PROFILES if self.profile is None else (self.profile,):
            self._look_started = time.monotonic()
            answer = yield self.client.nodes_request(profile)
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                self._retry(answer)
                return False
            if answer.outcome is Outcome.DELIVERED:
                self._use(profile)
                self._know(answer)
                return False
        if self.profile is not None:
            # It answers, but not with its node list: deliver without knowing which nodes it
            # knows (each unknown node is asked for, or registered, on its own).
            self.breaker.answered()
            self._look_due = time.monotonic() + self._look_every
            return False
        problem = (f"monitor at {self._url} serves neither the nodes API (GET {NODES}) nor v1 "
                   f"(GET {V1_NODES}): {answer.reason}; check monitor.url")
        if self._logged_profile != "none":
            self._logged_profile = "none"
            log.error("%s; keeping every message until it does", problem)
        self.metrics.api("none")
        self.breaker.reachable = False  # said above, once: not again as "unavailable"
        self._failed(Answer(Outcome.RETRY, answer.status, problem))
        return False

    def _use(self, profile: str) -> None:
        self.profile = profile
        self.client.use_profile(profile)
        self.metrics.api(profile)
        if self._logged_profile != profile:
            self._logged_profile = profile
            log.info("monitor at %s serves the %s API; using it", self._url, profile)

    def _know(self, answer: Answer) -> None:
        """The monitor's node list: the nodes it knows from now on. On the nodes API, a node
        it forgot, or shows otherwise than it was told, is told its current truth again."""
        self.breaker.answered()
        self._look_due = time.monotonic() + self._look_every
        listed = listed_nodes(answer.body)
        if self.profile == "v1":
            self._known = None if listed is None else set(listed)
            if self._known:
                self._said_knows_none = False
        if listed is None:
            log.warning("the monitor's node list (GET %s) has a shape not understood; each "
                        "node is looked up on its own", V1_NODES if self.profile == "v1"
                        else NODES)
        elif self.profile == "nodes-api":
            words: dict[Told, str] = {"up": self._values.online, "down": self._values.offline}
            again = self.outbox.reconcile(listed, words, self._look_started)
            for node in set(again) - self._shown_otherwise:
                log.warning("monitor at %s %s node %s; telling it the node's current truth "
                            "again", self._url, "shows otherwise than it was told of"
                            if node in listed else "no longer lists", node)
            self._shown_otherwise = set(again)
            if again:
                self.metrics.inc("retold", len(again))
                self.notify(again)

    def _knows(self, node: str) -> bool:
        """Whether a v1 monitor lists ``node`` (True when it cannot be told)."""
        if self._known is None or node in self._known:
            self.unknown_nodes.discard(node)
            return True
        if node not in self.unknown_nodes:
            self.unknown_nodes.add(node)
            if self._known:
                log.warning("monitor at %s does not know node %s: it would answer 200 and "
                            "store nothing; add the node to the monitor's node list",
                            self._url, node)
            elif not self._said_knows_none:
                self._said_knows_none = True
                log.warning(
                    "monitor at %s knows no nodes at all, so it would answer 200 and store "
                    "nothing (node %s): its nodes.yaml did not load. YL-monitor 1.0.6 ships "
                    "'host:0.0.0.0' without a space after the colon, which YAML cannot read; "
                    "write 'host: 0.0.0.0' in both of its nodes.yaml files, add the node, and "
                    "restart the monitor", self._url, node)
        return False

    # --- one node's delivery ----------------------------------------------------------------

    def _deliver(self, node: str, new_connection: bool = False) -> Delivery:
        """Deliver one item of ``node``. ``new_connection``: its first request opens a new
        connection to the monitor, which may have restarted since the last one."""
        profile = self.profile
        if profile is None:
            return True  # handed out again once the monitor's API is known
        item = self.outbox.next_item(node)
        refresh = node in self._refresh
        self._refresh.discard(node)
        mark = self.outbox.mark(node)
        if item is None or mark is None:
            if refresh and profile == "v1" and mark is not None and mark.told == "up" and \
                    self.outbox.settled(node):
                # 1.0.6's process scan marks a GUI it cannot see offline every 10 s, and only
                # a heartbeat marks it online again: a node that is up, with nothing newer
                # recorded (a hang, a will) than what made it so, is posted again.
                answer = yield self.client.heartbeat_request(node, {})
                if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                    return self._retry(answer)
                self.breaker.delivered()
                self.metrics.inc("refreshed")
            return False
        wait = item.counts_from - time.time()
        if wait > 0:  # withdrawn if its session is back meanwhile
            self._defer(node, wait)
            return False
        body = self._body(item, mark)
        up = body["status"] == self._values.online
        if profile == "v1":
            # v1 takes any heartbeat as "alive" and cannot be told otherwise: nothing is sent
            # for a node that is down, nor for one the monitor would not store.
            if up and not self._knows(node):
                self.metrics.inc("rejected", reason="unknown_at_monitor")
            elif up:
                return (yield from self._send(item, mark, body))
            else:
                self._tell(node, "down", body, sent=False)
            self.outbox.done(item)
            return not self.outbox.defers_writes or item.kind in ("silence", "retell")
        known, asked = mark.registered, False
        if known and new_connection and item.kind != "status":
            # A monitor restarted without its table would take this heartbeat as the node's
            # registration, and not record it: before a transition (or a silence) on a new
            # connection, ask. Not before a status: a monitor that closes idle connections
            # (uvicorn: after 5 s) would make that a second request per heartbeat, and the
            # node's next status is recorded anyway.
            answer = yield self.client.node_request(node)
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return self._retry(answer)
            if answer.outcome is Outcome.NOT_FOUND:
                log.warning("monitor at %s no longer knows node %s (restarted without its "
                            "nodes?); introducing it again", self._url, node)
                self.outbox.set_registered(node, False)
                self._look_due = 0.0
                known, asked = False, True
        if not known:
            answer = yield from self._introduce(node, mark, body, asked=asked)
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return self._retry(answer)
        return (yield from self._send(item, mark, body))

    def _send(self, item: Item, mark: NodeMark, body: dict[str, Any]) -> Delivery:
        node = item.node_id
        request = self.client.heartbeat_request(node, body)
        answer = yield request
        if answer.outcome is Outcome.NOT_FOUND and self.profile == "nodes-api":
            # A monitor that refuses heartbeats of nodes it does not know has forgotten it.
            self.outbox.set_registered(node, False)
            introduced = yield from self._introduce(node, mark, body)
            if introduced.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return self._retry(introduced)
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
        if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
            return self._retry(answer)
        self.breaker.delivered()
        if answer.outcome is Outcome.DELIVERED:
            self.metrics.delivered(item.kind, max(time.time() - item.received, 0.0))
            up = body["status"] == self._values.online
            self._tell(node, "up" if up else "down", body, sent=True)
        else:
            reason = f"http_{answer.status}" if answer.status else answer.outcome.value
            self.metrics.inc("rejected", reason=reason)
            log.warning("monitor refused %s of node %s (%s); dropped, the node's queue goes on",
                        item.kind, node, answer.reason)
        self.outbox.done(item, self._stamped.get(node, 0.0)
                         if answer.outcome is Outcome.DELIVERED else 0.0)
        # A deferred write notifies the node again once it is on disk (a silence or a
        # retelling has none).
        return not self.outbox.defers_writes or item.kind in ("silence", "retell")

    def _tell(self, node: str, told: Told, body: dict[str, Any], *, sent: bool) -> None:
        """The monitor now shows ``node`` as ``told`` (``up``/``down``); log each change (for
        a v1 monitor, which cannot be told, once per outage)."""
        if self.outbox.mark_told(node, told):
            if sent:
                log.info("node %s is %s at the monitor (%s)", node, body["status"],
                         body.get("reason"))
            else:
                log.info("node %s is down (%s): a v1 monitor cannot be told offline; it finds "
                         "out by its own process scan", node, body.get("reason"))

    def _retry(self, answer: Answer) -> bool:
        if answer.outcome is not Outcome.NOT_ACTIVE:
            self.metrics.inc("retries")
        self._failed(answer)
        return True

    def _introduce(self, node: str, mark: NodeMark, body: dict[str, Any], *,
                   asked: bool = False) -> Generator[bytes, Answer, Answer]:
        """Make the monitor know ``node``, so that the item ``body`` is recorded when sent.

        Through ``/api/ar/nodes/register`` where the monitor has it; else the monitor is
        asked whether it knows the node (``GET /api/ar/nodes/{id}``), and if not, the item
        itself is sent once more than it would be: a node's first heartbeat registers it and
        is not recorded. Nothing but the item's own state and time is ever sent. ``asked``:
        the monitor just said it does not know the node."""
        if self._register_route is not False:
            answer = yield self.client.register_request(node, mark.node_name or node,
                                                        protocol.NODE_TYPE)
            if answer.outcome is Outcome.DELIVERED:
                self._register_route = True
                self._registered(node)
                return answer
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return answer
            if answer.outcome is Outcome.REJECTED:
                log.warning("monitor refused to register node %s (%s)", node, answer.reason)
            else:
                if self._register_route is None:
                    log.info("monitor has no register route; its nodes register with their "
                             "first heartbeat")
                self._register_route = False
        answer = Answer(Outcome.NOT_FOUND, 404, "") if asked else \
            (yield self.client.node_request(node))
        if answer.outcome in (Outcome.NOT_FOUND, Outcome.REJECTED):
            answer = yield self.client.heartbeat_request(node, body)
        if answer.outcome is Outcome.DELIVERED:
            self._registered(node)
        return answer

    def _registered(self, node: str) -> None:
        self.outbox.set_registered(node, True)
        self.metrics.inc("registered")

    def _in_time_order(self, body: dict[str, Any], node: str) -> None:
        """A node's requests go forward in time: a transition is stamped when the broker got
        it, a status by the node, a moment before (its clock, the network); such a step back
        is stamped as the request before it, whichever bridge instance sent that one (the
        outbox keeps the newest the monitor took). A node whose clock is further off than
        ``STAMP_SLACK`` is forwarded as it is (its skew is logged)."""
        try:
            stamp = timestamps.epoch_from_iso(str(body["timestamp"]))
        except ProtocolError:
            return
        before = self._stamped.get(node)
        if before is None:
            before = self._stamped[node] = self.outbox.stamped(node)
        if before - STAMP_SLACK < stamp < before:
            body["timestamp"] = timestamps.iso_from_epoch(before)
            return
        self._stamped[node] = stamp

    def _body(self, item: Item, mark: NodeMark | None) -> dict[str, Any]:
        # The snapshot was validated when it was recorded.
        snapshot: dict[str, Any] = decode_json(item.payload) if item.payload else {}
        body: dict[str, Any] = {k: snapshot[k] for k in protocol.HEARTBEAT_FIELDS
                                if k in snapshot}
        body["node_id"] = item.node_id
        hung = snapshot.get("not_responding_since")
        if item.kind not in ("silence", "retell"):
            # As of the item, however long it waited (a silence is told by its own item); a
            # status with its session's state when it was taken: a later session may be
            # recorded already.
            verdict = truth.liveness(item.state, 0.0, None,  # type: ignore[arg-type]
                                     not_responding_since=hung)
        else:
            verdict = truth.liveness(mark.truth.state_of(item.session) if mark else None,
                                     max(time.time() - item.received, 0.0),
                                     mark.interval_s if mark else None,
                                     not_responding_since=hung)
        body["status"] = self._values.online if verdict.up else self._values.offline
        body["reason"] = verdict.reason.value
        interval = mark.interval_s if mark else None
        if item.kind == "silence" and interval is not None:
            # When it went stale.
            body["timestamp"] = timestamps.iso_from_epoch(
                item.received + protocol.stale_after(interval))
        elif item.kind == "retell":
            body["timestamp"] = timestamps.utc_now_iso()
        elif item.kind == "state" or "timestamp" not in body:
            body["timestamp"] = timestamps.iso_from_epoch(item.received)
        self._in_time_order(body, item.node_id)
        if "node_name" not in body:
            body["node_name"] = (mark.node_name if mark else "") or item.node_id
        return body
