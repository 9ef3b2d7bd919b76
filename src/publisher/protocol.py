"""The MQTT contract of yl-status, protocol version 1.

Everything that names a topic or reads or writes a payload goes through this module: topic
builders, the payload dataclasses, strict encoding and decoding, and the node-id rule. It is
pure (no I/O, no paho) so that the publisher, the bridge and the status app agree by
construction.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Final, Literal

from publisher.errors import ProtocolError

PROTOCOL_VERSION: Final = 1
MQTT_QOS: Final = 1
DEFAULT_TOPIC_ROOT: Final = "yl/ar/nodes"
BRIDGES_ROOT: Final = "yl/ar/bridges"
NODE_TYPE: Final = "user-gui"
MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_GUI_FLAGS: Final = 32
HEARTBEAT_FIELDS: Final = ("node_id", "node_name", "timestamp", "status", "version", "uptime",
                           "resources", "gui", "reporter")
"""The heartbeat snapshot YL-monitor knows; a ``status`` adds ordering fields to it."""
EXPIRY_FACTOR: Final = 3
"""A retained status expires after this many report intervals (MQTT 5 message expiry)."""
STATE_EXPIRY: Final = 10 * 365 * 86400
"""The message expiry of every ``state`` (will included): never reached, but a broker
counts it down while the message waits, so a consumer can tell how long it waited."""


def stale_after(interval_s: float) -> float:
    """Seconds after which a node's newest status no longer says it is up."""
    return EXPIRY_FACTOR * interval_s


def status_expiry(interval_s: float) -> int:
    """The MQTT 5 message expiry of a ``status`` (whole seconds, at least 1)."""
    return max(1, round(stale_after(interval_s)))


def waited(remaining: int | None, expiry: float) -> float:
    """Seconds a message waited at the broker (queued or retained), from the MQTT 5 message
    expiry it was published with and what the broker says remains; 0 if unknown."""
    if remaining is None or not 0 <= remaining <= expiry:
        return 0.0
    return float(expiry - remaining)

NODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_FLAG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_TEXT = 256

State = Literal["ready", "disconnected", "lost"]
STATES: Final[tuple[str, ...]] = ("ready", "disconnected", "lost")
NodeStatus = Literal["running", "error"]
NODE_STATUSES: Final[tuple[str, ...]] = ("running", "error")
GuiValue = str | int | float | bool | None
JSON_SCALARS: Final = (str, int, float, bool, type(None))
DEFAULT_GUI_FLAGS: Final[Mapping[str, GuiValue]] = {
    "window_active": False,
    "video_running": False,
    "audio_running": False,
    "face_loaded": False,
}


def is_valid_node_id(node_id: object) -> bool:
    return isinstance(node_id, str) and NODE_ID_PATTERN.fullmatch(node_id) is not None


def is_valid_flag_name(name: object) -> bool:
    return isinstance(name, str) and _FLAG_NAME.fullmatch(name) is not None


def check_node_id(node_id: object) -> str:
    """Return ``node_id`` if it follows the node-id rule, else raise ``ProtocolError``."""
    if not is_valid_node_id(node_id):
        raise ProtocolError(
            "node_id",
            f"invalid node id {node_id!r}: 1-64 characters of A-Z a-z 0-9 _ -, "
            "starting with a letter or digit",
        )
    assert isinstance(node_id, str)
    return node_id


def utc_now_iso() -> str:
    """Now as ISO-8601 UTC with milliseconds and a ``Z`` suffix."""
    return iso_from_epoch(datetime.now(timezone.utc).timestamp())


def iso_from_epoch(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_from_iso(text: str) -> float:
    """Parse an ISO-8601 time; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProtocolError("schema", f"not an ISO-8601 time: {text[:40]!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


# --- topics -------------------------------------------------------------------------------

TopicKind = Literal["state", "status", "rebirth"]


@dataclass(frozen=True)
class Topics:
    """Topic names under one root (``mqtt.topic_root``)."""

    root: str = DEFAULT_TOPIC_ROOT

    def __post_init__(self) -> None:
        parts = self.root.split("/")
        if not self.root or any(not p or p in ("+", "#") or "+" in p or "#" in p for p in parts):
            raise ProtocolError("topic", f"invalid topic root {self.root!r}")

    def state(self, node_id: str) -> str:
        return f"{self.root}/{check_node_id(node_id)}/state"

    def status(self, node_id: str) -> str:
        return f"{self.root}/{check_node_id(node_id)}/status"

    def rebirth(self, node_id: str) -> str:
        return f"{self.root}/{check_node_id(node_id)}/cmd/rebirth"

    @property
    def all_states(self) -> str:
        return f"{self.root}/+/state"

    @property
    def all_statuses(self) -> str:
        return f"{self.root}/+/status"

    @property
    def all_nodes(self) -> str:
        """Every node's state and status (and anything else one level down)."""
        return f"{self.root}/+/+"

    def parse(self, topic: str) -> tuple[str, TopicKind]:
        """Split a topic into ``(node_id, kind)``; raise ``ProtocolError`` if it is not ours."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            raise ProtocolError("topic", f"topic {topic[:120]!r} is not under {self.root!r}")
        rest = topic[len(prefix):].split("/")
        kinds: dict[tuple[str, ...], TopicKind] = {
            ("state",): "state",
            ("status",): "status",
            ("cmd", "rebirth"): "rebirth",
        }
        kind = kinds.get(tuple(rest[1:]))
        if kind is None:
            raise ProtocolError("topic", f"unknown topic {topic[:120]!r}")
        return check_node_id(rest[0]), kind


def bridge_state_topic(client_id: str) -> str:
    return f"{BRIDGES_ROOT}/{check_node_id(client_id)}/state"


def bridge_instance_topic(client_id: str, instance: str) -> str:
    """One of several bridge instances sharing an outbox: ``active``, ``standby`` or
    ``lost``, kept by the active one (a standby holds no broker session)."""
    return f"{BRIDGES_ROOT}/{check_node_id(client_id)}/instances/{check_node_id(instance)}"


def bridge_sentinel_topic(client_id: str) -> str:
    """A topic nothing is published to: the SUBACK of a subscription to it marks the end of
    the retained copies sent for an earlier subscription."""
    return f"{BRIDGES_ROOT}/{check_node_id(client_id)}/sentinel"


# --- payloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StateMessage:
    """The retained ``state`` of a node: ready on connect, disconnected, or lost (last will)."""

    state: State
    session: str
    since: str
    node_name: str
    version: str
    interval_s: float
    node_type: str = NODE_TYPE
    v: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "state": self.state,
            "session": self.session,
            "since": self.since,
            "node_name": self.node_name,
            "node_type": self.node_type,
            "version": self.version,
            "interval_s": self.interval_s,
        }


@dataclass(frozen=True)
class Resources:
    cpu_percent: float
    memory_mb: float
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_percent": self.cpu_percent, "memory_mb": self.memory_mb,
                "threads": self.threads}


@dataclass(frozen=True)
class ReporterCounters:
    report_count: int
    error_count: int
    last_report_time: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"report_count": self.report_count, "error_count": self.error_count,
                "last_report_time": self.last_report_time}


@dataclass(frozen=True)
class StatusMessage:
    """The retained ``status`` heartbeat: the snapshot YL-monitor knows, plus ordering fields."""

    node_id: str
    node_name: str
    timestamp: str
    status: NodeStatus
    version: str
    uptime: float
    resources: Resources
    gui: Mapping[str, GuiValue]
    reporter: ReporterCounters
    session: str
    seq: int
    interval_s: float
    v: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "node_id": self.node_id,
            "node_name": self.node_name,
            "timestamp": self.timestamp,
            "status": self.status,
            "version": self.version,
            "uptime": self.uptime,
            "resources": self.resources.to_dict(),
            "gui": dict(self.gui),
            "reporter": self.reporter.to_dict(),
            "session": self.session,
            "seq": self.seq,
            "interval_s": self.interval_s,
        }


def encode(message: StateMessage | StatusMessage) -> bytes:
    data = json.dumps(message.to_dict(), separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("too_large", f"payload of {len(data)} bytes exceeds "
                                         f"{MAX_PAYLOAD_BYTES}")
    return data


def encode_bridge_state(message: StateMessage, *, role: str, instance: str) -> bytes:
    """A bridge's ``state`` with the ``role`` and ``instance`` of the active one of several
    instances sharing an outbox."""
    data = {**message.to_dict(), "role": role, "instance": instance}
    return json.dumps(data, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode("utf-8")


def encode_bridge_instance(instance: str, role: str, since: str) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "instance": instance, "role": role,
                       "since": since}, separators=(",", ":")).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def load_json(payload: bytes) -> dict[str, Any]:
    """Strict JSON object decoding for untrusted payloads.

    Rejects oversized input, invalid UTF-8, ``NaN``/``Infinity``, absurd nesting and huge
    integers with a ``ProtocolError`` instead of the assorted exceptions ``json`` raises.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("too_large",
                            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ProtocolError("json", f"payload is not UTF-8: {exc.reason}") from exc
    except RecursionError as exc:
        raise ProtocolError("json", "payload is nested too deeply") from exc
    except ValueError as exc:
        raise ProtocolError("json", f"payload is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("schema", f"payload must be a JSON object, not {type(data).__name__}")
    return data


def _get(data: Mapping[str, Any], key: str, kinds: tuple[type, ...], *,
         required: bool = True, default: Any = None) -> Any:
    if key not in data:
        if required:
            raise ProtocolError("schema", f"missing field {key!r}")
        return default
    value = data[key]
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError("schema", f"field {key!r} must be {_names(kinds)}, not bool")
    if not isinstance(value, kinds):
        raise ProtocolError("schema", f"field {key!r} must be {_names(kinds)}, "
                                      f"not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError("schema", f"field {key!r} must be finite")
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise ProtocolError("schema", f"field {key!r} is longer than {_MAX_TEXT} characters")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def _check_version(data: Mapping[str, Any]) -> None:
    version = _get(data, "v", (int,))
    if version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"unsupported protocol version {version!r}")


def _check_session(data: Mapping[str, Any]) -> str:
    session = _get(data, "session", (str,))
    if not _SESSION.fullmatch(session):
        raise ProtocolError("schema", "field 'session' must be 1-64 characters of A-Z a-z 0-9 _ -")
    return str(session)


def _check_interval(data: Mapping[str, Any]) -> float:
    interval = _get(data, "interval_s", (int, float))
    if not 0 < interval <= 86400:
        raise ProtocolError("schema", "field 'interval_s' must be in (0, 86400]")
    return float(interval)


def decode_state(payload: bytes) -> StateMessage:
    data = load_json(payload)
    _check_version(data)
    state = _get(data, "state", (str,))
    if state not in STATES:
        raise ProtocolError("schema", f"field 'state' must be one of {', '.join(STATES)}")
    since = _get(data, "since", (str,))
    epoch_from_iso(since)
    return StateMessage(
        state=state,
        session=_check_session(data),
        since=since,
        node_name=_get(data, "node_name", (str,), required=False, default=""),
        version=_get(data, "version", (str,), required=False, default=""),
        interval_s=_check_interval(data),
        node_type=_get(data, "node_type", (str,), required=False, default=NODE_TYPE),
    )


def _check_gui(value: object) -> dict[str, GuiValue]:
    if not isinstance(value, dict):
        raise ProtocolError("schema", "field 'gui' must be an object")
    if len(value) > MAX_GUI_FLAGS:
        raise ProtocolError("schema", f"field 'gui' has more than {MAX_GUI_FLAGS} flags")
    for key in value:
        if not _FLAG_NAME.fullmatch(key):
            raise ProtocolError("schema", f"gui flag name {key[:70]!r} is not an identifier")
        _get(value, key, JSON_SCALARS)
    return dict(value)


def decode_status(payload: bytes, *, node_id: str | None = None) -> StatusMessage:
    """Decode a ``status`` payload; with ``node_id``, it must match the topic's node."""
    data = load_json(payload)
    _check_version(data)
    body_id = _get(data, "node_id", (str,))
    check_node_id(body_id)
    if node_id is not None and body_id != node_id:
        raise ProtocolError("node_id", f"payload node_id {body_id!r} does not match the "
                                       f"topic's {node_id!r}")
    status = _get(data, "status", (str,))
    if status not in NODE_STATUSES:
        raise ProtocolError("schema", f"field 'status' must be one of {', '.join(NODE_STATUSES)}")
    seq = _get(data, "seq", (int,))
    if not 0 <= seq < 2**53:
        raise ProtocolError("schema", "field 'seq' must be in [0, 2**53)")
    timestamp = _get(data, "timestamp", (str,))
    epoch_from_iso(timestamp)
    uptime = _get(data, "uptime", (int, float))
    resources = _get(data, "resources", (dict,))
    reporter = _get(data, "reporter", (dict,), required=False, default={})
    last_report = _get(reporter, "last_report_time", (str, type(None)), required=False)
    return StatusMessage(
        node_id=body_id,
        node_name=_get(data, "node_name", (str,), required=False, default=""),
        timestamp=timestamp,
        status=status,
        version=_get(data, "version", (str,), required=False, default=""),
        uptime=float(uptime),
        resources=Resources(
            cpu_percent=float(_get(resources, "cpu_percent", (int, float))),
            memory_mb=float(_get(resources, "memory_mb", (int, float))),
            threads=_get(resources, "threads", (int,)),
        ),
        gui=_check_gui(_get(data, "gui", (dict,))),
        reporter=ReporterCounters(
            report_count=_get(reporter, "report_count", (int,), required=False, default=0),
            error_count=_get(reporter, "error_count", (int,), required=False, default=0),
            last_report_time=last_report,
        ),
        session=_check_session(data),
        seq=seq,
        interval_s=_check_interval(data),
    )


def new_session_id() -> str:
    """A random id for one process start. It carries no time: which session is current is
    decided by arrival order (``NodeTruth``), never by comparing ids or node clocks."""
    return secrets.token_hex(12)


# --- node truth ---------------------------------------------------------------------------

MAX_ENDED_SESSIONS: Final = 32
"""Ended or superseded sessions remembered per node: a broker restored from an older save
can bring back the retained state of any of them."""
TERMINAL_STATES: Final = frozenset({"disconnected", "lost"})
LOST_HOLD: Final = 0.75
"""Seconds a ``lost`` waits before it counts. When a second process takes a node id over,
the broker publishes the first one's will just before the newcomer's ``ready``, and a process
kicked by a rival is back within half a second; a will followed within this time by the node
(or its replacement) is withdrawn instead of showing the node offline for a moment."""


class Verdict(Enum):
    ACCEPT = "accept"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True)
class NodeTruth:
    """What the messages seen so far say about one node, in the order they arrived.

    ``session`` is the current session: the last one seen that had not ended. ``state`` is its
    last state (a status implies ``ready``, which a node publishes first) and ``seq`` its
    newest status (-1: none).
    ``ended`` lists sessions that are over, oldest first: stopped (``disconnected``), or
    superseded when a message of another session arrived. An ended session never comes
    back, whatever its id, its clock or a restored broker says.

    ``lost`` (the broker's last will) does not end a session: the same process may reconnect
    (a network outage, a broker restart). It comes back with a live ``ready``, or a newer
    status that arrived in order; a retained ``ready`` alone may be a broker's restored copy
    and does not count.

    Statuses received apart from the states (``in_order=False``: the bridge reads them on a
    session of their own) may run ahead of them: a status of a session the states have not
    reached yet is held as ``ahead`` (session, seq) and ends nothing; the states decide, in
    their own order, when that session takes over.
    """

    session: str | None = None
    state: State | None = None
    seq: int = -1
    ended: tuple[str, ...] = ()
    ahead: tuple[str, int] | None = None

    def observe_state(self, session: str, state: State, *, retained: bool = False
                      ) -> tuple[Verdict, NodeTruth]:
        """``retained``: the message is a retained copy (sent on subscribe), not live."""
        if session in self.ended:
            return Verdict.STALE, self
        if session == self.session:
            if state == self.state:
                return Verdict.DUPLICATE, self
            if self.state == "lost" and state == "ready" and retained:
                return Verdict.STALE, self
            return Verdict.ACCEPT, replace(self, state=state,
                                           ended=_bounded(self.ended, session, state))
        ahead: tuple[str, int] | None = self.ahead
        seq = -1
        if ahead is not None and ahead[0] == session:
            seq, ahead = ahead[1], None
        return Verdict.ACCEPT, NodeTruth(session, state, seq,
                                         _bounded(self._superseded(), session, state), ahead)

    def observe_status(self, session: str, seq: int, *, in_order: bool = True
                       ) -> tuple[Verdict, NodeTruth]:
        """``in_order``: statuses and states arrive in one ordered stream, as one MQTT
        subscription gets them.

        A newer status of the current session counts even after it stopped or was lost (the
        last ones may come after the state); in order, after ``lost``, it says the node is
        back."""
        if session in self.ended and session != self.session:
            return Verdict.STALE, self
        if self.ahead is not None and session == self.ahead[0]:
            return _newer(seq, self.ahead[1], self, replace(self, ahead=(session, seq)))
        if session == self.session:
            if self.ahead is not None:
                return Verdict.STALE, self  # a later session's status came first
            back = in_order and self.state == "lost"
            return _newer(seq, self.seq, self,
                          replace(self, state="ready" if back else self.state, seq=seq))
        if not in_order:
            return Verdict.ACCEPT, replace(self, ahead=(session, seq))
        # A node publishes ``ready`` before its first status; that one may still be on its way.
        return Verdict.ACCEPT, NodeTruth(session, "ready", seq, self._superseded())

    @property
    def newest_status(self) -> tuple[str, int] | None:
        """``(session, seq)`` of the newest status taken (one ahead of the states first)."""
        if self.ahead is not None:
            return self.ahead
        if self.session is not None and self.seq >= 0:
            return self.session, self.seq
        return None

    def state_of(self, session: str) -> State | None:
        """The state of ``session`` as far as is known (a session ahead is ``ready``)."""
        if session == self.session:
            return self.state
        if self.ahead is not None and session == self.ahead[0]:
            return "ready"
        return None

    def _superseded(self) -> tuple[str, ...]:
        if self.session is None or self.session in self.ended:
            return self.ended
        return (*self.ended, self.session)[-MAX_ENDED_SESSIONS:]


def _newer(seq: int, held: int, current: NodeTruth, accepted: NodeTruth
           ) -> tuple[Verdict, NodeTruth]:
    if seq == held:
        return Verdict.DUPLICATE, current
    if seq < held:
        return Verdict.STALE, current
    return Verdict.ACCEPT, accepted


def _bounded(ended: tuple[str, ...], session: str, state: State) -> tuple[str, ...]:
    if state != "disconnected":
        return ended
    return (*ended, session)[-MAX_ENDED_SESSIONS:]


@dataclass(frozen=True)
class Liveness:
    """Whether a node is up, and if not, why: ``ready``, ``disconnected``, ``lost``,
    ``stale`` (no fresh status) or ``unknown`` (no state)."""

    up: bool
    reason: str
    detail: str = ""


def liveness(state: State | None, status_age: float | None, interval_s: float | None,
             state_age: float | None = None) -> Liveness:
    """The one rule of "up": the current session is ``ready`` and its newest word is younger
    than ``EXPIRY_FACTOR`` report intervals. ``status_age`` is in seconds (None: nothing heard
    from the session); without ``interval_s`` no age is too old. A ``lost`` younger than
    ``LOST_HOLD`` (``state_age``) does not count yet."""
    if state == "lost" and state_age is not None and state_age < LOST_HOLD:
        state = "ready"
    if state in TERMINAL_STATES:
        return Liveness(False, str(state))
    if status_age is None:
        return Liveness(False, "stale", "no status received")
    limit = None if interval_s is None else stale_after(interval_s)
    if limit is not None and status_age > limit:
        return Liveness(False, "stale", f"last status {status_age:.1f} s ago (limit {limit:g} s)")
    if state is None:
        return Liveness(False, "unknown", "no state received")
    return Liveness(True, "ready")
