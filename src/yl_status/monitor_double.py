"""A YL-monitor test double that follows SPEC §4, quirks included.

- ``POST /api/ar/nodes/{id}/heartbeat``: 422 on a malformed body, 400 when the body's
  ``node_id`` differs from the path; an unknown node is auto-registered by its first heartbeat
  and that heartbeat is *not* recorded.
- ``POST /api/ar/nodes/register`` (may be switched off: then 404, like monitors without it).
- ``GET /api/ar/nodes``, ``GET /api/ar/nodes/{id}`` with ``is_online`` true only while
  ``status == "online"`` and the last heartbeat is fresher than 2 x the check interval.
- ``GET /api/health``; ``GET /api/alerts`` (a bare list, or ``{"alerts": [...]}``);
  ``POST /api/alerts/{id}/acknowledge`` (422 without ``user``, 404 for an unknown id).
- ``POST /api/v1/ar/heartbeat?node_id=`` (the deployed 1.0.6): body ignored, 200 always,
  recorded only for a node it knows (its ``nodes.yaml``: ``known``); ``GET /api/v1/ar/nodes``:
  the node ids it knows.
- ``api``: ``both`` (default), or only ``nodes-api``, or only ``v1`` as the deployed 1.0.6
  (every other ``/api/ar/…`` and ``/api/v1/…`` route is 404).
- ``scan``: 1.0.6's own process scan of its host for the GUI node (``user-gui``), every
  ``scan_interval`` (10 s): a scan that sees the GUI process marks it online and resets its
  misses; from the third miss on, every scan marks it offline; a v1 heartbeat marks it online
  and does *not* reset the misses. ``process_scan()`` looks for ``user/main.py`` as 1.0.6
  does; ``online_share()`` says how much of a time the node was shown online.
- ``GET /_double/stats``, ``GET /_double/arrivals?after=N`` (when each heartbeat after the
  first N arrived), ``POST /_double/fail?code=503`` (empty code: recover): the double's own
  controls, for benchmarks that run it as a separate process.

It is a real HTTP/1.1 server on a socket. It can go down (connection refused) and come back
on the same port, answer 500s or 429s on demand, and records every request.

Run alone (the demo does): ``python -m yl_status.monitor_double --port 5500``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psutil


@dataclass
class Heartbeat:
    node_id: str
    status: str | None
    reason: str | None
    body: dict[str, Any]
    at: float


@dataclass
class Node:
    node_id: str
    node_name: str
    node_type: str
    status: str = "unknown"
    last_heartbeat: float | None = None
    last_check: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: MonitorDouble) -> None:
        self.double = double
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (timed out, dropped) is no error of the double's."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        double = self.server.double
        if double.hanging.is_set():
            # A black hole: the request is read, never answered and never applied.
            with double.lock:
                double.held += 1
            double.answering.wait()
            self.close_connection = True
            return
        code, body, headers = self.server.double.handle(
            method, self.path, raw, self.headers.get("Authorization"),
            self.headers.get("User-Agent"))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


def _node_of(target: str, raw: bytes) -> str:
    """The node a request is about (the path's, or a registration's body's), else the path."""
    path = [unquote(p) for p in urlsplit(target).path.split("/") if p]
    if path[:3] == ["api", "ar", "nodes"] and len(path) == 5 and path[4] == "heartbeat":
        return path[3]
    if path == ["api", "ar", "nodes", "register"]:
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(raw).get("node_id"))
    return target


def arrivals_after(after: str, total: int, remembered: Sequence[float]) -> tuple[int, Any]:
    """``GET /_double/arrivals?after=N``: when each heartbeat counted after the first ``after``
    arrived, as far as ``remembered`` (the latest arrival times, oldest first, of ``total``
    counted) still goes; with the number of the first one given."""
    try:
        first = int(after)
    except ValueError:
        return 422, {"detail": f"after must be a whole number, not {after!r}"}
    wanted = max(total - first, 0)
    kept = list(remembered)[-wanted:] if wanted else []
    return 200, {"after": total - len(kept), "at": kept}


class MonitorDouble:
    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", check_interval: float = 30.0,
                 register_route: bool = True, wrap_alerts: bool = False,
                 token: str | None = None, delay: float = 0.0, keep: int | None = None,
                 tls: ssl.SSLContext | None = None, api: str = "both",
                 known: tuple[str, ...] = (), scan: Callable[[], bool] | None = None,
                 scan_interval: float = 10.0, scan_node: str = "user-gui") -> None:
        """``keep``: how many of the latest heartbeats and requests to remember (all by
        default; a long benchmark bounds it so the double's cost stays flat)."""
        self.host = host
        self.port = port
        self.check_interval = check_interval
        self.register_route = register_route
        self.wrap_alerts = wrap_alerts
        self.token = token
        self.delay = delay
        self.tls = tls
        """Serve HTTPS with this server context."""
        if api not in ("both", "nodes-api", "v1"):
            raise ValueError(f"api must be both, nodes-api or v1, not {api!r}")
        self.api = api
        self.failure: tuple[int, dict[str, str]] | None = None
        self.hanging = threading.Event()
        self.answering = threading.Event()
        self.answering.set()
        self.refused_nodes: dict[str, int] = {}
        self.lock = threading.Lock()
        self.nodes: dict[str, Node] = {n: Node(n, n, "user-gui") for n in known}
        self.heartbeats: deque[Heartbeat] = deque(maxlen=keep)
        self.requests: deque[tuple[str, str, int, float, str | None]] = deque(maxlen=keep)
        """(method, target, status code, monotonic time, User-Agent) of each request."""
        self.request_total = 0
        self.heartbeat_total = 0
        self._in_flight: dict[str, int] = {}
        self._in_flight_total = 0
        self.held = 0
        """Requests read while hanging (``hang``), never answered."""
        self.peak_in_flight = 0
        """Most requests handled at once, and most at once for one node."""
        self.peak_in_flight_one_node = 0
        self.alerts: list[dict[str, Any]] = [
            {"id": "1", "level": "warning", "status": "active", "node_id": "node-1",
             "message": "cpu above 80 %", "created_at": "2026-01-01T00:00:00Z"},
            {"id": "2", "level": "critical", "status": "active", "node_id": "node-2",
             "message": "node offline", "created_at": "2026-01-01T00:01:00Z"},
            {"id": "3", "level": "info", "status": "acknowledged", "node_id": "node-1",
             "message": "restarted", "created_at": "2026-01-01T00:02:00Z",
             "acknowledged_by": "ops"},
        ]
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.scan = scan
        self.scan_interval = scan_interval
        self.scan_node = scan_node
        self._misses = 0
        self.shown: list[tuple[float, bool]] = []
        """(monotonic time, online) each time what a v1 monitor shows of ``scan_node``
        changes."""
        self._scanner: threading.Thread | None = None
        self._stop_scan = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> MonitorDouble:
        """Listen (again, on the same port after ``down()``)."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="monitor-double", daemon=True)
        self._thread.start()
        if self.scan is not None and self._scanner is None:
            self._stop_scan.clear()
            self._scanner = threading.Thread(target=self._scan_forever, args=(self.scan,),
                                             name="monitor-double-scan", daemon=True)
            self._scanner.start()
        return self

    def _scan_forever(self, scan: Callable[[], bool]) -> None:
        while not self._stop_scan.wait(self.scan_interval):
            seen = scan()
            with self.lock:
                node = self.nodes.get(self.scan_node)
                if node is None:
                    continue
                if seen:
                    self._misses = 0
                    self._show(node, "running")
                else:
                    self._misses += 1
                    if self._misses >= 3:
                        self._show(node, "offline")

    def _show(self, node: Node, status: str) -> None:
        """Set a node's v1 status (caller holds the lock), noting changes of ``scan_node``."""
        node.status = status
        if node.node_id == self.scan_node:
            online = status == "running"
            if not self.shown or self.shown[-1][1] != online:
                self.shown.append((time.monotonic(), online))

    def online_share(self, start: float, end: float) -> float:
        """The share of [``start``, ``end``] (monotonic) a v1 monitor showed ``scan_node``
        online."""
        with self.lock:
            changes = list(self.shown)
        online, since, total = False, start, 0.0
        for at, now_online in changes:
            if at <= start:
                online = now_online
                continue
            if at >= end:
                break
            if online:
                total += at - since
            online, since = now_online, at
        if online:
            total += end - since
        return total / (end - start)

    def drop_connections(self) -> None:
        """Close every open connection (as a monitor does with idle keep-alive ones)."""
        if self._server is not None:
            self._server.drop_connections()

    def down(self) -> None:
        """Stop listening and drop every open connection: clients get connection refused."""
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            self._stop_scan.set()
            scanner.join(5)
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(5)

    stop = down

    def refuse_node(self, node_id: str, code: int | None) -> None:
        """Answer ``code`` (e.g. 422) to every heartbeat of one node (None: accept again)."""
        with self.lock:
            if code is None:
                self.refused_nodes.pop(node_id, None)
            else:
                self.refused_nodes[node_id] = code

    def hang(self) -> None:
        """Accept requests but neither answer nor apply them, until ``answer_again()``."""
        self.answering.clear()
        self.hanging.set()

    def answer_again(self) -> None:
        """End a hang: the requests held are dropped unanswered, new ones are served."""
        self.hanging.clear()
        self.answering.set()
        self.drop_connections()

    def forget(self, *, keep_connections: bool = False, node_id: str | None = None) -> None:
        """Lose every node (or ``node_id`` only), as a monitor restarted without its table:
        a restart also ends every open connection, unless a proxy in front keeps them
        (``keep_connections``; so does a node deleted in its UI or a database reset)."""
        with self.lock:
            if node_id is None:
                self.nodes.clear()
            else:
                self.nodes.pop(node_id, None)
        if not keep_connections:
            self.drop_connections()

    def fail_with(self, code: int | None, retry_after: float | None = None) -> None:
        """Answer every request with ``code`` (None: behave again)."""
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        with self.lock:
            self.failure = None if code is None else (code, headers)

    # --- queries for tests ----------------------------------------------------------------

    def history(self, node_id: str) -> list[Heartbeat]:
        with self.lock:
            return [h for h in self.heartbeats if h.node_id == node_id]

    def node_view(self, node_id: str) -> dict[str, Any] | None:
        with self.lock:
            node = self.nodes.get(node_id)
            return None if node is None else self._view(node, time.time())

    def is_online(self, node_id: str) -> bool:
        view = self.node_view(node_id)
        return bool(view and view["is_online"])

    def request_count(self, path_part: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.requests if path_part in r[1])

    def in_flight(self) -> int:
        """Requests being handled right now."""
        with self.lock:
            return self._in_flight_total

    # --- HTTP -----------------------------------------------------------------------------

    def handle(self, method: str, target: str, raw: bytes, auth: str | None,
               agent: str | None = None) -> tuple[int, Any, dict[str, str]]:
        key = _node_of(target, raw)
        with self.lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self._in_flight_total += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight_total)
            self.peak_in_flight_one_node = max(self.peak_in_flight_one_node,
                                               self._in_flight[key])
        try:
            if self.delay:
                time.sleep(self.delay)
            now = time.time()
            with self.lock:
                code, body, headers = self._route(method, target, raw, auth, now)
                self.requests.append((method, target, code, time.monotonic(), agent))
                self.request_total += 1
            return code, body, headers
        finally:
            with self.lock:
                self._in_flight_total -= 1
                self._in_flight[key] -= 1
                if not self._in_flight[key]:
                    del self._in_flight[key]

    def _route(self, method: str, target: str, raw: bytes, auth: str | None, now: float
               ) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        if method == "POST" and parts.path == "/_double/fail":
            asked = parse_qs(parts.query).get("code", [""])[0]
            self.failure = (int(asked), {}) if asked else None
            return 200, {"failure": asked or None}, {}
        if self.failure is not None:
            code, headers = self.failure
            return code, {"detail": "injected failure"}, headers
        if self.token is not None and auth != f"Bearer {self.token}":
            return 401, {"detail": "Not authenticated"}, {}
        path = [unquote(p) for p in parts.path.split("/") if p]
        if method == "GET" and path == ["_double", "stats"]:
            return 200, {"requests": self.request_total, "heartbeats": self.heartbeat_total,
                         "nodes": len(self.nodes)}, {}
        if method == "GET" and path == ["_double", "arrivals"]:
            code, body = arrivals_after(parse_qs(parts.query).get("after", ["0"])[0],
                                        self.heartbeat_total, [h.at for h in self.heartbeats])
            return code, body, {}
        if method == "GET" and path == ["api", "health"]:
            return 200, {"status": "healthy", "service": "yl-monitor", "version": "double"}, {}
        if path[:3] == ["api", "ar", "nodes"] and self.api != "v1":
            return self._nodes_api(method, path[3:], raw, now)
        if method == "GET" and path == ["api", "v1", "ar", "nodes"] and self.api != "nodes-api":
            return 200, sorted(self.nodes), {}
        if method == "POST" and path == ["api", "v1", "ar", "heartbeat"] and \
                self.api != "nodes-api":
            node_id = parse_qs(parts.query).get("node_id", [""])[0]
            node = self.nodes.get(node_id)
            if node is not None:
                self.heartbeats.append(Heartbeat(node_id, None, None, {}, now))
                self.heartbeat_total += 1
                node.last_heartbeat = now
                self._show(node, "running")
            return 200, {"status": "success", "message": "heartbeat received"}, {}
        if path[:2] == ["api", "alerts"]:
            return self._alerts(method, path[2:], raw)
        return 404, {"detail": "Not Found"}, {}

    def _nodes_api(self, method: str, rest: list[str], raw: bytes, now: float
                   ) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and not rest:
            return 200, [self._view(n, now) for n in self.nodes.values()], {}
        if method == "GET" and len(rest) == 1:
            node = self.nodes.get(rest[0])
            if node is None:
                return 404, {"detail": f"node {rest[0]} not found"}, {}
            return 200, self._view(node, now), {}
        if method == "POST" and rest == ["register"]:
            if not self.register_route:
                return 404, {"detail": "Not Found"}, {}
            body = _json_object(raw)
            if body is None or not all(isinstance(body.get(k), str) and body.get(k)
                                       for k in ("node_id", "node_name", "node_type")):
                return 422, {"detail": "node_id, node_name, node_type required"}, {}
            node = self.nodes.get(body["node_id"])
            if node is None:
                self.nodes[body["node_id"]] = Node(body["node_id"], body["node_name"],
                                                   body["node_type"])
            return 200, {"status": "success", "message": "registered"}, {}
        if method == "POST" and len(rest) == 2 and rest[1] == "heartbeat":
            return self._heartbeat(rest[0], raw, now)
        return 404, {"detail": "Not Found"}, {}

    def _heartbeat(self, node_id: str, raw: bytes, now: float
                   ) -> tuple[int, Any, dict[str, str]]:
        if node_id in self.refused_nodes:
            return self.refused_nodes[node_id], {"detail": "refused for this test"}, {}
        body = _json_object(raw)
        if body is None:
            return 422, {"detail": "body must be a JSON object"}, {}
        for key in ("node_id", "status", "timestamp"):
            if not isinstance(body.get(key), str):
                return 422, {"detail": f"field {key} required (string)"}, {}
        for key in ("resources", "gui"):
            if key in body and not isinstance(body[key], dict):
                return 422, {"detail": f"field {key} must be an object"}, {}
        if body["node_id"] != node_id:
            return 400, {"detail": "node_id in body does not match the path"}, {}
        node = self.nodes.get(node_id)
        if node is None:
            self.nodes[node_id] = Node(node_id, str(body.get("node_name") or node_id),
                                       "user-gui", last_check=now)
            return 200, {"status": "success", "message": "node registered",
                         "timestamp": body["timestamp"]}, {}
        node.status = body["status"]
        node.last_heartbeat = now
        node.last_check = now
        node.metadata = {k: body[k] for k in ("resources", "gui", "version", "uptime")
                         if k in body}
        if body.get("node_name"):
            node.node_name = str(body["node_name"])
        self.heartbeats.append(Heartbeat(node_id, body["status"], body.get("reason"), body, now))
        self.heartbeat_total += 1
        return 200, {"status": "success", "message": "heartbeat recorded",
                     "timestamp": body["timestamp"]}, {}

    def _alerts(self, method: str, rest: list[str], raw: bytes
                ) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and not rest:
            alerts = [dict(a) for a in self.alerts]
            return 200, ({"alerts": alerts} if self.wrap_alerts else alerts), {}
        if method == "POST" and len(rest) == 2 and rest[1] == "acknowledge":
            body = _json_object(raw)
            if body is None or not isinstance(body.get("user"), str) or not body["user"]:
                return 422, {"detail": "field user required"}, {}
            for alert in self.alerts:
                if alert["id"] == rest[0]:
                    alert["status"] = "acknowledged"
                    alert["acknowledged_by"] = body["user"]
                    return 200, {"status": "success", "message": "acknowledged"}, {}
            return 404, {"detail": f"alert {rest[0]} not found"}, {}
        return 404, {"detail": "Not Found"}, {}

    def _view(self, node: Node, now: float) -> dict[str, Any]:
        fresh = node.last_heartbeat is not None and \
            now - node.last_heartbeat < 2 * self.check_interval
        return {"node_id": node.node_id, "node_name": node.node_name,
                "node_type": node.node_type, "status": node.status,
                "is_online": node.status == "online" and fresh,
                "last_check": node.last_check, "last_heartbeat": node.last_heartbeat,
                "metadata": node.metadata}


def looks_like_the_gui(cmdline: Sequence[str], pattern: str = "user/main.py") -> bool:
    """What 1.0.6's scan counts as the GUI: a command line that holds ``pattern``
    (``python user/main.py`` started from the repository root; ``cd user; python main.py``
    is not seen), or that holds ``python``, ``user`` and ``gui`` anywhere (a
    ``yl-status node --node-id user-gui`` too)."""
    line = " ".join(cmdline)
    return pattern in line or all(word in line for word in ("python", "user", "gui"))


def process_scan(pattern: str = "user/main.py") -> Callable[[], bool]:
    """1.0.6's check of its host: is a process running that ``looks_like_the_gui``."""
    def seen() -> bool:
        for process in psutil.process_iter(["cmdline"]):
            if looks_like_the_gui(process.info.get("cmdline") or [], pattern):
                return True
        return False
    return seen


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def main() -> None:
    parser = argparse.ArgumentParser(description="YL-monitor test double (SPEC §4)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5500)
    parser.add_argument("--no-register-route", action="store_true")
    parser.add_argument("--api", choices=("both", "nodes-api", "v1"), default="both",
                        help="serve both APIs, or only one (v1: as the deployed 1.0.6)")
    parser.add_argument("--known", action="append", default=[], metavar="NODE_ID",
                        help="a node the monitor knows from the start (repeatable)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds to wait before answering (a slow monitor)")
    parser.add_argument("--keep", type=int, default=None,
                        help="remember only the latest N heartbeats and requests")
    args = parser.parse_args()
    double = MonitorDouble(args.port, host=args.host, delay=args.delay, keep=args.keep,
                           register_route=not args.no_register_route, api=args.api,
                           known=tuple(args.known)).start()
    print(f"YL-monitor test double on {double.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        double.down()


if __name__ == "__main__":
    main()
