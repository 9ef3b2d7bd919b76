"""The MQTT contract: pure tests, no broker."""

from __future__ import annotations

import json
import re

import pytest

from yl_core import protocol, timestamps
from yl_core.errors import ProtocolError
from yl_core.protocol import (
    ReporterCounters,
    Resources,
    StateMessage,
    StatusMessage,
    Topics,
    decode_state,
    decode_status,
    encode,
)

HOSTILE_IDS = ["..", "%2e%2e", "a/b", "a+b", "#", "", "-lead", "_lead", "nodé", "a b",
               "x" * 65, "a\x00b", ".", "a.b"]


def status(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = StatusMessage(
        node_id="node-1", node_name="GUI", timestamp="2026-01-01T00:00:00.000Z",
        status="running", version="1.0", uptime=12.5,
        resources=Resources(cpu_percent=1.5, memory_mb=100.0, threads=7),
        gui={"video_running": True, "window_active": False},
        reporter=ReporterCounters(3, 0, None), session="0000000001-aa", seq=4, interval_s=30,
    ).to_dict()
    data.update(overrides)
    return data


def raw(data: object) -> bytes:
    return json.dumps(data).encode()


def test_topics_are_built_and_parsed_from_one_root() -> None:
    topics = Topics("site/a")
    assert topics.state("n1") == "site/a/n1/state"
    assert topics.status("n1") == "site/a/n1/status"
    assert topics.rebirth("n1") == "site/a/n1/cmd/rebirth"
    assert topics.all_states == "site/a/+/state"
    assert topics.parse("site/a/n1/status") == ("n1", "status")
    assert topics.parse("site/a/n1/cmd/rebirth") == ("n1", "rebirth")
    assert topics.is_status("site/a/n1/status")
    assert not topics.is_status("site/a/n1/state")
    assert not topics.is_status("site/b/n1/status")


@pytest.mark.parametrize("topic", ["other/n1/state", "yl/ar/nodes/n1/other",
                                   "yl/ar/nodes/../state", "yl/ar/nodes/a/b/state",
                                   "yl/ar/nodes/n1"])
def test_foreign_or_malformed_topics_are_rejected(topic: str) -> None:
    with pytest.raises(ProtocolError):
        Topics().parse(topic)


@pytest.mark.parametrize("root", ["", "a/+/b", "a/#", "a//b", "/a"])
def test_bad_topic_roots_are_rejected(root: str) -> None:
    with pytest.raises(ProtocolError):
        Topics(root)


@pytest.mark.parametrize("node_id", HOSTILE_IDS)
def test_hostile_node_ids_never_make_a_topic(node_id: str) -> None:
    assert not protocol.is_valid_node_id(node_id)
    with pytest.raises(ProtocolError) as err:
        Topics().state(node_id)
    assert err.value.reason == "node_id"


@pytest.mark.parametrize("node_id", ["a", "A-1", "gui_01", "9" * 64])
def test_good_node_ids_are_accepted(node_id: str) -> None:
    assert protocol.check_node_id(node_id) == node_id


def test_state_round_trip() -> None:
    message = StateMessage(state="lost", session="0001-ab", since="2026-01-01T00:00:00.000Z",
                           node_name="GUI", version="1.0", interval_s=30.0)
    decoded = decode_state(encode(message))
    assert decoded == message
    assert json.loads(encode(message))["v"] == protocol.PROTOCOL_VERSION


def test_status_round_trip_keeps_the_heartbeat_field_names() -> None:
    decoded = decode_status(raw(status()), node_id="node-1")
    again = json.loads(encode(decoded))
    assert again == status()
    assert set(protocol.HEARTBEAT_FIELDS) == {"node_id", "node_name", "timestamp", "status",
                                              "version", "uptime", "resources", "gui",
                                              "reporter"}
    assert set(protocol.HEARTBEAT_FIELDS) <= set(again)


def test_a_hung_gui_and_stalled_pipelines_round_trip_and_old_payloads_read_as_responding(
        ) -> None:
    hung = status(not_responding_since="2026-01-01T00:00:05.000Z",
                  stalled_since={"video": "2026-01-01T00:00:04.000Z"})
    decoded = decode_status(raw(hung), node_id="node-1")
    assert decoded.not_responding_since == "2026-01-01T00:00:05.000Z"
    assert decoded.stalled_since == {"video": "2026-01-01T00:00:04.000Z"}
    assert json.loads(encode(decoded)) == hung
    old = decode_status(raw(status()), node_id="node-1")
    assert (old.not_responding_since, dict(old.stalled_since)) == (None, {})
    assert "not_responding_since" not in json.loads(encode(old))
    assert decode_status(raw(status(not_responding_since=None))).not_responding_since is None


@pytest.mark.parametrize("overrides", [
    {"not_responding_since": "yesterday"},
    {"not_responding_since": 5},
    {"stalled_since": {"video": "soon"}},
    {"stalled_since": {"no such name": "2026-01-01T00:00:04.000Z"}},
    {"stalled_since": ["video"]},
])
def test_bad_liveness_fields_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_status(raw(status(**overrides)))
    assert caught.value.reason == "schema"


@pytest.mark.parametrize(("payload", "reason"), [
    (b"{not json", "json"),
    (b"\xff\xfe", "json"),
    (b"[" * 60_000, "json"),
    (b'{"v": NaN}', "json"),
    (b'{"v": Infinity}', "json"),
    (b'{"v": 1, "seq": ' + b"9" * 5000 + b"}", "json"),
    (b"[1, 2]", "schema"),
    (b"x" * (protocol.MAX_PAYLOAD_BYTES + 1), "too_large"),
])
def test_undecodable_payloads_raise_protocol_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_status(payload)
    assert err.value.reason == reason


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"v": 2}, "version"),
    ({"seq": "4"}, "'seq'"),
    ({"seq": True}, "'seq'"),
    ({"seq": -1}, "'seq'"),
    ({"status": "online"}, "'status'"),
    ({"node_id": ".."}, "invalid node id"),
    ({"node_id": "node-2"}, "does not match"),
    ({"resources": {"cpu_percent": 1, "memory_mb": 1, "threads": 1.5}}, "'threads'"),
    ({"gui": {"video": [1]}}, "'video'"),
    ({"gui": {"a b": 1}}, "not an identifier"),
    ({"gui": {f"f{i}": 1 for i in range(40)}}, "more than"),
    ({"timestamp": "yesterday"}, "ISO-8601"),
    ({"session": "a/b"}, "'session'"),
    ({"interval_s": 0}, "'interval_s'"),
    ({"node_name": "x" * 300}, "longer than"),
])
def test_wrong_types_and_values_are_named(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        decode_status(raw(status(**overrides)), node_id="node-1")


@pytest.mark.parametrize("field", ["node_id", "seq", "session", "status", "timestamp",
                                   "resources", "gui", "interval_s", "v"])
def test_missing_required_fields_are_named(field: str) -> None:
    data = status()
    del data[field]
    with pytest.raises(ProtocolError, match=repr(field)):
        decode_status(raw(data))


def test_state_must_be_a_known_word() -> None:
    message = json.loads(encode(StateMessage("ready", "s1", "2026-01-01T00:00:00Z", "n", "1",
                                             30.0)))
    message["state"] = "crashed"
    with pytest.raises(ProtocolError, match="'state'"):
        decode_state(raw(message))


def test_session_ids_are_unique_and_valid() -> None:
    ids = {protocol.new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)


def test_times_are_iso_utc_with_z() -> None:
    stamp = timestamps.utc_now_iso()
    assert stamp.endswith("Z")
    assert abs(timestamps.epoch_from_iso(stamp) - timestamps.epoch_from_iso(
        timestamps.iso_from_epoch(timestamps.epoch_from_iso(stamp)))) < 0.001


def test_the_wait_at_the_broker_counts_whole_seconds_and_never_a_boundary_crossed() -> None:
    expiry = protocol.STATE_EXPIRY
    assert protocol.waited(expiry, expiry) == 0.0
    assert protocol.waited(expiry - 1, expiry) == 0.0  # a few ms across a second boundary
    assert protocol.waited(expiry - 5, expiry) == 4.0
    assert protocol.waited(None, expiry) == 0.0
    assert protocol.waited(expiry + 1, expiry) == 0.0


LONG_KEY = "-" + "k" * 99
FLAGS = {f"f{i}": True for i in range(protocol.MAX_GUI_FLAGS)}
STALLED = {f"p{i}": "2026-01-01T00:00:00.000Z" for i in range(protocol.MAX_GUI_FLAGS)}


@pytest.mark.parametrize(("overrides", "reason", "message"), [
    ({"gui": {**FLAGS, "one_more": True}}, "schema", "field 'gui' has more than 32 flags"),
    ({"gui": {"1st": True}}, "schema", "gui flag name '1st' is not an identifier"),
    ({"gui": {LONG_KEY: True}}, "schema",
     f"gui flag name {LONG_KEY[:70]!r} is not an identifier"),
    ({"gui": {"a": [1]}}, "schema", "field 'a' must be str or int or float or bool or null, "
                                     "not list"),
    ({"gui": []}, "schema", "field 'gui' must be dict, not list"),
    ({"status": "fine"}, "schema", "field 'status' must be one of running, error"),
    ({"seq": 2**53}, "schema", "field 'seq' must be in [0, 2**53)"),
    ({"seq": -1}, "schema", "field 'seq' must be in [0, 2**53)"),
    ({"stalled_since": {**STALLED, "p99": "2026-01-01T00:00:00.000Z"}}, "schema",
     "field 'stalled_since' has more than 32 entries"),
    ({"stalled_since": {LONG_KEY: "2026-01-01T00:00:00.000Z"}}, "schema",
     f"pipeline name {LONG_KEY[:70]!r} is not an identifier"),
    ({"reporter": {"last_report_time": 5}}, "schema",
     "field 'last_report_time' must be str or null, not int"),
])
def test_a_bad_status_is_refused_naming_what_is_wrong(
        overrides: dict[str, object], reason: str, message: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_status(raw(status(**overrides)))
    assert (refused.value.reason, str(refused.value)) == (reason, message)


def test_a_status_of_another_node_than_its_topic_is_refused() -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_status(raw(status()), node_id="node-2")
    assert (refused.value.reason, str(refused.value)) == (
        "node_id", "payload node_id 'node-1' does not match the topic's 'node-2'")


def test_a_non_standard_json_constant_is_refused_by_name() -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_status(b'{"v": NaN}')
    assert str(refused.value) == "payload is not valid JSON: non-standard JSON constant NaN"


def test_a_status_at_the_limits_and_without_its_optional_fields_is_taken() -> None:
    full = decode_status(raw(status(gui=FLAGS, stalled_since=STALLED, seq=2**53 - 1)))
    assert (len(full.gui), len(full.stalled_since), full.seq) == (32, 32, 2**53 - 1)
    bare = status()
    for key in ("reporter", "node_name", "version", "stalled_since"):
        bare.pop(key, None)
    taken = decode_status(raw(bare))
    assert (taken.reporter, taken.node_name, taken.version, taken.stalled_since) == (
        ReporterCounters(0, 0, None), "", "", {})
    no_time = status(reporter={"report_count": 2, "error_count": 1})
    assert decode_status(raw(no_time)).reporter == ReporterCounters(2, 1, None)


def test_a_session_id_is_24_hex_digits_and_new_each_time() -> None:
    first, second = protocol.new_session_id(), protocol.new_session_id()
    assert re.fullmatch(r"[0-9a-f]{24}", first)
    assert first != second


def test_a_bridge_speaks_of_itself_on_topics_and_payloads_of_its_own() -> None:
    assert protocol.bridge_state_topic("br-1") == "yl/ar/bridges/br-1/state"
    assert protocol.bridge_instance_topic("br-1", "a") == "yl/ar/bridges/br-1/instances/a"
    assert protocol.bridge_sentinel_topic("br-1") == "yl/ar/bridges/br-1/sentinel"
    for topic in (protocol.bridge_state_topic, protocol.bridge_sentinel_topic):
        with pytest.raises(ProtocolError):
            topic("a/b")
    with pytest.raises(ProtocolError):
        protocol.bridge_instance_topic("br-1", "#")
    ready = StateMessage(state="ready", session="s1", since="2026-01-01T00:00:00.000Z",
                         node_name="bridge é", version="1", interval_s=30.0)
    state = protocol.encode_bridge_state(ready, role="active", instance="a")
    assert b"\\u" not in state, "text as UTF-8, not escaped"
    assert json.loads(state) == {**ready.to_dict(), "role": "active", "instance": "a"}
    assert decode_state(state) == ready
    assert protocol.encode_bridge_instance("a", "standby", "2026-01-01T00:00:00.000Z") == (
        b'{"v":1,"instance":"a","role":"standby","since":"2026-01-01T00:00:00.000Z"}')


@pytest.mark.parametrize(("name", "valid"), [
    ("video_running", True), ("_x", True), ("a" * 64, True), ("a" * 65, False),
    ("1st", False), ("a-b", False), ("", False), (5, False), (None, False)])
def test_a_flag_name_is_an_identifier(name: object, valid: bool) -> None:
    assert protocol.is_valid_flag_name(name) is valid


def state_data(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = StateMessage(
        state="ready", session="0000000001-aa", since="2026-01-01T00:00:00.000Z",
        node_name="GUI", version="1.0", interval_s=30.0, node_type="gui").to_dict()
    data.update(overrides)
    return data


@pytest.mark.parametrize(("payload", "reason", "message"), [
    (raw(state_data(state="gone")), "schema",
     "field 'state' must be one of ready, disconnected, lost"),
    (raw(state_data(v=2)), "version", "unsupported protocol version 2"),
    (raw({k: v for k, v in state_data().items() if k != "since"}), "schema",
     "missing field 'since'"),
    (raw(state_data(session="a b")), "schema",
     "field 'session' must be 1-64 characters of A-Z a-z 0-9 _ -"),
    (raw(state_data(session="s" * 65)), "schema",
     "field 'session' must be 1-64 characters of A-Z a-z 0-9 _ -"),
    (raw(state_data(interval_s=0)), "schema", "field 'interval_s' must be in (0, 86400]"),
    (raw(state_data(interval_s=86400.5)), "schema", "field 'interval_s' must be in (0, 86400]"),
    (raw(state_data(node_name="n" * 257)), "schema",
     "field 'node_name' is longer than 256 characters"),
    (raw(state_data(interval_s=12345.5)).replace(b"12345.5", b"1e400"), "schema",
     "field 'interval_s' must be finite"),
    (b"[1]", "schema", "payload must be a JSON object, not list"),
    (b"null", "schema", "payload must be a JSON object, not NoneType"),
    (b"\xff", "json", "payload is not UTF-8: invalid start byte"),
    (b"[" * 60_000, "json", "payload is nested too deeply"),
    (b"{", "json", "payload is not valid JSON: Expecting property name enclosed in double "
                   "quotes: line 1 column 2 (char 1)"),
    (b" " * (protocol.MAX_PAYLOAD_BYTES + 1), "too_large",
     f"payload of {protocol.MAX_PAYLOAD_BYTES + 1} bytes exceeds {protocol.MAX_PAYLOAD_BYTES}"),
])
def test_a_bad_state_is_refused_naming_what_is_wrong(payload: bytes, reason: str,
                                                     message: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_state(payload)
    assert (refused.value.reason, str(refused.value)) == (reason, message)


def test_a_state_at_the_limits_and_without_its_optional_fields_is_taken() -> None:
    full = state_data(interval_s=86400, node_name="n" * 256, session="s" * 64, node_type="x")
    taken = decode_state(raw(full))
    assert (taken.interval_s, len(taken.node_name), taken.node_type) == (86400.0, 256, "x")
    assert decode_state(raw(state_data(interval_s=0.5))).interval_s == 0.5
    bare = state_data()
    for key in ("node_name", "version", "node_type"):
        bare.pop(key)
    taken = decode_state(raw(bare))
    assert (taken.node_name, taken.version, taken.node_type) == ("", "", protocol.NODE_TYPE)
    assert protocol.load_json(b" " * (protocol.MAX_PAYLOAD_BYTES - 2) + b"{}") == {}


def test_messages_go_out_as_compact_utf_8_and_come_back_the_same() -> None:
    message = StatusMessage(
        node_id="node-1", node_name="Régie", timestamp="2026-01-01T00:00:00.000Z",
        status="running", version="1.0", uptime=12.5,
        resources=Resources(cpu_percent=1.5, memory_mb=100.0, threads=7), gui={"a": True},
        reporter=ReporterCounters(3, 2, "2026-01-01T00:00:00.000Z"), session="s1", seq=4,
        interval_s=30.0)
    payload = encode(message)
    assert "Régie".encode() in payload
    assert b", " not in payload
    assert b": " not in payload
    assert decode_status(payload) == message
    state = StateMessage(state="lost", session="s1", since="2026-01-01T00:00:00.000Z",
                         node_name="Régie", version="1", interval_s=30.0, node_type="gui-x")
    assert decode_state(encode(state)) == state
    bridge_state = protocol.encode_bridge_state(state, role="active", instance="a")
    assert b", " not in bridge_state
    assert "Régie".encode() in bridge_state
    with pytest.raises(ValueError, match="Out of range float"):
        encode(StatusMessage(**{**message.__dict__, "uptime": float("nan")}))
    with pytest.raises(ValueError, match="Out of range float"):
        protocol.encode_bridge_state(
            StateMessage(**{**state.__dict__, "interval_s": float("inf")}),
            role="active", instance="a")


def test_a_message_too_large_to_send_is_refused_before_it_goes_out() -> None:
    big = StatusMessage(
        node_id="node-1", node_name="GUI", timestamp="2026-01-01T00:00:00.000Z",
        status="running", version="1.0", uptime=1.0, resources=Resources(1.0, 1.0, 1),
        gui={f"f{i}": "x" * 3000 for i in range(30)},
        reporter=ReporterCounters(0, 0, None), session="s1", seq=1, interval_s=30.0)
    with pytest.raises(ProtocolError) as refused:
        encode(big)
    size = len(json.dumps(big.to_dict(), separators=(",", ":")))
    assert (refused.value.reason, str(refused.value)) == (
        "too_large", f"payload of {size} bytes exceeds {protocol.MAX_PAYLOAD_BYTES}")


@pytest.mark.parametrize(("root", "valid"), [
    ("yl/ar/nodes", True), ("", False), ("a//b", False), ("a/+/b", False), ("a/#", False),
    ("a/x+y", False), ("a/x#y", False)])
def test_a_topic_root_is_plain_levels(root: str, valid: bool) -> None:
    if valid:
        assert Topics(root).root == root
        return
    with pytest.raises(ProtocolError) as refused:
        Topics(root)
    assert (refused.value.reason, str(refused.value)) == ("topic",
                                                           f"invalid topic root {root!r}")


def test_a_foreign_topic_is_refused_naming_it_shortened() -> None:
    long_topic = "x/" + "y" * 200
    with pytest.raises(ProtocolError) as refused:
        Topics().parse(long_topic)
    assert (refused.value.reason, str(refused.value)) == (
        "topic", f"topic {long_topic[:120]!r} is not under 'yl/ar/nodes'")
    unknown = "yl/ar/nodes/n1/" + "z" * 200
    with pytest.raises(ProtocolError) as refused:
        Topics().parse(unknown)
    assert (refused.value.reason, str(refused.value)) == (
        "topic", f"unknown topic {unknown[:120]!r}")


def test_an_invalid_node_id_is_refused_with_the_rule() -> None:
    with pytest.raises(ProtocolError) as refused:
        protocol.check_node_id("a b")
    assert (refused.value.reason, str(refused.value)) == (
        "node_id", "invalid node id 'a b': 1-64 characters of A-Z a-z 0-9 _ -, starting with "
                   "a letter or digit")


@pytest.mark.parametrize(("remaining", "expiry", "waited"), [
    (None, 90, 0.0), (90, 90, 0.0), (89, 90, 0.0), (88, 90, 1.0), (0, 90, 89.0),
    (-1, 90, 0.0), (91, 90, 0.0)])
def test_how_long_a_message_waited_is_read_from_its_expiry(
        remaining: int | None, expiry: float, waited: float) -> None:
    assert protocol.waited(remaining, expiry) == waited


def test_a_status_expires_after_three_intervals_and_never_before_a_second() -> None:
    assert protocol.status_expiry(30.0) == 90
    assert protocol.status_expiry(0.1) == 1
    assert protocol.status_expiry(0.4) == 1
    assert protocol.status_expiry(0.5) == 2


def test_a_message_of_exactly_the_largest_size_goes_out() -> None:
    def sized(pad: int) -> StatusMessage:
        return StatusMessage(
            node_id="node-1", node_name="GUI", timestamp="2026-01-01T00:00:00.000Z",
            status="running", version="1.0", uptime=1.0, resources=Resources(1.0, 1.0, 1),
            gui={"note": "x" * pad}, reporter=ReporterCounters(0, 0, None), session="s1",
            seq=1, interval_s=30.0)
    base = len(encode(sized(0)))
    assert len(encode(sized(protocol.MAX_PAYLOAD_BYTES - base))) == protocol.MAX_PAYLOAD_BYTES
    with pytest.raises(ProtocolError):
        encode(sized(protocol.MAX_PAYLOAD_BYTES - base + 1))
