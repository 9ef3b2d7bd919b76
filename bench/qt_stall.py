"""Does the publisher stall the Qt GUI? A timer on the event loop measures its own lateness.

The example ``ARApp`` window runs offscreen while a 5 ms QTimer records how late each tick
is. Scenarios: no publisher (baseline), broker up, broker down (connection refused), broker
black-holed (a TCP server that accepts and never answers), each without and with buttons
clicked 100 times a second. Printed: p50, p99 and max lateness, and the max added over the
baseline with the same clicking.

The liveness part (``--only liveness``) measures the hang detection of the Qt reporter: what
its timer costs the GUI thread (CPU per ``loop_turned``, and the event loop's lateness with
the watch on against off, same run), and, over 20 hangs of the GUI thread, how long after a
hang begins a subscriber sees ``not_responding_since`` and how long after it ends it sees it
cleared.

Run: .venv/bin/python -m bench.qt_stall [--seconds S] [--only stall|liveness]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


from PySide6.QtCore import QElapsedTimer, QEventLoop, Qt, QTimer
from PySide6.QtWidgets import QApplication

from publisher.qt import LOOP_TICK_MS, StatusReporter
from yl_core.config import parse_config
from yl_status.dev_broker import DevBroker, free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TICK_MS = 5


class BlackHole:
    """Accepts TCP connections and never reads or answers."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("ar_app", PROJECT_ROOT / "examples" /
                                                  "ar_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(app: QApplication, window: Any, seconds: float, clicks: bool) -> list[float]:
    late: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def tick() -> None:
        now = clock.nsecsElapsed()
        late.append(max((now - last[0]) / 1e6 - TICK_MS, 0.0))
        last[0] = now

    names = list(window.buttons)
    count = [0]

    def click() -> None:
        window.buttons[names[count[0] % len(names)]].click()
        count[0] += 1

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.timeout.connect(tick)
    clicker = QTimer()
    clicker.setTimerType(Qt.TimerType.PreciseTimer)
    clicker.timeout.connect(click)
    timer.start(TICK_MS)
    if clicks:
        clicker.start(10)
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()
    timer.stop()
    clicker.stop()
    window.log.clear()
    return late[5:]


def summary(late: list[float]) -> tuple[float, float, float]:
    ordered = sorted(late)
    return (ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)], ordered[-1])


HANGS = 20
HANG_AFTER = 1.0
"""The threshold the detection part runs with (the lowest allowed, to keep it short)."""


class StatusWatch:
    """A subscriber noting when each status arrives and whether it says not responding."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[float, bool]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-watch",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set("bench-watch", "pw")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("yl/ar/nodes/+/status", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            hung = "not_responding_since" in json.loads(msg.payload)
            self.seen.append((time.monotonic(), hung))

    def first(self, hung: bool, after: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, said in list(self.seen):
                if at >= after and said is hung:
                    return at - after
            time.sleep(0.001)
        raise SystemExit(f"bench: no status with hung={hung} within {timeout} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cpu_per_turn(window: Any) -> float:
    """Microseconds of CPU one ``loop_turned`` costs the GUI thread."""
    publisher = window.status.publisher
    calls = 200_000
    began = time.thread_time()
    for _ in range(calls):
        publisher.loop_turned()
    return (time.thread_time() - began) / calls * 1e6


def liveness(app: QApplication, example: Any, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = DevBroker(Path(tmp), users={"stall-gui": "pw", "bench-watch": "pw"},
                           extra_acl="user bench-watch\ntopic read yl/ar/#\n").start()
        try:
            config = parse_config({"monitor": {"node_id": "stall-gui",
                                               "gui_hang_after": HANG_AFTER},
                                   "mqtt": {"host": "127.0.0.1", "port": broker.port,
                                            "password": "pw"}}, "<bench>")
            cost: dict[bool, tuple[tuple[float, float, float], float]] = {}
            for watch in (False, True, False, True):
                window = example.ARApp(config)
                window.removeEventFilter(window.status)
                window.status = StatusReporter(config, window, watch_loop=watch)
                window.show()
                deadline = time.monotonic() + 10
                while not window.status.connected and time.monotonic() < deadline:
                    app.processEvents()
                began = time.process_time()
                late = summary(run(app, window, seconds, clicks=False))
                cost[watch] = (late, time.process_time() - began)
                window.close()
            watch_window = example.ARApp(config)
            per_turn = cpu_per_turn(watch_window)
            watch_window.close()
            window = example.ARApp(config)
            window.show()
            watcher = StatusWatch(broker.port)
            deadline = time.monotonic() + 10
            while not window.status.connected and time.monotonic() < deadline:
                app.processEvents()
            detected: list[float] = []
            cleared: list[float] = []
            for _ in range(HANGS):
                settle = QEventLoop()
                QTimer.singleShot(700, settle.quit)
                settle.exec()
                blocked = time.monotonic()
                time.sleep(HANG_AFTER + 1.0)  # the GUI thread blocked, as a stuck slot would
                turned = time.monotonic()
                app.processEvents()
                detected.append(watcher.first(True, blocked))
                cleared.append(watcher.first(False, turned))
                window.log.clear()
            watcher.close()
            window.close()
        finally:
            broker.stop()
    (off_late, off_cpu), (on_late, on_cpu) = cost[False], cost[True]
    print(f"Hang detection of the Qt reporter (timer every {LOOP_TICK_MS} ms):")
    print(f"  loop_turned on the GUI thread: {per_turn:.2f} µs of CPU a call "
          f"(2 calls a second: {per_turn * 2 / 1e4:.5f} % of a core)")
    print(f"  5 ms timer lateness, watch off: p50 {off_late[0]:.2f}  p99 {off_late[1]:.2f}  "
          f"max {off_late[2]:.2f} ms; watch on: p50 {on_late[0]:.2f}  p99 {on_late[1]:.2f}  "
          f"max {on_late[2]:.2f} ms (p99 ratio {on_late[1] / max(off_late[1], 1e-9):.2f})")
    print(f"  process CPU over {seconds:g} s: watch off {off_cpu:.3f} s, on {on_cpu:.3f} s "
          f"(ratio {on_cpu / max(off_cpu, 1e-9):.2f})")
    print(f"  {HANGS} hangs, gui_hang_after {HANG_AFTER:g} s: shown after median "
          f"{statistics.median(detected):.2f} s, max {max(detected):.2f} s "
          f"(minus the threshold: {statistics.median(detected) - HANG_AFTER:.2f} / "
          f"{max(detected) - HANG_AFTER:.2f} s); cleared after median "
          f"{statistics.median(cleared) * 1000:.0f} ms, max {max(cleared) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["stall", "liveness"])
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    example = load_example()
    if args.only in (None, "liveness"):
        liveness(app, example, args.seconds)
    if args.only == "liveness":
        return
    results: dict[tuple[str, bool], tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        broker = DevBroker(Path(tmp), users={"stall-gui": "pw"}).start()
        hole = BlackHole()
        targets = {"broker up": broker.port, "broker down (refused)": free_port(),
                   "broker black-holed": hole.port}
        try:
            for clicks in (False, True):
                config = parse_config({"monitor": {"node_id": "stall-gui"},
                                       "mqtt": {"host": "127.0.0.1", "port": broker.port,
                                                "password": "pw"}}, "<bench>")
                window = example.ARApp(config)
                window.removeEventFilter(window.status)
                window.show()
                results[("no publisher", clicks)] = summary(run(app, window, args.seconds,
                                                                clicks))
                window.close()
                for name, port in targets.items():
                    config = parse_config({"monitor": {"node_id": "stall-gui"},
                                           "mqtt": {"host": "127.0.0.1", "port": port,
                                                    "password": "pw"}}, "<bench>")
                    window = example.ARApp(config)
                    window.status.stop_timeout = 1.0
                    window.show()
                    if name == "broker up":
                        deadline = time.monotonic() + 10
                        while not window.status.connected and time.monotonic() < deadline:
                            app.processEvents()
                    results[(name, clicks)] = summary(run(app, window, args.seconds, clicks))
                    window.close()
        finally:
            hole.close()
            broker.stop()
    print(f"Qt event-loop lateness of a {TICK_MS} ms timer, {args.seconds:g} s per scenario "
          "(ms):")
    print(f"  {'scenario':38} {'p50':>6} {'p99':>6} {'max':>6} {'max added':>10}")
    for (name, clicks), (p50, p99, worst) in results.items():
        base = results[("no publisher", clicks)][2]
        label = name + (", clicks 100/s" if clicks else "")
        added = "" if name == "no publisher" else f"{worst - base:10.2f}"
        print(f"  {label:38} {p50:6.2f} {p99:6.2f} {worst:6.2f} {added}")


if __name__ == "__main__":
    main()
