"""Cost of StatusPublisher for the GUI that embeds it.

Measures, in one run:
- ``update_gui_status`` per call (median, p99, max) against the original design's
  lock-and-dict-update, with the broker up, refused (down) and black-holed;
- RSS the publisher adds to the host process (started and connected);
- CPU an idle connected publisher uses per hour.

Run: .venv/bin/python -m bench.publisher [--calls N] [--idle-seconds S]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# This script shares its name with the package it measures: keep its folder off the path.
from publisher import StatusPublisher
from yl_core.config import parse_config
from yl_status.dev_broker import DevBroker, free_port


class OriginalReporter:
    """The original design: a lock and a dict the heartbeat thread reads every 30 s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.gui_status: dict[str, Any] = {"window_active": False, "video_running": False,
                                           "audio_running": False, "face_loaded": False}

    def update_gui_status(self, **kwargs: Any) -> None:
        with self._lock:
            self.gui_status.update(kwargs)


def measure(update: Any, calls: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    samples = [0] * calls
    for i in range(calls):
        value = bool(i & 1)
        started = clock()
        update(video_running=value)
        samples[i] = clock() - started
    samples.sort()
    return {"median_us": samples[calls // 2] / 1000, "p99_us": samples[int(calls * 0.99)] / 1000,
            "max_us": samples[-1] / 1000}


def config(port: int, node_id: str = "bench-node") -> Any:
    return parse_config({"monitor": {"node_id": node_id},
                         "mqtt": {"host": "127.0.0.1", "port": port, "password": "pw"}},
                        "<bench>")


def update_cost(calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = DevBroker(Path(tmp), users={"bench-node": "pw"}).start()
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        cases: dict[str, Any] = {"original lock+dict": OriginalReporter()}
        publishers = {
            "broker up": StatusPublisher(config(broker.port)).start(),
            "broker down (refused)": StatusPublisher(config(free_port())).start(),
            "broker black-holed": StatusPublisher(config(hole.getsockname()[1])).start(),
        }
        deadline = time.monotonic() + 10
        while not publishers["broker up"].connected and time.monotonic() < deadline:
            time.sleep(0.01)
        cases.update(publishers)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        try:
            for _ in range(rounds):
                for name, target in cases.items():
                    results[name].append(measure(target.update_gui_status, calls))
        finally:
            for publisher in publishers.values():
                publisher.stop(1.0)
            hole.close()
            broker.stop()
    summary = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
               for name, runs in results.items()}
    base = summary["original lock+dict"]
    print(f"update_gui_status, {calls} calls x {rounds} rounds (median of rounds), µs:")
    print(f"  {'case':24} {'median':>8} {'p99':>8} {'max':>9} {'median ratio':>13} "
          f"{'p99 ratio':>10}")
    for name, row in summary.items():
        print(f"  {name:24} {row['median_us']:8.3f} {row['p99_us']:8.3f} {row['max_us']:9.1f} "
              f"{row['median_us'] / base['median_us']:13.2f} "
              f"{row['p99_us'] / base['p99_us']:10.2f}")


_PROBE = r"""
import json, os, sys, time, psutil
proc = psutil.Process()
mode, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
before = proc.memory_info().rss
if mode == "publisher":
    from publisher import StatusPublisher
    from yl_core.config import parse_config
    cfg = parse_config({"monitor": {"node_id": "bench-idle", "report_interval": 30},
                        "mqtt": {"host": "127.0.0.1", "port": port, "password": "pw"}}, "b")
    p = StatusPublisher(cfg).start()
    end = time.monotonic() + 10
    while not p.connected and time.monotonic() < end:
        time.sleep(0.01)
    p.update_gui_status(video_running=True)
    time.sleep(0.5)
rss = proc.memory_info().rss
cpu0 = proc.cpu_times(); t0 = time.monotonic()
time.sleep(seconds)
cpu1 = proc.cpu_times(); t1 = time.monotonic()
used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
print(json.dumps({"rss_added_mb": (rss - before) / 2**20, "cpu_s": used, "wall_s": t1 - t0}))
if mode == "publisher":
    p.stop()
"""


def host_cost(idle_seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = DevBroker(Path(tmp), users={"bench-idle": "pw"}).start()
        try:
            out = {}
            for mode in ("bare", "publisher"):
                run = subprocess.run([sys.executable, "-c", _PROBE, mode, str(broker.port),
                                      str(idle_seconds)], capture_output=True, text=True,
                                     check=True)
                out[mode] = json.loads(run.stdout.strip().splitlines()[-1])
        finally:
            broker.stop()
    added = out["publisher"]["rss_added_mb"] - out["bare"]["rss_added_mb"]
    idle = max(out["publisher"]["cpu_s"] - out["bare"]["cpu_s"], 0.0)
    per_hour = idle / out["publisher"]["wall_s"] * 3600
    print(f"CPU over {idle_seconds:.0f} s: bare interpreter {out['bare']['cpu_s']:.3f} s, "
          f"with an idle publisher {out['publisher']['cpu_s']:.3f} s")
    print(f"RSS added to the host process (import + start + connected): {added:.1f} MB")
    print(f"idle publisher CPU (report_interval 30 s, measured over {idle_seconds:.0f} s): "
          f"{per_hour:.2f} CPU-s per hour ({per_hour / 36:.4f} % of one core)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args()
    update_cost(args.calls, args.rounds)
    host_cost(args.idle_seconds)


if __name__ == "__main__":
    main()
