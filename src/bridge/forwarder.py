"""Delivery from the outbox to YL-monitor: the scheduler.

One thread runs an asyncio loop with ``bridge.http_concurrency`` workers, each with its own
keep-alive connection to the monitor: they deliver for several nodes at once, never two
requests for the same node (order per node is kept). Connecting, TLS and reading are
asyncio's, non-blocking, so a slow or silent monitor host holds up only the worker waiting on
it, for at most ``monitor.timeout``; answers are parsed by httptools (llhttp).

A worker does one of two jobs: a delivery of one item of one node (``delivery``), or a look
at the monitor (``monitor_view``; beside the node queue, one at a time, at start, every look
period, and as the only probe while the monitor is failing). Each job is a ``Dialogue``: a
generator that yields the requests it needs and receives their answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from bridge.delivery import NodeDelivery
from bridge.metrics import Metrics
from bridge.monitor_client import Answer, Dialogue, MonitorClient, MonitorConnection, Outcome
from bridge.monitor_view import MonitorView
from bridge.outbox import Outbox
from yl_core.config import Config

log = logging.getLogger(__name__)

TICK = 5.0
"""How often the loop's ticker runs when it has no v1 refresh to do (it does nothing else:
workers wait for a notification or for the next thing due)."""
INACTIVE_POLL = 0.1
"""How often a bridge that may not send (not active) looks again."""
LOOK: Final = object()
"""The job of looking at the monitor (``MonitorView.look``)."""


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
        self.monitor = MonitorView(config, outbox, metrics, self.client, self.notify)
        self.delivery = NodeDelivery(config, outbox, metrics, self.client, self.monitor,
                                     self._defer)
        self._looking = False
        self._v1_refresh = config.monitor.v1_refresh
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
        self._asked = self._answered = time.monotonic()
        """When the watchdog last asked the loop to answer, and when it last did."""
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

    def stalled_for(self) -> float:
        """How long the delivery loop has not answered (seconds; 0.0: it answered the last
        ask, and is asked again). For the bridge's watchdog and health, any thread."""
        now = time.monotonic()
        if self._answered >= self._asked:
            loop = self._loop
            if loop is None:
                return 0.0  # not running yet: nothing to ask
            self._asked = now
            with contextlib.suppress(RuntimeError):  # the loop has ended (``alive`` says so)
                loop.call_soon_threadsafe(self._answer)
            return 0.0
        return now - self._asked

    def _answer(self) -> None:
        self._answered = time.monotonic()

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
        """For a v1 monitor, post the nodes that are up again every ``monitor.v1_refresh``."""
        next_refresh = 0.0
        while True:
            now = time.monotonic()
            v1 = self.monitor.profile == "v1" and self._v1_refresh
            if v1 and now >= next_refresh:
                next_refresh = now + self._v1_refresh
                up = self.outbox.nodes_told("up")
                self.delivery.refresh(up)
                self.notify(up)
            await asyncio.sleep(min(self._v1_refresh, TICK) if v1 else TICK)

    async def _worker(self) -> None:
        connection = MonitorConnection(self.client, self._may_send)
        try:
            while (job := await self._next_job()) is not None:
                if job is LOOK:
                    try:
                        await self._drive(connection, self.monitor.look(),
                                          "looking at the monitor")
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
            monitor = self.monitor
            paused_until = monitor.breaker.paused_until
            if now >= paused_until and not self._looking and \
                    (monitor.profile is None or not monitor.reachable or now >= monitor.look_due):
                self._looking = True
                return LOOK
            if monitor.profile is not None and monitor.reachable and self._ready and \
                    now >= paused_until:
                node = self._ready.popleft()
                self._queued.discard(node)
                self._busy.add(node)
                return node
            due = []
            if paused_until > now:
                due.append(paused_until)
            if not self._looking and monitor.reachable:
                due.append(monitor.look_due)
            if self._deferred:
                due.append(self._deferred[0][0])
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._changed.wait(),
                                       max(min(due) - now, 0.0) if due else None)

    async def _serve(self, connection: MonitorConnection, node: str) -> bool:
        """Run one delivery of ``node``; whether the node has more to deliver."""
        return await self._drive(connection, self.delivery.run(node, not connection.is_open),
                                 f"delivery for node {node}")

    async def _drive(self, connection: MonitorConnection, job: Dialogue, what: str) -> bool:
        answer: Answer | None = None
        try:
            while True:
                try:
                    request = job.send(answer)  # type: ignore[arg-type]
                except StopIteration as finished:
                    return bool(finished.value)
                if self._stopping:
                    job.close()
                    return False
                answer = await connection.exchange(request)
        except Exception:
            log.exception("%s failed unexpectedly", what)
            self.monitor.failed(Answer(Outcome.RETRY, None, "internal error"))
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
    def profile(self) -> str | None:
        """The API the monitor serves (None: not known yet)."""
        return self.monitor.profile

    @property
    def reachable(self) -> bool:
        return self.monitor.reachable

    @property
    def last_problem(self) -> str:
        return self.monitor.last_problem

    @property
    def unknown_nodes(self) -> set[str]:
        """Nodes a v1 monitor does not list: it would answer 200 and store nothing."""
        return self.monitor.unknown_nodes
