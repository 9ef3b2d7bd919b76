"""A Node-RED flow doing the bridge's job the plain way, for ``bench.bridge --node-red``:
``mqtt in`` (the nodes' statuses, QoS 1, parsed JSON) -> ``function`` (the heartbeat body
of SPEC §4) -> ``http request`` (POST, keep-alive), into the same monitor.

It keeps no outbox, no order and no session story: it is the floor of what forwarding
costs in a well-known tool, not an equal. Node-RED and the Node.js it needs are installed
from the npm registry into ``.cache/node-red`` of this tree on first use (pinned below).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from yl_core.protocol import Topics
from yl_status.dev_broker import free_port

NODE_RED = "5.0.7"
NODE = "22.23.3"
"""Node-RED 5 needs Node.js 22.9 or newer; the npm package ``node`` brings that build."""
HOME = Path(__file__).resolve().parent.parent / ".cache" / "node-red"

FUNCTION = """
const s = msg.payload;
if (!s || typeof s !== "object" || !s.node_id) { return null; }
msg.url = env.get("MONITOR") + "/api/ar/nodes/" + encodeURIComponent(s.node_id) + "/heartbeat";
msg.headers = {"content-type": "application/json"};
msg.payload = {node_id: s.node_id, node_name: s.node_name || s.node_id,
               status: s.not_responding_since ? "offline" : "online",
               timestamp: s.timestamp, version: s.version, uptime: s.uptime,
               resources: s.resources, gui: s.gui};
return msg;
"""


class NodeRedError(RuntimeError):
    """Node-RED could not be installed or started; the message says which."""


def install() -> Path:
    """Node.js and Node-RED in ``HOME`` (npm, once); returns the ``node`` to run."""
    node = HOME / "node_modules" / ".bin" / "node"
    red = HOME / "node_modules" / "node-red" / "red.js"
    if node.exists() and red.exists():
        return node
    npm = shutil.which("npm")
    if npm is None:
        raise NodeRedError("npm is not installed (apt-get install npm)")
    HOME.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--prefix", str(HOME), "--no-audit", "--no-fund",
                           f"node@{NODE}", f"node-red@{NODE_RED}"],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not node.exists() or not red.exists():
        raise NodeRedError(f"npm install node@{NODE} node-red@{NODE_RED} into {HOME} "
                           f"failed ({done.returncode}): {done.stderr[-2000:]}")
    return node


class NodeRedFlow:
    """The flow above in a Node-RED process of its own, subscribed to ``broker_port`` as
    ``username`` and posting to ``monitor_url``."""

    def __init__(self, workdir: Path, broker_port: int, username: str, password: str,
                 monitor_url: str) -> None:
        self.workdir = workdir
        self.node = install()
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        broker = {"id": "broker", "type": "mqtt-broker", "name": "mosquitto",
                  "broker": "127.0.0.1", "port": str(broker_port), "clientid": "bench-node-red",
                  "autoConnect": True, "usetls": False, "protocolVersion": "5",
                  "keepalive": "60", "cleansession": True, "autoUnsubscribe": True}
        flow = [
            {"id": "tab", "type": "tab", "label": "statuses to the monitor"},
            broker,
            {"id": "in", "type": "mqtt in", "z": "tab", "name": "statuses",
             "topic": Topics().all_statuses, "qos": "1", "datatype": "json",
             "broker": "broker", "nl": False, "rap": True, "rh": 0, "inputs": 0,
             "wires": [["heartbeat"]]},
            {"id": "heartbeat", "type": "function", "z": "tab", "name": "heartbeat body",
             "func": FUNCTION, "outputs": 1, "wires": [["post"]]},
            {"id": "post", "type": "http request", "z": "tab", "name": "POST heartbeat",
             "method": "POST", "ret": "txt", "paytoqs": "ignore", "url": "", "persist": True,
             "insecureHTTPParser": False, "authType": "", "senderr": False, "headers": [],
             "wires": [[]]},
        ]
        (workdir / "flows.json").write_text(json.dumps(flow))
        (workdir / "flows_cred.json").write_text(json.dumps(
            {"broker": {"user": username, "password": password}}))
        (workdir / "settings.js").write_text(
            "module.exports = {flowFile: 'flows.json', credentialSecret: false, "
            f"uiPort: {self.port}, uiHost: '127.0.0.1', httpNodeRoot: false, "
            "editorTheme: {tours: false}, logging: {console: {level: 'warn'}}, "
            "diagnostics: {enabled: false}, telemetry: {enabled: false}};\n")
        red = HOME / "node_modules" / "node-red" / "red.js"
        self.log = (workdir / "node-red.log").open("wb")
        self.process = subprocess.Popen(
            [str(self.node), str(red), "--userDir", str(workdir), "--settings",
             str(workdir / "settings.js")],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir,
            env={"PATH": str(self.node.parent) + ":/usr/bin:/bin", "HOME": str(workdir),
                 "MONITOR": monitor_url, "NODE_RED_ENABLE_TOURS": "false"})
        try:
            self._wait_started()
        except BaseException:
            self.close()
            raise

    def _wait_started(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NodeRedError(f"Node-RED exited ({self.process.returncode}); see "
                                   f"{self.workdir / 'node-red.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/flows",
                                            timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise NodeRedError(f"Node-RED did not answer within {timeout:.0f} s")

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def __enter__(self) -> NodeRedFlow:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
