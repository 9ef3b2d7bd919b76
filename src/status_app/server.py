"""Serving the status app: ``yl-status serve`` runs it under granian (a compiled HTTP server,
one worker process); ``start_in_background`` serves it from threads of the GUI process with
waitress."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask
from waitress.server import create_server

from status_app.app import create_app
from status_app.node_view import NodeView
from status_app.subscriber import ViewSubscriber
from yl_core.config import ENV_CONFIG_PATH, Config, load_config
from yl_core.service import configure_logging, free_listen_port, listen_error

log = logging.getLogger(__name__)


class StatusServer:
    """The app, its broker subscriber and a waitress server, started and stopped as one.

    waitress handles connections asynchronously, so a client that connects and sends
    nothing does not hold up anyone else.
    """

    def __init__(self, config: Config, *, host: str | None = None, port: int | None = None,
                 threads: int = 6) -> None:
        self.config = config
        self.view = NodeView(topics=config.mqtt.topics)
        self.app = create_app(config, self.view)
        self.subscriber = ViewSubscriber(config, self.view)
        self._map: dict[int, Any] = {}
        host = host or config.local_server.host
        port = config.local_server.port if port is None else port
        try:
            self._server = create_server(
                self.app, map=self._map, host=host, port=port, threads=threads,
                ident="yl-status", channel_timeout=60, clear_untrusted_proxy_headers=True)
        except OSError as exc:
            raise listen_error(exc, host, port, key="local_server.port",
                               source=config.source) from exc
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="yl-status-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def host(self) -> str:
        return str(self._server.effective_host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StatusServer:
        self.subscriber.start()
        self._thread.start()
        log.info("status app listening on %s (node %s)", self.url, self.config.monitor.node_id)
        return self

    def _serve(self) -> None:
        loop = self._server.asyncore.loop
        while not self._stopping.is_set():
            loop(timeout=1.0, map=self._map, use_poll=True, count=1)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._server.pull_trigger()
        self._thread.join(timeout)
        for channel in list(self._map.values()):
            try:
                channel.close()
            except OSError:
                log.debug("closing a channel failed", exc_info=True)
        self._server.task_dispatcher.shutdown(timeout=timeout)
        self.subscriber.stop()


def start_in_background(config: Config, **kwargs: Any) -> StatusServer:
    """Serve the status endpoints from background threads of this process (one call)."""
    return StatusServer(config, **kwargs).start()


def service_app() -> Flask:
    """The app inside a ``yl-status serve`` worker process, with its own broker subscriber.

    The config is read again from ``$YL_STATUS_CONFIG`` (set by ``run_server`` after it
    validated the same file), so the worker sees exactly what the parent checked.
    """
    _end_with_parent()
    config = load_config()
    configure_logging(config.logging)
    view = NodeView(topics=config.mqtt.topics)
    ViewSubscriber(config, view).start()
    return create_app(config, view)


PARENT_CHECK = 0.5
"""How often a ``serve`` worker checks that the ``serve`` process is still there."""


def _end_with_parent() -> None:
    """End this worker when the ``serve`` process that started it is gone (killed -9, it
    cannot stop its workers): an orphan would keep serving and hold the broker login."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        os._exit(1)

    threading.Thread(target=watch, name="yl-status-parent-watch", daemon=True).start()


def run_server(config: Config) -> int:
    """``yl-status serve``: granian (a compiled HTTP server) runs the app in one worker
    process until SIGTERM or Ctrl-C."""
    # Imported here: a GUI that embeds the app (``start_in_background``, waitress) never
    # loads granian.
    from granian import Granian  # noqa: PLC0415
    from granian.constants import Interfaces  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415

    configure_logging(config.logging)
    if not config.local_server.enabled:
        log.info("local_server.enabled is false in %s; not serving", config.source)
        return 0
    config.viewer_login()
    if config.local_server.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("status app bound to %s: reachable from other machines",
                    config.local_server.host)
    if config.source != "<defaults>":
        os.environ[ENV_CONFIG_PATH] = str(Path(config.source).resolve())
    port = free_listen_port(config.local_server.host, config.local_server.port,
                            key="local_server.port", source=config.source)
    log.info("status app on http://%s:%d for node %s", config.local_server.host, port,
             config.monitor.node_id)
    Granian(
        "status_app.server:service_app",
        address=config.local_server.host,
        port=port,
        interface=Interfaces.WSGI,
        factory=True,
        workers=1,
        # Handlers only read memory; one Python thread avoids GIL hand-offs between
        # threads, which cost throughput and (measured) a p99 of hundreds of ms.
        blocking_threads=1,
        log_level=LogLevels.warning,
        respawn_failed_workers=True,
    ).serve()
    return 0
