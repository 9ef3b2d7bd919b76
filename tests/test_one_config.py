"""One YAML file for every component: the node, the bridge and the status app each log in
with their own keys of it, against the project's broker (no anonymous access)."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit.support import (
    BRIDGE_PASSWORD,
    BRIDGE_USER,
    VIEWER_PASSWORD,
    VIEWER_USER,
    answers,
    config_dict,
    http_get,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_core.config import parse_config
from yl_status.dev_broker import DevBroker, free_port
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration


def test_node_bridge_and_status_app_run_from_one_file(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble) -> None:
    port, metrics = free_port(), free_port()
    config = write_config(tmp_path / "monitor_config.yaml", config_dict(
        broker, "node-1",
        monitor={"url": double.url},
        bridge={"mqtt_username": BRIDGE_USER, "mqtt_password": BRIDGE_PASSWORD,
                "outbox_path": str(tmp_path / "outbox.sqlite3"),
                "metrics": f"127.0.0.1:{metrics}"},
        local_server={"port": port, "mqtt_username": VIEWER_USER,
                      "mqtt_password": VIEWER_PASSWORD}))
    processes = [start_process([command, "-c", str(config)], log_path=tmp_path / f"{command}.log")
                 for command in ("bridge", "serve", "node")]
    try:
        wait_until(lambda: double.is_online("node-1"), timeout=20, what="online at the monitor")
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), timeout=15,
                   what="the status app healthy")
        wait_until(lambda: http_get(f"http://127.0.0.1:{metrics}/healthz")[1].get("ok"),
                   timeout=15, what="the bridge healthy")
    finally:
        for process in reversed(processes):
            assert stop_process(process) == 0


def test_the_bridges_login_falls_back_to_the_older_keys() -> None:
    def login(**sections: dict[str, object]) -> tuple[str, str | None]:
        return parse_config(sections, "<test>").bridge_login()

    assert login(bridge={"mqtt_username": "b1", "mqtt_password": "p1"},
                 mqtt={"username": "gui", "password": "p0"}) == ("b1", "p1")
    assert login(mqtt={"username": "yl-bridge", "password": "p0"}) == ("yl-bridge", "p0")
    assert login(mqtt={"password": "p0"}) == ("yl-bridge", "p0")
    assert login(bridge={"client_id": "b7", "mqtt_password": "p7"}) == ("b7", "p7")
