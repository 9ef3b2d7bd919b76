"""What every long-running yl-status command shares: logging set-up and one stop event."""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from yl_core.config import LoggingConfig
from yl_core.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(settings: LoggingConfig, *, level: str | None = None) -> None:
    """Log to stderr and ``logging.file`` (its folder is created); a file that cannot be
    opened is a ``ConfigError`` naming it."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.file:
        try:
            Path(settings.file).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(settings.file, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot write the log file: {exc.strerror or exc}",
                              key="logging.file") from exc
    logging.basicConfig(level=level or settings.level, format=LOG_FORMAT, handlers=handlers,
                        force=True)


def listen_error(exc: OSError, host: str, port: int, *, key: str, source: str) -> ConfigError:
    """A ``ConfigError`` naming ``key`` for an address a server cannot listen on."""
    return ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", key=key,
                       source=source)


def free_listen_port(host: str, port: int, *, key: str, source: str) -> int:
    """``port`` if a server can listen on ``host:port`` now (for 0: a free port the system
    chose), else a ``ConfigError`` naming ``key``. The probe socket is closed again."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            return int(probe.getsockname()[1])
    except OSError as exc:
        raise listen_error(exc, host, port, key=key, source=source) from exc


def stop_event_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """An event (``stop``, or a new one) set by SIGTERM or SIGINT; the handler does nothing
    else."""
    stop = threading.Event() if stop is None else stop

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop
