"""``yl-status alerts`` and ``yl-status ack``: the monitor's alerts for operators."""

from __future__ import annotations

import json
import re
from typing import Any, TextIO

from bridge.monitor_client import MonitorClient, Outcome
from yl_core.config import Config
from yl_core.errors import ConfigError

_ALERT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COLUMNS = ("id", "level", "status", "node_id", "message", "created_at")


def _alerts_list(body: Any) -> list[dict[str, Any]]:
    items = body.get("alerts") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise TypeError("the monitor's answer is neither a list nor {\"alerts\": [...]}")
    return [a for a in items if isinstance(a, dict)]


def _cell(alert: dict[str, Any], key: str) -> str:
    value = alert.get(key)
    if value is None and key == "created_at":
        value = alert.get("timestamp")
    if value is None and key == "node_id":
        value = alert.get("node")
    text = "" if value is None else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def list_alerts(config: Config, *, status: str | None, level: str | None, as_json: bool,
                out: TextIO) -> int:
    answer = MonitorClient(config.monitor).alerts(status=status or "", level=level or "")
    if answer.outcome is not Outcome.DELIVERED:
        print(f"error: monitor at {config.monitor.url}: {answer.reason}", file=out)
        return 1
    try:
        alerts = _alerts_list(answer.body)
    except TypeError as exc:
        print(f"error: {exc}", file=out)
        return 1
    if status:
        alerts = [a for a in alerts if str(a.get("status", "")) == status]
    if level:
        alerts = [a for a in alerts if str(a.get("level", "")) == level]
    if as_json:
        print(json.dumps(alerts, indent=2), file=out)
        return 0
    rows = [[_cell(a, c) for c in _COLUMNS] for a in alerts]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)),
          file=out)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
    print(f"{len(rows)} alert(s)", file=out)
    return 0


def acknowledge(config: Config, alert_id: str, *, user: str, out: TextIO) -> int:
    if not _ALERT_ID.fullmatch(alert_id):
        raise ConfigError("must be 1-64 characters of A-Z a-z 0-9 _ -", key="ALERT_ID")
    if not user.strip():
        raise ConfigError("must not be empty", key="--user")
    answer = MonitorClient(config.monitor).acknowledge(alert_id, user)
    if answer.outcome is Outcome.DELIVERED:
        print(f"alert {alert_id} acknowledged by {user}", file=out)
        return 0
    if answer.outcome is Outcome.NOT_FOUND:
        print(f"error: no alert with id {alert_id}", file=out)
    else:
        print(f"error: monitor at {config.monitor.url}: {answer.reason}", file=out)
    return 1
