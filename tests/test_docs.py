"""The reference is kept true by the code: docs/reference.md's configuration table against
the config schema, its metrics table against the bridge's registry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bridge.metrics import COUNTERS, GAUGES
from yl_core.checks import DROPPED
from yl_core.config import schema_defaults

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` (cells stripped, header left out)."""
    text = REFERENCE.read_text(encoding="utf-8")
    rest = text[text.index(heading):]
    rows = []
    for line in rest.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            break
    return rows[2:]


def documented_default(value: Any) -> str:
    """How the table writes a default."""
    if value is DROPPED:
        return "deprecated"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def test_every_config_key_is_documented_once_with_its_default() -> None:
    rows = table("## Configuration")
    keys = [row[0].strip("`") for row in rows]
    assert len(keys) == len(set(keys)), "a key documented twice"
    defaults = schema_defaults()
    assert set(keys) == set(defaults)
    for row in rows:
        key, default = row[0].strip("`"), row[1]
        assert default.startswith(documented_default(defaults[key])), key
        assert all(row[2:4]), key


def test_the_default_renderer_can_tell_a_wrong_default() -> None:
    assert not documented_default(5.0).startswith("`3`")
    assert documented_default(None) == "none"


def test_every_metric_is_documented_once() -> None:
    names = [re.sub(r"\{.*\}", "", row[0].strip("`")) for row in table("## The bridge's metrics")]
    assert len(names) == len(set(names))
    expected = {f"yl_bridge_{name}_total" for name in COUNTERS} | \
        {f"yl_bridge_{name}" for name in GAUGES} | \
        {"yl_bridge_monitor_api", "yl_bridge_delivery_lag_seconds"}
    assert set(names) == expected
