"""ARCHITECTURE.md kept true where a test can check it: the threads each component starts
are the ones its table names, each name used once in a process; a stopped bridge has
closed its outbox; ``Link.connected`` is written only under the link's lock."""

from __future__ import annotations

import ast
import re
import threading
from collections import Counter
from pathlib import Path

import pytest
from testkit.bridge_process import last_gui
from testkit.support import make_config, serve_config, wait_until

from bridge.service import Bridge
from publisher import StatusPublisher
from status_app import start_in_background
from tests.test_bridge_component import bridge_config
from yl_core.config import parse_config
from yl_status.dev_broker import DevBroker, free_port
from yl_status.monitor_double import MonitorDouble

pytestmark = pytest.mark.integration

ARCHITECTURE = Path(__file__).resolve().parent.parent / "ARCHITECTURE.md"


def documented_threads() -> list[re.Pattern[str]]:
    """The thread names of the table "Processes and threads" (``<node>`` is any node id)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text[text.index("## Processes and threads"):text.index("## Locks")]
    names = set(re.findall(r"`(yl-[a-z<>-]+)`", section))
    return [re.compile(re.escape(name).replace(re.escape("<node>"), r"\S+") + "$")
            for name in sorted(names)]


def ours() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("yl-")]


def undocumented(names: list[str]) -> list[str]:
    patterns = documented_threads()
    return [name for name in names if not any(p.match(name) for p in patterns)]


def test_the_table_of_threads_is_read_as_names() -> None:
    patterns = documented_threads()
    assert any(p.match("yl-status-heartbeat-node-1") for p in patterns)
    assert any(p.match("yl-bridge-outbox") for p in patterns)
    assert undocumented(["yl-bridge-outbox", "yl-bridge-nobody"]) == ["yl-bridge-nobody"]


def test_one_process_with_bridge_node_and_app_starts_the_documented_threads(
        tmp_path: Path, broker: DevBroker) -> None:
    """One process holding everything (the bridge with ``status_receiver: thread``, a GUI's
    publisher and the status app started in the background): every thread of ours is in
    the table, no name twice, and a stopped bridge has closed its outbox (SQLite removes
    the write-ahead log when its last connection closes)."""
    before = set(ours())
    double = MonitorDouble().start()
    config = bridge_config(tmp_path, broker, double, status_receiver="thread",
                           metrics=f"127.0.0.1:{free_port()}")
    bridge = Bridge(config).start()
    publisher = StatusPublisher(make_config(broker, "node-1")).start()
    server = start_in_background(parse_config(serve_config(broker, free_port()), "<test>"))
    try:
        publisher.update_gui_status(face_loaded=True)
        wait_until(lambda: last_gui(double, "node-1").get("face_loaded") is True, timeout=15,
                   what="a status delivered")
        wait_until(lambda: server.view.broker[0], timeout=10, what="the app connected")
        names = [name for name in ours() if name not in before]
        assert undocumented(names) == []
        twice = [name for name, count in Counter(names).items() if count > 1]
        assert twice == []
        expected = {"yl-bridge-statuses", "yl-bridge-outbox", "yl-bridge-forward",
                    "yl-bridge-watchdog", "yl-bridge-metrics", "yl-bridge-statuses-receiver",
                    "yl-bridge-statuses-link", "yl-bridge-statuses-refresh",
                    "yl-bridge-statuses-send", "yl-bridge-statuses-alive",
                    "yl-status-heartbeat-node-1", "yl-status-link-node-1", "yl-status-http",
                    "yl-status-app-link"}
        assert expected <= set(names), expected - set(names)
    finally:
        server.stop()
        publisher.stop()
        bridge.stop()
        double.down()
    wal = Path(config.bridge.outbox_path + "-wal")
    assert not wal.exists(), "the outbox is still open after the bridge stopped"


def assignments_outside(path: Path, attribute: str, lock: str) -> list[int]:
    """Lines of ``path`` that assign ``self.<attribute>`` outside a ``with self.<lock>:``
    (``__init__`` aside: nothing else holds the object yet)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[int] = []

    def visit(node: ast.AST, locked: bool) -> None:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return
        if isinstance(node, ast.With):
            locked = locked or any(
                isinstance(item.context_expr, ast.Attribute) and item.context_expr.attr == lock
                for item in node.items)
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Attribute) and part.attr == attribute and \
                            not locked:
                        found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, locked)

    visit(tree, False)
    return found


def test_link_connected_is_written_only_under_its_lock(tmp_path: Path) -> None:
    link = Path(__file__).resolve().parent.parent / "src" / "yl_core" / "link.py"
    assert assignments_outside(link, "_connected", "_lock") == []
    sample = tmp_path / "sample.py"
    sample.write_text("class L:\n    def f(self):\n        self._connected = True\n"
                      "    def g(self):\n        with self._lock:\n"
                      "            self._connected = False\n")
    assert assignments_outside(sample, "_connected", "_lock") == [3]
