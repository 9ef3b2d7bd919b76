"""The bridge's HTTP client: how monitor answers are classified, over a real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.monitor_client import Answer, MonitorClient, Outcome, encode_json
from yl_core.config import parse_config
from yl_status.monitor_double import MonitorDouble


@pytest.fixture
def double() -> Iterator[MonitorDouble]:
    d = MonitorDouble(token="s3cret").start()
    yield d
    d.down()


def client_for(double: MonitorDouble, token: str | None = "s3cret",
               profile: str = "nodes-api") -> MonitorClient:
    monitor: dict[str, object] = {"url": double.url, "timeout": 2, "profile": profile}
    if token:
        monitor["token"] = token
    return MonitorClient(parse_config({"monitor": monitor}, "<test>").monitor)


def beat(node: str = "gui-1") -> dict[str, str]:
    return {"node_id": node, "status": "online", "timestamp": "2026-01-01T00:00:00Z"}


def test_delivered_rejected_and_not_found(double: MonitorDouble) -> None:
    client = client_for(double)
    assert heartbeat(client, "gui-1", beat()).outcome is Outcome.DELIVERED
    wrong = heartbeat(client, "gui-1", beat("gui-2"))
    assert wrong.outcome is Outcome.REJECTED
    assert wrong.status == 400
    assert "does not match" in wrong.reason
    assert client.request("GET", "/api/ar/nodes/nobody").outcome is Outcome.NOT_FOUND
    assert client.perform(client.health_request()).body["status"] == "healthy"


def test_overload_and_errors_are_retried_with_retry_after(double: MonitorDouble) -> None:
    client = client_for(double)
    double.fail_with(429, retry_after=7)
    answer = heartbeat(client, "gui-1", beat())
    assert answer.outcome is Outcome.RETRY
    assert answer.retry_after == 7
    double.fail_with(503)
    assert heartbeat(client, "gui-1", beat()).outcome is Outcome.RETRY
    double.fail_with(None)
    assert heartbeat(client, "gui-1", beat()).outcome is Outcome.DELIVERED


def test_a_wrong_token_is_retried_not_dropped(double: MonitorDouble) -> None:
    client = client_for(double, token="wrong")
    answer = heartbeat(client, "gui-1", beat())
    assert answer.outcome is Outcome.RETRY
    assert answer.status == 401


def test_a_dead_monitor_is_a_retry_and_a_new_connection_follows(
        double: MonitorDouble) -> None:
    client = client_for(double)
    assert heartbeat(client, "gui-1", beat()).outcome is Outcome.DELIVERED
    double.down()
    down = heartbeat(client, "gui-1", beat())
    assert down.outcome is Outcome.RETRY
    assert down.status is None
    double.start()
    assert heartbeat(client, "gui-1", beat()).outcome is Outcome.DELIVERED


def test_hostile_node_ids_never_make_a_url(double: MonitorDouble) -> None:
    client = client_for(double)
    for bad in ("..", "%2e%2e", "a/b"):
        with pytest.raises(Exception, match="invalid node id"):
            heartbeat(client, bad, beat(bad))
    assert double.request_count() == 0


def test_v1_profile_uses_the_query_parameter(double: MonitorDouble) -> None:
    client = client_for(double, profile="v1")
    assert heartbeat(client, "gui-1", {"ignored": True}).outcome is Outcome.DELIVERED
    assert double.request_count("/api/v1/ar/heartbeat?node_id=gui-1") == 1


def test_encode_json_writes_what_the_standard_library_reads() -> None:
    value = {"big": 10**30, "f": 0.1, "s": "é", "l": [1, None, True]}
    assert json.loads(encode_json(value)) == value


def heartbeat(client: MonitorClient, node_id: str, body: dict[str, Any]) -> Answer:
    return client.perform(client.heartbeat_request(node_id, body))
