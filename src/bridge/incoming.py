"""What the bridge makes of one incoming message, before it reaches the outbox.

Used by the bridge for states and by the status receiver (in its own process) for statuses,
so the bridge's process only records what was already checked.
"""

from __future__ import annotations

from typing import NamedTuple

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
        status = protocol.decode_status(payload, node_id=node_id)
        return Checked(node_id, kind, StatusHead(status.session, status.seq, status.node_name,
                                                 status.interval_s,
                                                 timestamps.epoch_from_iso(status.timestamp)))
    except ProtocolError as exc:
        return Checked(node_id, kind, None, exc.reason, str(exc))
