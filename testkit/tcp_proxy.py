"""A TCP proxy for one test that can hold all traffic (a network partition) and let it go."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from yl_status.dev_broker import free_port


class PartitionProxy:
    """Forwards 127.0.0.1:``port`` to ``target``. ``partition()`` holds every byte in both
    directions (connections stay open, as across a real partition, and new ones are
    accepted but get nothing through); ``heal()`` delivers what was held and goes on; ``cut()``
    drops the connections open now."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._stopping = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._serve, name="partition-proxy",
                                        daemon=True)

    def start(self) -> PartitionProxy:
        self._accept.start()
        return self

    def partition(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def cut(self) -> None:
        """Close every connection open now, on both sides, as a dropped network does (new
        ones are forwarded as before)."""
        with self._lock:
            cut, self._sockets = self._sockets, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self) -> None:
        self._stopping.set()
        self._open.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._accept.join(5)
        for thread in self._threads:
            thread.join(5)

    def _serve(self) -> None:
        self._server.settimeout(0.1)
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            thread = threading.Thread(target=self._pump, args=(client, upstream),
                                      name="partition-proxy-pump", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self._stopping.is_set():
                self._open.wait()
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for sock in ready:
                    if not self._open.is_set():
                        break  # hold it: read once the partition heals
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket cut meanwhile
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
