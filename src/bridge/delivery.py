"""One item of one node to YL-monitor: the requests it needs, and what its answers mean.

Every request about a node states that node as of the item it carries, with that item's
time; to a monitor that knows the node, one request per item. A node the monitor does not
know is introduced first (its register route, or ``GET /api/ar/nodes/{id}`` and the item
itself once more). A node's requests go forward in time (``_in_time_order``). A v1 monitor
is posted only what it can store: heartbeats of nodes that are up and that it lists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, Final

from bridge.fast_json import decode_json
from bridge.metrics import Metrics
from bridge.monitor_client import Answer, Dialogue, MonitorClient, Outcome
from bridge.monitor_view import MonitorView
from bridge.outbox import Item, NodeMark, Outbox, Told
from yl_core import protocol, timestamps, truth
from yl_core.config import Config
from yl_core.errors import ProtocolError

log = logging.getLogger(__name__)

STAMP_SLACK: Final = 60.0
"""A node's request stamped this little before its previous one is stamped as that one."""


class NodeDelivery:
    """Runs one delivery at a time per node (``run``); the forwarder's thread only."""

    def __init__(self, config: Config, outbox: Outbox, metrics: Metrics,
                 client: MonitorClient, monitor: MonitorView,
                 defer: Callable[[str, float], None]) -> None:
        """``defer(node, delay)``: hand the node out again after ``delay`` seconds."""
        self.outbox = outbox
        self.metrics = metrics
        self.client = client
        self.monitor = monitor
        self._defer = defer
        self._values = config.monitor.status_values
        self._stamped: dict[str, float] = {}
        """The newest time stamped on a request about each node (``_in_time_order``)."""
        self._refresh: set[str] = set()
        """Nodes up at a v1 monitor due to be posted again (``monitor.v1_refresh``)."""

    def refresh(self, nodes: Iterable[str]) -> None:
        """Post these nodes again to a v1 monitor, if nothing newer of them is recorded."""
        self._refresh.update(nodes)

    def run(self, node: str, new_connection: bool = False) -> Dialogue:
        """Deliver one item of ``node``. ``new_connection``: its first request opens a new
        connection to the monitor, which may have restarted since the last one."""
        monitor = self.monitor
        profile = monitor.profile
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
                    return monitor.retry(answer)
                monitor.breaker.delivered()
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
            if up and not monitor.knows(node):
                self.metrics.inc("rejected", reason="unknown_at_monitor")
            elif up:
                return (yield from self._send(item, mark, body))
            else:
                self._tell(node, "down", body, sent=False)
            return not self.outbox.done(item)
        known, asked = mark.registered, False
        if known and new_connection and item.kind != "status":
            # A monitor restarted without its table would take this heartbeat as the node's
            # registration, and not record it: before a transition (or a silence) on a new
            # connection, ask. Not before a status: a monitor that closes idle connections
            # (uvicorn: after 5 s) would make that a second request per heartbeat, and the
            # node's next status is recorded anyway.
            answer = yield self.client.node_request(node)
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return monitor.retry(answer)
            if answer.outcome is Outcome.NOT_FOUND:
                monitor.forgot(node)
                self.outbox.set_registered(node, False)
                known, asked = False, True
        if not known:
            answer = yield from self._introduce(node, mark, body, asked=asked)
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return monitor.retry(answer)
        return (yield from self._send(item, mark, body))

    def _send(self, item: Item, mark: NodeMark, body: dict[str, Any]) -> Dialogue:
        monitor = self.monitor
        node = item.node_id
        request = self.client.heartbeat_request(node, body)
        answer = yield request
        if answer.outcome is Outcome.NOT_FOUND and monitor.profile == "nodes-api":
            # A monitor that refuses heartbeats of nodes it does not know has forgotten it.
            self.outbox.set_registered(node, False)
            introduced = yield from self._introduce(node, mark, body)
            if introduced.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return monitor.retry(introduced)
            answer = yield request
        if answer.outcome in (Outcome.REJECTED, Outcome.NOT_FOUND):
            # Refused: this message's fault, or the monitor's (a wrong URL, a misrouting
            # proxy)? A monitor that fails its own health check keeps everything.
            health = yield self.client.health_request()
            if health.outcome is not Outcome.DELIVERED:
                monitor.register_route = None
                return monitor.retry(Answer(
                    Outcome.RETRY, answer.status,
                    f"monitor refuses deliveries ({answer.reason}) and fails its health "
                    f"check ({health.reason}); check monitor.url and monitor.profile",
                    retry_after=health.retry_after))
        if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
            return monitor.retry(answer)
        monitor.breaker.delivered()
        if answer.outcome is Outcome.DELIVERED:
            self.metrics.delivered(item.kind, max(time.time() - item.received, 0.0))
            up = body["status"] == self._values.online
            self._tell(node, "up" if up else "down", body, sent=True)
        else:
            reason = f"http_{answer.status}" if answer.status else answer.outcome.value
            self.metrics.inc("rejected", reason=reason)
            log.warning("monitor refused %s of node %s (%s); dropped, the node's queue goes on",
                        item.kind, node, answer.reason)
        return not self.outbox.done(item, self._stamped.get(node, 0.0)
                                    if answer.outcome is Outcome.DELIVERED else 0.0)

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

    def _introduce(self, node: str, mark: NodeMark, body: dict[str, Any], *,
                   asked: bool = False) -> Generator[bytes, Answer, Answer]:
        """Make the monitor know ``node``, so that the item ``body`` is recorded when sent.

        Through ``/api/ar/nodes/register`` where the monitor has it; else the monitor is
        asked whether it knows the node (``GET /api/ar/nodes/{id}``), and if not, the item
        itself is sent once more than it would be: a node's first heartbeat registers it and
        is not recorded. Nothing but the item's own state and time is ever sent. ``asked``:
        the monitor just said it does not know the node."""
        monitor = self.monitor
        if monitor.register_route is not False:
            answer = yield self.client.register_request(node, mark.node_name or node,
                                                        protocol.NODE_TYPE)
            if answer.outcome is Outcome.DELIVERED:
                monitor.register_route = True
                self._registered(node)
                return answer
            if answer.outcome in (Outcome.RETRY, Outcome.NOT_ACTIVE):
                return answer
            if answer.outcome is Outcome.REJECTED:
                log.warning("monitor refused to register node %s (%s)", node, answer.reason)
            else:
                if monitor.register_route is None:
                    log.info("monitor has no register route; its nodes register with their "
                             "first heartbeat")
                monitor.register_route = False
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

    def _body(self, item: Item, mark: NodeMark) -> dict[str, Any]:
        """The heartbeat stating the node as of ``item`` (however long it waited)."""
        # The snapshot was validated when it was recorded.
        snapshot: dict[str, Any] = decode_json(item.payload) if item.payload else {}
        body: dict[str, Any] = {k: snapshot[k] for k in protocol.HEARTBEAT_FIELDS
                                if k in snapshot}
        body["node_id"] = item.node_id
        verdict = truth.liveness(item.state, item.status_age, mark.interval_s,
                                 not_responding_since=snapshot.get("not_responding_since"))
        body["status"] = self._values.online if verdict.up else self._values.offline
        body["reason"] = verdict.reason.value
        if item.stamp is not None:
            body["timestamp"] = timestamps.iso_from_epoch(item.stamp)
        elif "timestamp" not in body:
            body["timestamp"] = timestamps.iso_from_epoch(item.received)
        self._in_time_order(body, item.node_id)
        if "node_name" not in body:
            body["node_name"] = mark.node_name or item.node_id
        return body
