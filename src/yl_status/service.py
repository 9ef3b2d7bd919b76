"""What every long-running yl-status command shares: logging set-up and one stop event."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from publisher.config import LoggingConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(settings: LoggingConfig, *, level: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.file:
        handlers.append(logging.FileHandler(settings.file, encoding="utf-8"))
    logging.basicConfig(level=level or settings.level, format=LOG_FORMAT, handlers=handlers,
                        force=True)


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT; the handler does nothing else."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop
