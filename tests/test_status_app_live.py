"""``yl-status serve`` as a real process, with a real broker and real node processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from publisher import protocol
from tests.support import (
    config_dict,
    http_get,
    serve_config,
    start_process,
    stop_process,
    wait_until,
    write_config,
)
from yl_status.dev_broker import DevBroker, free_port

pytestmark = pytest.mark.integration


def start_node(tmp_path: Path, broker: DevBroker, name: str = "node") -> object:
    config = write_config(tmp_path / f"{name}.yaml", config_dict(broker))
    return start_process(["node", "-c", str(config)], log_path=tmp_path / f"{name}.log")


def test_health_follows_a_real_node_up_and_killed(tmp_path: Path, broker: DevBroker,
                                                  served: str) -> None:
    assert http_get(served + "/health")[0] == 503
    node = start_node(tmp_path, broker)
    try:
        code, body = wait_until(lambda: (r := http_get(served + "/health"))[0] == 200 and r,
                                timeout=15, what="healthy")
        assert body["status"] == "healthy"
        code, status = http_get(served + "/status")
        assert code == 200
        assert status["node_id"] == "node-1"
        assert "video_running" in status["gui"]
        code, stats = http_get(served + "/stats")
        assert stats["running"] is True
        killed, killed_at = time.monotonic(), time.time()
        node.kill()  # type: ignore[attr-defined]
        node.wait()  # type: ignore[attr-defined]
        code, body = wait_until(lambda: (r := http_get(served + "/health"))[0] == 503 and r,
                                timeout=2, what="unhealthy after kill -9")
        assert time.monotonic() - killed < 2
        assert body["reason"] == "lost"
        code, status = http_get(served + "/status")
        assert (code, status["state"], status["up"]) == (503, "lost", False)
        lost_at = protocol.epoch_from_iso(status["state_changed_at"])
        assert killed_at - 0.1 <= lost_at <= killed_at + 2
        said = protocol.epoch_from_iso(body["detail"].removeprefix("node lost since "))
        assert abs(said - lost_at) < 0.05
    finally:
        stop_process(node)  # type: ignore[arg-type]


def test_health_says_broker_unreachable_and_recovers(tmp_path: Path, broker: DevBroker,
                                                     served: str) -> None:
    node = start_node(tmp_path, broker)
    try:
        wait_until(lambda: http_get(served + "/health")[0] == 200, timeout=15, what="healthy")
        broker.stop()
        _, body = wait_until(lambda: (r := http_get(served + "/health"))[0] == 503 and r,
                             timeout=5, what="unhealthy without broker")
        assert body["reason"] == "broker unreachable"
        assert http_get(served + "/nodes")[1]["broker"]["connected"] is False
        broker.start()
        wait_until(lambda: http_get(served + "/health")[0] == 200, timeout=20,
                   what="healthy again after the broker returns")
    finally:
        stop_process(node)  # type: ignore[arg-type]


def test_real_socket_security_defaults(served: str) -> None:
    code, body = http_get(served + "/nope")
    assert code == 404
    assert body["error"] == "not_found"
    code, _ = http_get(served + "/health", headers={"Host": "rebind.example"})
    assert code == 400


def test_the_gui_can_serve_in_process_with_one_call(broker: DevBroker) -> None:
    from publisher import StatusPublisher
    from publisher.config import parse_config
    from status_app import start_in_background

    config = parse_config(serve_config(broker, free_port()), "<test>")
    publisher = StatusPublisher(config).start()
    server = start_in_background(config)
    try:
        wait_until(lambda: http_get(server.url + "/health")[0] == 200, timeout=10,
                   what="in-process health")
        publisher.update_gui_status(video_running=True)
        wait_until(lambda: http_get(server.url + "/status")[1]["gui"]["video_running"],
                   what="update visible in /status")
    finally:
        server.stop()
        publisher.stop()


def test_an_idle_connection_does_not_block_other_clients(broker: DevBroker) -> None:
    import socket

    from publisher.config import parse_config
    from status_app import start_in_background

    server = start_in_background(parse_config(serve_config(broker, free_port()), "<test>"))
    idle = socket.create_connection((server.host, server.port))
    try:
        for _ in range(20):
            assert http_get(server.url + "/nodes", timeout=2)[0] == 200
    finally:
        idle.close()
        server.stop()


def test_the_publisher_package_does_not_import_web_libraries() -> None:
    import subprocess
    import sys

    probe = ("import sys, publisher; from publisher import StatusPublisher, get_reporter;"
             "bad = {'flask', 'werkzeug', 'waitress', 'requests', 'httpx', 'urllib3', 'status_app',"
             " 'bridge'};"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
