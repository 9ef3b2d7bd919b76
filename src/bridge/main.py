"""``yl-status bridge``: one bridge (an SQLite outbox) or one instance of an active/standby
pair (a PostgreSQL outbox, ``bridge.outbox_url``), until SIGTERM or SIGINT."""

from __future__ import annotations

import logging

from bridge.database import OutboxError, driver
from bridge.failover import FailoverBridge
from bridge.service import Bridge
from yl_core.config import Config
from yl_core.errors import ConfigError
from yl_core.service import configure_logging, stop_event_on_signals

log = logging.getLogger(__name__)


def run_bridge(config: Config) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the watchdog stopped a hung bridge."""
    configure_logging(config.logging)
    if config.bridge.outbox_url:
        return run_failover_bridge(config)
    bridge = Bridge(config)
    stop_event_on_signals(bridge.stopping)
    bridge.start()
    bridge.stopping.wait()
    log.info("stopping bridge")
    bridge.stop()
    return 1 if bridge.failure else 0


def run_failover_bridge(config: Config) -> int:
    try:
        driver()
    except OutboxError as exc:
        raise ConfigError(str(exc), key="bridge.outbox_url", source=config.source) from exc
    service = FailoverBridge(config)
    stop_event_on_signals(service.stopping)
    return service.run()
