"""``bridge.incoming``: what the bridge makes of one message before the outbox. Pure."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import replace

from bridge.incoming import Received, StatusHead, check
from yl_core.protocol import (
    ReporterCounters,
    Resources,
    StateMessage,
    StatusMessage,
    Topics,
    encode,
)

TOPICS = Topics()


def status_payload(node: str = "node-1", **overrides: object) -> bytes:
    data = StatusMessage(
        node_id=node, node_name="GUI", timestamp="2026-01-01T00:00:00.000Z", status="running",
        version="1", uptime=1.0, resources=Resources(1.0, 1.0, 1), gui={},
        reporter=ReporterCounters(0, 0, None), session="s1", seq=7, interval_s=5.0).to_dict()
    data.update(overrides)
    return json.dumps(data).encode()


def test_a_status_becomes_its_head() -> None:
    checked = check(TOPICS, TOPICS.status("node-1"), status_payload())
    assert (checked.node_id, checked.kind, checked.reason) == ("node-1", "status", None)
    assert checked.message == StatusHead("s1", 7, "GUI", 5.0, 1767225600.0)


def test_a_state_is_decoded() -> None:
    state = StateMessage(state="lost", session="s1", since="2026-01-01T00:00:00.000Z",
                         node_name="GUI", version="1", interval_s=5.0)
    checked = check(TOPICS, TOPICS.state("node-1"), encode(state))
    assert (checked.kind, checked.message) == ("state", state)


def test_empty_payloads_and_rebirths_record_nothing_and_reject_nothing() -> None:
    for topic, payload in ((TOPICS.state("node-1"), b""),
                           (TOPICS.rebirth("node-1"), b"")):
        checked = check(TOPICS, topic, payload)
        assert (checked.message, checked.reason) == (None, None)


def test_bad_input_is_named_and_never_raises() -> None:
    cases = {
        "topic": ("elsewhere/node-1/status", status_payload()),
        "json": (TOPICS.status("node-1"), b"{not json"),
        "schema": (TOPICS.status("node-1"), status_payload(seq="7")),
        "node_id": (TOPICS.status("node-1"), status_payload("node-2")),
        "too_large": (TOPICS.status("node-1"), b" " * 70_000),
    }
    for reason, (topic, payload) in cases.items():
        checked = check(TOPICS, topic, payload)
        assert (checked.message, checked.reason) == (None, reason), reason
        assert checked.detail


def test_a_received_message_keeps_every_field_through_pickling_and_checking() -> None:
    """It crosses from the status receiver's process pickled; checking it keeps the rest."""
    values: dict[str, object] = {f.name: f"v-{f.name}" for f in dataclasses.fields(Received)}
    values.update(topic=TOPICS.status("node-1"), payload=status_payload(), checked=None)
    message = Received(**values)  # type: ignore[arg-type]
    assert pickle.loads(pickle.dumps(message)) == message  # noqa: S301 (our own bytes)
    checked = message.checked_by(TOPICS)
    assert checked.checked is not None
    assert checked.checked.message == StatusHead("s1", 7, "GUI", 5.0, 1767225600.0)
    assert replace(checked, checked=None) == message
    assert pickle.loads(pickle.dumps(checked)) == checked  # noqa: S301
