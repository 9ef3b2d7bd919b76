"""How much of the time a monitor like YL-monitor 1.0.6 shows a running GUI online.

1.0.6 scans its own host for a ``user/main.py`` process every 10 s and, from the third miss
on, marks the GUI offline at every scan; any v1 heartbeat marks it online and does not reset
the count. The monitor double does the same (a real process scan). For each way of starting
the GUI (``python user/main.py`` from the repository root, which the scan sees;
``cd user; python main.py``, which it does not; a GUI on another host looks the same to it),
without and with the bridge's ``monitor.v1_refresh``, it prints the share of a window the GUI
was shown online and the heartbeats per second the monitor got.

Run: .venv/bin/python -m bench.v1_share [--scan S] [--refresh S] [--window S]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.bridge_process import BridgeProcess
from testkit.broker import broker_users
from testkit.support import config_dict, start_process, stop_process, wait_until, write_config

from yl_status.dev_broker import DevBroker
from yl_status.monitor_double import MonitorDouble, process_scan

NODE = "node-1"


def measure(scan: float, refresh: float, window: float, *, seen: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        broker = DevBroker(tmp / "broker", users=broker_users()).start()
        double = MonitorDouble(api="v1", known=(NODE,), scan=process_scan(),
                               scan_interval=scan, scan_node=NODE).start()
        script = tmp / "gui" / "user" / "main.py"
        script.parent.mkdir(parents=True)
        script.write_text("import time\nwhile True:\n    time.sleep(1)\n")
        args, cwd = (["user/main.py"], tmp / "gui") if seen else (["main.py"], script.parent)
        gui = subprocess.Popen([sys.executable, *args], cwd=cwd)
        bridge = BridgeProcess(tmp, broker, double, profile="v1", v1_refresh=refresh).start()
        node = start_process(["node", "-c", str(write_config(tmp / "node.yaml", config_dict(
            broker, NODE)))], log_path=tmp / "node.log")
        try:
            wait_until(lambda: double.heartbeat_total > 0, timeout=30, what="a heartbeat")
            start = time.monotonic() + 3.5 * scan
            wait_until(lambda: time.monotonic() > start, timeout=10 * scan, what="3 misses")
            posts = double.heartbeat_total
            wait_until(lambda: time.monotonic() > start + window, timeout=2 * window,
                       what="the window")
            rate = (double.heartbeat_total - posts) / window
            return double.online_share(start, start + window), rate
        finally:
            stop_process(node)
            bridge.stop()
            gui.terminate()
            gui.wait(5)
            double.down()
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scan", type=float, default=10.0, help="the monitor's scan (s)")
    parser.add_argument("--refresh", type=float, default=1.0, help="monitor.v1_refresh (s)")
    parser.add_argument("--window", type=float, default=60.0, help="measured for (s)")
    args = parser.parse_args()
    print(f"scan every {args.scan:g} s, window {args.window:g} s; share of the window the GUI "
          "was shown online (heartbeats/s the monitor got):")
    for label, seen in (("python user/main.py from the root", True),
                        ("cd user; python main.py, or another host", False)):
        cells = []
        for refresh in (0.0, args.refresh):
            share, rate = measure(args.scan, refresh, args.window, seen=seen)
            cells.append(f"refresh {refresh:g} s: {share:6.1%} ({rate:.2f}/s)")
        print(f"  {label:42} " + "   ".join(cells))


if __name__ == "__main__":
    main()
