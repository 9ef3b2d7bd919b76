"""``yl-status watch``: the problems-first view of every node, in a terminal.

For operators on ssh: it subscribes to the broker with a watcher login (read-only, one of its
own: the broker keeps one connection per login), keeps a ``NodeView`` as the status app does,
and redraws a coloured table in place once a second (rich), nodes that are down on top.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from status_app.node_view import NodeView, problems_first
from status_app.subscriber import ViewSubscriber
from yl_core.config import Config
from yl_core.truth import Health

REFRESH = 1.0
STYLES: dict[Health, str] = {
    Health.LOST: "bold red", Health.NOT_RESPONDING: "bold magenta",
    Health.STALE: "bold yellow", Health.DISCONNECTED: "bold bright_black",
    Health.UNKNOWN: "bright_black", Health.READY: "bold green"}
"""Each health word's style, in the order the summary counts them: problems first."""


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{_span(seconds)} ago"


def render(view: NodeView, *, rows: int | None = None) -> Group:
    """The whole screen: a summary line and the table (at most ``rows`` nodes)."""
    nodes = problems_first(view.describe_all())
    counts = Counter(n["health"] for n in nodes)
    summary = Text(f"{len(nodes)} node(s)  ")
    for health, style in STYLES.items():
        if counts[health]:
            summary.append(f"{counts[health]} {health}  ", style=style)
    connected, why = view.broker
    summary.append("broker: " + ("connected" if connected else f"unreachable ({why})"),
                   style="green" if connected else "bold red")
    table = Table(expand=True, header_style="bold")
    for column, justify in (("node", "left"), ("health", "left"), ("down", "left"),
                            ("last seen", "right"), ("gui", "left"), ("cpu", "right"),
                            ("memory", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    shown = nodes if rows is None else nodes[:rows]
    for node in shown:
        table.add_row(*_cells(node))
    parts: list[Any] = [summary, table]
    if len(shown) < len(nodes):
        parts.append(Text(f"… {len(nodes) - len(shown)} more", style="bright_black"))
    return Group(*parts)


def _cells(node: dict[str, Any]) -> list[Any]:
    name = Text(node["node_id"], style="bold")
    if node.get("node_name"):
        name.append(f"  {node['node_name']}", style="bright_black")
    down = []
    if node.get("down_for_s") is not None:
        what = "not responding" if node["health"] == Health.NOT_RESPONDING else "down"
        down.append(f"{what} {_span(node['down_for_s'])}")
    if node.get("flaps_1h"):
        down.append(f"flapped {node['flaps_1h']}x /h")
    flags = " ".join(key for key, value in (node.get("gui") or {}).items() if value is True)
    resources = node.get("resources") or {}
    return [name, Text(str(node["health"]), style=STYLES.get(node["health"], "")),
            Text(", ".join(down), style="red" if down else ""), _ago(node.get("status_age_s")),
            flags, f"{resources['cpu_percent']:.1f} %" if resources else "-",
            f"{resources['memory_mb']:.0f} MB" if resources else "-"]


def run_watch(config: Config, *, login: tuple[str | None, str | None], stop: threading.Event,
              console: Console | None = None) -> int:
    """Show the view until ``stop`` is set (Ctrl-C, SIGTERM); returns the exit status."""
    console = console or Console()
    view = NodeView(topics=config.mqtt.topics)
    subscriber = ViewSubscriber(config, view, login=login, name="yl-status-watch").start()
    try:
        with Live(console=console, auto_refresh=False, transient=False,
                  vertical_overflow="crop") as live:
            while True:
                live.update(render(view, rows=max(console.size.height - 6, 1)), refresh=True)
                if stop.wait(REFRESH):
                    break
    finally:
        subscriber.stop()
    return 0
