"""A stock Debian host, inside a private mount and network namespace made by the caller
(``unshare --mount --net --fork``, as root; ``tests/test_deploy.py``).

Debian's mosquitto is started as its service starts it (as root, dropping to the user
``mosquitto``), with either the package's own ``/etc/mosquitto/mosquitto.conf`` as it is and
our snippet in ``conf.d`` (``stock``), or our standalone config (``own``). Logins are made
with the shipped ``add-user.sh``. A node, the bridge and the status app run from one config
file against a monitor double; a ``kill -9`` of the node must reach the monitor and
``/health``. Prints what it saw as one JSON object; exits 1 on the first thing that is not
as the docs say.

Nothing of the host changes: ``/etc/mosquitto`` is a copy mounted over the original,
``/var/lib/mosquitto``, ``/var/log/mosquitto`` and ``/run`` are empty folders mounted over
theirs, and the network is the namespace's own loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

from testkit.support import stop_process, wait_until
from yl_status.dev_broker import BROKER_CONFIG_DIR
from yl_status.monitor_double import MonitorDouble

LOGINS = {"node": ("node-1", "node-secret"), "bridge": ("yl-bridge", "bridge-secret"),
          "viewer": ("yl-viewer", "viewer-secret")}
STATUS_PORT = 5502


class NotAsDocumentedError(Exception):
    pass


def sh(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False,
                          **kwargs)
    if done.returncode != 0:
        raise NotAsDocumentedError(f"{' '.join(map(str, args))}: exit {done.returncode}: "
                              f"{done.stderr.strip() or done.stdout.strip()}")
    return done


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def health() -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{STATUS_PORT}/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def private_host(work: Path, mode: str) -> Path:
    """The namespace's own /etc/mosquitto, data, log and /run; returns the config to start
    mosquitto with."""
    sh("ip", "link", "set", "lo", "up")
    etc = work / "etc-mosquitto"
    shutil.copytree("/etc/mosquitto", etc, symlinks=True)
    ours = etc / "yl-status"
    (ours / "conf.d").mkdir(parents=True)
    for name in ("add-user.sh", "acl", "tls.conf"):
        shutil.copy2(BROKER_CONFIG_DIR / name, ours / name)
    if mode == "stock":
        shutil.copy2(BROKER_CONFIG_DIR / "conf.d" / "yl-status.conf", etc / "conf.d")
        config = Path("/etc/mosquitto/mosquitto.conf")
    else:
        shutil.copy2(BROKER_CONFIG_DIR / "mosquitto.conf", ours)
        shutil.copy2(BROKER_CONFIG_DIR / "conf.d" / "yl-status.conf", ours / "conf.d")
        config = Path("/etc/mosquitto/yl-status/mosquitto.conf")
    sh("mount", "--bind", etc, "/etc/mosquitto")
    for target in ("/var/lib/mosquitto", "/var/log/mosquitto", "/run"):
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", target)
    shutil.chown("/var/lib/mosquitto", "mosquitto")
    return config


def add_logins() -> None:
    script = "/etc/mosquitto/yl-status/add-user.sh"
    for role, (name, password) in LOGINS.items():
        sh("bash", script, role, name, env={**os.environ, "YL_PASSWORD": password})


def start_broker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """As Debian's mosquitto.service does (its ExecStartPre lines, then ExecStart)."""
    for folder in ("/var/log/mosquitto", "/run/mosquitto"):
        sh("mkdir", "-m", "740", "-p", folder)
        sh("chown", "mosquitto", folder)
    with open(log, "wb") as out:
        broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(config)], stdout=out,
                                  stderr=subprocess.STDOUT)
    wait_until(lambda: listening(1883) or broker.poll(), timeout=20,
               what="the broker listening on 1883")
    if broker.poll() is not None:
        raise NotAsDocumentedError(f"mosquitto exited {broker.returncode}: {log.read_text()}")
    return broker


def one_config(work: Path, monitor_url: str) -> Path:
    (node, node_password), (bridge, bridge_password), (viewer, viewer_password) = \
        LOGINS.values()
    path = work / "yl-status.yaml"
    path.write_text(yaml.safe_dump({
        "monitor": {"url": monitor_url, "node_id": node, "report_interval": 2,
                    "profile": "nodes-api"},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "password": node_password},
        "local_server": {"host": "127.0.0.1", "port": STATUS_PORT, "mqtt_username": viewer,
                         "mqtt_password": viewer_password},
        "bridge": {"client_id": bridge, "mqtt_username": bridge,
                   "mqtt_password": bridge_password, "outbox_path": str(work / "outbox.db"),
                   "metrics": ""},
        "logging": {"level": "INFO"},
    }))
    return path


def main() -> int:
    mode, work = sys.argv[1], Path(sys.argv[2])
    yl_status = Path(sys.executable).parent / "yl-status"
    seen: dict[str, Any] = {"mode": mode}
    processes: list[subprocess.Popen[bytes]] = []
    double = MonitorDouble().start()
    try:
        config = private_host(work, mode)
        add_logins()
        broker_log = work / "mosquitto.out"
        broker = start_broker(config, broker_log)
        processes.append(broker)
        seen["broker_user"] = psutil.Process(broker.pid).username()
        settings = one_config(work, double.url)
        for command in ("bridge", "serve", "node"):
            with open(work / f"{command}.log", "wb") as out:
                processes.append(subprocess.Popen([yl_status, command, "-c", settings],
                                                  stdout=out, stderr=subprocess.STDOUT))
        wait_until(lambda: double.is_online("node-1"), timeout=20,
                   what="the node online at the monitor")
        seen["health_up"] = wait_until(lambda: health()[0] == 200 and health(), timeout=20,
                                       what="/health 200")
        node = processes[-1]
        node.send_signal(signal.SIGKILL)
        node.wait(5)
        wait_until(lambda: not double.is_online("node-1"), timeout=20,
                   what="the node offline at the monitor")
        seen["monitor_reason"] = double.history("node-1")[-1].reason
        seen["health_down"] = wait_until(lambda: health()[0] == 503 and health(), timeout=20,
                                         what="/health 503")
        seen["broker_log"] = (Path("/var/log/mosquitto/mosquitto.log").read_text()
                              if mode == "stock" else broker_log.read_text())
    except (NotAsDocumentedError, AssertionError) as exc:
        seen["error"] = str(exc)
    finally:
        for process in reversed(processes):
            stop_process(process)
        double.down()
    print(json.dumps(seen))
    return 1 if "error" in seen else 0


if __name__ == "__main__":
    sys.exit(main())
