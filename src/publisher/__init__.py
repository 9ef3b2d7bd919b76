"""yl-status publisher: the GUI side of the protocol, light enough to embed anywhere.

Imports paho-mqtt, psutil and PyYAML only; never Flask or an HTTP library.
"""

from __future__ import annotations

import threading

from publisher.status_publisher import StatusPublisher
from yl_core.config import Config, find_config, load_config
from yl_core.errors import ConfigError, ProtocolError, SessionTakenOverError, YLStatusError
from yl_core.version import PACKAGE_VERSION

__version__ = PACKAGE_VERSION
__all__ = [
    "Config",
    "ConfigError",
    "ProtocolError",
    "SessionTakenOverError",
    "StatusPublisher",
    "YLStatusError",
    "find_config",
    "get_reporter",
    "load_config",
]

_reporter: StatusPublisher | None = None
_reporter_lock = threading.Lock()


def get_reporter() -> StatusPublisher:
    """The process-wide ``StatusPublisher`` (created on first call, not started)."""
    global _reporter
    with _reporter_lock:
        if _reporter is None:
            _reporter = StatusPublisher(load_config())
        return _reporter
