"""A hung GUI is not a healthy GUI: real offscreen Qt windows of each binding, a real
mosquitto, bridge and status app, and the monitor double."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit.bridge_process import BridgeProcess
from testkit.support import (
    Recorder,
    config_dict,
    http_get,
    wait_until,
    write_config,
)

from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

HANG_AFTER = 5.0
"""``monitor.gui_hang_after``'s default: the tests run with it."""
BLOCK = 8.0
STATUS = "yl/ar/nodes/node-1/status"

SCRIPT = r"""
import importlib, json, sys, time

binding, config_path, block = sys.argv[1], sys.argv[2], float(sys.argv[3])
widgets = importlib.import_module(binding + ".QtWidgets")
core = importlib.import_module(binding + ".QtCore")
from publisher import load_config
from publisher.qt import StatusReporter


def say(event):
    print(json.dumps({"event": event, "at": time.time()}), flush=True)


def stuck_slot():
    say("blocked")
    time.sleep(block)  # a camera read or a model load on the GUI thread
    say("unblocked")
    core.QTimer.singleShot(2000, app.quit)


def when_connected():
    if not reporter.connected:
        core.QTimer.singleShot(20, when_connected)
        return
    say("connected")
    core.QTimer.singleShot(2000, stuck_slot)


app = widgets.QApplication([])
window = widgets.QMainWindow()
reporter = StatusReporter(load_config(config_path), window)
window.show()
when_connected()
app.exec() if hasattr(app, "exec") else app.exec_()
window.close()
say("closed")
"""


class Window:
    """The script above in a process of its own; its events as they come."""

    def __init__(self, binding: str, config: Path, log: Path) -> None:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, binding, str(config), str(BLOCK)],
            stdout=subprocess.PIPE, stderr=log.open("wb"), env=env, text=True)
        self.events: dict[str, float] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            self.events[event["event"]] = event["at"]

    def wait_for(self, event: str, timeout: float) -> float:
        return wait_until(lambda: self.events.get(event), timeout, f"the window's {event!r}")

    def close(self) -> int:
        try:
            code = self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(5)
        return code


class HealthPoller:
    """``GET /health`` of the status app every 100 ms: (wall time, code) pairs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-poller")
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.1):
            code, _ = http_get(self.url)
            self.samples.append((time.time(), code))

    def codes(self, start: float, end: float) -> list[int]:
        return [code for at, code in self.samples if start <= at < end]

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)


@pytest.mark.parametrize("binding", ["PySide6", "PyQt6", "PyQt5"])
def test_a_slot_that_blocks_the_gui_thread_is_reported_at_once_and_cleared_at_once(
        tmp_path: Path, broker: DevBroker, double: MonitorDouble, bridge: BridgeProcess,
        served: str, binding: str) -> None:
    config = write_config(tmp_path / "gui.yaml", config_dict(
        broker, "node-1", monitor={"report_interval": 1}))
    health = HealthPoller(served + "/health")
    window = Window(binding, config, tmp_path / "window.log")
    try:
        blocked = window.wait_for("blocked", timeout=30)
        online_before = [h for h in double.history("node-1")
                         if h.at < blocked and h.status == "online"]
        assert online_before, "online at the monitor before the block"
        unblocked = window.wait_for("unblocked", timeout=BLOCK + 5)
        hung = [h for h in double.history("node-1")
                if blocked <= h.at and h.reason == "not_responding"]
        assert hung, "the monitor was told offline / not_responding"
        assert hung[0].status == "offline"
        assert hung[0].at - blocked <= HANG_AFTER + 1.0
        assert len(hung) >= 2, "heartbeats went on during the hang"
        assert all(h.at < unblocked + 1.0 for h in hung)
        back = wait_until(lambda: [h for h in double.history("node-1")
                                   if h.at > unblocked and h.status == "online"],
                          timeout=3, what="online again")
        assert back[0].at - unblocked <= 1.0
        wait_until(lambda: health.codes(unblocked + 1.0, float("inf")), timeout=5,
                   what="health samples after the hang")
        assert 503 in health.codes(blocked + HANG_AFTER + 1.5, unblocked)
        assert set(health.codes(unblocked + 1.0, float("inf"))) == {200}
        assert set(health.codes(blocked - 1.0, blocked)) == {200}
    finally:
        health.close()
        assert window.close() == 0


BUSY_SCRIPT = r"""
import json, sys, threading, time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMainWindow, QMessageBox

from publisher import load_config
from publisher.qt import StatusReporter

config_path, seconds = sys.argv[1], float(sys.argv[2])


flooding = threading.Event()


def burn():
    while not flooding.is_set():
        sum(range(1000))


app = QApplication([])
window = QMainWindow()
reporter = StatusReporter(load_config(config_path), window)
window.show()
deadline = time.monotonic() + 15
while not reporter.connected and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
if not reporter.connected:
    sys.exit("the reporter never connected to the broker")
done = threading.Event()


step = 0


def updates():
    global step
    while not done.wait(0.001):
        step += 1
        reporter.update_gui_status(frame=step)


workers = [threading.Thread(target=burn) for _ in range(2)]
workers.append(threading.Thread(target=updates))
started = time.monotonic()
for worker in workers:
    worker.start()
box = QMessageBox(window)
box.setText("Unsaved changes?")


def enough():
    # At least `seconds`, and at least 1,000 updates however busy the machine is (at most
    # a minute): the premise is measured, not assumed.
    spent = time.monotonic() - started
    if (spent >= seconds and step > 1000) or spent >= 60:
        flooding.set()
        box.accept()


check = QTimer()
check.timeout.connect(enough)
check.start(100)
box.exec()
check.stop()
elapsed = time.monotonic() - started
done.set()
for worker in workers:
    worker.join(seconds + 5)
reporter.stop()
window.close()
app.processEvents()
print(json.dumps({"started": started, "elapsed": elapsed, "updates": step}), flush=True)
"""


@pytest.fixture
def recorder(broker: DevBroker) -> Iterator[Recorder]:
    recording = Recorder(broker.host, broker.port, topics=(STATUS,)).start()
    yield recording
    recording.stop()


def test_a_modal_dialog_a_busy_process_and_a_flood_of_updates_are_no_hang(
        tmp_path: Path, broker: DevBroker, recorder: Recorder) -> None:
    """For 10 s at once, in a GUI process of its own: a modal QMessageBox (a nested event
    loop), 100 % CPU in two worker threads, and up to 1,000 ``update_gui_status`` calls a
    second from a third (on a busy machine fewer: the flood goes on until more than 1,000
    got through); with the hang threshold at its lowest (1 s) the node never says it is not
    responding."""
    seconds = 10.0
    config = write_config(tmp_path / "gui.yaml", config_dict(
        broker, "node-1", monitor={"gui_hang_after": 1, "report_interval": 0.5}))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    run = subprocess.run([sys.executable, "-c", BUSY_SCRIPT, str(config), str(seconds)],
                         capture_output=True, text=True, env=env, timeout=100, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["elapsed"] >= seconds * 0.9  # a coarse Qt timer: 5 %
    assert result["updates"] > 1000, f"the flood never reached 1,000 updates: {result}"

    def during() -> list[Any]:
        return [m.json() for m in recorder.on(STATUS) if m.at >= result["started"]]
    wait_until(lambda: max(d["gui"].get("frame", 0) for d in during()) == result["updates"],
               timeout=5, what="the last status, with the final values")
    assert len(during()) >= 10, "statuses went on"
    assert all("not_responding_since" not in d for d in during())
