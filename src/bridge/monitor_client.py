"""A small YL-monitor REST client (SPEC §4) on ``http.client`` with keep-alive.

One ``MonitorClient`` per thread: a connection is reused for every request of that thread.
Answers are classified so the caller can decide: delivered, rejected (drop and go on),
not found (register first), or retry later (monitor down, overloaded or broken).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import socket
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from publisher import protocol
from publisher.config import MonitorConfig

log = logging.getLogger(__name__)

USER_AGENT = "yl-status-bridge/0.1"
_RETRYABLE = frozenset({401, 403, 408, 425, 429})
"""Answers that say "not now" (or "fix the token") rather than "this message is bad": the
message is kept and retried, never dropped."""


class Outcome(Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    NOT_FOUND = "not_found"
    RETRY = "retry"


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    status: int | None
    reason: str
    body: Any = None
    retry_after: float | None = None


class MonitorClient:
    """Requests to one monitor base URL; not thread-safe (use one per thread)."""

    def __init__(self, settings: MonitorConfig) -> None:
        self.settings = settings
        parts = urlsplit(settings.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = settings.timeout
        self._conn: http.client.HTTPConnection | None = None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": USER_AGENT}
        if settings.token:
            self._headers["Authorization"] = f"Bearer {settings.token}"

    # --- calls ----------------------------------------------------------------------------

    def heartbeat(self, node_id: str, body: dict[str, Any]) -> Answer:
        node = protocol.check_node_id(node_id)
        if self.settings.profile == "v1":
            return self.request("POST", "/api/v1/ar/heartbeat?" + urlencode({"node_id": node}),
                                body)
        return self.request("POST", f"/api/ar/nodes/{quote(node, safe='')}/heartbeat", body)

    def register(self, node_id: str, node_name: str, node_type: str) -> Answer:
        body = {"node_id": protocol.check_node_id(node_id), "node_name": node_name,
                "node_type": node_type, "register_time": protocol.utc_now_iso()}
        return self.request("POST", "/api/ar/nodes/register", body)

    def node(self, node_id: str) -> Answer:
        node = quote(protocol.check_node_id(node_id), safe="")
        return self.request("GET", f"/api/ar/nodes/{node}")

    def alerts(self, **filters: str) -> Answer:
        query = {k: v for k, v in filters.items() if v}
        return self.request("GET", "/api/alerts" + ("?" + urlencode(query) if query else ""))

    def acknowledge(self, alert_id: str, user: str) -> Answer:
        return self.request("POST", f"/api/alerts/{quote(alert_id, safe='')}/acknowledge",
                            {"user": user})

    def health(self) -> Answer:
        return self.request("GET", "/api/health")

    # --- transport ------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        data = None if body is None else json.dumps(body, separators=(",", ":"),
                                                    allow_nan=False).encode()
        for attempt in (1, 2):
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, body=data, headers=self._headers)
                response = conn.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as exc:
                self.close()
                if attempt == 1:
                    continue
                return Answer(Outcome.RETRY, None, f"connection lost: {exc}")
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                return Answer(Outcome.RETRY, None, _describe_error(exc))
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return _classify(response.status, raw, response.getheader("Retry-After"))
        return Answer(Outcome.RETRY, None, "unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
            self._conn.connect()
            sock = self._conn.sock
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _classify(status: int, raw: bytes, retry_after: str | None) -> Answer:
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw[:200].decode(errors="replace")
    reason = f"HTTP {status}"
    if 200 <= status < 300:
        return Answer(Outcome.DELIVERED, status, reason, body)
    detail = body.get("detail") if isinstance(body, dict) else body
    if detail:
        reason = f"{reason}: {str(detail)[:200]}"
    if status == 404:
        return Answer(Outcome.NOT_FOUND, status, reason, body)
    if status in _RETRYABLE or status >= 500:
        return Answer(Outcome.RETRY, status, reason, body, _retry_after(retry_after))
    return Answer(Outcome.REJECTED, status, reason, body)
