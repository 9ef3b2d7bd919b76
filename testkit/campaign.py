"""A fault campaign that measures the truth.

N simulated GUI nodes (one process each), the bridge, the status app, mosquitto with the
project's config and the YL-monitor double, under a seeded random schedule of faults:

- nodes: kill -9, freeze (SIGSTOP), clean stop, restart, takeover by a second process, and
  runs with a clock four years ahead or behind (libfaketime);
- the bridge: kill -9, and SIGSTOP of the bridge or of its status receiver; with an
  active/standby pair on PostgreSQL (``failover``), of the active instance, and a restart of
  PostgreSQL;
- the broker: kill -9 (persistence on; right after a change, inside its one-second save
  window, or outside it) and restart;
- the monitor (with or without the register route): answering 500, answering 404, hanging,
  forgetting its nodes;
- the outbox's disk: full (a small tmpfs; needs root);
- a node's GUI: its main loop blocked while its process and network go on (SIGUSR1 to
  ``yl-status node --hang-seconds``): it must be shown down within ``GUI_HANG_AFTER`` + 1 s
  and up again within 1 s after the hang.
- observers restarted: the status app (kill -9 and start), and the bridge with a fresh
  outbox (kill -9, its SQLite outbox deleted, start: it knows nothing but what the broker
  keeps);
- the monitor forgetting its nodes while it keeps its connections open (a restart behind a
  keep-alive proxy, a database reset).

A truth oracle knows each node's real state at every instant (up: its process runs and is
not frozen) and samples what the monitor (``is_online``) and the status app (``/nodes``)
say four times a second. It reports, per fault kind:

- lost: real outages (down long enough to be seen) that the monitor never showed (no offline
  heartbeat, no sample offline), and restarts with no online heartbeat after them (must be
  0). A node that stops while its link is down (not connected again since the broker
  restarted, as the broker's log says) can only be told by its silence: such an outage is
  long enough to be seen from ``SILENCE_DETECTION`` after the restart;
- regressions: heartbeats of one process older than one it delivered before (must be 0);
- wrong-state seconds, at the monitor and in the status app, summed over nodes;
- the longest time the monitor or the status app stayed wrong after a fault healed (a fault
  on a node whose link was down is held to ``SILENCE_DETECTION`` from the restart instead,
  and left out of that figure).

A third truth is the broker's: what a late subscriber to the state and status topics learns
(a node is up while its newest state is ``ready`` and its newest status of that session does
not say its GUI stopped responding). Two more rules hold against it:

- every observer (the monitor, the status app) agrees with the broker within
  ``AGREE_WITHIN`` of any heal, and after that any disagreement ends within it (a monitor
  that forgot its nodes: within the bridge's look period more); the longest disagreement
  is reported per fault kind. Not after a broker kill: a node that died while the broker
  was down leaves a retained ``ready`` that only its silence refutes;
- backwards: each node's heartbeats reach the monitor in non-decreasing ``timestamp``
  order (must be 0), except across a bridge restarted with a fresh outbox, which has no
  memory of what it sent.

Run: .venv/bin/python -m bench.campaign [--seed S] [--minutes M] [--nodes N]
[--no-register-route] [--failover]
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bridge.delivery import STAMP_SLACK
from testkit.postgres import PostgresServer, running_postgres
from testkit.support import fill_disk
from yl_core import timestamps
from yl_core.errors import ProtocolError
from yl_core.protocol import stale_after
from yl_status.dev_broker import DevBroker, free_port
from yl_status.monitor_double import Heartbeat, MonitorDouble

PASSWORD = "campaign-secret"
KEEPALIVE = 2
"""Node keepalive (s): a frozen node is lost after about 2.1-2.4 x this, at times later."""
SAMPLE = 0.25
HEALED_WITHIN = 5.0
"""The bound on wrong state after a fault heals (a frozen node: 2 x keepalive longer)."""
FREEZE_DETECTION = 3.5 * KEEPALIVE
"""The longest mosquitto 2.0.11 was measured to take to notice a frozen client (1.5-2.5 x
keepalive as a rule, up to 3.5 x): a shorter freeze may end before any will is sent."""
GUI_HANG_AFTER = 2.0
"""The nodes' ``monitor.gui_hang_after``."""
HANG = 5.0
"""How long a ``gui_hang`` blocks a node's main loop."""
HANG_DETECTION = GUI_HANG_AFTER + 1.0
"""A hang is shown within this; it is over within ``HANG_HEALED`` of its end."""
HANG_HEALED = 1.0
HANG_READY = 5.0
"""A node is hung only once it has run this long (its signal handler is in place)."""
REPORT_INTERVAL = 5.0
"""The nodes' ``monitor.report_interval``."""
SILENCE_DETECTION = stale_after(REPORT_INTERVAL) + 2.0
"""A node that stops while its link is down (it has not connected again since the broker
restarted) sends no will and no ``disconnected``: only its silence tells, ``stale_after`` its
report interval from when the bridge is back (give or take the bridge's own reconnect)."""
AGREE_WITHIN = 3.0
"""Observers agree with the broker's truth this soon after a heal (and any later change)."""
LOOK_INTERVAL = 5.0
"""The campaign's bridges read the monitor's node list this often (``monitor.look_interval``)."""
OBSERVER = "campaign-observer"
RESTART_SLACK = 30.0
"""A heartbeat may arrive this long after its process was replaced (a backlog)."""
KINDS = ("node_kill", "node_freeze", "node_stop", "node_takeover", "node_skew",
         "bridge_kill", "bridge_freeze", "receiver_freeze", "bridge_fresh", "app_restart",
         "broker_kill", "monitor_500", "monitor_404", "monitor_hang", "monitor_forget",
         "monitor_amnesia", "disk_full", "gui_hang", "database_restart")
"""Every fault kind; ``database_restart`` only with ``failover``, ``disk_full`` and
``bridge_fresh`` only without (the outbox is PostgreSQL's then)."""


def get_json(url: str, timeout: float = 1.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.loads(answer.read())


@dataclass
class Node:
    node_id: str
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    """Frozen (SIGSTOP) or its GUI loop hung (SIGUSR1): its process runs, the node is down."""
    up_since: float | None = None
    down_since: float | None = None
    outages: list[tuple[float, float | None, str]] = field(default_factory=list)
    """(down at, up again at or None, fault kind) per real outage."""
    starts: list[tuple[float, str]] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None and \
            not self.paused


@dataclass
class Event:
    kind: str
    start: float
    healed: float | None
    nodes: tuple[str, ...]
    """The nodes whose truth the fault touches (all of them for infrastructure faults)."""
    counted: bool = True
    """False for the restart that ends a node fault (measured, not counted again)."""


@dataclass
class Report:
    seed: int
    seconds: float
    nodes: int
    lost: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    regressions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wrong_monitor: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    wrong_app: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    after_heal: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    details: list[str] = field(default_factory=list)
    detection: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """The longest time a fault took to be shown (checked for ``gui_hang``)."""
    backwards: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    disagree: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    """The longest an observer disagreed with the broker's truth after a heal."""

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())

    @property
    def total_regressions(self) -> int:
        return sum(self.regressions.values())

    @property
    def total_backwards(self) -> int:
        return sum(self.backwards.values())

    def worst_after_heal(self, kind: str | None = None) -> float:
        values = [v for k, v in self.after_heal.items() if kind in (None, k)]
        return max(values, default=0.0)

    def bound(self, kind: str) -> float:
        if kind == "gui_hang":
            return HANG_HEALED + SAMPLE
        if kind == "monitor_amnesia":
            return HEALED_WITHIN + LOOK_INTERVAL
        return HEALED_WITHIN + (2 * KEEPALIVE if kind in ("node_freeze", "broker_kill") else 0)

    def agree_bound(self, kind: str) -> float:
        """``AGREE_WITHIN``; after a monitor's amnesia, the bridge's look period more; after a
        takeover, as long as the wrong state may last (``bound``): the two processes drop
        each other's connection until the older one sees its rival, as long as their
        reconnect back-offs take, and the broker's truth flips with each connect while the
        observers follow the newer process."""
        if kind == "node_takeover":
            return self.bound(kind)
        return AGREE_WITHIN + SAMPLE + (LOOK_INTERVAL if kind == "monitor_amnesia" else 0.0)

    def table(self) -> str:
        rows = [("fault", "events", "lost", "regress", "back", "wrong s (mon)", "wrong s (app)",
                 "after heal s", "bound s", "disagree s", "bound s")]
        for kind in KINDS:
            if self.events.get(kind):
                agree = "-" if kind == "broker_kill" else f"{self.disagree.get(kind, 0.0):.1f}"
                rows.append((kind, str(self.events[kind]), str(self.lost.get(kind, 0)),
                             str(self.regressions.get(kind, 0)),
                             str(self.backwards.get(kind, 0)),
                             f"{self.wrong_monitor.get(kind, 0.0):.1f}",
                             f"{self.wrong_app.get(kind, 0.0):.1f}",
                             f"{self.after_heal.get(kind, 0.0):.1f}",
                             f"{self.bound(kind):g}", agree, f"{self.agree_bound(kind):g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        for kind, seconds in self.detection.items():
            lines.append(f"{kind}: shown down at most {seconds:.1f} s after it began "
                         f"(bound {HANG_DETECTION + SAMPLE:g} s)")
        lines.append(f"seed {self.seed}, {self.nodes} nodes, {self.seconds:.0f} s: "
                     f"{self.total_lost} lost, {self.total_regressions} regressions, "
                     f"{self.total_backwards} backwards, longest wrong state after a heal "
                     f"{self.worst_after_heal():.1f} s, longest disagreement with the broker "
                     f"{max(self.disagree.values(), default=0.0):.1f} s")
        return "\n".join(lines)


Sample = tuple[bool, bool | None, bool | None, bool | None]
"""One node at one instant: really up; shown up by the monitor, by the status app (None: no
answer), by the broker (None: it says nothing)."""


class BrokerTruth:
    """What a subscriber to every node's state and status learns from the broker (retained
    copies on each connect, then live messages): the broker's truth of each node."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, tuple[str, str]] = {}
        """Each node's newest state: (session, word)."""
        self._hung: dict[str, tuple[str, bool]] = {}
        """Each node's newest status: (session, whether it says the GUI does not respond)."""
        self._connected = False
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username,
                                   protocol=mqtt.MQTTv5)
        self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def start(self) -> BrokerTruth:
        self._client.connect_async(self._host, self._port, keepalive=5)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def up(self, node_id: str) -> bool | None:
        """None while the broker cannot be asked, or says nothing of the node."""
        with self._lock:
            state = self._states.get(node_id)
            if not self._connected or state is None:
                return None
            hung = self._hung.get(node_id)
            return state[1] == "ready" and not (hung is not None and hung == (state[0], True))

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object,
                    reason: Any, _properties: object = None) -> None:
        if not reason.is_failure:
            client.subscribe([("yl/ar/nodes/+/state", 1), ("yl/ar/nodes/+/status", 1)])
            with self._lock:
                self._connected = True

    def _on_disconnect(self, *_args: object) -> None:
        with self._lock:
            self._connected = False

    def _on_message(self, _client: mqtt.Client, _userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) != 5 or not message.payload:
            return
        try:
            data = json.loads(message.payload)
            with self._lock:
                if parts[4] == "state":
                    self._states[parts[3]] = (str(data["session"]), str(data["state"]))
                else:
                    self._hung[parts[3]] = (str(data["session"]),
                                            data.get("not_responding_since") is not None)
        except (ValueError, KeyError, TypeError):
            return


class Campaign:
    def __init__(self, workdir: Path, *, seed: int, nodes: int, kinds: tuple[str, ...],
                 register_route: bool = True, postgres: PostgresServer | None = None
                 ) -> None:
        """``postgres``: run an active/standby pair of bridges on an outbox there."""
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.postgres = postgres
        excluded = {"disk_full", "bridge_fresh"} if postgres is not None else \
            {"database_restart"}
        kinds = tuple(k for k in kinds if k not in excluded)
        self.kinds = kinds
        self.seed = seed
        self.node_ids = [f"camp-{i:03d}" for i in range(nodes)]
        users = dict.fromkeys(self.node_ids, PASSWORD)
        users.update({"yl-bridge": PASSWORD, "yl-viewer": PASSWORD, OBSERVER: PASSWORD})
        self.broker = DevBroker(workdir / "broker", users=users,
                                extra_acl=f"user {OBSERVER}\ntopic read yl/ar/nodes/#\n")
        self.broker_truth = BrokerTruth(self.broker.host, self.broker.port, OBSERVER, PASSWORD)
        self.double = MonitorDouble(check_interval=30.0, register_route=register_route)
        self.nodes = {n: Node(n) for n in self.node_ids}
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.bridges: dict[str, subprocess.Popen[bytes]] = {}
        """The bridge process, or with ``postgres`` each instance of the pair."""
        self.bridge_configs: dict[str, Path] = {}
        self.metrics_ports: dict[str, int] = {}
        self.serve: subprocess.Popen[bytes] | None = None
        self.outbox_dir = workdir / "outbox"
        self.outbox_dir.mkdir(parents=True)
        self.tmpfs = os.geteuid() == 0 and "disk_full" in kinds
        self.serve_port = free_port()
        self.serve_config: Path | None = None
        self.samples: list[tuple[float, dict[str, Sample]]] = []
        self.details_later: list[str] = []
        """Problems of the campaign itself, reported with its findings."""
        self.broker_starts: list[float] = []
        """When the broker was started again after a kill (monotonic)."""

    # --- set-up -------------------------------------------------------------------------

    def config(self, name: str, **sections: dict[str, Any]) -> Path:
        data: dict[str, Any] = {
            "monitor": {"url": self.double.url, "node_id": self.node_ids[0],
                        "report_interval": REPORT_INTERVAL, "timeout": 1.0, "retry_delay": 1.0,
                        "gui_hang_after": GUI_HANG_AFTER},
            "mqtt": {"host": self.broker.host, "port": self.broker.port,
                     "password": PASSWORD, "keepalive": KEEPALIVE},
            "logging": {"level": "INFO"},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def spawn(self, args: list[str], log: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with open(self.workdir / log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "yl_status", *args], stdout=out,
                                    stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def start(self) -> None:
        self.broker.start()
        self.double.start()
        if self.tmpfs:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs",
                            str(self.outbox_dir)], check=True)
        for name in ("bridge",) if self.postgres is None else ("a", "b"):
            self.metrics_ports[name] = port = free_port()
            shared = {} if self.postgres is None else \
                {"outbox_url": self.postgres.url, "instance": name}
            self.bridge_configs[name] = self.config(
                f"bridge-{name}", mqtt={"username": "yl-bridge", "keepalive": 5},
                monitor={"look_interval": LOOK_INTERVAL},
                bridge={"outbox_path": str(self.outbox_dir / "outbox.sqlite3"),
                        "metrics": f"127.0.0.1:{port}", **shared})
            self.start_bridge(name)
            if self.postgres is not None:
                self.wait(f"instance {name} answering", partial(self.answering, name), 30)
        self.serve_config = self.config("serve", local_server={"port": self.serve_port,
                                                               "mqtt_username": "yl-viewer",
                                                               "mqtt_password": PASSWORD})
        self.start_serve()
        self.broker_truth.start()
        for node_id in self.node_ids:
            self.start_node(node_id, "start")
        self.wait("every node online", lambda: all(self.double.is_online(n)
                                                   for n in self.node_ids), 60)

    def start_serve(self) -> None:
        assert self.serve_config is not None
        self.serve = self.spawn(["serve", "-c", str(self.serve_config)], "serve.log")

    def start_bridge(self, name: str) -> None:
        self.bridges[name] = self.spawn(["bridge", "-c", str(self.bridge_configs[name])],
                                        f"bridge-{name}.log")

    def answering(self, name: str) -> bool:
        return self.role(name) is not None

    def role(self, name: str) -> str | None:
        try:
            return str(get_json(f"http://127.0.0.1:{self.metrics_ports[name]}/healthz")
                       .get("role", "active"))
        except (OSError, ValueError):
            return None

    @property
    def active_bridge(self) -> str:
        """The bridge to fault: the one process, or the instance that is active now."""
        names = list(self.bridges)
        return next((n for n in names if self.role(n) == "active"), names[0])

    def start_node(self, node_id: str, kind: str, clock: str | None = None) -> None:
        node = self.nodes[node_id]
        env = None
        if clock is not None:
            library = next(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"), None)
            if library is not None:
                env = {"LD_PRELOAD": str(library), "FAKETIME": clock,
                       "FAKETIME_DONT_RESET": "1", "DONT_FAKE_MONOTONIC": "1"}
        config = self.config(f"node-{node_id}")
        process = self.spawn(["node", "-c", str(config), "--node-id", node_id,
                              "--toggle-every", "1", "--hang-seconds", str(HANG)],
                             f"node-{node_id}.log", env)
        with self.lock:
            node.process = process
            node.paused = False
            node.starts.append((time.monotonic(), kind))
            self.came_up(node)

    def came_up(self, node: Node) -> None:
        now = time.monotonic()
        if node.down_since is not None and node.outages:
            down_at, _, kind = node.outages[-1]
            node.outages[-1] = (down_at, now, kind)
        node.down_since = None
        node.up_since = now

    def went_down(self, node: Node, kind: str) -> None:
        now = time.monotonic()
        if node.down_since is None:
            node.down_since = now
            node.outages.append((now, None, kind))

    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if check():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"campaign: gave up waiting for {what}")

    # --- the oracle ---------------------------------------------------------------------

    def sample_forever(self, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE):
            try:
                app = {n["node_id"]: n["health"] == "ready"
                       for n in get_json(f"http://127.0.0.1:{self.serve_port}/nodes")["nodes"]}
            except (OSError, ValueError, KeyError):
                app = {}
            now = time.monotonic()
            with self.lock:
                truth = {n: node.up for n, node in self.nodes.items()}
            view: dict[str, Sample] = {
                n: (truth[n], self.double.is_online(n), app.get(n), self.broker_truth.up(n))
                for n in truth}
            self.samples.append((now, view))

    # --- faults ---------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        getattr(self, f"fault_{kind}")()

    def _some_up_node(self, up_for: float = 0.0) -> Node | None:
        """A node that is up, and has been for ``up_for`` seconds."""
        now = time.monotonic()
        with self.lock:
            up = [n for n in self.nodes.values()
                  if n.up and n.up_since is not None and now - n.up_since >= up_for]
        return self.rng.choice(up) if up else None

    def _record(self, kind: str, start: float, healed: float | None,
                nodes: tuple[str, ...] | None = None, *, counted: bool = True) -> None:
        with self.lock:
            self.events.append(Event(kind, start, healed, tuple(self.node_ids)
                                     if nodes is None else nodes, counted))

    def _restart(self, node: Node, kind: str, clock: str | None = None) -> None:
        self.start_node(node.node_id, kind, clock)
        now = time.monotonic()
        self._record(kind, now, now, (node.node_id,), counted=False)

    def _down_for(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))

    def _node_down(self, kind: str, end: Callable[[subprocess.Popen[bytes]], None],
                   clock: str | None = None) -> None:
        """End a node's process with ``end``, keep it down a while, start it again."""
        node = self._some_up_node()
        if node is None or node.process is None:
            return
        start = time.monotonic()
        with self.lock:
            end(node.process)
            self.went_down(node, kind)
        node.process.wait()
        self._record(kind, start, start, (node.node_id,))
        self._down_for(2, 5)
        self._restart(node, kind, clock)

    def fault_node_kill(self) -> None:
        self._node_down("node_kill", subprocess.Popen.kill)

    def fault_node_stop(self) -> None:
        self._node_down("node_stop", subprocess.Popen.terminate)

    def _pause(self, kind: str, node: Node, begin: signal.Signals,
               end: signal.Signals | None, seconds: float) -> None:
        """Pause a running node with ``begin`` for ``seconds`` (``end`` resumes it; without
        one, it resumes by itself) and record it."""
        assert node.process is not None
        start = time.monotonic()
        with self.lock:
            node.process.send_signal(begin)
            node.paused = True
            self.went_down(node, kind)
        time.sleep(seconds)
        with self.lock:
            if end is not None:
                node.process.send_signal(end)
            node.paused = False
            self.came_up(node)
        self._record(kind, start, time.monotonic(), (node.node_id,))

    def fault_node_freeze(self) -> None:
        node = self._some_up_node()
        if node is not None and node.process is not None:
            self._pause("node_freeze", node, signal.SIGSTOP, signal.SIGCONT,
                        self.rng.uniform(2, 3 * KEEPALIVE + 3))

    def fault_gui_hang(self) -> None:
        # A node started a moment ago may not handle SIGUSR1 yet (it would end it).
        node = self._some_up_node(up_for=HANG_READY)
        if node is None or node.process is None:
            return
        self._pause("gui_hang", node, signal.SIGUSR1, None, HANG)
        if node.process.poll() is not None:
            with self.lock:
                self.went_down(node, "gui_hang")
            self.details_later.append(f"{node.node_id}: ended by a gui_hang (exit "
                                      f"{node.process.returncode})")

    def fault_node_takeover(self) -> None:
        node = self._some_up_node()
        if node is None or node.process is None:
            return
        first = node.process
        start = time.monotonic()
        self.start_node(node.node_id, "node_takeover")
        with contextlib.suppress(subprocess.TimeoutExpired):
            first.wait(15)
        self._record("node_takeover", start, start, (node.node_id,))

    def fault_node_skew(self) -> None:
        self._node_down("node_skew", subprocess.Popen.terminate,
                        clock=self.rng.choice(("+1460d", "-1460d")))

    def fault_bridge_kill(self) -> None:
        name = self.active_bridge
        start = time.monotonic()
        self.bridges[name].kill()
        self.bridges[name].wait()
        self._down_for(1, 5)
        self.start_bridge(name)
        self._record("bridge_kill", start, time.monotonic())

    def fault_bridge_fresh(self) -> None:
        """The bridge killed and started again on a new, empty outbox: an observer that
        starts late and knows only what the broker keeps."""
        if self.postgres is not None:
            return
        name = self.active_bridge
        start = time.monotonic()
        self.bridges[name].kill()
        self.bridges[name].wait()
        for path in self.outbox_dir.glob("outbox.sqlite3*"):
            path.unlink()
        self.start_bridge(name)
        self._record("bridge_fresh", start, time.monotonic())

    def fault_app_restart(self) -> None:
        """The status app killed -9 and started again: it reads the broker afresh. Its
        worker processes go with it, as systemd ends a unit's control group."""
        start = time.monotonic()
        if self.serve is not None:
            workers: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                workers = psutil.Process(self.serve.pid).children(recursive=True)
            self.serve.kill()
            self.serve.wait()
            for worker in workers:
                with contextlib.suppress(psutil.Error):
                    worker.kill()
            psutil.wait_procs(workers, timeout=5)
        self.start_serve()
        self._record("app_restart", start, time.monotonic())

    def _freeze(self, kind: str, pid: int) -> None:
        start = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        self._down_for(2, 8)
        with contextlib.suppress(ProcessLookupError):  # the bridge replaced a hung receiver
            os.kill(pid, signal.SIGCONT)
        self._record(kind, start, time.monotonic())

    def fault_bridge_freeze(self) -> None:
        self._freeze("bridge_freeze", self.bridges[self.active_bridge].pid)

    def fault_receiver_freeze(self) -> None:
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.bridges[self.active_bridge].pid).children()
            if children:
                self._freeze("receiver_freeze", children[0].pid)

    def fault_broker_kill(self) -> None:
        start = time.monotonic()
        if self.rng.random() < 0.5:  # inside the save window: right after a change
            node = self._some_up_node()
            if node is not None and node.process is not None:
                with self.lock:
                    node.process.terminate()
                    self.went_down(node, "broker_kill")
                node.process.wait()
                time.sleep(0.1)
        self.broker.kill()
        self._down_for(1, 3)
        self.broker.start()
        with self.lock:
            self.broker_starts.append(time.monotonic())
        for node in self.nodes.values():
            if node.process is None or node.process.poll() is not None:
                self.start_node(node.node_id, "broker_kill")
        self._record("broker_kill", start, time.monotonic())

    def _monitor(self, kind: str, fail: Callable[[], None], heal: Callable[[], None]) -> None:
        start = time.monotonic()
        fail()
        self._down_for(3, 8)
        heal()
        self._record(kind, start, time.monotonic())

    def fault_monitor_500(self) -> None:
        self._monitor("monitor_500", lambda: self.double.fail_with(500),
                      lambda: self.double.fail_with(None))

    def fault_monitor_404(self) -> None:
        self._monitor("monitor_404", lambda: self.double.fail_with(404),
                      lambda: self.double.fail_with(None))

    def fault_monitor_hang(self) -> None:
        self._monitor("monitor_hang", self.double.hang, self.double.answer_again)

    def fault_monitor_forget(self) -> None:
        start = time.monotonic()
        self.double.forget()
        self._record("monitor_forget", start, start)

    def fault_monitor_amnesia(self) -> None:
        """The monitor forgets every node and keeps its connections open: only the bridge's
        next look at its node list (or a node's next heartbeat) tells."""
        start = time.monotonic()
        self.double.forget(keep_connections=True)
        self._record("monitor_amnesia", start, start)

    def fault_database_restart(self) -> None:
        if self.postgres is None:
            return
        start = time.monotonic()
        self.postgres.restart()
        self._record("database_restart", start, time.monotonic())

    def fault_disk_full(self) -> None:
        if not self.tmpfs:
            return
        start = time.monotonic()
        filler = self.outbox_dir / "filler"
        fill_disk(filler)
        self._down_for(3, 8)
        filler.unlink()
        self._record("disk_full", start, time.monotonic())

    # --- run and judge --------------------------------------------------------------------

    def run(self, seconds: float, *, rounds: int | None = None,
            pause: tuple[float, float] = (1.0, 4.0)) -> Report:
        """Faults for ``seconds`` (or ``rounds`` rounds of every kind, if sooner), with a
        pause drawn from ``pause`` between two."""
        stop = threading.Event()
        sampler = threading.Thread(target=self.sample_forever, args=(stop,), daemon=True)
        began = time.monotonic()
        sampler.start()
        try:
            order: list[str] = []
            done = 0
            while time.monotonic() - began < seconds:
                if not order:  # every kind once per round, in a seeded order
                    if rounds is not None and done >= rounds:
                        break
                    done += 1
                    order = list(self.kinds)
                    self.rng.shuffle(order)
                kind = order.pop()
                with self.lock:
                    before = len(self.events)
                self.fault(kind)
                with self.lock:
                    if len(self.events) == before:  # no node could take it now: later
                        order.insert(0, kind)
                time.sleep(self.rng.uniform(*pause))
            settle = time.monotonic()
            for node in self.nodes.values():
                if not node.up:
                    self.start_node(node.node_id, "end")
            settled = self.settled(60.0)
            self._record("end", settle, settle)
            stop.wait(2.0)
        finally:
            stop.set()
            sampler.join(2.0)
        report = self.judge(time.monotonic() - began)
        report.details.extend(settled)
        report.details.extend(self.details_later)
        return report

    def settled(self, timeout: float) -> list[str]:
        """Wait until the monitor and the status app show every node up; what is still
        wrong after ``timeout``."""
        def wrong() -> list[str]:
            try:
                app = {n["node_id"]: n for n in get_json(
                    f"http://127.0.0.1:{self.serve_port}/nodes")["nodes"]}
            except (OSError, ValueError, KeyError):
                app = {}
            found = []
            for node_id in self.node_ids:
                seen = app.get(node_id, {})
                if not self.double.is_online(node_id) or seen.get("health") != "ready":
                    found.append(f"{node_id} not up at the end: monitor "
                                 f"{self.double.node_view(node_id)}, status app {seen}")
            return found

        deadline = time.monotonic() + timeout
        while (problems := wrong()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return problems

    def judge(self, seconds: float) -> Report:
        offset = time.time() - time.monotonic()
        (self.workdir / "timeline.json").write_text(json.dumps({
            "events": [[e.kind, e.start, e.healed, list(e.nodes)] for e in self.events],
            "heartbeats": {n: [[h.at - offset, h.status, h.reason, h.body.get("uptime")]
                               for h in self.double.history(n)] for n in self.node_ids},
            "truth": {n: {"outages": node.outages, "starts": node.starts}
                      for n, node in self.nodes.items()},
        }))
        report = Report(self.seed, seconds, len(self.node_ids))
        for event in self.events:
            if event.counted and event.kind != "end":
                report.events[event.kind] += 1
        self._wrong_seconds(report)
        connects = self._connects(offset)
        self._after_heal(report, connects)
        self._agreement(report)
        self._hang_detection(report)
        self._lost_and_regressions(report, connects, offset)
        return report

    def _blame(self, node_id: str, at: float) -> str:
        """The latest fault that touched ``node_id`` before ``at``."""
        for event in reversed(self.events):
            if event.start <= at and node_id in event.nodes:
                return event.kind
        return "start"

    def _wrong_seconds(self, report: Report) -> None:
        for at, view in self.samples:
            for node_id, (truth, monitor, app, _broker) in view.items():
                if monitor != truth:
                    report.wrong_monitor[self._blame(node_id, at)] += SAMPLE
                if app is not None and app != truth:
                    report.wrong_app[self._blame(node_id, at)] += SAMPLE

    def _after_heal(self, report: Report, connects: dict[str, list[float]]) -> None:
        for event in self.events:
            if event.healed is None or event.kind == "end":
                continue
            bound = report.bound(event.kind)
            restart = self._link_down_since(event.nodes[0], event.start, connects) \
                if len(event.nodes) == 1 else None
            if restart is not None:  # the node's link was down: only its silence could tell
                bound = max(bound, restart + SILENCE_DETECTION - event.healed)
            wrong_until = event.healed
            for at, view in self.samples:
                if at < event.healed:
                    continue
                later = [e for e in self.events if event.healed < e.start <= at]
                if any(set(e.nodes) & set(event.nodes) for e in later):
                    break  # another fault on the same nodes: it is measured on its own
                if any(view[n][0] != view[n][1] or (view[n][2] is not None and
                                                    view[n][2] != view[n][0])
                       for n in event.nodes):
                    wrong_until = at + SAMPLE
                else:
                    break
            lag = wrong_until - event.healed
            if restart is None:
                report.after_heal[event.kind] = max(report.after_heal[event.kind], lag)
            if lag > bound:
                report.details.append(f"{event.kind} at {event.start:.1f}: wrong for "
                                      f"{lag:.1f} s after it healed")

    def _agreement(self, report: Report) -> None:
        """After each heal (until the next fault on the same nodes), the longest spell in
        which the monitor or the status app said otherwise than the broker."""
        for index, event in enumerate(self.events):
            if event.healed is None or event.kind in ("end", "broker_kill"):
                continue
            nodes = set(event.nodes)
            end = min((e.start for e in self.events[index + 1:]
                       if e.start > event.healed and nodes & set(e.nodes)),
                      default=float("inf"))
            since: dict[tuple[str, int], float] = {}
            longest = 0.0
            last = event.healed
            for at, view in self.samples:
                if at < event.healed:
                    continue
                if at >= end:
                    break
                last = at
                for node_id in event.nodes:
                    broker = view[node_id][3]
                    for side in (1, 2):
                        shown = view[node_id][side]
                        if broker is None or shown is None:
                            continue
                        key = (node_id, side)
                        if shown != broker:
                            since.setdefault(key, at)
                        elif key in since:
                            longest = max(longest, at - since.pop(key))
            for began in since.values():
                longest = max(longest, last + SAMPLE - began)
            report.disagree[event.kind] = max(report.disagree[event.kind], longest)
            if longest > report.agree_bound(event.kind):
                report.details.append(f"{event.kind} at {event.start:.1f}: an observer "
                                      f"disagreed with the broker for {longest:.1f} s after "
                                      "it healed")

    def _hang_detection(self, report: Report) -> None:
        """Each GUI hang is shown down, at the monitor and in the status app, within
        ``HANG_DETECTION`` of its start (give or take a sample)."""
        for event in self.events:
            if event.kind != "gui_hang" or event.healed is None:
                continue
            node_id = event.nodes[0]
            shown = {}
            for side in (1, 2):
                shown[side] = next((at for at, view in self.samples
                                    if event.start <= at <= event.healed and
                                    view[node_id][side] is False), None)
            for side, at in shown.items():
                where = "monitor" if side == 1 else "status app"
                if at is None:
                    report.details.append(f"gui_hang of {node_id} at {event.start:.1f}: "
                                          f"never shown down by the {where}")
                    continue
                delay = at - event.start
                report.detection["gui_hang"] = max(report.detection["gui_hang"], delay)
                if delay > HANG_DETECTION + SAMPLE:
                    report.details.append(f"gui_hang of {node_id} at {event.start:.1f}: "
                                          f"shown down by the {where} after {delay:.1f} s")

    def _connects(self, clock_offset: float) -> dict[str, list[float]]:
        """When each client connected to the broker (monotonic, to the second below: the
        broker's log has whole seconds)."""
        found: dict[str, list[float]] = defaultdict(list)
        log = self.broker.workdir / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            stamp, _, rest = line.partition(": ")
            if rest.startswith("New client connected") and " as " in rest and \
                    stamp.isdigit():
                client = rest.split(" as ", 1)[1].split(" ", 1)[0]
                found[client].append(int(stamp) - clock_offset)
        return found

    def _link_down_since(self, node_id: str, at: float,
                         connects: dict[str, list[float]]) -> float | None:
        """The broker's restart after which ``node_id`` had not connected again by ``at``
        (None: its link was up, or no restart came before)."""
        restarts = [b for b in self.broker_starts if b <= at]
        if not restarts:
            return None
        restart = restarts[-1]
        if any(restart - 1.0 <= c <= at for c in connects.get(node_id, [])):
            return None
        return restart

    def _lost_and_regressions(self, report: Report, connects: dict[str, list[float]],
                              clock_offset: float) -> None:
        for node_id, node in self.nodes.items():
            history = [(h.at - clock_offset, h) for h in self.double.history(node_id)]
            for down, up, kind in node.outages:
                end = up if up is not None else float("inf")
                detection = {"node_freeze": FREEZE_DETECTION,
                             "gui_hang": HANG_DETECTION}.get(kind, 0.0)
                restart = self._link_down_since(node_id, down, connects)
                if restart is not None:
                    detection = max(detection, restart + SILENCE_DETECTION - down)
                if end - down < detection + 1.0:
                    continue
                shown = any(down <= at <= end + 2.0 and h.status == "offline"
                            for at, h in history) or \
                    any(down <= at <= end + 2.0 and view[node_id][1] is False
                        for at, view in self.samples)
                if not shown:
                    report.lost[kind] += 1
                    report.details.append(f"{node_id}: outage at {down:.1f} ({kind}) never "
                                          "shown offline")
            for started, kind in node.starts[1:]:
                if not any(at >= started and h.status == "online" for at, h in history):
                    report.lost[kind] += 1
                    report.details.append(f"{node_id}: start at {started:.1f} ({kind}) never "
                                          "shown online")
            self._backwards(report, node_id, history)
            starts = [s for s, _ in node.starts]
            previous: tuple[float, float] | None = None
            for at, h in history:
                uptime = h.body.get("uptime")
                if not isinstance(uptime, (int, float)):
                    continue
                if previous is not None and uptime < previous[1] and not any(
                        previous[0] - RESTART_SLACK <= s <= at for s in starts):
                    report.regressions[self._blame(node_id, at)] += 1
                    report.details.append(f"{node_id}: uptime {uptime} after {previous[1]} "
                                          f"at {at:.1f} with no restart between")
                previous = (at, uptime)

    def _backwards(self, report: Report, node_id: str,
                   history: list[tuple[float, Heartbeat]]) -> None:
        """Each node's heartbeats go forward in time, except across a bridge started on a
        fresh outbox, and for a clock far off (``node_skew``: forwarded as it is)."""
        fresh = [e.start for e in self.events if e.kind == "bridge_fresh"]
        newest: tuple[float, float] | None = None
        for at, heartbeat in history:
            try:
                stamp = timestamps.epoch_from_iso(str(heartbeat.body.get("timestamp")))
            except ProtocolError:
                continue
            if abs(stamp - heartbeat.at) > STAMP_SLACK:
                continue
            if newest is not None and any(newest[0] <= f <= at for f in fresh):
                newest = None
            if newest is not None and stamp < newest[1]:
                report.backwards[self._blame(node_id, at)] += 1
                report.details.append(f"{node_id}: a heartbeat stamped {stamp:.3f} after one "
                                      f"stamped {newest[1]:.3f}, at {at:.1f}")
            if newest is None or stamp >= newest[1]:
                newest = (at, stamp)

    def close(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(OSError):
                    node.process.send_signal(signal.SIGCONT)
                node.process.kill()
                node.process.wait()
        for process in (*self.bridges.values(), self.serve):
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGCONT)
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.broker_truth.stop()
        self.double.answer_again()
        self.double.down()
        self.broker.stop()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.outbox_dir)], check=False)


def run_campaign(*, seed: int, seconds: float, nodes: int, workdir: Path | None = None,
                 kinds: tuple[str, ...] = KINDS, register_route: bool = True,
                 failover: bool = False, rounds: int | None = None,
                 pause: tuple[float, float] = (1.0, 4.0)) -> Report:
    """``failover``: an active/standby pair of bridges on a PostgreSQL of its own."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="campaign-")))
        postgres = stack.enter_context(contextlib.contextmanager(running_postgres)()) \
            if failover else None
        campaign = Campaign(workdir, seed=seed, nodes=nodes, kinds=kinds,
                            register_route=register_route, postgres=postgres)
        stack.callback(campaign.close)
        campaign.start()
        return campaign.run(seconds, rounds=rounds, pause=pause)
