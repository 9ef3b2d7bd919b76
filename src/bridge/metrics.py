"""Bridge metrics (``prometheus_client``) and the small HTTP server exposing them.

Every reading comes from memory: a scrape opens no file and keeps nothing, however often it
comes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from yl_core.service import listen_error

log = logging.getLogger(__name__)

PREFIX = "yl_bridge_"
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               300.0, 3600.0)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "received": ("Messages received from the broker, by topic kind", ("kind",)),
    "forwarded": ("Messages delivered to the monitor, by kind", ("kind",)),
    "coalesced": ("Statuses replaced by a newer one before delivery", ()),
    "rejected": ("Messages not delivered: invalid, stale, or refused by the monitor",
                 ("reason",)),
    "duplicates": ("Messages already recorded (redelivered or repeated)", ()),
    "dropped": ("Messages dropped to keep the outbox bounded", ("reason",)),
    "retries": ("Deliveries to try again later (monitor unreachable or failing)", ()),
    "registered": ("Nodes registered at the monitor", ()),
    "refreshed": ("Heartbeats repeated for nodes that are up, for a v1 monitor whose own "
                  "process scan marks them offline (monitor.v1_refresh)", ()),
    "retold": ("Nodes told their current truth again: the monitor no longer listed them, or "
               "showed them otherwise than told (monitor.look_interval)", ()),
    "retained_rereads": ("Rounds of retained messages read again because the bridge's "
                         "session may have missed some: a gap in a node's seq, or statuses "
                         "that waited at the broker 2 s or more (its queue for the bridge "
                         "may overflow)",
                         ()),
    "silences": ("Nodes recorded as fallen silent (up at the monitor, their session ready, "
                 "nothing heard for three report intervals), each told offline (stale)", ()),
    "withdrawn": ("Wills withdrawn: a process dropped by its replaced rival's reconnect was "
                  "back within the takeover hold", ()),
    "outbox_errors": ("Outbox writes that failed (nothing was acknowledged)", ()),
    "clock_skew_reports": ("Nodes found with a clock far from the bridge's (logged once each)",
                           ()),
}
GAUGES: dict[str, str] = {
    "outbox_transitions": "Transitions waiting in the outbox",
    "outbox_statuses": "Statuses waiting in the outbox",
    "nodes_known": "Nodes the bridge has seen",
    "monitor_reachable": "1 while the monitor answers",
    "broker_connected": "1 while the broker session is connected",
    "outbox_ok": "1 while outbox writes succeed",
    "max_clock_skew_seconds": "Largest difference between a node's clock and the bridge's",
    "active": "1 while this instance is the active one and its lease holds (always, with an "
              "SQLite outbox); 0 while it stands by",
}


def _zero() -> float:
    return 0.0


class Metrics:
    """The bridge's metrics in a registry of their own; safe to update from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauges: dict[str, Gauge] = {}
        self._counters = {
            name: Counter(PREFIX + name, text, labels, registry=self.registry)
            for name, (text, labels) in COUNTERS.items()}
        self._api = Gauge(PREFIX + "monitor_api",
                          "1 for the API the monitor was found to serve (none: neither)",
                          ("profile",), registry=self.registry)
        self._lag = Histogram(PREFIX + "delivery_lag_seconds",
                              "Seconds from receipt at the bridge to delivery at the monitor",
                              registry=self.registry, buckets=LAG_BUCKETS)

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        if amount:
            counter = self._counters[name]
            (counter.labels(**labels) if labels else counter).inc(amount)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Read the gauge ``name`` from ``read`` from now on (replacing an earlier reader)."""
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges[name] = Gauge(PREFIX + name, GAUGES[name],
                                               registry=self.registry)
        gauge.set_function(read)

    def idle(self) -> None:
        """Every gauge of the bridge's work reads 0 (a standby instance does none); the
        ``active`` gauge is its lease's to say."""
        for name in GAUGES:
            if name != "active":
                self.gauge(name, _zero)

    def api(self, profile: str | None) -> None:
        """The monitor's API: ``nodes-api``, ``v1``, ``none`` (neither), None (not known)."""
        for name in ("nodes-api", "v1", "none"):
            self._api.labels(profile=name).set(float(name == profile))

    def delivered(self, kind: str, lag: float) -> None:
        """One message reached the monitor ``lag`` seconds after the bridge received it."""
        self._counters["forwarded"].labels(kind=kind).inc()
        self._lag.observe(lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a loopback address (``bridge.metrics``)."""

    def __init__(self, address: str, metrics: Metrics, health: Callable[[], dict[str, Any]],
                 *, source: str = "<config>") -> None:
        """A busy or unusable ``address`` is a ``ConfigError`` naming ``bridge.metrics``;
        port 0 takes a free port (``port`` says which)."""
        host, _, port = address.rpartition(":")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    state = health()
                    self._send(200 if state.get("ok") else 503, json.dumps(state).encode(),
                               "application/json")
                else:
                    self._send(404, b'{"error":"not_found"}', "application/json")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        try:
            self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        except OSError as exc:
            raise listen_error(exc, host, int(port), key="bridge.metrics",
                               source=source) from exc
        self.server.daemon_threads = True
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="yl-bridge-metrics",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        host = self.server.server_address[0]
        log.info("metrics and health on http://%s:%d", host, self.port)
        return self

    def _serve(self) -> None:
        """Answer requests until ``stop``; asleep in between (``serve_forever`` wakes
        every ``poll_interval`` to look for a shutdown)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.server, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_reader in ready:
                    return
                self.server.handle_request()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(2)
        self.server.server_close()
        self._wake_reader.close()
        self._wake_writer.close()
