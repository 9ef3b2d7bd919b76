"""A raw MQTT 5 publisher of ready-made protocol messages for many nodes, for tests and
benches that need more statuses a second than paho gives a Python process."""

from __future__ import annotations

import contextlib
import socket
import threading

from yl_core import protocol, timestamps
from yl_core.protocol import ReporterCounters, Resources, StatusMessage

INTERVAL = 30.0
"""Every simulated node's report interval."""


class RawPublisher:
    """Publishes ready-made protocol messages for many node ids from one raw MQTT 5
    connection (QoS 1, within the broker's receive maximum), so that the simulated nodes
    leave the cores to the broker, the bridge and the sink: on a real site they run
    elsewhere. paho would spend ~50 us of Python per message here."""

    def __init__(self, port: int, username: str, password: str, host: str = "127.0.0.1",
                 *, retain: bool = False, expiry: bool = False) -> None:
        """``retain``, ``expiry``: statuses go out retained, with the message expiry of
        their interval, as a GUI sends them (``state`` is always retained)."""
        self.retain, self.expiry = retain, expiry
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.settimeout(None)  # the ack reader waits as long as it takes
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        user, secret = username.encode(), password.encode()
        variable = (_text(b"MQTT") + bytes([5, 0xC2]) + (0).to_bytes(2, "big") + b"\x00")
        self.sock.sendall(_packet(0x10, variable + _text(user) + _text(user) + _text(secret)))
        window = self._connack()
        self.window = threading.Semaphore(window)
        self.packet_id = 0
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read_acks, daemon=True)
        self.reader.start()
        self.topics = protocol.Topics()
        self.sessions: dict[str, str] = {}
        """Each node's session: a new one for a ``ready`` after the node said it stopped."""
        self.stopped: set[str] = set()
        self.seq: dict[str, int] = {}
        self.templates: dict[str, tuple[str, bytes]] = {}

    def _connack(self) -> int:
        data = b""
        while len(data) < 2 or len(data) < 2 + data[1]:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        if data[0] != 0x20 or data[3] != 0:
            raise ConnectionError(f"connection refused by the broker ({data[:4]!r})")
        receive_maximum = 65535
        properties, at = data[5:2 + data[1]], 0
        while at < len(properties):
            identifier, at = properties[at], at + 1
            if identifier == 0x21:
                receive_maximum = int.from_bytes(properties[at:at + 2], "big")
            if identifier in _FIXED_SIZE:
                at += _FIXED_SIZE[identifier]
            elif identifier == 0x26:
                at += 2 + int.from_bytes(properties[at:at + 2], "big")
                at += 2 + int.from_bytes(properties[at:at + 2], "big")
            else:
                at += 2 + int.from_bytes(properties[at:at + 2], "big")
        return receive_maximum

    def _read_acks(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + buffer[1]:
                if buffer[0] == 0x40:
                    self.window.release()
                buffer = buffer[2 + buffer[1]:]

    def _publish(self, topic: str, payload: bytes, retain: bool = False,
                 expiry: int | None = None) -> None:
        properties = b"\x00" if expiry is None else b"\x05\x02" + expiry.to_bytes(4, "big")
        if not self.window.acquire(timeout=60):
            raise TimeoutError("the broker stopped acknowledging publishes")
        with self.lock:
            self.packet_id = self.packet_id % 65535 + 1
            body = _text(topic.encode()) + self.packet_id.to_bytes(2, "big") + properties + \
                payload
            self.sock.sendall(_packet(0x33 if retain else 0x32, body))

    def status(self, node: str) -> None:
        """The node's next status (``seq`` and ``gui.n`` count up), stamped now."""
        seq = self.seq.get(node, 0) + 1
        self.seq[node] = seq
        template = self.templates.get(node)
        if template is None:
            template = self.templates[node] = self._template(node)
        self._publish(template[0], template[1].replace(_SEQ, str(seq).encode()).replace(
            _STAMP, timestamps.utc_now_iso().encode()), retain=self.retain,
            expiry=int(protocol.status_expiry(INTERVAL)) if self.expiry else None)

    def _template(self, node: str) -> tuple[str, bytes]:
        seq = int(_SEQ)
        message = StatusMessage(
            node_id=node, node_name=node, timestamp=_STAMP.decode(), status="running",
            version="bench", uptime=float(seq), resources=Resources(1.0, 100.0, 4),
            gui={"n": seq}, reporter=ReporterCounters(seq, 0, None),
            session=self.session_of(node), seq=seq, interval_s=INTERVAL)
        return self.topics.status(node), protocol.encode(message)

    def session_of(self, node: str) -> str:
        session = self.sessions.get(node)
        if session is None:
            session = self.sessions[node] = protocol.new_session_id()
        return session

    def state(self, node: str, word: str) -> None:
        """``ready`` after a stop starts a new session, as a restarted node does: a session
        that said ``disconnected`` is over."""
        if word == "ready" and node in self.stopped:
            self.stopped.discard(node)
            self.sessions.pop(node, None)
            self.seq.pop(node, None)
            self.templates.pop(node, None)
        message = protocol.StateMessage(state=word,  # type: ignore[arg-type]
                                        session=self.session_of(node),
                                        since=timestamps.utc_now_iso(), node_name=node,
                                        version="bench", interval_s=INTERVAL)
        self._publish(self.topics.state(node), protocol.encode(message), retain=True)
        if word in ("disconnected", "lost"):
            self.stopped.add(node)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.reader.join(5)


_SEQ = b"987654321"
"""Stands for the sequence number in a node's ready-made status."""
_STAMP = timestamps.iso_from_epoch(0.0).encode()
"""Stands for its timestamp."""
_FIXED_SIZE = {0x11: 4, 0x13: 2, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1,
               0x29: 1, 0x2A: 1}
"""CONNACK properties of a fixed size (the others are strings or binary data)."""


def _text(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _packet(first: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first]) + bytes(encoded) + body
