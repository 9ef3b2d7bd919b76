"""Test helpers: waiting on conditions, recording MQTT traffic, running node processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bridge import incoming as bridge_incoming
from yl_core import protocol
from yl_core.config import Config, parse_config
from yl_core.protocol import StateMessage, StatusMessage, Topics

T = TypeVar("T")

NODE_PASSWORD = "node-secret"
BRIDGE_USER, BRIDGE_PASSWORD = "yl-bridge", "bridge-secret"
VIEWER_USER, VIEWER_PASSWORD = "yl-viewer", "viewer-secret"
RECORDER_USER, READER_USER, TEST_PASSWORD = "test-recorder", "test-reader", "test-secret"
WATCHER_USER = "ops-watcher"
TEST_ACL = (f"user {RECORDER_USER}\ntopic read yl/ar/#\ntopic write yl/ar/nodes/+/cmd/#\n\n"
            f"user {READER_USER}\ntopic read yl/ar/#\n\n"
            f"user {WATCHER_USER}\ntopic read yl/ar/nodes/+/state\n"
            "topic read yl/ar/nodes/+/status\ntopic read yl/ar/bridges/+/state\n")
"""Test-only observers, added to the project's ACL: each user holds one connection."""
NODE_USERS = [f"node-{i}" for i in range(1, 21)]


class BrokerAddress(Protocol):
    """Where a broker listens: the project's ``DevBroker``, or one with other settings."""

    host: str
    port: int


_received = [0.0]


def received() -> float:
    """Receive times for recorded messages, one second apart from ten seconds ago on (the
    ``receive_times`` fixture starts each test there)."""
    _received[0] += 1.0
    return _received[0]


def incoming(node_id: str, message: StateMessage | StatusMessage, at: float,
             retained: bool = False) -> bridge_incoming.Received:
    """A message as a broker session hands it to the bridge's writer, encoded and checked
    as the bridge checks it."""
    topics = Topics()
    state = isinstance(message, StateMessage)
    received = bridge_incoming.Received(
        0, 0, 1,
        topics.state(node_id) if state else topics.status(node_id), protocol.encode(message),
        at, retained).checked_by(topics)
    assert received.checked is not None
    assert received.checked.message is not None, received.checked.detail
    return received


def restart_receive_times() -> None:
    _received[0] = time.time() - 10.0


def wait_until(predicate: Callable[..., T | None], timeout: float = 5.0, what: str = "condition",
               interval: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def config_dict(broker: Any, node_id: str = "node-1", **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "monitor": {"node_id": node_id, "report_interval": 30},
        "mqtt": {"host": broker.host, "port": broker.port, "password": NODE_PASSWORD,
                 "keepalive": 5},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def make_config(broker: Any, node_id: str = "node-1", **sections: dict[str, Any]) -> Config:
    return parse_config(config_dict(broker, node_id, **sections), "<test>")


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float
    qos: int = 0

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Recorder:
    """A real paho subscriber that records every message it gets."""

    host: str
    port: int
    username: str = RECORDER_USER
    password: str = TEST_PASSWORD
    topics: tuple[str, ...] = ("yl/ar/nodes/#",)
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.username,
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(self.username, self.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        for topic in self.topics:
            client.subscribe(topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain),
                                          time.monotonic(), msg.qos))

    def start(self) -> Recorder:
        self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        if not self._ready.wait(5):
            raise AssertionError("recorder did not subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str) -> Received | None:
        found = self.on(topic)
        return found[-1] if found else None

    def wait_for(self, topic: str, predicate: Callable[..., bool] = lambda d: True,
                 timeout: float = 5.0, after: float = 0.0) -> Received:
        def match() -> Received | None:
            for m in reversed(self.on(topic)):
                if m.at >= after and m.payload and predicate(m.json()):
                    return m
            return None
        return wait_until(match, timeout, f"a message on {topic}")


def retained(host: str, port: int, topic: str, timeout: float = 3.0, *,
             login: tuple[str, str] = (READER_USER, TEST_PASSWORD)) -> Any:
    """The retained message on ``topic`` as a fresh subscriber sees it (None if nothing).

    Mosquitto sends retained messages right after the SUBACK; absence is judged after a
    short grace period following the SUBACK.
    """
    got: list[bytes] = []
    arrived = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=login[0],
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(*login)

    def on_connect(c: mqtt.Client, *args: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            arrived.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(host, port, 30)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise AssertionError(f"could not subscribe to {topic}")
        arrived.wait(1.0)
    finally:
        client.disconnect()
        client.loop_stop()
    return json.loads(got[-1]) if got else None


def start_process(args: list[str], *, log_path: Path, env: dict[str, str] | None = None
                  ) -> subprocess.Popen[bytes]:
    """Start ``python -m yl_status ARGS`` with output to ``log_path``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "yl_status", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=full_env)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def fill_disk(path: Path) -> None:
    """Write zeros to ``path`` until its file system refuses (a full disk to test on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
    """GET over a real socket; returns (status, parsed JSON or text)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            code = response.status
    except urllib.error.HTTPError as err:
        body = err.read()
        code = err.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode(errors="replace")


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now (False while nothing listens yet)."""
    try:
        return http_get(url, timeout=1)[0] == 200
    except OSError:
        return False


def serve_config(broker: Any, port: int, node_id: str = "node-1") -> dict[str, Any]:
    return config_dict(broker, node_id, local_server={
        "port": port, "mqtt_username": VIEWER_USER, "mqtt_password": VIEWER_PASSWORD})
