"""Bridge metrics in the Prometheus text format, and the tiny HTTP server exposing them."""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               300.0, 3600.0)


class Metrics:
    """Counters, gauges and one histogram, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}
        self._lag_counts = [0] * (len(LAG_BUCKETS) + 1)
        self._lag_sum = 0.0
        self._lag_count = 0

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        if amount:
            with self._lock:
                self.counters[(name, tuple(sorted(labels.items())))] += amount

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def delivered(self, kind: str, lag: float) -> None:
        """One message reached the monitor ``lag`` seconds after the bridge received it."""
        with self._lock:
            self.counters[("forwarded", (("kind", kind),))] += 1
            self._lag_counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
            self._lag_sum += lag
            self._lag_count += 1

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = sorted(self.counters.items())
            lag_counts, lag_sum, lag_count = list(self._lag_counts), self._lag_sum, \
                self._lag_count
        seen: set[str] = set()
        for (name, labels), value in counters:
            full = f"yl_bridge_{name}_total"
            if full not in seen:
                lines.append(f"# TYPE {full} counter")
                seen.add(full)
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{full}{{{label_text}}} {value:g}" if labels else f"{full} {value:g}")
        for name, read in sorted(self.gauges.items()):
            try:
                reading = float(read())
            except Exception:
                log.debug("gauge %s failed", name, exc_info=True)
                continue
            lines.append(f"# TYPE yl_bridge_{name} gauge")
            lines.append(f"yl_bridge_{name} {reading:g}")
        lines.append("# TYPE yl_bridge_delivery_lag_seconds histogram")
        cumulative = 0
        for bound, count in zip((*LAG_BUCKETS, float("inf")), lag_counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'yl_bridge_delivery_lag_seconds_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"yl_bridge_delivery_lag_seconds_sum {lag_sum:g}")
        lines.append(f"yl_bridge_delivery_lag_seconds_count {lag_count}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a loopback address (``bridge.metrics``)."""

    def __init__(self, address: str, metrics: Metrics, health: Callable[[], dict[str, Any]]
                 ) -> None:
        host, _, port = address.rpartition(":")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, metrics.render().encode(), "text/plain; version=0.0.4")
                elif self.path == "/healthz":
                    import json  # noqa: PLC0415

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

        self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="yl-bridge-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(2)
