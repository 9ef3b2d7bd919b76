"""The whole system on one machine, end to end (``./run.sh demo``).

Starts mosquitto with the project's config, a YL-monitor (the test double, unless
``YL_MONITOR_URL`` names a real one), the bridge, the status app and a simulated GUI node,
and shows what an operator would watch: the node's MQTT traffic, the node online at the
monitor, and the status app's answers. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from yl_status.dev_broker import DevBroker, free_port

NODE_ID = "demo-gui"
WATCHER = "demo-watch"
"""A read-only user for the operator's mosquitto_sub (a user holds one connection at a time:
the client id is the username)."""


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise SystemExit(f"[demo] gave up waiting for {what}")


def port_free(port: int) -> bool:

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C)")
    args = parser.parse_args()
    workdir = Path.cwd() / "var" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    secret = {name: secrets.token_urlsafe(12) for name in ("node", "bridge", "viewer", "watch")}
    broker = DevBroker(workdir / "broker", users={
        NODE_ID: secret["node"], "yl-bridge": secret["bridge"],
        "yl-viewer": secret["viewer"],
        WATCHER: secret["watch"]}, extra_acl=f"user {WATCHER}\ntopic read yl/ar/#\n").start()
    processes: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def spawn(args: list[str], name: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(args, stdout=kwargs.pop("stdout", log),
                                   stderr=subprocess.STDOUT, **kwargs)
        processes.append(process)
        return process

    try:
        monitor_url = os.environ.get("YL_MONITOR_URL")
        if not monitor_url:
            port = free_port()
            spawn([sys.executable, "-m", "yl_status.monitor_double", "--port", str(port)],
                  "monitor")
            monitor_url = f"http://127.0.0.1:{port}"
            wait_for("the monitor double", lambda: get_json(monitor_url + "/api/health")[0]
                     == 200, 10)
            say(f"YL-monitor test double on {monitor_url}")
        serve_port = 5502 if port_free(5502) else free_port()
        base = {"monitor": {"url": monitor_url, "node_id": NODE_ID,
                            "node_name": "AR Live Studio (demo)", "report_interval": 10},
                "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5}}

        def write(name: str, extra: dict[str, Any]) -> Path:
            data = json.loads(json.dumps(base))
            for section, values in extra.items():
                data.setdefault(section, {}).update(values)
            path = workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            return path

        node_cfg = write("node", {"mqtt": {"password": secret["node"]}})
        bridge_cfg = write("bridge", {
            "mqtt": {"username": "yl-bridge", "password": secret["bridge"]},
            "bridge": {"outbox_path": str(workdir / "outbox.sqlite3"),
                       "metrics": f"127.0.0.1:{free_port()}"}})
        serve_cfg = write("serve", {"local_server": {
            "port": serve_port, "mqtt_username": "yl-viewer",
            "mqtt_password": secret["viewer"]}})
        say(f"mosquitto {broker.port} (project config), configs and logs in {workdir}")
        say("watching the node topics: mosquitto_sub -p {} -u {} -P '{}' -v -t "
            "'yl/ar/nodes/#'".format(broker.port, WATCHER, secret["watch"]))
        spawn(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-u", WATCHER,
               "-P", secret["watch"], "-v", "-t", "yl/ar/nodes/#"], "mqtt", stdout=None)
        yl = [sys.executable, "-m", "yl_status"]
        spawn([*yl, "bridge", "-c", str(bridge_cfg)], "bridge")
        spawn([*yl, "serve", "-c", str(serve_cfg)], "serve")
        spawn([*yl, "node", "-c", str(node_cfg), "--toggle-every", "3"], "node")
        node_url = f"{monitor_url}/api/ar/nodes/{NODE_ID}"
        node = wait_for("the node online at the monitor",
                        lambda: (r := get_json(node_url))[0] == 200 and r[1]["is_online"]
                        and r[1], 20)
        say(f"YL-monitor: node {NODE_ID} is_online={node['is_online']} "
            f"status={node['status']}")
        health_url = f"http://127.0.0.1:{serve_port}/health"
        code, health = wait_for("/health", lambda: (r := get_json(health_url))[0] == 200 and r,
                                20)
        say(f"status app: GET {health_url} -> {code} {health['status']}")
        say(f"live view: http://127.0.0.1:{serve_port}/   (Ctrl-C stops the demo)")
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for process in processes:
                if process.poll() is not None:
                    say(f"{process.args!r} exited with {process.returncode}; see {workdir}")
                    return 1
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping")
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
