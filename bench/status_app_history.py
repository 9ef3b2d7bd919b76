"""The status app's memory with a full day of history at 1,000 nodes.

A ``NodeView`` on a simulated clock takes, for each node, a day of statuses (one a minute:
the history keeps one sample a minute) and a state change every half hour, through the same
``ingest`` the broker subscriber calls. Baseline, in the same run: the same nodes with one
status each. Prints RSS for both (each in a fresh process), per node, and the ratio, and the
ingest rate.

Run: .venv/bin/python -m bench.status_app_history [--nodes N] [--minutes M]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import gc, json, sys, time
import psutil
from yl_core.protocol import ReporterCounters, Resources, StateMessage, StatusMessage, encode
from status_app import NodeView

nodes, minutes = int(sys.argv[1]), int(sys.argv[2])
now = [1_000_000.0]
view = NodeView(clock=lambda: now[0], wall_clock=lambda: now[0])
view.set_broker(True, "bench")
gc.collect()
before = psutil.Process().memory_info().rss
session = "s" * 24

def state(word):
    return encode(StateMessage(state=word, session=session, since="2026-01-01T00:00:00.000Z",
                               node_name="GUI", version="1", interval_s=60.0))

def status(node, seq):
    return encode(StatusMessage(
        node_id=node, node_name="GUI", timestamp="2026-01-01T00:00:00.000Z", status="running",
        version="1", uptime=float(seq), resources=Resources(float(seq % 100), 300.0 + seq % 7, 9),
        gui={"window_active": True, "video_running": seq % 2 == 0, "audio_running": False,
             "face_loaded": seq % 3 == 0},
        reporter=ReporterCounters(seq, 0, None), session=session, seq=seq, interval_s=60.0))

ids = [f"gui-{i:04d}" for i in range(nodes)]
for node in ids:
    view.ingest(f"yl/ar/nodes/{node}/state", state("ready"))
started = time.perf_counter()
messages = 0
for minute in range(minutes):
    now[0] += 60.0
    for node in ids:
        if minute % 30 == 29:  # lost for a minute every half hour
            view.ingest(f"yl/ar/nodes/{node}/state", state("lost"))
            messages += 1
            continue
        if minute % 30 == 0 and minute:
            view.ingest(f"yl/ar/nodes/{node}/state", state("ready"))
            messages += 1
        view.ingest(f"yl/ar/nodes/{node}/status", status(node, minute + 1))
        messages += 1
elapsed = time.perf_counter() - started
gc.collect()
after = psutil.Process().memory_info().rss
history = view.history(ids[0])
print(json.dumps({"rss_mb": after / 2**20, "grown_mb": (after - before) / 2**20,
                  "messages": messages, "rate": messages / elapsed,
                  "samples": len(history["samples"]["at"]),
                  "transitions": len(history["timeline"])}))
"""


def measure(nodes: int, minutes: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(nodes), str(minutes)],
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=24 * 60)
    args = parser.parse_args()
    started = time.monotonic()
    day = measure(args.nodes, args.minutes)
    baseline = measure(args.nodes, 1)
    print(f"{args.nodes} nodes, {args.minutes} minutes of history "
          f"({day['samples']:.0f} samples, {day['transitions']:.0f} transitions kept per node)")
    print(f"  RSS with history     {day['rss_mb']:8.1f} MB  (grew {day['grown_mb']:.1f} MB, "
          f"{day['grown_mb'] * 1024 / args.nodes:.1f} KB per node)")
    print(f"  RSS, one status each {baseline['rss_mb']:8.1f} MB  (grew "
          f"{baseline['grown_mb']:.1f} MB)")
    print(f"  ratio                {day['rss_mb'] / baseline['rss_mb']:8.2f}")
    print(f"  ingest               {day['rate']:8.0f} messages/s "
          f"({day['messages']:.0f} messages)")
    print(f"  took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
