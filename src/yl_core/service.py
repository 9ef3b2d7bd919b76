"""What every long-running yl-status command shares: logging set-up and one stop event."""

from __future__ import annotations

import logging
import signal
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


def stop_event_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """An event (``stop``, or a new one) set by SIGTERM or SIGINT; the handler does nothing
    else."""
    stop = threading.Event() if stop is None else stop

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop
