"""A server address that cannot be used is one line naming the key and the address, exit 2,
before any network use; port 0 takes a free port and says which."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.support import answers, start_process, stop_process, wait_until, write_config

from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration


@pytest.fixture
def busy_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    yield holder.getsockname()[1]
    holder.close()


def yl_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yl_status", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_a_busy_metrics_address_is_one_line_and_exit_2(tmp_path: Path, busy_port: int) -> None:
    config = write_config(tmp_path / "bridge.yaml", {
        "mqtt": {"port": 1},
        "bridge": {"outbox_path": str(tmp_path / "outbox.sqlite3"),
                   "metrics": f"127.0.0.1:{busy_port}"}})
    done = yl_status("bridge", "-c", str(config))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "config error: bridge.metrics" in lines[0]
    assert f"127.0.0.1:{busy_port}" in lines[0]
    assert str(config) in lines[0]


def test_a_busy_status_app_port_is_one_line_and_exit_2(tmp_path: Path, busy_port: int) -> None:
    config = write_config(tmp_path / "serve.yaml", {
        "mqtt": {"port": 1}, "local_server": {"port": busy_port}})
    done = yl_status("serve", "-c", str(config))
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if "config error" in line]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "panicked" not in done.stderr
    assert "local_server.port" in lines[0]
    assert f"127.0.0.1:{busy_port}" in lines[0]


def test_port_0_takes_a_free_port_and_logs_it(tmp_path: Path, broker: DevBroker) -> None:
    config = write_config(tmp_path / "serve.yaml", {
        "mqtt": {"host": broker.host, "port": broker.port},
        "local_server": {"port": 0},
        "bridge": {"outbox_path": str(tmp_path / "outbox.sqlite3"),
                   "metrics": "127.0.0.1:0"}})
    serve = start_process(["serve", "-c", str(config)], log_path=tmp_path / "serve.log")
    bridge = start_process(["bridge", "-c", str(config)], log_path=tmp_path / "bridge.log")
    try:
        for log, pattern, route in (
                (tmp_path / "serve.log", r"status app on (http://127\.0\.0\.1:\d+)", "/nodes"),
                (tmp_path / "bridge.log", r"metrics and health on (http://127\.0\.0\.1:\d+)",
                 "/metrics")):
            found = wait_until(lambda lg=log, p=pattern: re.search(p, lg.read_text()),
                               timeout=15, what=f"the address in {log.name}")
            url = found.group(1) + route
            assert not found.group(1).endswith(":0")
            wait_until(lambda u=url: answers(u), timeout=15, what=f"{url} answers")
    finally:
        stop_process(serve)
        stop_process(bridge)
