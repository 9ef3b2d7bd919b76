"""A monitor sink that costs little per request, for forwarding rates that measure the
bridge rather than the sink.

The monitor double (``yl_status.monitor_double``) checks every request as YL-monitor would,
on a thread per connection: about 100 µs of CPU a request, and on two shared cores the
forwarding rate follows its share of them. This sink answers the nodes API on one asyncio
loop, reading no more of a request than its first line, ``Content-Length`` and, to register
a node, its body: unknown nodes are registered by ``POST /api/ar/nodes/register`` or by
their first heartbeat, which is not counted, as SPEC §4 says. It answers the double's
``/_double/stats``, ``/_double/arrivals`` and ``/_double/fail`` as the double does, and
``/_double/ages?since=&until=`` (epoch seconds): how old, by its ``timestamp``, each status
was when it arrived, and how old what it shows of each node was, looked at every 10 ms.

Run: python -m bench.fast_sink --port 5500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from yl_status.monitor_double import arrivals_after

_REASONS = {200: b"OK", 404: b"Not Found", 422: b"Unprocessable Entity"}
MAX_WINDOW = 3600.0
"""The longest window ``/_double/ages`` looks at (sampled every 10 ms)."""


class SinkState:
    def __init__(self, keep: int) -> None:
        self.known: set[str] = set()
        self.requests = 0
        self.heartbeats = 0
        self.stamps: deque[tuple[float, str, bytes]] = deque(maxlen=keep)
        """(arrival, node, its ``timestamp`` as sent) of each heartbeat counted."""
        self.failure: int | None = None

    def answer(self, head: bytes, body: bytes) -> bytes:
        self.requests += 1
        line = head[:head.find(b"\r\n")].decode("latin-1")
        method, target = line.split(" ", 2)[:2]
        try:
            code, payload = self._route(method, target, body)
        except ValueError as exc:  # a query or a body that does not parse
            code, payload = 422, {"detail": f"{method} {target}: {exc}"}
        data = json.dumps(payload).encode()
        reason = _REASONS.get(code, b"Error")
        return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" \
            b"\r\n%s" % (code, reason, len(data), data)

    def _route(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        path = [unquote(p) for p in parts.path.split("/") if p]
        query = parse_qs(parts.query)
        if path == ["_double", "fail"]:
            asked = query.get("code", [""])[0]
            self.failure = int(asked) if asked else None
            return 200, {"failure": asked or None}
        if self.failure is not None:
            return self.failure, {"detail": "injected failure"}
        if path == ["_double", "stats"]:
            return 200, {"requests": self.requests, "heartbeats": self.heartbeats,
                         "nodes": len(self.known)}
        if path == ["_double", "arrivals"]:
            return arrivals_after(query.get("after", ["0"])[0], self.heartbeats,
                                  [when for when, _, _ in self.stamps])
        if path == ["_double", "ages"]:
            since, until = (float(query.get(key, ["nan"])[0]) for key in ("since", "until"))
            if not 0 < until - since <= MAX_WINDOW:
                return 422, {"detail": "since and until: epoch seconds, until after since, "
                                       f"at most {MAX_WINDOW:g} s apart"}
            return 200, self._ages(since, until)
        if path == ["api", "health"]:
            return 200, {"status": "healthy", "service": "yl-monitor", "version": "fast-sink"}
        if path[:3] != ["api", "ar", "nodes"]:
            return 404, {"detail": "Not Found"}
        rest = path[3:]
        if method == "POST" and len(rest) == 2 and rest[1] == "heartbeat":
            if rest[0] in self.known:
                self.heartbeats += 1
                self.stamps.append((time.time(), rest[0], _timestamp(body)))
                return 200, {"status": "success", "message": "heartbeat recorded"}
            self.known.add(rest[0])
            return 200, {"status": "success", "message": "node registered"}
        if method == "POST" and rest == ["register"]:
            data = json.loads(body) if body else None
            node_id = data.get("node_id") if isinstance(data, dict) else None
            if not isinstance(node_id, str):
                return 422, {"detail": "node_id is required"}
            self.known.add(node_id)
            return 200, {"status": "success", "node_id": node_id}
        if method == "GET" and not rest:
            return 200, sorted(self.known)
        if method == "GET" and len(rest) == 1:
            return (200, {"node_id": rest[0]}) if rest[0] in self.known else \
                (404, {"detail": "Node not found"})
        return 404, {"detail": "Not Found"}

    def _ages(self, since: float, until: float) -> dict[str, float]:
        """Seconds: ``arrived_*``, the age of each status that arrived in [since, until);
        ``shown_*``, the age of the newest status here of each node that sent one then,
        every 10 ms of it."""
        arrived: list[float] = []
        shown: list[float] = []
        newest: dict[str, float] = {}
        sending = {node for when, node, _ in self.stamps if since <= when < until}
        at = since
        for when, node, stamp in self.stamps:
            if when >= until:
                break
            while at < when:
                shown.extend(at - published for published in newest.values())
                at += 0.01
            if stamp and node in sending:
                newest[node] = published = _epoch(stamp)
                if when >= since:
                    arrived.append(when - published)
        while at < until:
            shown.extend(at - published for published in newest.values())
            at += 0.01
        return {**_summary("arrived", arrived), **_summary("shown", shown)}


def _timestamp(body: bytes) -> bytes:
    at = body.find(b'"timestamp"')
    start = body.find(b'"', body.find(b":", at) + 1) + 1
    return body[start:body.find(b'"', start)] if at >= 0 else b""


def _epoch(stamp: bytes) -> float:
    text = stamp.decode()
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text
                                  ).timestamp()


def _summary(name: str, values: list[float]) -> dict[str, float]:
    values.sort()
    if not values:
        return {f"{name}_count": 0}
    return {f"{name}_count": len(values), f"{name}_mean": sum(values) / len(values),
            f"{name}_p50": values[len(values) // 2],
            f"{name}_p99": values[min(int(len(values) * 0.99), len(values) - 1)]}


class SinkProtocol(asyncio.Protocol):
    def __init__(self, state: SinkState) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        answers = []
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end]
            at = head.lower().find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(buffer) < total:
                break
            answers.append(self.state.answer(head, buffer[end + 4:total]))
            buffer = buffer[total:]
        self.buffer = buffer
        if answers and self.transport is not None:
            self.transport.write(b"".join(answers))


async def serve(host: str, port: int, keep: int) -> None:
    state = SinkState(keep)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(state), host, port, backlog=512)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keep", type=int, default=100_000,
                        help="remember the arrival times of the latest N heartbeats")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.keep))


if __name__ == "__main__":
    main()
