"""The Prometheus alert rules (checked and unit-tested by promtool) and the Grafana dashboard
name only metrics the bridge exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.metrics import COUNTERS, GAUGES, PREFIX

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "yl-bridge.rules.yml"
METRIC = re.compile(r"\byl_bridge_[a-z_]+")


def exported() -> set[str]:
    names = {PREFIX + name + "_total" for name in COUNTERS} | {PREFIX + name for name in GAUGES}
    lag = PREFIX + "delivery_lag_seconds"
    return names | {lag + "_bucket", lag + "_sum", lag + "_count", PREFIX + "monitor_api"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (run.sh installs Debian's prometheus)")
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=RULES.parent,
                          check=False, timeout=60)


def test_the_rules_are_valid_and_every_alert_is_unit_tested() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "yl-bridge.rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    covered = set(re.findall(r"alertname: (\w+)", (RULES.parent /
                                                    "yl-bridge.rules.test.yml").read_text()))
    assert len(alerts) == 11
    assert alerts == covered


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    used = set(METRIC.findall(RULES.read_text()))
    dashboard = json.loads((DEPLOY / "grafana" / "yl-bridge.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used |= {name for expr in exprs for name in METRIC.findall(expr)}
    assert used - exported() == set()
    assert len(dashboard["panels"]) >= 8
