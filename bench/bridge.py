"""The bridge under load, through a real mosquitto into a local YL-monitor sink.

Measures, in one run:
1. forwarding rate: the bridge draining a backlog and forwarding a steady stream of statuses
   from many nodes into the sink, against a plain single-connection keep-alive POST loop to
   the same sink; into ``bench.fast_sink`` (little CPU a request), and into the monitor
   double as fast as it goes and taking 1 ms per request;
2. ingest: >= 5,000 status messages/s into the bridge while the sink is slower than that:
   the sink's request rate stays capped, the bridge's memory stays flat, and every node's
   newest status is delivered in the end;
3. state change -> monitor latency (p50, p99) at 100 nodes, each ``ready`` of a new session;
4. crash -> monitor latency: ``kill -9`` of a real node process until its ``offline`` reaches
   the monitor (p50, p99 over ``--kills``), and the takeover gaps the bridge relies on; with
   ``--flood RATE``, while other nodes' statuses come at that rate (and the bridge's CPU);
5. bridge RSS with 10,000 nodes known;
6. one request's path: the forwarder's (an asyncio protocol) against asyncio streams (its
   previous design), a blocking socket per worker thread and ``http.client``, alone and
   beside a busy thread;
7. the status receiver in a child process against a thread of the bridge's process: the
   heartbeats a second each sustains (``bench.capacity``'s steps) and the CPU per heartbeat;
8. a GUI-like load: 500 nodes sending retained statuses with their message expiry, 10, 100
   and 1,000 a second in all (``--gui-rate``, repeatable), into the monitor double: the
   bridge's CPU per forwarded heartbeat, and as a ratio to the double's CPU per request;
9. at rest (no nodes), with a monitor that answers and with one that cannot be reached: the
   share of a core the bridge's processes use, and how often each of their threads wakes
   (context switches a second, named by ``py-spy dump`` when it is installed).

With ``--baseline REF`` each scenario chosen runs with the bridge of git revision ``REF``
(its ``src/`` by ``PYTHONPATH``; everything else is this tree's) and with this tree's,
interleaved ``--rounds`` times, and a table sets the figures side by side with their ratio.

Requests per delivered item (every request the bridge sends, against the items it delivers)
are printed beside the forwarding rate and the latencies.

Run: .venv/bin/python -m bench.bridge [--seconds S] [--only NAME ...] [--baseline REF]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import yaml
from testkit.raw_publisher import RawPublisher
from testkit.support import NODE_PASSWORD, TEST_PASSWORD, Recorder, config_dict, write_config

from bench.node_red import NODE_RED, NodeRedFlow
from yl_core import protocol, timestamps
from yl_status.dev_broker import DevBroker, free_port
from yl_status.monitor_double import MonitorDouble

PASSWORD = "bench-secret"
BRIDGE_SRC: Path | None = None
"""The bridge's ``src/`` when it is not this tree's (``--baseline``); set per run by main."""
OFFER_REFERENCE: dict[str, float] = {}
"""With ``--baseline``: each sink's first POST loop rate of the run, by sink. Every bridge of
the run is then offered the same statuses a second and its steady rate is divided by the
same figure: above the bridge's capacity the rate forwarded falls as the rate offered rises,
so fractions of each run's own loop (which moves by a tenth between runs) would compare two
bridges at different points of that slope."""


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"bench: gave up waiting for {what}")


class Rig:
    """Broker, sink and bridge processes for one scenario."""

    def __init__(self, tmp: Path, sink_delay: float = 0.0, concurrency: int = 4,
                 outbox_url: str | None = None,
                 bridge_options: dict[str, Any] | None = None, fast_sink: bool = False,
                 gui_like: bool = False, monitor_down: bool = False) -> None:
        """``fast_sink``: ``bench.fast_sink`` instead of the monitor double (no delay);
        ``gui_like``: the publisher sends statuses retained, with their message expiry;
        ``monitor_down``: the bridge's monitor URL is a port nothing listens on (the sink
        runs all the same), and the bridge keeps its default retry delay."""
        self.tmp = tmp
        self.broker = DevBroker(tmp / "broker", users={
            "yl-bridge": PASSWORD, "yl-bridge-status": PASSWORD, "bench-pub": PASSWORD,
            "bench-recorder": TEST_PASSWORD},
            extra_acl="user bench-pub\ntopic write yl/ar/nodes/#\n\n"
                      "user bench-recorder\ntopic read yl/ar/#\n\n"
                      # a baseline from before 2026-12-08 reads statuses on a second login
                      "user yl-bridge-status\ntopic read yl/ar/nodes/+/status\n").start()
        self.sink_port = free_port()
        sink = ["bench.fast_sink", "--port", str(self.sink_port)] if fast_sink else \
            ["yl_status.monitor_double", "--port", str(self.sink_port), "--delay",
             str(sink_delay), "--keep", "10000"]
        self.sink = subprocess.Popen([sys.executable, "-m", *sink], stdout=subprocess.DEVNULL)
        self.sink_url = f"http://127.0.0.1:{self.sink_port}"
        wait("sink", lambda: get(self.sink_url + "/api/health"))
        self.metrics_port = free_port()
        monitor: dict[str, Any] = {"url": f"http://127.0.0.1:{free_port()}"} if monitor_down \
            else {"url": self.sink_url, "retry_delay": 1}
        config = {
            "monitor": monitor,
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "username": "yl-bridge",
                     "password": PASSWORD},
            "bridge": {"outbox_path": str(tmp / "outbox.sqlite3"),
                       **({"outbox_url": outbox_url, "instance": "bench"} if outbox_url else {}),
                       "metrics": f"127.0.0.1:{self.metrics_port}",
                       "http_concurrency": concurrency, **(bridge_options or {})},
            "logging": {"level": "WARNING"},
        }
        (tmp / "bridge.yaml").write_text(yaml.safe_dump(config))
        env = None if BRIDGE_SRC is None else \
            {**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, (str(BRIDGE_SRC), os.environ.get("PYTHONPATH"))))}
        self.bridge = subprocess.Popen([sys.executable, "-m", "yl_status", "bridge", "-c",
                                        str(tmp / "bridge.yaml")], env=env)
        if monitor_down:
            wait("bridge", lambda: self.metrics().get("yl_bridge_broker_connected") == 1.0)
        else:
            wait("bridge", lambda: get(f"http://127.0.0.1:{self.metrics_port}/healthz")["ok"])
        self.publisher = RawPublisher(self.broker.port, "bench-pub", PASSWORD,
                                      retain=gui_like, expiry=gui_like)

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def forwarded(self) -> float:
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("yl_bridge_forwarded_total"))

    def drained(self) -> bool:
        m = self.metrics()
        return m.get("yl_bridge_outbox_transitions") == 0 and \
            m.get("yl_bridge_outbox_statuses") == 0

    def rss_mb(self) -> float:
        return psutil.Process(self.bridge.pid).memory_info().rss / 2**20

    def stop_bridge(self) -> None:
        self.bridge.terminate()
        self.bridge.wait()

    def close(self) -> None:
        self.publisher.close()
        for process in (self.bridge, self.sink):
            process.terminate()
            process.wait()
        self.broker.stop()


def post_loop(url: str, seconds: float) -> float:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"node_id": "loop-node", "status": "online",
                       "timestamp": timestamps.utc_now_iso(), "resources": {}, "gui": {}})
    headers = {"Content-Type": "application/json"}
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        conn.request("POST", "/api/ar/nodes/loop-node/heartbeat", body=body, headers=headers)
        conn.getresponse().read()
        count += 1
    conn.close()
    return count / seconds


def post(url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


def drain_rate(sink_url: str, before: int, count: int) -> float:
    """Requests/s of a drain of ``count`` heartbeats that followed the sink's first
    ``before``, by the sink's own clock, between the 5th and the 95th percent of them (the
    first and the last requests weigh on a window of a second or less). Read once the drain
    is over: a poll answered late would miss the start of a drain shorter than its delay."""
    arrivals: list[float] = get(f"{sink_url}/_double/arrivals?after={before}")["at"][:count]
    if len(arrivals) < count:
        raise SystemExit(f"bench: the sink remembers {len(arrivals)} of the drain's {count} "
                         "heartbeats")
    low, high = count // 20, count - 1 - count // 20
    return (high - low) / max(arrivals[high] - arrivals[low], 1e-6)


def shown_age(sink_url: str, since: float, until: float) -> str:
    ages = get(f"{sink_url}/_double/ages?since={since}&until={until}")
    if not ages.get("shown_count"):
        return ""
    ms = {key: value * 1000 for key, value in ages.items()}
    return (f"   shown {ms['shown_mean']:4.0f} ms (p99 {ms['shown_p99']:4.0f}), "
            f"arrived {ms['arrived_p50']:4.0f} ms (p99 {ms['arrived_p99']:4.0f})")


def forwarding_rate(seconds: float, nodes_count: int = 6000, sink_delay: float = 0.0,
                    fast_sink: bool = False,
                    offer_reference: dict[str, float] | None = None) -> dict[str, float]:
    """Drain: nodes' newest statuses wait in the outbox (the monitor answered 503) and the
    bridge forwards them with nothing else going on, as the loop does. Steady state: 500
    nodes stream statuses at a fraction of the loop's rate while the bridge forwards
    (``offer_reference``: of the loop rate it holds for the sink, the first it measured)."""
    sink_key = "fast" if fast_sink else f"double {sink_delay:g}"
    with tempfile.TemporaryDirectory() as name:
        rig = Rig(Path(name), sink_delay=sink_delay, fast_sink=fast_sink)
        try:
            baseline = post_loop(rig.sink_url, seconds)
            reference = offer_reference.get(sink_key) if offer_reference is not None else None
            if offer_reference is not None and reference is None:
                offer_reference[sink_key] = baseline
            offered_base = reference or baseline
            nodes = [f"fwd-{i:04d}" for i in range(nodes_count)]
            for node in nodes:
                rig.publisher.status(node)
            wait("nodes registered", rig.drained, 120)

            before = int(get(rig.sink_url + "/_double/stats")["heartbeats"])
            post(rig.sink_url + "/_double/fail?code=503")  # none are counted while it fails
            for node in nodes:
                rig.publisher.status(node)
            wait("backlog in the outbox",
                 lambda: rig.metrics().get("yl_bridge_outbox_statuses", 0) >= nodes_count, 120)
            post(rig.sink_url + "/_double/fail?code=")
            # The sink's counter, not the bridge's /metrics (0.7 ms of its CPU a read).
            wait("backlog delivered", lambda: get(rig.sink_url + "/_double/stats")[
                "heartbeats"] >= before + nodes_count, 120)
            drain = drain_rate(rig.sink_url, before, nodes_count)
            wait("backlog drained", rig.drained, 120)
            stop = threading.Event()

            def feed(rate: float) -> None:
                began, sent = time.monotonic(), 0
                while not stop.is_set():
                    for node in nodes[:500]:
                        rig.publisher.status(node)
                    sent += 500
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

            steady: list[tuple[float, float, float, str]] = []
            requests_before = get(rig.sink_url + "/_double/stats")["requests"]
            items_before = rig.forwarded()
            for fraction in (0.6, 0.9, 1.0, 1.2):
                stop.clear()
                feeder = threading.Thread(target=feed, args=(offered_base * fraction,),
                                          daemon=True)
                feeder.start()
                time.sleep(2)
                start_count, started, wall = rig.forwarded(), time.monotonic(), time.time()
                time.sleep(seconds)
                rate = (rig.forwarded() - start_count) / (time.monotonic() - started)
                steady.append((fraction, offered_base * fraction, rate,
                               shown_age(rig.sink_url, wall, time.time()) if fast_sink else ""))
                stop.set()
                feeder.join()
                wait("outbox drained", rig.drained, 120)
            per_item = (get(rig.sink_url + "/_double/stats")["requests"] - requests_before) / \
                max(rig.forwarded() - items_before, 1.0)
            at_end = post_loop(rig.sink_url, seconds)
        finally:
            rig.close()
    loop = max(baseline, at_end)
    sink = "bench.fast_sink" if fast_sink else "monitor double, " + (
        f"{sink_delay * 1000:g} ms per request" if sink_delay else "as fast as it goes")
    steady_loop = offered_base if offer_reference is not None else loop
    print(f"1. forwarding rate into the sink ({sink}), requests/s:")
    print(f"   plain keep-alive POST loop (1 connection), alone, first: {baseline:8.0f}")
    print(f"                                                 and last: {at_end:8.0f}"
          "   (ratios against the higher)")
    print(f"   bridge draining {nodes_count} nodes' backlog, alone:            {drain:8.0f}"
          f"   ratio {drain / loop:.2f}")
    if offer_reference is not None:
        print(f"   (steady states: offered as fractions of the run's first loop, "
              f"{offered_base:.0f}/s, and divided by it, for every bridge of the run)")
    for _fraction, offered, rate, age in steady:
        print(f"   bridge steady state, 500 nodes publishing {offered:5.0f}/s: {rate:8.0f}"
              f"   ratio {rate / steady_loop:.2f}{age}")
    if fast_sink:
        print("   (shown: how old, by the time it was published, the status the sink shows of "
              "each node was, every 10 ms; arrived: each status when it arrived)")
    print(f"   (steady state: the simulated nodes, mosquitto, the bridge, its status receiver "
          f"and the sink share {psutil.cpu_count()} cores)")
    print(f"   requests per delivered item in the steady state: {per_item:.3f}")
    figures = {f"forwarding, drain / POST loop ({sink})": drain / loop}
    for fraction, _offered, rate, _age in steady:
        figures[f"forwarding, steady at {fraction:.1f} x loop / loop ({sink})"] = \
            rate / steady_loop
    return figures


def ingest(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as name:
        rig = Rig(Path(name), sink_delay=0.02)
        try:
            nodes = [f"ing-{i:03d}" for i in range(100)]
            for node in nodes:
                rig.publisher.status(node)
            wait("first statuses delivered", rig.drained, 60)
            received0 = rig.metrics().get('yl_bridge_received_total{kind="status"}', 0)
            sink0 = get(rig.sink_url + "/_double/stats")["requests"]
            rss: list[float] = []
            began = time.monotonic()
            sent = 0
            next_rss = began
            while time.monotonic() - began < seconds:
                for node in nodes:
                    rig.publisher.status(node)
                sent += len(nodes)
                if time.monotonic() >= next_rss:
                    rss.append(rig.rss_mb())
                    next_rss += 1.0
                behind = sent - (time.monotonic() - began) * 6000
                if behind > 0:
                    time.sleep(behind / 6000)
            elapsed = time.monotonic() - began
            published_rate = sent / elapsed
            m = rig.metrics()
            in_window = m.get('yl_bridge_received_total{kind="status"}', 0) - received0
            sink_rate = (get(rig.sink_url + "/_double/stats")["requests"] - sink0) / elapsed
            wait("outbox drained", rig.drained, 120)
            received = rig.metrics().get('yl_bridge_received_total{kind="status"}', 0) - \
                received0
            newest_ok = sum(
                1 for node in nodes
                if get(f"{rig.sink_url}/api/ar/nodes/{node}")["metadata"]["gui"]["n"]
                == rig.publisher.seq[node])
            coalesced = rig.metrics().get("yl_bridge_coalesced_total", 0)
        finally:
            rig.close()
    print("2. ingest with a slow sink (20 ms per request, 4 in flight: <= 200 requests/s):")
    print(f"   published {sent} statuses at {published_rate:.0f}/s for {elapsed:.1f} s; "
          f"bridge received {in_window:.0f} within the window ({in_window / elapsed:.0f}/s), "
          f"{received:.0f} in all")
    print(f"   sink load {sink_rate:.0f} requests/s; coalesced {coalesced:.0f}")
    print(f"   bridge RSS per second (MB): {' '.join(f'{r:.0f}' for r in rss)}")
    print(f"   newest status delivered for {newest_ok}/{len(nodes)} nodes")


@contextlib.contextmanager
def watched_rig(tmp: Path) -> Iterator[tuple[Rig, MonitorDouble]]:
    """A rig whose sink is a monitor double in this process, so that the times its requests
    arrive are read on this process's clock."""
    rig = Rig(tmp)
    sink = MonitorDouble().start()
    try:
        rig.sink.terminate()
        rig.sink.wait()
        rig.bridge.terminate()
        rig.bridge.wait()
        config = yaml.safe_load((rig.tmp / "bridge.yaml").read_text())
        config["monitor"]["url"] = sink.url
        (rig.tmp / "bridge.yaml").write_text(yaml.safe_dump(config))
        rig.bridge = subprocess.Popen([sys.executable, "-m", "yl_status", "bridge", "-c",
                                       str(rig.tmp / "bridge.yaml")])
        wait("bridge", lambda: get(f"http://127.0.0.1:{rig.metrics_port}/healthz")["ok"])
        yield rig, sink
    finally:
        sink.down()
        rig.close()


def arrival(sink: MonitorDouble, node: str, since: float, reason: str) -> float | None:
    """When (wall clock, as the sink records it) the sink recorded ``node``'s first
    heartbeat with ``reason`` that arrived after ``since``."""
    with sink.lock:
        for heartbeat in sink.heartbeats:
            if heartbeat.node_id == node and heartbeat.at >= since and \
                    heartbeat.reason == reason:
                return float(heartbeat.at)
    return None


def _cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds of a process and its children (the bridge's status receiver)."""
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def percentiles(samples: list[float]) -> str:
    samples = sorted(samples)
    return (f"p50 {statistics.median(samples):.1f}  p99 "
            f"{samples[min(int(len(samples) * 0.99), len(samples) - 1)]:.1f}  max "
            f"{samples[-1]:.1f}")


def latency(changes: int) -> None:
    with tempfile.TemporaryDirectory() as name, watched_rig(Path(name)) as (rig, sink):
        nodes = [f"lat-{i:03d}" for i in range(100)]
        for node in nodes:
            rig.publisher.state(node, "ready")
            rig.publisher.status(node)
        wait("nodes online", lambda: all(sink.is_online(n) for n in nodes), 60)
        requests, items = sink.request_total, rig.forwarded()
        samples: list[float] = []
        words = ("disconnected", "ready")
        for i in range(changes):
            node = nodes[i % len(nodes)]
            word = words[(i // len(nodes)) % 2]
            sent = time.time()
            rig.publisher.state(node, word)
            got = wait(f"{node} {word} delivered", lambda n=node, w=word, t=sent:
                       arrival(sink, n, t, w), 5)
            samples.append((got - sent) * 1000)
        wait("outbox drained", rig.drained, 30)
        per_item = (sink.request_total - requests) / max(rig.forwarded() - items, 1.0)
    print(f"3. state change -> monitor latency, 100 nodes, {changes} changes (ms):")
    print(f"   {percentiles(samples)}   requests per delivered item {per_item:.3f}")


@contextlib.contextmanager
def flooding(rig: Rig, rate: float, count: int = 300) -> Iterator[None]:
    """Statuses of ``count`` other nodes at ``rate`` a second while the block runs."""
    if rate <= 0:
        yield
        return
    stop = threading.Event()
    nodes = [f"flood-{i:03d}" for i in range(count)]

    def run() -> None:
        began, sent = time.monotonic(), 0
        while not stop.is_set():
            for node in nodes:
                rig.publisher.status(node)
            sent += len(nodes)
            ahead = sent / rate - (time.monotonic() - began)
            if ahead > 0:
                stop.wait(ahead)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def crash_latency(kills: int, flood: float = 0.0) -> dict[str, float]:
    """``kill -9`` of real node processes (``yl-status node``, defaults): from the kill to
    the ``offline`` at the monitor, while other nodes' statuses come at ``flood`` a second.
    Then takeovers (a second process with a node's id): the gaps the bridge's
    ``TAKEOVER_HOLD`` relies on, measured at the broker."""
    with tempfile.TemporaryDirectory() as name, watched_rig(Path(name)) as (rig, sink):
        nodes = [f"crash-{i}" for i in range(5)]
        rig.broker.add_users(dict.fromkeys(nodes, NODE_PASSWORD))
        configs = {n: write_config(rig.tmp / f"{n}.yaml", config_dict(rig.broker, n))
                   for n in nodes}
        log = open(rig.tmp / "nodes.log", "ab")  # noqa: SIM115

        def start(node: str, *extra: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "yl_status", "node", "-c",
                                     str(configs[node]), *extra], stdout=log, stderr=log)

        requests, items = sink.request_total, rig.forwarded()
        samples: list[float] = []
        cpu = psutil.Process(rig.bridge.pid)
        cpu_before = _cpu_seconds(cpu)
        flood_began = time.monotonic()
        with flooding(rig, flood):
            for i in range(kills):
                node = nodes[i % len(nodes)]
                process = start(node)
                began = time.time()
                wait(f"{node} online", lambda n=node, t=began: arrival(sink, n, t, "ready"),
                     30)
                killed = time.time()
                process.kill()
                process.wait()
                got = wait(f"{node} offline",
                           lambda n=node, t=killed: arrival(sink, n, t, "lost"), 10)
                samples.append((got - killed) * 1000)
        flood_seconds = time.monotonic() - flood_began
        bridge_cpu = (_cpu_seconds(cpu) - cpu_before) / flood_seconds * 100
        wait("outbox drained", rig.drained, 60)
        per_item = (sink.request_total - requests) / max(rig.forwarded() - items, 1.0)
        ordered = sorted(samples)
        beside = f", beside {flood:.0f}/s" if flood > 0 else ""
        figures = {f"crash -> offline p50 ms{beside}": statistics.median(ordered),
                   f"crash -> offline p99 ms{beside}":
                       ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)],
                   f"crash -> offline max ms{beside}": ordered[-1],
                   f"crash, requests per delivered item{beside}": per_item}
        if flood > 0:
            figures[f"crash, bridge's % of a core{beside}"] = bridge_cpu
            print(f"4. crash -> monitor latency while other nodes' statuses come at "
                  f"{flood:.0f}/s: {percentiles(samples)} ms over {kills} kills; the bridge's "
                  f"processes used {bridge_cpu:.0f} % of a core")
            return figures
        recorder = Recorder(rig.broker.host, rig.broker.port, username="bench-recorder",
                            topics=(protocol.Topics().all_states,)).start()
        handover: list[float] = []
        blips: list[float] = []
        kicks: list[float] = []
        try:
            for i in range(10):
                node = nodes[i % len(nodes)]
                first = start(node, "--toggle-every", "0.2")  # a GUI busy with changes
                began = time.time()
                wait(f"{node} online", lambda n=node, t=began: arrival(sink, n, t, "ready"), 30)
                replaced = time.monotonic()
                second = start(node)
                first.wait(30)
                wait("the takeover delivered", rig.drained, 30)
                states = [(m.at, json.loads(m.payload)) for m in recorder.messages
                          if m.at >= replaced and m.payload and
                          m.topic == protocol.Topics().state(node)]
                handover += [(b[0] - a[0]) * 1000 for a, b in itertools.pairwise(states)
                             if a[1]["state"] == "lost" and b[1]["state"] == "ready" and
                             a[1]["session"] != b[1]["session"]]
                new, born = next(((m["session"], t) for t, m in states
                                  if m["state"] == "ready"), (None, 0.0))
                for at, message in states:
                    if message["state"] == "lost" and message["session"] == new:
                        kicks.append((at - born) * 1000)
                        back = next((t for t, m in states if t > at and m["state"] == "ready"
                                     and m["session"] == new), None)
                        if back is not None:
                            blips.append((back - at) * 1000)
                ended = time.time()
                second.kill()
                second.wait()
                wait(f"{node} offline", lambda n=node, t=ended: arrival(sink, n, t, "lost"), 10)
        finally:
            recorder.stop()
            log.close()
    print(f"4. crash -> monitor latency, kill -9 of a node process, {kills} kills (ms):")
    print(f"   {percentiles(samples)}   requests per delivered item {per_item:.3f}")
    print("   takeovers at the broker (ms): old will -> new ready "
          f"{percentiles(handover) if handover else 'none'};")
    print("   new process dropped by the old one's reconnect: after its ready "
          f"{percentiles(kicks) if kicks else 'never'} (TAKEOVER_WINDOW is 2000),")
    print(f"   back {percentiles(blips) if blips else '-'} later (TAKEOVER_HOLD is 750); "
          f"{len(kicks)} of 10 takeovers")
    return figures


def rss_10k() -> None:
    with tempfile.TemporaryDirectory() as name:
        rig = Rig(Path(name), concurrency=8)
        try:
            idle = rig.rss_mb()
            nodes = [f"n{i:05d}" for i in range(10_000)]
            for node in nodes:
                rig.publisher.state(node, "ready")
                rig.publisher.status(node)
            wait("10,000 nodes known",
                 lambda: rig.metrics().get("yl_bridge_nodes_known", 0) >= 10_000, 120)
            wait("outbox drained", rig.drained, 300)
            known = rig.metrics()["yl_bridge_nodes_known"]
            rss = rig.rss_mb()
        finally:
            rig.close()
    print(f"5. bridge RSS: {idle:.0f} MB idle, {rss:.0f} MB with {known:.0f} nodes known "
          f"(all registered and delivered)")


def http_paths(requests: int) -> None:
    """One heartbeat request, the same bytes each time, into the sink on 1 and 4 keep-alive
    connections, with a little Python work before each as a delivery has: the forwarder's
    path (``MonitorConnection``, an asyncio protocol feeding the parser) against asyncio
    streams with the same parser and a ``wait_for`` per request (its previous design), a
    blocking socket per worker thread, and ``http.client`` threads; alone, and beside a thread
    that works as the bridge's writer does (Python work between short waits). CPU is this
    process's (the sink runs apart; the busy thread's own CPU is in it)."""
    import asyncio
    import resource

    from bridge.monitor_client import Exchange, MonitorClient, MonitorConnection
    from yl_core.config import MonitorConfig

    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "yl_status.monitor_double", "--port",
                             str(port), "--keep", "10"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    client = MonitorClient(MonitorConfig(url=url))
    body = {"node_id": "loop-node", "status": "online", "timestamp": timestamps.utc_now_iso(),
            "resources": {}, "gui": {}}
    request = client.heartbeat_request("loop-node", body)
    head, _, data = request.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:]
                   if not line.startswith(("Host", "Content-Length")))

    def refused() -> None:
        raise SystemExit("bench: the sink refused a heartbeat")

    item = {"gui": {"flags": list(range(50))}, "resources": {"cpu": 1.5}}

    def per_item() -> None:
        """What a delivery does in Python around its request (the outbox, the body)."""
        for _ in range(4):
            json.loads(json.dumps(item))

    def run_workers(worker: Any, connections: int) -> None:
        async def run() -> None:
            await asyncio.gather(*(worker(requests // connections)
                                   for _ in range(connections)))

        asyncio.run(run())

    def forwarder(connections: int) -> None:
        async def worker(count: int) -> None:
            connection = MonitorConnection(client)
            for _ in range(count):
                per_item()
                if (await connection.exchange(request)).status != 200:
                    refused()
            connection.close()

        run_workers(worker, connections)

    def streams(connections: int) -> None:
        async def worker(count: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                       socket.TCP_NODELAY, 1)

            async def exchange() -> int:
                writer.write(request)
                answer = Exchange()
                while not answer.feed(await reader.read(65536)):
                    pass
                return answer.status

            for _ in range(count):
                per_item()
                if await asyncio.wait_for(exchange(), 5.0) != 200:
                    refused()
            writer.close()

        run_workers(worker, connections)

    def threads(work: Any, connections: int) -> None:
        running = [threading.Thread(target=work, args=(requests // connections,))
                   for _ in range(connections)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()

    def blocking(count: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), 5.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            per_item()
            deadline = time.monotonic() + 5.0
            sock.settimeout(deadline - time.monotonic())
            sock.sendall(request)
            answer = Exchange()
            while not answer.feed(sock.recv(65536)):
                sock.settimeout(deadline - time.monotonic())
            if answer.status != 200:
                refused()
        sock.close()

    def plain(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(count):
            per_item()
            connection.request("POST", "/api/ar/nodes/loop-node/heartbeat", body=data,
                               headers=headers)
            connection.getresponse().read()
        connection.close()

    def writer_like(stop: threading.Event) -> None:
        document = {"gui": {"flags": list(range(50))}, "resources": {"cpu": 1.5}}
        while not stop.is_set():
            for _ in range(150):  # a batch of statuses: about 2 ms of Python
                json.loads(json.dumps(document))
            time.sleep(0.001)

    def measure(run: Any, beside: bool) -> tuple[float, float]:
        stop = threading.Event()
        busy = threading.Thread(target=writer_like, args=(stop,))
        if beside:
            busy.start()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu, began = usage.ru_utime + usage.ru_stime, time.monotonic()
        run()
        elapsed = time.monotonic() - began
        stop.set()
        if beside:
            busy.join()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return requests / elapsed, (usage.ru_utime + usage.ru_stime - cpu) / requests * 1e6

    try:
        wait("sink", lambda: get(url + "/api/health"))
        print(f"6. one request's path, {requests} heartbeats into the sink, same bytes; rate "
              "/s (ratio to the forwarder's), this process's CPU us per request:")
        for beside in (False, True):
            for connections in (1, 4):
                for round_ in (1, 2):
                    ours = measure(partial(forwarder, connections), beside)
                    rivals = {
                        "asyncio streams, wait_for": measure(partial(streams, connections),
                                                             beside),
                        "blocking sockets, a thread each":
                            measure(partial(threads, blocking, connections), beside),
                        "http.client threads":
                            measure(partial(threads, plain, connections), beside)}
                    print(f"   {'beside a busy thread, ' if beside else ''}{connections} "
                          f"connection(s), round {round_}: forwarder (asyncio) {ours[0]:6.0f}/s "
                          f"{ours[1]:5.1f} us;  " + ";  ".join(
                              f"{name} {rate:6.0f}/s ({rate / ours[0]:.2f}) {cpu:5.1f} us"
                              for name, (rate, cpu) in rivals.items()))
    finally:
        sink.terminate()
        sink.wait()


def receiver_side_by_side(seconds: float) -> None:
    """The status session in a child process (``bridge.status_receiver: process``, the
    default) against a thread of the bridge's process, on SQLite: ``bench.capacity``'s steps
    for each, then the highest rate each sustains and its CPU per heartbeat."""
    from bench import capacity  # it builds on this module's rig: imported here, not above

    results = {mode: capacity.measure("sqlite", seconds,
                                      bridge_options={"status_receiver": mode})
               for mode in ("process", "thread")}
    print("7. the status receiver, a child process against a thread (SQLite, "
          f"{capacity.NODES} nodes):")
    for mode, found in results.items():
        print(f"   {mode:7s}: sustained {found['sustained']:5.0f} heartbeats/s at "
              f"{found['cpu'] * 1e6:4.0f} us of CPU per heartbeat, RSS {found['rss']:.0f} MB")
    process, thread = results["process"], results["thread"]
    if thread["sustained"]:
        print(f"   process/thread sustained rate: {process['sustained'] / thread['sustained']:.2f}")


GUI_NODES = 500
GUI_MIN_HEARTBEATS = 300
GUI_RATES = (10.0, 100.0, 1000.0)


def _profile_top(raw: Path, entries: int = 12) -> str:
    """The functions with the most samples of their own (the innermost frame) in a
    ``py-spy record -f raw`` file, as lines of "share function (file:line)"."""
    own: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frame = stack.split(";")[-1]
            own[frame] = own.get(frame, 0) + int(count)
            total += int(count)
    top = sorted(own.items(), key=lambda item: -item[1])[:entries]
    return "\n".join(f"     {n / max(total, 1) * 100:5.1f} %  {frame}" for frame, n in top)


def _node_red_window(rig: Rig, workdir: Path, seconds: float) -> dict[str, float]:
    """The bridge stopped, ``bench.node_red``'s flow doing its job on the same feed into the
    same double: its CPU per heartbeat the double recorded, and the double's per request."""
    rig.stop_bridge()
    with NodeRedFlow(workdir, rig.broker.port, "bench-recorder", TEST_PASSWORD,
                     rig.sink_url) as flow:
        stats = rig.sink_url + "/_double/stats"
        began = get(stats)["heartbeats"]
        wait("Node-RED forwarding", lambda: get(stats)["heartbeats"] > began + 10, 60)
        time.sleep(2.0)  # warm-up, as for the bridge
        red, sink = psutil.Process(flow.pid), psutil.Process(rig.sink.pid)
        red_cpu, sink_cpu, before = _cpu_seconds(red), _cpu_seconds(sink), get(stats)
        start = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        red_cpu, sink_cpu, after = _cpu_seconds(red) - red_cpu, \
            _cpu_seconds(sink) - sink_cpu, get(stats)
    heartbeats = after["heartbeats"] - before["heartbeats"]
    requests = after["requests"] - before["requests"] - 1  # less the stats read before
    return {"per_heartbeat": red_cpu / max(heartbeats, 1) * 1e6, "rate": heartbeats / elapsed,
            "refused": requests - heartbeats, "core": red_cpu / elapsed * 100,
            "double": sink_cpu / max(requests, 1) * 1e6}


def gui_like(seconds: float, rate: float = 1000.0, profile: bool = False,
             node_red: bool = False, receiver: str = "child") -> dict[str, float]:
    """``GUI_NODES`` nodes sending ``rate`` statuses a second in all, retained, with their
    message expiry, as GUIs do, into the monitor double (a process of its own): the CPU the
    bridge's processes use per forwarded heartbeat, against the double's per request. The
    window is long enough for ``GUI_MIN_HEARTBEATS`` at the rate. ``node_red``: then the
    same for ``bench.node_red``'s flow, on the same feed and double. ``receiver``: the
    bridge's ``status_receiver`` (``child`` or ``thread``)."""
    label = "" if receiver == "child" else f", receiver {receiver}"
    seconds = max(seconds, GUI_MIN_HEARTBEATS / rate)
    red: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as name:
        rig = Rig(Path(name), gui_like=True,
                  bridge_options=None if receiver == "child" else {"status_receiver": receiver})
        try:
            nodes = [f"gui-{i:03d}" for i in range(GUI_NODES)]
            for node in nodes:
                rig.publisher.state(node, "ready")
                rig.publisher.status(node)
            wait("nodes online", rig.drained, 120)
            stop = threading.Event()

            def feed() -> None:
                began, sent = time.monotonic(), 0
                while not stop.is_set():
                    for node in nodes:
                        rig.publisher.status(node)
                        sent += 1
                        if sent % 50 == 0:
                            ahead = sent / rate - (time.monotonic() - began)
                            if ahead > 0:
                                stop.wait(ahead)
                    if stop.is_set():
                        return

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            try:
                time.sleep(2.0)  # warm-up: the measured window starts in the steady state
                bridge, sink = psutil.Process(rig.bridge.pid), psutil.Process(rig.sink.pid)
                spy = Path(sys.executable).with_name("py-spy")
                recording = subprocess.Popen(
                    [str(spy), "record", "--pid", str(rig.bridge.pid), "--subprocesses",
                     "--duration", str(int(seconds)), "--rate", "250", "--nonblocking",
                     "--format", "raw", "--output", str(Path(name) / "profile.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) \
                    if profile and spy.exists() else None
                bridge_cpu, sink_cpu = _cpu_seconds(bridge), _cpu_seconds(sink)
                forwarded, requests = rig.forwarded(), get(rig.sink_url + "/_double/stats")[
                    "requests"]
                began = time.monotonic()
                time.sleep(seconds)
                elapsed = time.monotonic() - began
                bridge_cpu = _cpu_seconds(bridge) - bridge_cpu
                sink_cpu = _cpu_seconds(sink) - sink_cpu
                forwarded = rig.forwarded() - forwarded
                requests = get(rig.sink_url + "/_double/stats")["requests"] - requests
                if recording is not None:
                    recording.wait(60)
                    top = _profile_top(Path(name) / "profile.txt")
                if node_red:
                    red = _node_red_window(rig, Path(name) / "node-red", seconds)
            finally:
                stop.set()
                feeder.join(10)
        finally:
            rig.close()
    per_heartbeat = bridge_cpu / max(forwarded, 1.0) * 1e6
    per_request = sink_cpu / max(requests, 1) * 1e6
    print(f"8. GUI-like load: {GUI_NODES} nodes, {rate:.0f} retained statuses/s with expiry, "
          f"into the monitor double, {elapsed:.0f} s{label}:")
    print(f"   forwarded {forwarded / elapsed:.0f}/s; the bridge's processes "
          f"{per_heartbeat:.0f} us of CPU per heartbeat ({bridge_cpu / elapsed * 100:.0f} % "
          f"of a core), the double {per_request:.0f} us per request; ratio "
          f"{per_heartbeat / per_request:.2f}")
    if profile:
        print("   the bridge's processes by own samples (py-spy, nonblocking):\n" +
              (top if recording is not None else "     (py-spy is not installed)"))
    figures = {f"GUI-like {rate:.0f}/s{label}: bridge CPU us per heartbeat": per_heartbeat,
               f"GUI-like {rate:.0f}/s{label}: bridge / double CPU per request":
                   per_heartbeat / per_request}
    if red:
        print(f"   Node-RED {NODE_RED} (mqtt in -> function -> http request) on the same feed, "
              f"the bridge stopped: forwarded {red['rate']:.0f}/s ({red['refused']:.0f} "
              f"requests refused), {red['per_heartbeat']:.0f} us of CPU per heartbeat "
              f"({red['core']:.0f} % of a core), the double {red['double']:.0f} us per "
              f"request; the bridge's CPU per heartbeat / Node-RED's "
              f"{per_heartbeat / red['per_heartbeat']:.2f} (Node-RED kept up: "
              f"{'yes' if red['rate'] >= 0.95 * rate else 'no'})")
        figures[f"GUI-like {rate:.0f}/s: bridge / Node-RED CPU per heartbeat"] = \
            per_heartbeat / red["per_heartbeat"]
    return figures


def _thread_switches(process: psutil.Process) -> dict[int, int]:
    """Context switches so far per thread (native id) of a process and its children: a
    thread that sleeps and wakes switches at least once each time."""
    out: dict[int, int] = {}
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            for thread in each.threads():
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{each.pid}/task/{thread.id}/status").read_text()
                    out[thread.id] = sum(int(line.split()[1]) for line in text.splitlines()
                                         if line.startswith(("voluntary_ctxt_switches",
                                                             "nonvoluntary_ctxt_switches")))
    return out


def _run_seconds(process: psutil.Process) -> float:
    """Seconds on a CPU so far of a process and its children, to the nanosecond (the
    scheduler's own account, ``/proc/PID/task/TID/schedstat``; ``cpu_times`` counts in
    10 ms ticks, too coarse for a process at rest)."""
    total = 0
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error, OSError):
            for task in Path(f"/proc/{each.pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _thread_names(process: psutil.Process) -> dict[int, str]:
    """Thread names by native id, from ``py-spy dump`` (empty if it is not installed)."""
    spy = Path(sys.executable).with_name("py-spy")
    names: dict[int, str] = {}
    if not spy.exists():
        return names
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error, OSError, subprocess.SubprocessError):
            text = subprocess.run([str(spy), "dump", "--pid", str(each.pid)], check=False,
                                  capture_output=True, text=True, timeout=20).stdout
            for line in text.splitlines():
                if line.startswith("Thread ") and '"' in line:
                    tid = line.split()[1]
                    if tid.isdigit():
                        names[int(tid)] = line.split('"')[1]
    return names


def at_rest(seconds: float, monitor_down: bool) -> dict[str, float]:
    """The bridge with no nodes for ``seconds``: its processes' share of a core, and each
    thread's wakes a second."""
    label = "unreachable" if monitor_down else "answering"
    with tempfile.TemporaryDirectory() as name:
        rig = Rig(Path(name), monitor_down=monitor_down)
        try:
            time.sleep(3.0)  # past the start: the first looks, the retained rounds
            bridge = psutil.Process(rig.bridge.pid)
            cpu, switches = _run_seconds(bridge), _thread_switches(bridge)
            began = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - began
            cpu = _run_seconds(bridge) - cpu
            after = _thread_switches(bridge)
            names = _thread_names(bridge)
        finally:
            rig.close()
    wakes = sorted(((after[t] - switches.get(t, 0)) / elapsed, names.get(t, str(t)))
                   for t in after)[::-1]
    busy = [w for w in wakes if w[0] > 1.0]
    print(f"9. at rest, no nodes, monitor {label}, {elapsed:.0f} s: the bridge's processes "
          f"use {cpu / elapsed * 100:.3f} % of a core, {len(after)} threads; wakes a second, "
          "busiest first: " + ", ".join(f"{n} {w:.1f}" for w, n in wakes[:6]))
    return {f"at rest, monitor {label}: % of a core": cpu / elapsed * 100,
            f"at rest, monitor {label}: busiest thread's wakes/s": wakes[0][0] if wakes
            else 0.0,
            f"at rest, monitor {label}: threads waking > 1/s": float(len(busy))}


def baseline_src(ref: str, into: Path) -> Path:
    """The ``src/`` of git revision ``ref``, extracted into ``into``."""
    archive = subprocess.run(["git", "archive", ref, "src"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def side_by_side(results: dict[str, list[dict[str, float]]]) -> None:
    """Each figure's median per bridge over the rounds, and the ratio now / before."""
    labels = list(results)
    print(f"side by side ({', '.join(labels)}; medians of "
          f"{len(results[labels[0]])} rounds; ratio {labels[-1]} / {labels[0]}):")
    names = list(dict.fromkeys(n for runs in results.values() for run in runs for n in run))
    width = max(len(n) for n in names)
    for name in names:
        values = [statistics.median([run[name] for run in runs if name in run] or [0.0])
                  for runs in results.values()]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        print(f"   {name:{width}s}  " + "  ".join(f"{v:9.3f}" for v in values) +
              f"  ratio {ratio:.2f}")


def run_scenarios(args: argparse.Namespace) -> dict[str, float]:
    only = set(args.only or ["rate", "ingest", "latency", "crash", "rss", "http", "receiver",
                             "gui", "rest"])
    offer_reference = OFFER_REFERENCE if args.baseline is not None else None
    figures: dict[str, float] = {}
    if "rate" in only:
        if args.sink in ("fast", "both"):
            figures |= forwarding_rate(args.seconds, fast_sink=True,
                                       offer_reference=offer_reference)
        if args.sink in ("double", "both"):
            for delay in args.sink_delay or [0.0, 0.001]:
                figures |= forwarding_rate(args.seconds, sink_delay=delay,
                                           offer_reference=offer_reference)
    if "ingest" in only:
        ingest(args.seconds)
    if "latency" in only:
        latency(args.changes)
    if "crash" in only:
        figures |= crash_latency(args.kills, args.flood)
    if "rss" in only:
        rss_10k()
    if "http" in only:
        http_paths(args.requests)
    if "receiver" in only:
        receiver_side_by_side(5.0)
    if "gui" in only:
        for rate in args.gui_rate or GUI_RATES:
            for receiver in ("child", "thread") if args.gui_receiver == "both" else \
                    (args.gui_receiver,):
                figures |= gui_like(args.seconds, rate, args.profile, args.node_red, receiver)
    if "rest" in only:
        for monitor_down in (False, True):
            figures |= at_rest(args.rest_seconds, monitor_down)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--flood", type=float, default=0.0,
                        help="in the crash scenario, other nodes' statuses a second during "
                             "the kills (e.g. 3000; the takeovers are then left out)")
    parser.add_argument("--only", action="append",
                        choices=["rate", "ingest", "latency", "crash", "rss", "http",
                                 "receiver", "gui", "rest"],
                        help="a scenario to run (repeatable)")
    parser.add_argument("--requests", type=int, default=8000,
                        help="requests per variant in the http scenario")
    parser.add_argument("--sink-delay", type=float, action="append",
                        help="seconds the monitor double takes per request in the rate "
                             "scenario (repeatable; default: 0 and 0.001)")
    parser.add_argument("--sink", choices=["fast", "double", "both"], default="both",
                        help="the rate scenario's sink: bench.fast_sink, the monitor double "
                             "(at each --sink-delay), or both (default)")
    parser.add_argument("--gui-rate", type=float, action="append",
                        help="statuses a second in all in the GUI-like scenario (repeatable; "
                             "default: 10, 100 and 1000)")
    parser.add_argument("--profile", action="store_true",
                        help="profile the bridge's processes in the GUI-like scenario "
                             "(py-spy) and print the functions with most samples")
    parser.add_argument("--node-red", action="store_true",
                        help="in the GUI-like scenario, also a Node-RED flow doing the "
                             "bridge's job (bench.node_red; installed with npm on first use)")
    parser.add_argument("--gui-receiver", choices=["child", "thread", "both"],
                        default="child",
                        help="the bridge's status receiver in the GUI-like scenario: a child "
                             "process (the default), a thread of the bridge, or both in turn")
    parser.add_argument("--rest-seconds", type=float, default=20.0,
                        help="how long the at-rest scenario measures each bridge")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run each scenario with the bridge of this git revision")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --baseline: rounds of both, interleaved")
    args = parser.parse_args()
    global BRIDGE_SRC
    if args.baseline is None:
        run_scenarios(args)
        return
    with tempfile.TemporaryDirectory() as name:
        bridges = {args.baseline: baseline_src(args.baseline, Path(name)), "now": None}
        results: dict[str, list[dict[str, float]]] = {label: [] for label in bridges}
        for round_number in range(1, args.rounds + 1):
            for label, src in bridges.items():
                print(f"--- round {round_number}, bridge {label} ---", flush=True)
                BRIDGE_SRC = src
                results[label].append(run_scenarios(args))
        BRIDGE_SRC = None
    side_by_side(results)


if __name__ == "__main__":
    main()
