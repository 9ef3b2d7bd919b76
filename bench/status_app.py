"""GET /status under load: ``yl-status serve`` against the original design.

The original served the GUI's JSON from ``http.server.HTTPServer``: serial, HTTP/1.0. Both
serve the same snapshot of a real node (published through a real mosquitto) and are loaded
by wrk (Debian package ``wrk``) from the same machine, in the same run:
- 50 concurrent keep-alive clients: throughput, p50/p99/max latency, and the ratio;
- the same load while one client holds a connection open and sends nothing.

Run: .venv/bin/python -m bench.status_app [--seconds S]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from publisher import StatusPublisher
from yl_core.config import parse_config
from yl_status.dev_broker import DevBroker, free_port

ORIGINAL_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
body = open(sys.argv[2], "rb").read()
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def wrk(url: str, seconds: float, connections: int = 50) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                          "--timeout", "2s", url], capture_output=True, text=True,
                         check=True).stdout

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    result = {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"),
              "max_ms": float("nan"), "timeouts": 0.0, "requests": 0.0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        result["requests"] = float(m.group(1))
    if m := re.search(r"^\s+50%\s+(\S+)", out, re.M):
        result["p50_ms"] = ms(m.group(1))
    if m := re.search(r"^\s+99%\s+(\S+)", out, re.M):
        result["p99_ms"] = ms(m.group(1))
    if m := re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out):
        result["max_ms"] = ms(m.group(1))
    if m := re.search(r"timeout (\d+)", out):
        result["timeouts"] = float(m.group(1))
    return result


def show(name: str, r: dict[str, float]) -> None:
    print(f"  {name:34} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
          f"p99 {r['p99_ms']:7.2f} ms  max {r['max_ms']:8.1f} ms  "
          f"requests {r['requests']:.0f}  timeouts {r['timeouts']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/status_app.py needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        broker = DevBroker(tmp / "broker", users={"bench-gui": "pw", "yl-viewer": "vpw"}).start()
        ours_port, original_port = free_port(), free_port()
        base = {"monitor": {"node_id": "bench-gui"},
                "mqtt": {"host": "127.0.0.1", "port": broker.port, "password": "pw"},
                "local_server": {"port": ours_port, "mqtt_username": "yl-viewer",
                                 "mqtt_password": "vpw"},
                "logging": {"level": "WARNING"}}
        (tmp / "serve.yaml").write_text(yaml.safe_dump(base))
        publisher = StatusPublisher(parse_config(base, "<bench>")).start()
        ours = subprocess.Popen([sys.executable, "-m", "yl_status", "serve", "-c",
                                 str(tmp / "serve.yaml")])
        original = None
        try:
            wait_listening(ours_port)
            url = f"http://127.0.0.1:{ours_port}/status"
            deadline = time.monotonic() + 15
            body = b""
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        body = response.read()
                        break
                except OSError:
                    time.sleep(0.1)
            (tmp / "status.json").write_bytes(body)
            original = subprocess.Popen([sys.executable, "-c", ORIGINAL_SERVER,
                                         str(original_port), str(tmp / "status.json")])
            wait_listening(original_port)
            original_url = f"http://127.0.0.1:{original_port}/status"
            print(f"GET /status ({len(body)} bytes), 50 connections, {args.seconds:g} s each:")
            wrk(url, 2)
            mine = wrk(url, args.seconds)
            theirs = wrk(original_url, args.seconds)
            show("status app (granian, keep-alive)", mine)
            show("original (HTTPServer, HTTP/1.0)", theirs)
            print(f"  throughput ratio ours/original: {mine['rps'] / max(theirs['rps'], 1):.2f}")
            print("same load with one idle client connected and sending nothing:")
            for name, target, port in (("status app", url, ours_port),
                                       ("original", original_url, original_port)):
                idle = socket.create_connection(("127.0.0.1", port))
                try:
                    show(name, wrk(target, min(args.seconds, 5.0)))
                finally:
                    idle.close()
        finally:
            for process in (ours, original):
                if process is not None:
                    process.terminate()
                    process.wait()
            publisher.stop()
            broker.stop()


if __name__ == "__main__":
    main()
