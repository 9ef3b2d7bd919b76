"""Does the publisher stall the Qt GUI? A timer on the event loop measures its own lateness.

The example ``ARApp`` window runs offscreen while a 5 ms QTimer records how late each tick
is. Scenarios: no publisher (baseline), broker up, broker down (connection refused), broker
black-holed (a TCP server that accepts and never answers), each without and with buttons
clicked 100 times a second. Printed: p50, p99 and max lateness, and the max added over the
baseline with the same clicking.

Run: .venv/bin/python -m bench.qt_stall [--seconds S]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


from PySide6.QtCore import QElapsedTimer, QEventLoop, Qt, QTimer
from PySide6.QtWidgets import QApplication

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    example = load_example()
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
