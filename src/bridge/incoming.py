"""One incoming message, from the broker session that took it to the outbox: ``Received``,
the one record it travels in, and ``check``, what the bridge makes of it.

The receiver (in its own process) checks every message, so the bridge's process only
records what was already checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from bridge import fast_json
from yl_core import protocol, timestamps
from yl_core.errors import ProtocolError
from yl_core.protocol import StateMessage, Topics


class StatusHead(NamedTuple):
    """What the outbox needs of a valid status besides its raw payload."""

    session: str
    seq: int
    node_name: str
    interval_s: float
    timestamp: float
    """The node's own clock (epoch seconds): forwarded as is, compared only to log skew."""


class Checked(NamedTuple):
    node_id: str | None
    kind: str | None
    """``state``, ``status``, ``rebirth``; None if the topic is not ours."""
    message: StateMessage | StatusHead | None
    """None if rejected, or if there is nothing to record (an empty payload)."""
    reason: str | None = None
    """Why the message was rejected (a metrics label), with ``detail`` for the log."""
    detail: str = ""


def check(topics: Topics, topic: str, payload: bytes) -> Checked:
    node_id: str | None = None
    kind: str | None = None
    try:
        node_id, kind = topics.parse(topic)
        if kind == "rebirth" or not payload:
            return Checked(node_id, kind, None)
        if kind == "state":
            return Checked(node_id, kind, protocol.decode_state(payload))
        status = protocol.status_from_data(fast_json.load_json(payload), node_id=node_id)
        return Checked(node_id, kind, StatusHead(status.session, status.seq, status.node_name,
                                                 status.interval_s,
                                                 timestamps.epoch_from_iso(status.timestamp)))
    except ProtocolError as exc:
        return Checked(node_id, kind, None, exc.reason, str(exc))


@dataclass(frozen=True, slots=True)
class Received:
    """A message as the bridge's broker session took it."""

    connection: int
    """The session's connection number: an acknowledgement for an earlier connection is
    not sent (the broker redelivers on the new one)."""
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float
    """When the bridge took it (wall clock)."""
    retained: bool = False
    """A retained copy (sent on subscribe), not a live message."""
    expiry_left: int | None = None
    """The MQTT 5 message expiry the broker says remains: how long the message waited."""
    checked: Checked | None = None

    def checked_by(self, topics: Topics) -> Received:
        """This message, checked (once)."""
        if self.checked is not None:
            return self
        return Received(self.connection, self.mid, self.qos, self.topic,
                        self.payload, self.received, self.retained, self.expiry_left,
                        check(topics, self.topic, self.payload))

    def __reduce__(self) -> tuple[type[Received], tuple[Any, ...]]:
        """Pickled as its values (the status receiver sends thousands a second): about
        half the cost of the dataclass's own way."""
        return (Received, (self.connection, self.mid, self.qos, self.topic,
                           self.payload, self.received, self.retained, self.expiry_left,
                           self.checked))

    @property
    def sent(self) -> float:
        """When the broker got it (wall clock): it may have waited there, queued or
        retained."""
        message = None if self.checked is None else self.checked.message
        if isinstance(message, StateMessage):
            expiry: float = protocol.STATE_EXPIRY
        elif isinstance(message, StatusHead):
            expiry = protocol.status_expiry(message.interval_s)
        else:
            return self.received
        return self.received - protocol.waited(self.expiry_left, expiry)
