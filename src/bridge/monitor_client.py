"""A small YL-monitor REST client (SPEC §4): HTTP/1.1 keep-alive requests built here and
answers parsed by httptools (llhttp) as the socket gives them, on an asyncio protocol
(``MonitorConnection``): the forwarder drives one per worker, and the operator commands'
blocking ``perform`` runs one on a loop of its own. ``http.client`` parses headers with the
email package, which made it most of the bridge's CPU per forwarded message; asyncio's
streams and a ``wait_for`` per request cost more (``python -m bench.bridge --only http``).

Answers are classified so the caller can decide: delivered, rejected (drop and go on),
not found (register first), or retry later (monitor down, overloaded or broken).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import httptools
import orjson

from bridge.fast_json import decode_json
from yl_core import protocol, timestamps
from yl_core.config import MonitorConfig
from yl_core.version import PACKAGE_VERSION

log = logging.getLogger(__name__)

USER_AGENT = f"yl-status-bridge/{PACKAGE_VERSION}"
_MAX_RESPONSE = 16 * 2**20
_RETRYABLE = frozenset({401, 403, 408, 425, 429})
"""Answers that say "not now" (or "fix the token") rather than "this message is bad": the
message is kept and retried, never dropped."""


NODES = "/api/ar/nodes"
V1_NODES = "/api/v1/ar/nodes"
_PATHS_KEPT = 100_000


class Outcome(Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    NOT_FOUND = "not_found"
    RETRY = "retry"
    NOT_ACTIVE = "not_active"
    """Not sent: the bridge is not the active one (its lease)."""


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    status: int | None
    reason: str
    raw: bytes = b""
    retry_after: float | None = None

    @property
    def body(self) -> Any:
        """The answer's JSON (text if it is not JSON; None if empty), parsed on demand."""
        if not self.raw:
            return None
        try:
            return decode_json(self.raw)
        except ValueError:
            return self.raw[:200].decode(errors="replace")


Dialogue = Generator[bytes, Answer, bool]
"""One job's talk with the monitor: yields requests, receives their answers; returns whether
the node has more to deliver (``delivery``, ``monitor_view``)."""


class MonitorClient:
    """Requests to one monitor base URL over one keep-alive connection; not thread-safe.

    The request builders (``*_request``) and ``Exchange`` also serve the forwarder, which
    drives several connections from one thread; the other methods block.
    """

    def __init__(self, settings: MonitorConfig, *, instance: str | None = None) -> None:
        """``instance``: the bridge instance sending (one of several sharing an outbox),
        named in the User-Agent."""
        self.settings = settings
        parts = urlsplit(settings.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.timeout = settings.timeout
        self.profile = settings.profile
        """The API spoken: ``nodes-api`` or ``v1`` (``auto`` until the forwarder has found
        out which one the monitor serves)."""
        self._tls: ssl.SSLContext | None = None
        if self._https:
            self._tls = ssl.create_default_context(cafile=settings.ca_file)
        self._heartbeat_paths: dict[str, str] = {}
        host_header = self._host if parts.port is None else f"{self._host}:{self._port}"
        headers = {"Host": host_header, "Content-Type": "application/json",
                   "Accept": "application/json",
                   "User-Agent": USER_AGENT if instance is None else
                   f"{USER_AGENT} (instance {instance})"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    # --- requests -------------------------------------------------------------------------

    def build(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        data = b"" if body is None else encode_json(body)
        head = (f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._fixed_headers}"
                f"Content-Length: {len(data)}\r\n\r\n").encode("latin-1")
        return head + data

    def use_profile(self, profile: str) -> None:
        if profile != self.profile:
            self.profile = profile
            self._heartbeat_paths.clear()

    def heartbeat_request(self, node_id: str, body: dict[str, Any]) -> bytes:
        path = self._heartbeat_paths.get(node_id)
        if path is None:
            node = protocol.check_node_id(node_id)
            if self.profile == "v1":
                path = "/api/v1/ar/heartbeat?" + urlencode({"node_id": node})
            else:
                path = f"/api/ar/nodes/{quote(node, safe='')}/heartbeat"
            if len(self._heartbeat_paths) >= _PATHS_KEPT:
                self._heartbeat_paths.clear()
            self._heartbeat_paths[node_id] = path
        return self.build("POST", path, body)

    def register_request(self, node_id: str, node_name: str, node_type: str) -> bytes:
        body = {"node_id": protocol.check_node_id(node_id), "node_name": node_name,
                "node_type": node_type, "register_time": timestamps.utc_now_iso()}
        return self.build("POST", "/api/ar/nodes/register", body)

    def health_request(self) -> bytes:
        """A request any working monitor of the profile answers with 2xx: its health check
        (``/api/health``), or for ``v1`` its node list."""
        path = V1_NODES if self.profile == "v1" else "/api/health"
        return self.build("GET", path)

    def node_request(self, node_id: str) -> bytes:
        """The nodes API's record of one node: 200 if the monitor knows it, else 404."""
        return self.build("GET", f"{NODES}/{quote(protocol.check_node_id(node_id), safe='')}")

    def nodes_request(self, profile: str) -> bytes:
        """The profile's node list: answered 2xx only by a monitor that serves the profile."""
        return self.build("GET", V1_NODES if profile == "v1" else NODES)

    async def connect(self) -> _AnswerReader:
        """A new connection to the monitor on the running asyncio loop: name lookup, connect
        and TLS handshake without blocking it (the caller bounds the time)."""
        _transport, reader = await asyncio.get_running_loop().create_connection(
            _AnswerReader, self._host, self._port, ssl=self._tls,
            server_hostname=self._host if self._tls is not None else None)
        return reader

    # --- blocking calls -------------------------------------------------------------------

    def alerts(self, **filters: str) -> Answer:
        query = {k: v for k, v in filters.items() if v}
        return self.request("GET", "/api/alerts" + ("?" + urlencode(query) if query else ""))

    def acknowledge(self, alert_id: str, user: str) -> Answer:
        return self.request("POST", f"/api/alerts/{quote(alert_id, safe='')}/acknowledge",
                            {"user": user})

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        return self.perform(self.build(method, path, body))

    def perform(self, request: bytes) -> Answer:
        """Send ``request`` on a connection of its own and classify the answer; blocks,
        bounded by the monitor timeout (for the operator commands)."""
        async def once() -> Answer:
            connection = MonitorConnection(self)
            try:
                return await connection.exchange(request)
            finally:
                connection.close()

        return asyncio.run(once())


NOT_ACTIVE: Final = "this bridge is not the active one"


class NotSentError(Exception):
    """The bridge is no longer the active one: the request was not sent."""


class MonitorConnection:
    """One keep-alive connection to the monitor on the running asyncio loop (the forwarder
    drives one per worker; ``MonitorClient.perform`` one per blocking call)."""

    def __init__(self, client: MonitorClient, may_send: Callable[[], bool] = lambda: True
                 ) -> None:
        """``may_send`` is asked just before each request's bytes leave."""
        self.client = client
        self.may_send = may_send
        self.reader: _AnswerReader | None = None

    @property
    def is_open(self) -> bool:
        """True if the next request goes over the connection already open (as far as can be
        told: a connection the monitor closed while idle has seen its end)."""
        return self.reader is not None and not self.reader.closed

    async def exchange(self, request: bytes) -> Answer:
        """Send ``request`` and classify the answer, all within the monitor timeout; a
        kept-alive connection the monitor has closed meanwhile is replaced once."""
        for attempt in (1, 2):
            reused = self.reader is not None
            try:
                async with _deadline(self.client.timeout):
                    return await self._exchange(request)
            except (ConnectionResetError, BrokenPipeError, ClosedError) as exc:
                self.close()
                if attempt == 1 and reused:
                    continue
                return Answer(Outcome.RETRY, None, f"connection lost: {exc}")
            except (asyncio.TimeoutError, TimeoutError):
                self.close()
                return Answer(Outcome.RETRY, None, "timed out")
            except NotSentError:
                return Answer(Outcome.NOT_ACTIVE, None, NOT_ACTIVE)
            except (OSError, ssl.SSLError, httptools.HttpParserError) as exc:
                self.close()
                return Answer(Outcome.RETRY, None, describe_error(exc))
        return Answer(Outcome.RETRY, None, "unreachable")

    async def _exchange(self, request: bytes) -> Answer:
        reader = self.reader
        if reader is None or reader.closed:
            reader = self.reader = await self.client.connect()
        if not self.may_send():  # the last check before the bytes leave: see bridge.lease
            raise NotSentError
        exchange = await reader.send(request)
        if not exchange.keep_alive:
            self.close()
        return exchange.answer()

    def close(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()


class _AnswerReader(asyncio.Protocol):
    """A connection's transport and the answer it is reading: what the socket gives goes
    straight to the parser (no stream buffer, no task per read)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._exchange: Exchange | None = None
        self._waiter: asyncio.Future[Exchange] | None = None

    def send(self, request: bytes) -> asyncio.Future[Exchange]:
        """Write ``request``; the future is the complete answer."""
        if self.closed or self.transport is None:
            raise ClosedError("monitor closed the connection")
        self._exchange = Exchange()
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._exchange is None:
            self.close()  # nothing was asked: not an answer to trust
            return
        try:
            if self._exchange.feed(data):
                self._finish(self._exchange)
        except httptools.HttpParserError as exc:
            self._finish(exc)
            self.close()

    def eof_received(self) -> bool:
        self.closed = True
        if self._exchange is not None:
            try:
                if self._exchange.feed(b""):
                    self._finish(self._exchange)
            except ClosedError as exc:
                self._finish(exc)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._exchange is not None:
            self._finish(exc if isinstance(exc, OSError) else
                         ClosedError("monitor closed the connection"))

    def _finish(self, outcome: Exchange | BaseException) -> None:
        waiter, self._waiter, self._exchange = self._waiter, None, None
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Exchange):
            waiter.set_result(outcome)
        else:
            waiter.set_exception(outcome)


if sys.version_info >= (3, 11):
    _deadline = asyncio.timeout
    """A time limit on the current task (``wait_for`` makes a task of its own per request on
    Python 3.11)."""
else:
    @contextlib.asynccontextmanager
    async def _deadline(seconds: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            yield
        except asyncio.CancelledError:
            if expired:
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()


class ClosedError(ConnectionError):
    """The monitor closed the connection before answering."""


class Exchange:
    """One response being read: ``feed`` it what the socket gives until it returns True."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.until_close = False
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, chunk: bytes) -> bool:
        """Raises ``ClosedError`` on an early end and ``httptools.HttpParserError`` on a
        malformed answer."""
        if not chunk:
            if self.headers_done and self.until_close:
                self.complete = True
            else:
                raise ClosedError("monitor closed the connection")
        else:
            self._parser.feed_data(chunk)
        if self.complete:
            self.status = self._parser.get_status_code()
            if self._parser.get_http_version() != "1.1" or \
                    self.headers.get(b"connection", b"").lower() == b"close":
                self.keep_alive = False
        return self.complete

    def answer(self) -> Answer:
        return _classify(self.status, bytes(self.body), self.headers.get(b"retry-after"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.until_close = b"content-length" not in self.headers and \
            b"chunked" not in self.headers.get(b"transfer-encoding", b"").lower()
        if self.until_close:
            self.keep_alive = False

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > _MAX_RESPONSE:
            raise httptools.HttpParserError("response too large")
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def encode_json(value: Any) -> bytes:
    """Compact JSON; orjson, or the standard library for what orjson refuses (integers
    beyond 64 bits, which a node may legally send)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def listed_nodes(body: Any) -> dict[str, str | None] | None:
    """The nodes in a monitor's node list with the status word it shows for each (None
    where it shows none): a list of ids or of node objects, possibly wrapped as
    ``{"nodes": …}`` or keyed by id; None if the shape says nothing."""
    if isinstance(body, dict):
        inner = body.get("nodes", body.get("data"))
        if inner is not None:
            return listed_nodes(inner)
        if all(isinstance(v, dict) for v in body.values()):
            return {str(k): _shown_status(v) for k, v in body.items()}
        return None
    if not isinstance(body, list):
        return None
    nodes: dict[str, str | None] = {}
    for entry in body:
        if isinstance(entry, str):
            nodes[entry] = None
        elif isinstance(entry, dict) and \
                isinstance(found := entry.get("node_id", entry.get("id")), str):
            nodes[found] = _shown_status(entry)
        else:
            return None
    return nodes


def _shown_status(entry: dict[str, Any]) -> str | None:
    status = entry.get("status")
    return status if isinstance(status, str) else None


def listed_node_ids(body: Any) -> set[str] | None:
    """The node ids in a monitor's node list (``listed_nodes``)."""
    nodes = listed_nodes(body)
    return None if nodes is None else set(nodes)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _retry_after(raw: bytes | None) -> float | None:
    if not raw:
        return None
    value = raw.decode("latin-1").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _classify(status: int, raw: bytes, retry_after: bytes | None) -> Answer:
    reason = f"HTTP {status}"
    if 200 <= status < 300:
        return Answer(Outcome.DELIVERED, status, reason, raw)
    body = Answer(Outcome.RETRY, status, reason, raw).body
    detail = body.get("detail") if isinstance(body, dict) else body
    if detail:
        reason = f"{reason}: {str(detail)[:200]}"
    if status == 404:
        return Answer(Outcome.NOT_FOUND, status, reason, raw)
    if status in _RETRYABLE or status >= 500:
        return Answer(Outcome.RETRY, status, reason, raw, _retry_after(retry_after))
    return Answer(Outcome.REJECTED, status, reason, raw)
