"""Running a real ``yl-status bridge`` process against a broker and the monitor double."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from testkit.support import (
    BRIDGE_PASSWORD,
    BRIDGE_USER,
    BrokerAddress,
    config_dict,
    http_get,
    start_process,
    stop_process,
    wait_until,
    write_config,
)
from yl_status.dev_broker import free_port
from yl_status.monitor_double import Heartbeat, MonitorDouble


class BridgeProcess:
    def __init__(self, tmp_path: Path, broker: BrokerAddress, double: MonitorDouble, *,
                 outbox_url: str | None = None, instance: str | None = None,
                 bridge: dict[str, Any] | None = None, **monitor: Any) -> None:
        """``outbox_url``: a PostgreSQL outbox shared with other instances (``instance``
        names this one, its config and its log); ``bridge``: more ``bridge`` keys."""
        self.metrics_port = free_port()
        name = "bridge" if instance is None else f"bridge-{instance}"
        self.instance = instance
        self.log_path = tmp_path / f"{name}.log"
        shared = {} if outbox_url is None else {"outbox_url": outbox_url, "instance": instance}
        data = config_dict(broker, "bridge-cfg",
                           monitor={"url": double.url, "retry_delay": 1.0, "timeout": 2.0,
                                    **monitor},
                           mqtt={"username": BRIDGE_USER, "password": BRIDGE_PASSWORD},
                           bridge={"outbox_path": str(tmp_path / "outbox.sqlite3"),
                                   "metrics": f"127.0.0.1:{self.metrics_port}", **shared,
                                   **(bridge or {})},
                           logging={"level": "INFO"})
        self.config_path = write_config(tmp_path / f"{name}.yaml", data)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0, *, wait: bool = True) -> BridgeProcess:
        """Start the bridge and wait until it is healthy (``wait``), or only until it
        answers on its metrics port."""
        self.process = start_process(["bridge", "-c", str(self.config_path)],
                                     log_path=self.log_path)
        wait_until(self.healthy if wait else self.answering, timeout, "bridge connected")
        return self

    def answering(self) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1)[0] > 0
        except OSError:
            return False

    def healthy(self) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def health(self) -> dict[str, Any]:
        code, body = http_get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2)
        assert code in (200, 503)
        assert isinstance(body, dict)
        return body

    def rejected(self) -> dict[str, float]:
        """Messages the bridge did not deliver, by reason (stale and duplicates aside)."""
        return {k: v for k, v in rejected_by_reason(self.metrics()).items() if k != "stale"}

    def metrics(self) -> dict[str, float]:
        code, text = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)
        assert code == 200
        values: dict[str, float] = {}
        for line in str(text).splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def drained(self) -> bool:
        m = self.metrics()
        return m.get("yl_bridge_outbox_transitions") == 0 and \
            m.get("yl_bridge_outbox_statuses") == 0

    def role(self) -> str | None:
        """``active`` or ``standby`` as its ``/healthz`` says (None: not answering)."""
        try:
            _, body = http_get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1)
        except OSError:
            return None
        return body.get("role") if isinstance(body, dict) else None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        if self.process is None:
            return 0
        code = stop_process(self.process)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def last_gui(double: MonitorDouble, node_id: str) -> dict[str, Any]:
    """GUI flags of the node's last recorded heartbeat ({} if none carried a snapshot)."""
    history = double.history(node_id)
    return dict(history[-1].body.get("gui", {})) if history else {}


def reasons(history: list[Heartbeat]) -> list[str | None]:
    """The node's reasons with consecutive repeats folded: the transitions as delivered."""
    out: list[str | None] = []
    for beat in history:
        if not out or out[-1] != beat.reason:
            out.append(beat.reason)
    return out


def rejected_by_reason(metrics: dict[str, float]) -> dict[str, float]:
    found = {}
    for name, value in metrics.items():
        m = re.fullmatch(r'yl_bridge_rejected_total\{reason="([^"]+)"\}', name)
        if m:
            found[m.group(1)] = value
    return found
