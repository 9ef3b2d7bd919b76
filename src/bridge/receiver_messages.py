"""What the bridge and its status receiver process say to each other over their socket pair
(pickled): every message one of these types, nothing else.

Its own module, not ``status_receiver``'s: the child runs that one as ``__main__``, and a
class pickled there would not be found by the bridge.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Final, Literal

from bridge.incoming import Received
from yl_core.config import LoggingConfig
from yl_core.link import LinkOptions
from yl_core.protocol import Topics

# --- the bridge to its child ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message: what the child connects with."""

    options: LinkOptions
    topics: Topics
    qos: int
    logging: LoggingConfig
    gated: bool
    """True: the child connects only while the bridge says it may (``Allow``)."""


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


@dataclass(frozen=True, slots=True)
class Barrier:
    """Say ``Passed(number)`` once everything the broker routed to the status session before
    it took this request has been passed on (a SUBSCRIBE to the session's sentinel topic: its
    SUBACK follows what the broker had sent on the connection before it)."""

    number: int


ToChild = Allow | Ack | Reconnect | Stop | Barrier

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
class Passed:
    """Barrier ``number``: every status received before it came in a ``Batch`` before this.
    ``EVERY_BARRIER``: the session caught up with what the broker kept for it, retained
    copies included (every barrier asked for before is passed)."""

    number: int


EVERY_BARRIER: Final = sys.maxsize


FromChild = Batch | SessionEvent | Passed
