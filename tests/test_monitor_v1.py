"""Beside the deployed YL-monitor 1.0.6: its own process scan marks a GUI it cannot see
offline every scan from the third miss on, and a v1 heartbeat brings it back without
resetting the count. The double does the same (a real process scan, at 1 s instead of 10 s);
the share of time the GUI is shown online is measured for each way of starting it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.bridge_process import BridgeProcess
from testkit.support import config_dict, start_process, stop_process, wait_until, write_config

from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble, looks_like_the_gui, process_scan

pytestmark = pytest.mark.integration

SCAN = 1.0
"""The double's scan interval (1.0.6: 10 s); the refresh below is scaled the same way."""
NODE = "node-1"
WINDOW = 4.0


@pytest.fixture
def v1_double() -> Iterator[MonitorDouble]:
    double = MonitorDouble(api="v1", known=(NODE,), scan=process_scan(), scan_interval=SCAN,
                           scan_node=NODE).start()
    yield double
    double.down()


def gui_like(tmp_path: Path, *, seen: bool) -> subprocess.Popen[bytes]:
    """A stand-in for AR Live Studio's process: ``python user/main.py`` from the repository
    root (the scan sees it), or ``cd user; python main.py`` (it does not)."""
    script = tmp_path / "user" / "main.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text("import time\nwhile True:\n    time.sleep(1)\n")
    args, cwd = (["user/main.py"], tmp_path) if seen else (["main.py"], script.parent)
    return subprocess.Popen([sys.executable, *args], cwd=cwd)


@pytest.fixture
def neutral_path() -> Iterator[Path]:
    """A folder whose path the scan cannot mistake for the GUI's (a test's own folder is
    named after the test, ``..._gui_...``, and under a login named ``user`` it would hold
    ``python``, ``user`` and ``gui`` in the node's command line)."""
    folder = Path(tempfile.mkdtemp(prefix="yl-v1-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def share_online(tmp_path: Path, broker: DevBroker, double: MonitorDouble, *, refresh: float,
                 seen: bool) -> float:
    assert not looks_like_the_gui([sys.executable, str(tmp_path)]), tmp_path
    gui = gui_like(tmp_path, seen=seen)
    bridge = BridgeProcess(tmp_path, broker, double, profile="v1", v1_refresh=refresh).start()
    node = start_process(["node", "-c", str(write_config(tmp_path / "node.yaml", config_dict(
        broker, NODE)))], log_path=tmp_path / "node.log")
    try:
        wait_until(lambda: double.heartbeat_total > 0, timeout=15, what="a first heartbeat")
        settled = time.monotonic() + 3.5 * SCAN  # three misses, whatever the phase
        wait_until(lambda: time.monotonic() > settled + WINDOW, timeout=30,
                   what="the measuring window")
        return double.online_share(settled, settled + WINDOW)
    finally:
        assert stop_process(node) == 0
        assert bridge.stop() == 0
        gui.terminate()
        gui.wait(5)


def test_a_gui_the_scan_cannot_see_flaps_without_the_refresh(
        neutral_path: Path, broker: DevBroker, v1_double: MonitorDouble) -> None:
    assert share_online(neutral_path, broker, v1_double, refresh=0, seen=False) < 0.5


def test_the_refresh_keeps_a_gui_the_scan_cannot_see_online(
        neutral_path: Path, broker: DevBroker, v1_double: MonitorDouble) -> None:
    assert share_online(neutral_path, broker, v1_double, refresh=0.2, seen=False) >= 0.75


def test_a_gui_started_from_the_repository_root_is_seen_and_stays_online(
        neutral_path: Path, broker: DevBroker, v1_double: MonitorDouble) -> None:
    assert share_online(neutral_path, broker, v1_double, refresh=0, seen=True) >= 0.95


def test_a_node_that_is_down_is_never_posted(
        tmp_path: Path, broker: DevBroker, v1_double: MonitorDouble) -> None:
    bridge = BridgeProcess(tmp_path, broker, v1_double, profile="v1", v1_refresh=0.2).start()
    node = start_process(["node", "-c", str(write_config(tmp_path / "node.yaml", config_dict(
        broker, NODE)))], log_path=tmp_path / "node.log")
    try:
        first = v1_double.heartbeat_total
        wait_until(lambda: v1_double.heartbeat_total > first + 3, timeout=15,
                   what="refreshed heartbeats")
        node.kill()
        node.wait(5)
        wait_until(lambda: "cannot be told offline" in bridge.log(), timeout=10,
                   what="the bridge saw the node go down")
        after = v1_double.heartbeat_total
        done = time.monotonic() + 10 * 0.2
        wait_until(lambda: time.monotonic() > done, timeout=5, what="ten refresh periods")
        assert v1_double.heartbeat_total == after
    finally:
        stop_process(node)
        assert bridge.stop() == 0


@pytest.mark.parametrize(("cmdline", "counted"), [
    (["python", "user/main.py"], True),
    (["/usr/bin/python3", "/srv/ar/user/main.py", "--fullscreen"], True),
    (["python", "main.py"], False),
    (["/opt/yl-status/.venv/bin/python", "/opt/yl-status/.venv/bin/yl-status", "node",
      "--node-id", "user-gui"], True),
    (["/opt/yl-status/.venv/bin/python", "/opt/yl-status/.venv/bin/yl-status", "serve", "-c",
      "/etc/yl-status/user-gui.yaml"], True),
    (["/opt/yl-status/.venv/bin/python", "/opt/yl-status/.venv/bin/yl-status", "bridge", "-c",
      "/etc/yl-status/yl-status.yaml"], False),
])
def test_the_scan_counts_what_1_0_6_counts_as_the_gui(cmdline: list[str],
                                                       counted: bool) -> None:
    assert looks_like_the_gui(cmdline) is counted
