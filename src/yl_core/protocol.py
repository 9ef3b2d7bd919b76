"""The MQTT contract of yl-status, protocol version 1.

Everything that names a topic or reads or writes a payload goes through this module: topic
builders, the payload dataclasses, strict encoding and decoding, and the node-id rule. It is
pure (no I/O, no paho) so that the publisher, the bridge and the status app agree by
construction.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from yl_core.errors import ProtocolError
from yl_core.timestamps import epoch_from_iso
from yl_core.values import is_finite, is_kind

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
    """Seconds a message waited at the broker (queued or retained) at least, from the MQTT 5
    message expiry it was published with and what the broker says remains; 0 if unknown.

    The broker counts whole seconds on its clock's second boundaries: a message that waited
    a few milliseconds across one shows a second gone, so one second is not counted."""
    if remaining is None or not 0 <= remaining <= expiry:
        return 0.0
    return float(max(expiry - remaining - 1, 0))

MAX_NODE_ID: Final = 64
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


# --- topics -------------------------------------------------------------------------------

TopicKind = Literal["state", "status", "rebirth"]


@dataclass(frozen=True)
class Topics:
    """Topic names under one root (``mqtt.topic_root``)."""

    root: str = DEFAULT_TOPIC_ROOT

    def __post_init__(self) -> None:
        parts = self.root.split("/")
        if not self.root or any(not p or "+" in p or "#" in p for p in parts):
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

    def is_status(self, topic: str) -> bool:
        """Whether ``topic`` names a node's status (cheaper than ``parse``; no check of the
        node id)."""
        return topic.endswith("/status") and topic.startswith(self.root + "/")

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
    """The retained ``status`` heartbeat: the snapshot YL-monitor knows, plus ordering fields.

    ``not_responding_since``: set while the application's main loop has not turned for
    ``monitor.gui_hang_after`` seconds (the GUI is hung while its process and network run):
    when it last turned. ``stalled_since``: per watched pipeline (``StatusPublisher.beat``)
    whose ``<name>_running`` flag is true and whose beats stopped, since when; its
    ``gui.<name>_stalled`` flag says the same. Both are left out of the payload when empty,
    so a node that does not watch its loop reads as it always did (never hung).
    """

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
    not_responding_since: str | None = None
    stalled_since: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {
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
        if self.not_responding_since is not None:
            data["not_responding_since"] = self.not_responding_since
        if self.stalled_since:
            data["stalled_since"] = dict(self.stalled_since)
        return data


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
    data = _load_json_strictly(payload)
    if not isinstance(data, dict):
        raise ProtocolError("schema", f"payload must be a JSON object, not {type(data).__name__}")
    return data


def _load_json_strictly(payload: bytes) -> Any:
    """The standard library's reading, with what it refuses said as a ``ProtocolError``."""
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ProtocolError("json", f"payload is not UTF-8: {exc.reason}") from exc
    except RecursionError as exc:
        raise ProtocolError("json", "payload is nested too deeply") from exc
    except ValueError as exc:
        raise ProtocolError("json", f"payload is not valid JSON: {str(exc)[:120]}") from exc


def _get(data: Mapping[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    """The field ``key``, which must be there, of one of ``kinds``."""
    if key not in data:
        raise ProtocolError("schema", f"missing field {key!r}")
    return _checked(key, data[key], kinds)


def _optional(data: Mapping[str, Any], key: str, kinds: tuple[type, ...],
              default: Any = None) -> Any:
    """The field ``key`` if it is there (of one of ``kinds``), else ``default``."""
    if key not in data:
        return default
    return _checked(key, data[key], kinds)


def _checked(key: str, value: Any, kinds: tuple[type, ...]) -> Any:
    if not is_kind(value, kinds):
        raise ProtocolError("schema", f"field {key!r} must be {_names(kinds)}, "
                                      f"not {type(value).__name__}")
    if not is_finite(value):
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
        node_name=_optional(data, "node_name", (str,), ""),
        version=_optional(data, "version", (str,), ""),
        interval_s=_check_interval(data),
        node_type=_optional(data, "node_type", (str,), NODE_TYPE),
    )


def _check_gui(value: dict[str, Any]) -> dict[str, GuiValue]:
    if len(value) > MAX_GUI_FLAGS:
        raise ProtocolError("schema", f"field 'gui' has more than {MAX_GUI_FLAGS} flags")
    for key in value:
        if not _FLAG_NAME.fullmatch(key):
            raise ProtocolError("schema", f"gui flag name {key[:70]!r} is not an identifier")
        _get(value, key, JSON_SCALARS)
    return dict(value)


def decode_status(payload: bytes, *, node_id: str | None = None) -> StatusMessage:
    """Decode a ``status`` payload; with ``node_id``, it must match the topic's node."""
    return status_from_data(load_json(payload), node_id=node_id)


def status_from_data(data: dict[str, Any], *, node_id: str | None = None) -> StatusMessage:
    """``decode_status`` of a payload already read by ``load_json`` (or a reading that gives
    the same object)."""
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
    reporter = _optional(data, "reporter", (dict,), {})
    last_report = _optional(reporter, "last_report_time", (str, type(None)))
    return StatusMessage(
        node_id=body_id,
        node_name=_optional(data, "node_name", (str,), ""),
        timestamp=timestamp,
        status=status,
        version=_optional(data, "version", (str,), ""),
        uptime=float(uptime),
        resources=Resources(
            cpu_percent=float(_get(resources, "cpu_percent", (int, float))),
            memory_mb=float(_get(resources, "memory_mb", (int, float))),
            threads=_get(resources, "threads", (int,)),
        ),
        gui=_check_gui(_get(data, "gui", (dict,))),
        reporter=ReporterCounters(
            report_count=_optional(reporter, "report_count", (int,), 0),
            error_count=_optional(reporter, "error_count", (int,), 0),
            last_report_time=last_report,
        ),
        session=_check_session(data),
        seq=seq,
        interval_s=_check_interval(data),
        not_responding_since=_check_since(_optional(data, "not_responding_since",
                                                    (str, type(None)))),
        stalled_since=_check_stalled(_optional(data, "stalled_since", (dict,), {})),
    )


def _check_since(value: str | None) -> str | None:
    if value is not None:
        epoch_from_iso(value)
    return value


def _check_stalled(value: dict[str, Any]) -> dict[str, str]:
    if len(value) > MAX_GUI_FLAGS:
        raise ProtocolError("schema", f"field 'stalled_since' has more than {MAX_GUI_FLAGS} "
                                      "entries")
    for key in value:
        if not _FLAG_NAME.fullmatch(key):
            raise ProtocolError("schema", f"pipeline name {key[:70]!r} is not an identifier")
        _check_since(_get(value, key, (str,)))
    return dict(value)


def new_session_id() -> str:
    """A random id for one process start. It carries no time: which session is current is
    decided by arrival order (``NodeTruth``), never by comparing ids or node clocks."""
    return secrets.token_hex(12)
