"""The reference is kept true by the code: docs/reference.md's configuration table against
the config schema, its metrics table against the bridge's registry, the health words of
README, the reference and the live page against ``truth.Health``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bridge.metrics import COUNTERS, GAUGES
from bridge.outbox import told_word
from yl_core.checks import DROPPED
from yl_core.config import schema_defaults
from yl_core.truth import Health
from yl_status.watch import STYLES

STYLES_ORDER = [str(health) for health in STYLES]
"""``watch`` and the live page count the words in one order: problems first."""

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
STATIC = Path(__file__).resolve().parent.parent / "src" / "status_app" / "static"


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


def backticked_words(text: str, start: str, end: str) -> set[str]:
    """The plain words in backticks between ``start`` and ``end`` in ``text``."""
    span = text[text.index(start):]
    span = span[:span.index(end) + len(end)]
    return set(re.findall(r"`([a-z_]+)`", span))


def test_the_health_words_of_readme_the_reference_and_the_page_are_the_type() -> None:
    words = {str(health) for health in Health}
    readme = (REFERENCE.parent.parent / "README.md").read_text(encoding="utf-8")
    assert backticked_words(readme, "A node's health is one of", "; `online`") == \
        words | {"online"}
    reference = REFERENCE.read_text(encoding="utf-8")
    assert backticked_words(reference, "the reason is one of", "(`ready` for up)") == words
    assert backticked_words(reference, "`GET /health`", "\n") >= words - {"ready"}
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    listed = re.search(r"const HEALTHS = \[([^\]]*)\]", page)
    assert listed is not None
    assert re.findall(r'"([a-z_]+)"', listed.group(1)) == list(STYLES_ORDER)
    for name in ("index.html", "node.html"):
        styled = set(re.findall(r"--([a-z_]+):", (STATIC / name).read_text(encoding="utf-8")))
        assert styled >= words - {"unknown"}, name


def test_the_words_are_read_back_only_as_the_type() -> None:
    assert backticked_words("A `ready` `a.b` `not_responding` Z `lost`", "A", "Z") == \
        {"ready", "not_responding"}
    assert told_word("up") == "up"
    with pytest.raises(ValueError, match="'told' is 'online'"):
        told_word("online")
