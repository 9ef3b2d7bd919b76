"""yl-status publisher: the GUI side of the protocol, light enough to embed anywhere.

Imports paho-mqtt, psutil and PyYAML only; never Flask or an HTTP library.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from publisher.config import ENV_CONFIG_PATH, Config, load_config
from publisher.errors import ConfigError, ProtocolError, SessionTakenOverError, YLStatusError
from publisher.status_publisher import StatusPublisher
from publisher.version import PACKAGE_VERSION

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

_CONFIG_NAME = Path("config") / "monitor_config.yaml"
_reporter: StatusPublisher | None = None
_reporter_lock = threading.Lock()


def find_config(cwd: Path | None = None) -> Path | None:
    """Where the process-wide reporter's config is: ``$YL_STATUS_CONFIG``, then
    ``config/monitor_config.yaml`` next to the package, then under the working directory."""
    explicit = os.environ.get(ENV_CONFIG_PATH)
    if explicit:
        return Path(explicit)
    for base in (Path(__file__).resolve().parent.parent, cwd or Path.cwd()):
        candidate = base / _CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def get_reporter() -> StatusPublisher:
    """The process-wide ``StatusPublisher`` (created on first call, not started)."""
    global _reporter
    with _reporter_lock:
        if _reporter is None:
            _reporter = StatusPublisher(load_config(find_config()))
        return _reporter
