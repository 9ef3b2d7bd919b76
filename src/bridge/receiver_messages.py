"""What the bridge and its receiver process say to each other over their socket pair
(pickled): every message one of these types, nothing else.

Its own module, not ``status_receiver``'s: the child runs that one as ``__main__``, and a
class pickled there would not be found by the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge.incoming import Received
from yl_core.config import LoggingConfig
from yl_core.link import LinkOptions
from yl_core.protocol import Topics

# --- the bridge to its child ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presence:
    """The bridge's own retained ``state``: ``ready`` published on every connect,
    ``goodbye`` (``disconnected``) on a clean stop; the link's will says ``lost``."""

    topic: str
    ready: bytes
    goodbye: bytes


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message: what the child connects with."""

    options: LinkOptions
    topics: Topics
    qos: int
    logging: LoggingConfig
    gated: bool
    """True: the child connects only while the bridge says it may (``Allow``)."""
    presence: Presence | None = None


@dataclass(frozen=True, slots=True)
class Allow:
    until: float
    """Until when (``time.monotonic()``, the machine's clock both processes read) the child
    may connect: an active bridge's lease deadline."""


@dataclass(frozen=True, slots=True)
class Ack:
    connection: int
    messages: list[tuple[int, int]]
    """``(mid, qos)`` of messages received on that connection, now committed."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    timeout: float
    goodbye: bool = True
    """Publish the presence's ``goodbye`` before disconnecting (not when fenced)."""


@dataclass(frozen=True, slots=True)
class Publish:
    """A retained QoS 1 message of the bridge's own (an active/standby instance's state)."""

    topic: str
    payload: bytes


ToChild = Allow | Ack | Reconnect | Stop | Publish

# --- the child to the bridge ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    messages: list[Received]


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """``up`` (connected), ``caught_up`` (with what the broker kept for the session,
    retained copies included), ``missed`` (statuses may have been missed: the retained ones
    are read again), ``down``, ``alive`` (said every second whatever else),
    ``stopped``."""

    what: Literal["up", "caught_up", "missed", "down", "alive", "stopped"]


@dataclass(frozen=True, slots=True)
class Unread:
    """What the broker does not let the session read, as far as the messages it sent tell
    (``problem``; empty once both kinds come)."""

    problem: str


FromChild = Batch | SessionEvent | Unread
