"""Active/standby bridges on a shared PostgreSQL outbox (``bridge.outbox_url``).

Every instance runs this service: a lease thread (``bridge.lease``) and the metrics server,
always; the bridge's work (``bridge.service.Bridge``: its broker session, outbox, forwarding)
only while the instance holds the lease. When the lease is taken over, the work is stopped
fenced (no farewell, no write) and the instance stands by again. The active instance keeps a
retained message per instance under ``yl/ar/bridges/<client_id>/instances/``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bridge.database import redact
from bridge.lease import ACTIVE, STANDBY, Lease
from bridge.metrics import Metrics, MetricsServer
from bridge.service import Bridge
from yl_core import protocol, timestamps
from yl_core.config import Config
from yl_core.errors import ProtocolError

log = logging.getLogger(__name__)

FOLLOW_EVERY = 0.05
"""How often the service looks at the lease's role (the lease thread changes it)."""
INSTANCES_EVERY = 1.0
"""How often the active instance refreshes the other instances' retained state."""


class FailoverBridge:
    """One instance of an active/standby bridge; ``run()`` until ``stopping`` is set."""

    def __init__(self, config: Config) -> None:
        assert config.bridge.outbox_url is not None
        self.config = config
        self.instance = config.bridge.instance_name
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self.failure: str | None = None
        self.lease = Lease(config.bridge.outbox_url, self.instance,
                           duration=config.bridge.lease)
        self.bridge: Bridge | None = None
        self._lock = threading.Lock()
        self._published: dict[str, str] = {}
        self._seen: dict[str, tuple[int, float]] = {}
        self.metrics.gauge("active", lambda: float(self.lease.role == ACTIVE and
                                                   self.lease.valid()))
        self.metrics.idle()
        self.metrics_server: MetricsServer | None = None
        if config.bridge.metrics:
            self.metrics_server = MetricsServer(config.bridge.metrics, self.metrics,
                                                self.health, source=config.source)

    def run(self) -> int:
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.lease.start()
        log.info("bridge instance %s started, standing by until it holds the lease "
                 "(outbox %s)", self.instance, redact(self.lease.url))
        publish_due = 0.0
        try:
            while not self.stopping.wait(FOLLOW_EVERY):
                self._follow_lease()
                bridge = self.bridge
                if bridge is not None and bridge.stopping.is_set() and bridge.failure:
                    self.failure = bridge.failure
                    break
                if bridge is not None and time.monotonic() >= publish_due:
                    publish_due = time.monotonic() + INSTANCES_EVERY
                    self._publish_instances(bridge)
        finally:
            self._shutdown()
        return 1 if self.failure else 0

    def _follow_lease(self) -> None:
        role = self.lease.role
        if role == ACTIVE and self.bridge is None:
            log.warning("instance %s is now the active bridge (epoch %s)", self.instance,
                        self.lease.epoch)
            try:
                bridge = Bridge(self.config, metrics=self.metrics, lease=self.lease)
            except Exception as exc:  # noqa: BLE001 (any failure: hand the lease on)
                log.error("cannot start the bridge's work: %s", exc)  # noqa: TRY400
                self.lease.give_up(str(exc))
                return
            with self._lock:
                self.bridge = bridge
            self._published.clear()
            self._seen.clear()
            bridge.start()
        elif role != ACTIVE and self.bridge is not None:
            log.warning("instance %s is no longer the active bridge: stopping its work "
                        "without sending or writing anything more", self.instance)
            self._stop_bridge(fenced=True)

    def _stop_bridge(self, *, fenced: bool) -> None:
        with self._lock:
            bridge, self.bridge = self.bridge, None
        if bridge is not None:
            bridge.stop(fenced=fenced)
            self.metrics.idle()

    def _shutdown(self) -> None:
        log.info("stopping bridge instance %s", self.instance)
        self._stop_bridge(fenced=False)
        self.lease.stop(release=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()

    def _publish_instances(self, bridge: Bridge) -> None:
        """Retained ``active``/``standby``/``lost`` for every instance the lease table
        knows; an instance whose beat stood still for a lease is ``lost``."""
        if not bridge.connected:
            return
        now = time.monotonic()
        for name, (role, beat) in self.lease.instances.items():
            if name == self.instance:
                word = ACTIVE
            else:
                seen = self._seen.get(name)
                if seen is None or seen[0] != beat:
                    self._seen[name] = (beat, now)
                    seen = (beat, now)
                word = "lost" if now - seen[1] > self.lease.duration else \
                    (STANDBY if role == ACTIVE else role)
            if self._published.get(name) == word:
                continue
            try:
                topic = protocol.bridge_instance_topic(self.config.bridge.client_id, name)
            except ProtocolError:
                continue
            if bridge.receiver.publish(topic, protocol.encode_bridge_instance(
                    name, word, timestamps.utc_now_iso())):
                self._published[name] = word

    def health(self) -> dict[str, Any]:
        """The active instance's health with its role; a standby is ``ok`` while it can read
        the lease (it is ready to take over)."""
        with self._lock:
            bridge = self.bridge
        lease = self.lease.describe()
        if bridge is not None:
            return {**bridge.health(), **lease}
        problem = self.lease.problem
        if not problem and lease["role"] == ACTIVE:
            problem = "taking over: starting the bridge's work"
        return {"ok": not problem, "problem": problem, **lease}
