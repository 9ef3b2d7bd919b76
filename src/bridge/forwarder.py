"""Delivery from the outbox to YL-monitor.

Several worker threads deliver for different nodes at once, never two requests for the same
node (order per node is kept). When the monitor is unreachable or failing, every worker
pauses with jittered exponential backoff (or the monitor's ``Retry-After``), and only one
probe request at a time goes out until it answers again.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from bridge.metrics import Metrics
from bridge.monitor_client import Answer, MonitorClient, Outcome
from bridge.outbox import Item, NodeMark, Outbox
from publisher import protocol
from publisher.config import Config

log = logging.getLogger(__name__)



class Scheduler:
    """Hands nodes with work to workers: round robin, one worker per node at a time."""

    def __init__(self, backoff_initial: float, backoff_max: float) -> None:
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._dirty: set[str] = set()
        self._stopping = False
        self._paused_until = 0.0
        self._failures = 0
        self._probing = False
        self.reachable = True
        self.last_problem = ""
        self._initial = backoff_initial
        self._max = backoff_max

    def notify(self, nodes: Iterable[str]) -> None:
        with self._cond:
            added = 0
            for node in nodes:
                if node in self._busy:
                    self._dirty.add(node)
                elif node not in self._queued:
                    self._queued.add(node)
                    self._ready.append(node)
                    added += 1
            if added:
                self._cond.notify(added)

    def take(self) -> str | None:
        """The next node to serve, or None once stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                wait = self._paused_until - time.monotonic()
                if self._ready and wait <= 0 and not (not self.reachable and self._probing):
                    node = self._ready.popleft()
                    self._queued.discard(node)
                    self._busy.add(node)
                    if not self.reachable:
                        self._probing = True
                    return node
                self._cond.wait(wait if wait > 0 else None)

    def release(self, node: str, again: bool) -> None:
        with self._cond:
            self._busy.discard(node)
            probing, self._probing = self._probing, False
            if again or node in self._dirty:
                self._dirty.discard(node)
                if node not in self._queued:
                    self._queued.add(node)
                    self._ready.append(node)
            if probing:
                self._cond.notify_all()
            elif self._ready:
                self._cond.notify()

    def succeeded(self) -> None:
        with self._cond:
            if not self.reachable:
                log.info("monitor reachable again")
            self._failures = 0
            self.reachable = True
            self.last_problem = ""

    def failed(self, answer: Answer) -> float:
        """Pause everyone; returns the pause."""
        with self._cond:
            self._failures += 1
            ceiling = min(self._max, self._initial * 2 ** min(self._failures - 1, 20))
            pause = random.uniform(ceiling / 2, ceiling)
            if answer.retry_after is not None:
                pause = max(pause, min(answer.retry_after, 300.0))
            if self.reachable:
                log.warning("monitor unavailable (%s); pausing deliveries, retrying with backoff",
                            answer.reason)
            self.reachable = False
            self.last_problem = answer.reason
            self._paused_until = max(self._paused_until, time.monotonic() + pause)
            self._cond.notify_all()
            return pause

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def pending_nodes(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._busy)


class Forwarder:
    def __init__(self, config: Config, outbox: Outbox, metrics: Metrics) -> None:
        self.config = config
        self.outbox = outbox
        self.metrics = metrics
        self.scheduler = Scheduler(0.2, max(config.monitor.retry_delay, 0.5))
        self._values = config.monitor.status_values
        self._nodes_api = config.monitor.profile == "nodes-api"
        self._register_route: bool | None = None
        self._threads = [threading.Thread(target=self._work, name=f"yl-bridge-forward-{i}",
                                          daemon=True)
                         for i in range(config.bridge.http_concurrency)]

    def start(self) -> Forwarder:
        self.scheduler.notify(self.outbox.nodes_with_work())
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float) -> None:
        self.scheduler.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def notify(self, nodes: Iterable[str]) -> None:
        self.scheduler.notify(nodes)

    # --- workers --------------------------------------------------------------------------

    def _work(self) -> None:
        client = MonitorClient(self.config.monitor)
        try:
            while True:
                node = self.scheduler.take()
                if node is None:
                    return
                again = False
                try:
                    again = self._deliver_next(client, node)
                except Exception:
                    log.exception("delivery for node %s failed unexpectedly", node)
                    self.scheduler.failed(Answer(Outcome.RETRY, None, "internal error"))
                    again = True
                finally:
                    self.scheduler.release(node, again)
        finally:
            client.close()

    def _deliver_next(self, client: MonitorClient, node: str) -> bool:
        """Deliver one item of ``node``; True if the node should be scheduled again."""
        item = self.outbox.next_item(node)
        if item is None:
            return False
        mark = self.outbox.mark(node)
        if self._nodes_api and mark is not None and not mark.registered:
            answer = self._register(client, node, mark)
            if answer.outcome is Outcome.RETRY:
                return self._retry(answer)
        body = self._body(item, mark)
        answer = client.heartbeat(node, body)
        if answer.outcome is Outcome.NOT_FOUND and self._nodes_api:
            self.outbox.set_registered(node, False)
            registered = self._register(client, node, mark)
            if registered.outcome is Outcome.RETRY:
                return self._retry(registered)
            answer = client.heartbeat(node, body)
        if answer.outcome is Outcome.RETRY:
            return self._retry(answer)
        self.scheduler.succeeded()
        if answer.outcome is Outcome.DELIVERED:
            self.metrics.delivered(item.kind, max(time.time() - item.received, 0.0))
        else:
            reason = f"http_{answer.status}" if answer.status else answer.outcome.value
            self.metrics.inc("rejected", reason=reason)
            log.warning("monitor refused %s of node %s (%s); dropped, the node's queue goes on",
                        item.kind, node, answer.reason)
        self.outbox.done(item)
        return True

    def _retry(self, answer: Answer) -> bool:
        self.metrics.inc("retries")
        self.scheduler.failed(answer)
        return True

    def _register(self, client: MonitorClient, node: str, mark: NodeMark | None) -> Answer:
        """Make the monitor know ``node`` so its next heartbeat counts.

        A monitor without ``/api/ar/nodes/register`` auto-registers a node on its first
        heartbeat and does not record that heartbeat; then one heartbeat is sent to register.
        """
        name = (mark.node_name if mark else "") or node
        if self._register_route is not False:
            answer = client.register(node, name, protocol.NODE_TYPE)
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
        online = mark is None or mark.state in (None, "ready")
        answer = client.heartbeat(node, {
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
        snapshot: dict[str, Any] = json.loads(item.payload) if item.payload else {}
        state = item.state
        if state is None:
            state = mark.state if mark is not None and mark.state_session == item.session \
                else "ready"
        body: dict[str, Any] = {k: snapshot[k] for k in protocol.HEARTBEAT_FIELDS
                                if k in snapshot}
        body["node_id"] = item.node_id
        body["status"] = self._values.online if state == "ready" else self._values.offline
        body["reason"] = state
        if item.kind == "state" or "timestamp" not in body:
            body["timestamp"] = protocol.iso_from_epoch(item.received)
        if "node_name" not in body:
            body["node_name"] = (mark.node_name if mark else "") or item.node_id
        return body
