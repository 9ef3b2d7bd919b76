"""``yl-status serve`` as a real process, with a real broker and real node processes."""

from __future__ import annotations

import subprocess
import time
import urllib.error
from pathlib import Path
from typing import Any

import psutil
import pytest
from testkit.support import (
    TEST_PASSWORD,
    VIEWER_PASSWORD,
    VIEWER_USER,
    WATCHER_USER,
    answers,
    config_dict,
    http_get,
    serve_config,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_core import timestamps
from yl_status.dev_broker import DevBroker, free_port

pytestmark = pytest.mark.integration


def answer_with(url: str, code: int) -> tuple[int, Any] | None:
    """``url``'s answer if its status is ``code``, else None (to wait on)."""
    answer = http_get(url)
    return answer if answer[0] == code else None


def start_node(tmp_path: Path, broker: DevBroker, name: str = "node") -> object:
    config = write_config(tmp_path / f"{name}.yaml", config_dict(broker))
    return start_process(["node", "-c", str(config)], log_path=tmp_path / f"{name}.log")


def test_health_follows_a_real_node_up_and_killed(tmp_path: Path, broker: DevBroker,
                                                  served: str) -> None:
    assert http_get(served + "/health")[0] == 503
    node = start_node(tmp_path, broker)
    try:
        code, body = wait_until(lambda: answer_with(served + "/health", 200),
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
        code, body = wait_until(lambda: answer_with(served + "/health", 503),
                                timeout=2, what="unhealthy after kill -9")
        assert time.monotonic() - killed < 2
        assert body["reason"] == "lost"
        code, status = http_get(served + "/status")
        assert (code, status["state"], status["up"]) == (503, "lost", False)
        lost_at = timestamps.epoch_from_iso(status["state_changed_at"])
        assert killed_at - 0.1 <= lost_at <= killed_at + 2
        said = timestamps.epoch_from_iso(body["detail"].removeprefix("node lost since "))
        assert abs(said - lost_at) < 0.05
    finally:
        stop_process(node)  # type: ignore[arg-type]


def test_health_says_broker_unreachable_and_recovers(tmp_path: Path, broker: DevBroker,
                                                     served: str) -> None:
    node = start_node(tmp_path, broker)
    try:
        wait_until(lambda: http_get(served + "/health")[0] == 200, timeout=15, what="healthy")
        broker.stop()
        _, body = wait_until(lambda: answer_with(served + "/health", 503),
                             timeout=5, what="unhealthy without broker")
        assert body["reason"] == "unknown", body
        assert body["detail"].startswith("broker unreachable: "), body
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
    from status_app import start_in_background
    from yl_core.config import parse_config

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

    from status_app import start_in_background
    from yl_core.config import parse_config

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


def serve_process(tmp_path: Path, broker: DevBroker, **local: Any) -> tuple[Any, str]:
    port = free_port()
    data = config_dict(broker, local_server={"port": port, **local})
    process = start_process(["serve", "-c", str(write_config(tmp_path / "serve.yaml", data))],
                            log_path=tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(base + "/nodes"), timeout=15, what="status app listening")
    return process, base


def test_without_a_login_the_refusal_says_anonymous_access_is_off(
        tmp_path: Path, broker: DevBroker) -> None:
    process, base = serve_process(tmp_path, broker)
    try:
        _, body = wait_until(
            lambda: (r := http_get(base + "/health"))[1].get("detail", "").startswith(
                "broker unreachable: refused") and r, timeout=10, what="the refusal in /health")
        assert body["reason"] == "unknown", body
        assert "anonymous access is off" in body["detail"], body
    finally:
        stop_process(process)


def test_a_watcher_with_its_own_login_does_not_kick_the_status_app(
        tmp_path: Path, broker: DevBroker, served: str) -> None:
    watcher = subprocess.Popen(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-u", WATCHER_USER,
         "-P", TEST_PASSWORD, "-v", "-t", "yl/ar/nodes/#"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    node = start_node(tmp_path, broker)
    try:
        wait_until(lambda: http_get(served + "/health")[0] == 200, timeout=15, what="healthy")
        assert watcher.stdout is not None
        line = watcher.stdout.readline().decode()
        assert line.startswith("yl/ar/nodes/node-1/"), line
        assert watcher.poll() is None
        for _ in range(10):
            assert http_get(served + "/nodes")[1]["broker"]["connected"] is True
    finally:
        watcher.terminate()
        watcher.wait(5)
        stop_process(node)  # type: ignore[arg-type]


def test_a_killed_serve_leaves_no_worker_behind(tmp_path: Path, broker: DevBroker) -> None:
    process, base = serve_process(tmp_path, broker, mqtt_username=VIEWER_USER,
                                  mqtt_password=VIEWER_PASSWORD)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert workers, "granian runs the app in a worker process"
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == [], [p.cmdline() for p in alive]
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        http_get(base + "/health", timeout=1)
