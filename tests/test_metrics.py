"""``bridge.metrics``: the registry and its HTTP server, over a real socket."""

from __future__ import annotations

from typing import Any

from testkit.support import http_get

from bridge.metrics import GAUGES, Metrics, MetricsServer


def test_counters_gauges_and_lag_are_exported() -> None:
    metrics = Metrics()
    metrics.inc("received", 3, kind="status")
    metrics.inc("coalesced", 0)
    metrics.gauge("nodes_known", lambda: 12.0)
    metrics.delivered("status", 0.02)
    metrics.api("v1")
    text = metrics.render().decode()
    assert 'yl_bridge_received_total{kind="status"} 3.0' in text
    assert "yl_bridge_nodes_known 12.0" in text
    assert 'yl_bridge_forwarded_total{kind="status"} 1.0' in text
    assert "yl_bridge_delivery_lag_seconds_count 1.0" in text
    assert 'yl_bridge_monitor_api{profile="v1"} 1.0' in text
    assert 'yl_bridge_monitor_api{profile="none"} 0.0' in text


def test_an_idle_instance_reads_zero_on_every_gauge_but_its_role() -> None:
    metrics = Metrics()
    metrics.gauge("active", lambda: 0.0)
    metrics.gauge("outbox_statuses", lambda: 9.0)
    metrics.idle()
    text = metrics.render().decode()
    for name in GAUGES:
        assert f"yl_bridge_{name} 0.0" in text, name


def test_the_server_answers_metrics_and_health_and_a_json_404() -> None:
    state: dict[str, Any] = {"ok": True, "problem": ""}
    server = MetricsServer("127.0.0.1:0", Metrics(), lambda: dict(state)).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, text = http_get(base + "/metrics")
        assert code == 200
        assert "yl_bridge_received_total" in text
        assert http_get(base + "/healthz") == (200, state)
        state.update(ok=False, problem="not connected to the broker")
        assert http_get(base + "/healthz") == (503, state)
        assert http_get(base + "/nothing") == (404, {"error": "not_found"})
    finally:
        server.stop()
