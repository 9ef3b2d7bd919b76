"""The newest ``state`` and ``status`` of every node seen on the broker.

Fed by the MQTT subscriber (paho's thread), read by HTTP worker threads; everything goes
through one lock. Parsing (``yl_core.protocol``), ordering (``truth.NodeTruth``: arrival
order, ended sessions stay dead) and liveness (``truth.liveness``) are the core's, the same
rules the bridge applies.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Final

from status_app.node_history import NodeHistory
from yl_core import protocol, timestamps, truth
from yl_core.errors import ProtocolError
from yl_core.protocol import StateMessage, StatusMessage, Topics
from yl_core.truth import Health, Liveness, NodeTruth, Verdict

log = logging.getLogger(__name__)

MAX_NODES = 10_000


@dataclass
class NodeRecord:
    """One node: the truth so far, and the current session's last state and status."""

    node_id: str
    truth: NodeTruth = field(default_factory=NodeTruth)
    state: StateMessage | None = None
    state_at: float = 0.0
    """When the state last changed (the view's clock; for a retained copy, as far as its
    expiry tells how long it waited at the broker)."""
    status: StatusMessage | None = None
    status_raw: bytes = b""
    status_at: float = 0.0
    history: NodeHistory = field(default_factory=NodeHistory)
    state_inferred: bool = False
    """``state`` was made from a status of a session whose own state was not seen yet."""
    claim: tuple[StatusMessage, bytes, float] | None = None
    """A retained status of a session that is not current (status, payload, when it was
    published on the view's clock): taken if
    that session's own state comes, as after a reconnect where a node restarted meanwhile."""


BROKER_UNREACHABLE: Final = "broker unreachable"
"""The view's own condition, not a node's: while it cannot reach the broker, every node's
health is ``unknown`` and the detail says why. A node's ``health`` in ``/nodes``, the page and
``watch`` is a ``truth.Health``; ``online``/``offline`` are the monitor's words, sent to it
only."""


def problems_first(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``describe`` results in an operator's order: every node that is down, longest down
    first; then nodes never seen up; then the rest by id (``/nodes`` answers in this order,
    and the live page keeps it)."""
    def key(node: dict[str, Any]) -> tuple[int, float, str]:
        if node["health"] == Health.READY:
            return 2, 0.0, node["node_id"]
        if node["health"] == Health.UNKNOWN and node.get("down_for_s") is None:
            return 1, 0.0, node["node_id"]
        return 0, -(node.get("down_for_s") or 0.0), node["node_id"]
    return sorted(nodes, key=key)


@dataclass
class NodeView:
    """Thread-safe view of all nodes; ``clock`` is injectable for tests."""

    topics: Topics = field(default_factory=Topics)
    clock: Any = time.monotonic
    wall_clock: Any = time.time
    max_nodes: int = MAX_NODES

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeRecord] = {}
        self._rejected: Counter[str] = Counter()
        self._accepted = 0
        self._stale = 0
        self._broker: tuple[bool, str] = (False, "not connected yet")

    # --- feeding --------------------------------------------------------------------------

    def set_broker(self, connected: bool, reason: str = "") -> None:
        with self._lock:
            self._broker = (connected, reason)

    @property
    def broker(self) -> tuple[bool, str]:
        """Whether the view's broker link is up, and if not, why (read together)."""
        with self._lock:
            return self._broker

    def ingest(self, topic: str, payload: bytes, *, retained: bool = False,
               expiry_left: int | None = None) -> bool:
        """Take one message; returns whether it changed the view. ``retained`` says it is a
        retained copy rather than a live message; ``expiry_left`` is the MQTT 5 message
        expiry the broker says remains, which tells how long it waited there."""
        try:
            node_id, kind = self.topics.parse(topic)
            if kind == "rebirth":
                return False
            if not payload:
                return self._clear(node_id, kind)
            if kind == "state":
                return self._take_state(node_id, protocol.decode_state(payload), retained,
                                        protocol.waited(expiry_left, protocol.STATE_EXPIRY))
            status = protocol.decode_status(payload, node_id=node_id)
            return self._take_status(node_id, status, payload, protocol.waited(
                expiry_left, protocol.status_expiry(status.interval_s)), retained)
        except ProtocolError as exc:
            with self._lock:
                self._rejected[exc.reason] += 1
            log.warning("rejected message on %r: %s", topic[:120], exc)
            return False

    def _record(self, node_id: str) -> NodeRecord | None:
        record = self._nodes.get(node_id)
        if record is None:
            if len(self._nodes) >= self.max_nodes:
                self._rejected["too_many_nodes"] += 1
                return None
            record = self._nodes[node_id] = NodeRecord(node_id)
        return record

    def _take_state(self, node_id: str, state: StateMessage, retained: bool, age: float
                    ) -> bool:
        with self._lock:
            record = self._record(node_id)
            if record is None:
                return False
            verdict, record.truth = record.truth.observe_state(state.session, state.state,
                                                               retained=retained)
            if verdict is Verdict.DUPLICATE and record.state_inferred and \
                    record.state is not None and record.state.session == state.session:
                record.state = replace(state, state=record.state.state)  # the node's own words
                record.state_inferred = False
            if verdict is not Verdict.ACCEPT:
                self._stale += verdict is Verdict.STALE
                return False
            if record.status is not None and record.status.session != state.session:
                record.status, record.status_raw = None, b""
            self._note_silence(record)
            record.state = state
            record.state_inferred = False
            record.state_at = self.clock() - age
            self._note_state(record, Health(state.state), record.state_at)
            self._accepted += 1
            claim, record.claim = record.claim, None
            if claim is not None and claim[0].session == state.session:
                self._status_locked(record, claim[0], claim[1], self.clock() - claim[2],
                                    retained=True)
            return True

    def _take_status(self, node_id: str, status: StatusMessage, raw: bytes, age: float,
                     retained: bool = False) -> bool:
        with self._lock:
            record = self._record(node_id)
            if record is None:
                return False
            return self._status_locked(record, status, raw, age, retained=retained)

    def _status_locked(self, record: NodeRecord, status: StatusMessage, raw: bytes,
                       age: float, *, retained: bool) -> bool:
        verdict, record.truth = record.truth.observe_status(status.session, status.seq,
                                                            retained=retained)
        if verdict is not Verdict.ACCEPT:
            self._stale += verdict is Verdict.STALE
            if retained and status.session != record.truth.session and \
                    status.session not in record.truth.ended:
                record.claim = (status, raw, self.clock() - age)
            return False
        self._note_silence(record)
        if record.state is None or record.state.session != status.session:
            # A status of a session whose ``ready`` has not been seen (it may come later,
            # or never: a retained copy replaced meanwhile): the session is ready, as
            # ``NodeTruth`` says, until its own state says otherwise.
            record.state = StateMessage(
                state=record.truth.state or "ready", session=status.session,
                since=status.timestamp, node_name=status.node_name,
                version=status.version, interval_s=status.interval_s)
            record.state_inferred = True
            record.state_at = self.clock() - age
        elif record.truth.state is not None and record.truth.state != record.state.state:
            record.state = replace(record.state, state=record.truth.state)
            record.state_at = self.clock()
        record.status = status
        record.status_raw = raw
        record.status_at = self.clock() - age
        word = Health(record.truth.state or "ready")
        if word is Health.READY and status.not_responding_since is not None:
            word = Health.NOT_RESPONDING
        self._note_state(record, word, record.status_at)
        record.history.sample(self._wall(record.status_at), status.resources.cpu_percent,
                              status.resources.memory_mb, status.gui)
        self._accepted += 1
        return True

    # --- history (under the lock) ---------------------------------------------------------

    def _wall(self, at: float) -> float:
        """A time on the view's clock as wall-clock seconds."""
        return float(self.wall_clock() - (self.clock() - at))

    def _silent_since(self, record: NodeRecord) -> float | None:
        """When the node's newest status went stale (view's clock), if it has."""
        status = record.status
        if status is None:
            return None
        limit = protocol.stale_after(status.interval_s)
        return record.status_at + limit if self.clock() - record.status_at > limit else None

    def _note_silence(self, record: NodeRecord) -> None:
        """Before a new message: a ready node whose last status had gone stale was stale
        from then until now."""
        silent = self._silent_since(record)
        current = record.history.current()
        if silent is not None and current is not None and current[1] is Health.READY:
            record.history.state(self._wall(silent), Health.STALE)

    def _note_state(self, record: NodeRecord, word: Health, at: float) -> None:
        record.history.state(self._wall(at), word)

    def _clear(self, node_id: str, kind: str) -> bool:
        with self._lock:
            record = self._nodes.get(node_id)
            if record is None:
                return False
            if kind == "state":
                record.state = None
            else:
                record.status, record.status_raw = None, b""
            if record.state is None and record.status is None:
                del self._nodes[node_id]
            return True

    # --- reading --------------------------------------------------------------------------

    def health(self, node_id: str) -> Liveness:
        with self._lock:
            connected, why = self._broker
            if not connected:
                return Liveness(False, Health.UNKNOWN, f"{BROKER_UNREACHABLE}: {why}")
            record = self._nodes.get(node_id)
            if record is None or (record.state is None and record.status is None):
                return Liveness(False, Health.UNKNOWN, f"nothing seen from node {node_id!r}")
            return self._liveness(record)

    def _liveness(self, record: NodeRecord) -> Liveness:
        status, now = record.status, self.clock()
        verdict = truth.liveness(
            record.state.state if record.state else None,
            now - record.status_at if status else None,
            status.interval_s if status else None,
            not_responding_since=status.not_responding_since if status else None)
        if record.state is not None and verdict.reason in (Health.LOST, Health.DISCONNECTED):
            seen = timestamps.iso_from_epoch(self.wall_clock() - (now - record.state_at))
            return Liveness(False, verdict.reason, f"node {verdict.reason} since {seen}")
        return verdict

    def state_change(self, node_id: str) -> tuple[str | None, str | None]:
        """The node's current state and when it changed (ISO-8601, the view's clock; for a
        retained message, as far as its expiry tells how long it waited at the broker)."""
        with self._lock:
            record = self._nodes.get(node_id)
            if record is None or record.state is None:
                return None, None
            changed = self.wall_clock() - (self.clock() - record.state_at)
            return record.state.state, timestamps.iso_from_epoch(changed)

    def status_payload(self, node_id: str) -> bytes | None:
        with self._lock:
            record = self._nodes.get(node_id)
            return record.status_raw if record is not None and record.status_raw else None

    def status(self, node_id: str) -> StatusMessage | None:
        with self._lock:
            record = self._nodes.get(node_id)
            return record.status if record is not None else None

    def node_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def describe(self, node_id: str) -> dict[str, Any] | None:
        health = self.health(node_id)
        with self._lock:
            record = self._nodes.get(node_id)
            if record is None:
                return None
            return self._describe(record, health)

    def describe_all(self) -> list[dict[str, Any]]:
        return [d for d in (self.describe(n) for n in self.node_ids()) if d is not None]

    def _describe(self, record: NodeRecord, health: Liveness) -> dict[str, Any]:
        now, wall = self.clock(), self.wall_clock()
        status = record.status
        age = round(now - record.status_at, 3) if status is not None else None
        down_since = self._down_since(record, health)
        return {
            "node_id": record.node_id,
            "node_name": (status.node_name if status else None) or
                         (record.state.node_name if record.state else ""),
            "health": health.reason,
            "reason": health.reason,
            "state": record.state.state if record.state else None,
            "state_since": record.state.since if record.state else None,
            "state_changed_at": timestamps.iso_from_epoch(wall - (now - record.state_at))
                                if record.state else None,
            "session": record.truth.session,
            "seq": status.seq if status else None,
            "status": status.status if status else None,
            "status_age_s": age,
            "last_seen": timestamps.iso_from_epoch(wall - (now - record.status_at))
                         if status else None,
            "version": (status.version if status else None) or
                       (record.state.version if record.state else None),
            "interval_s": status.interval_s if status else
                          (record.state.interval_s if record.state else None),
            "gui": dict(status.gui) if status else {},
            "resources": status.resources.to_dict() if status else None,
            "uptime": status.uptime if status else None,
            "down_since": timestamps.iso_from_epoch(down_since) if down_since else None,
            "down_for_s": round(wall - down_since, 1) if down_since else None,
            "flaps_1h": record.history.flaps(wall),
        }

    def _down_since(self, record: NodeRecord, health: Liveness) -> float | None:
        """When a node that is down now went down (wall clock)."""
        if health.up:
            return None
        silent = self._silent_since(record)
        current = record.history.current()
        if silent is not None and (current is None or current[1] is Health.READY):
            return self._wall(silent)
        return record.history.down_since()

    def history(self, node_id: str) -> dict[str, Any] | None:
        """The node's last 24 h (``node_history``) and its newest status, as plain data."""
        health = self.health(node_id)
        with self._lock:
            record = self._nodes.get(node_id)
            if record is None:
                return None
            wall = self.wall_clock()
            exported = record.history.export(wall)
            since = self._down_since(record, health)
            timeline = exported["timeline"]
            if health.reason is Health.STALE and since is not None and \
                    (not timeline or timeline[-1]["state"] is not Health.STALE):
                timeline.append({"at": since, "state": Health.STALE})
            for entry in timeline:
                entry["time"] = timestamps.iso_from_epoch(entry["at"])
            return {"node_id": node_id, "now": wall, "health": self._describe(record, health),
                    "timeline": timeline, "samples": exported["samples"],
                    "flag_names": list(record.history.flag_names),
                    "last_status": json.loads(record.status_raw) if record.status_raw else None}

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {"nodes": len(self._nodes), "accepted": self._accepted,
                    "stale_dropped": self._stale, "rejected": dict(self._rejected)}
