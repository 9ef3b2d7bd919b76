"""``yl-status watch`` in a pseudo-terminal against a real broker and real node processes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.support import (
    TEST_PASSWORD,
    WATCHER_USER,
    config_dict,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A process on a pseudo-terminal of 150 x 40, with everything it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave,
                                        env={**os.environ, "TERM": "xterm-256color", **env},
                                        close_fds=True, start_new_session=True)
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self.lock:
                self.output += chunk

    def raw(self) -> str:
        with self.lock:
            return self.output.decode(errors="replace")

    def frame(self) -> str:
        """The last screen drawn, without colours."""
        text = ANSI.sub("", self.raw())
        return text[text.rfind("node(s)"):] if "node(s)" in text else ""

    def close(self) -> int:
        code = stop_process(self.process)
        self.reader.join(5)
        os.close(self.master)
        return code


@pytest.fixture
def nodes(tmp_path: Path, broker: DevBroker) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started = {}
    for node_id in ("node-1", "node-2"):
        config = write_config(tmp_path / f"{node_id}.yaml", config_dict(broker, node_id))
        started[node_id] = start_process(["node", "-c", str(config)],
                                         log_path=tmp_path / f"{node_id}.log")
    yield started
    for process in started.values():
        stop_process(process)


def test_watch_shows_nodes_problems_first_in_colour_and_updates_in_place(
        tmp_path: Path, broker: DevBroker, nodes: dict[str, subprocess.Popen[bytes]]) -> None:
    config = write_config(tmp_path / "watch.yaml", config_dict(broker))
    terminal = Terminal([sys.executable, "-m", "yl_status", "watch", "-c", str(config),
                         "--login", WATCHER_USER], {"YL_WATCH_PASSWORD": TEST_PASSWORD})
    try:
        wait_until(lambda: terminal.frame().count(" ready ") >= 2, timeout=20,
                   what="both nodes ready on the terminal")
        assert "broker: connected" in terminal.frame()
        frame = terminal.frame()
        assert frame.index("node-1") < frame.index("node-2")  # by id while all are up
        nodes["node-2"].kill()
        nodes["node-2"].wait()
        wait_until(lambda: " lost " in terminal.frame(), timeout=10, what="node-2 lost")
        frame = terminal.frame()
        assert frame.index("node-2") < frame.index("node-1"), frame
        assert re.search(r"node-2.*lost.*down \d+ s", frame)
        raw = terminal.raw()
        assert "\x1b[1;31mlost" in raw  # bold red
        assert "\x1b[1;32mready" in raw  # bold green
    finally:
        assert terminal.close() == 0


def test_watch_without_a_login_says_anonymous_access_is_off(
        tmp_path: Path, broker: DevBroker) -> None:
    config = write_config(tmp_path / "watch.yaml", config_dict(broker))
    terminal = Terminal([sys.executable, "-m", "yl_status", "watch", "-c", str(config)],
                        {"YL_WATCH_LOGIN": ""})
    try:
        wait_until(lambda: "anonymous access is off" in
                   " ".join(terminal.frame().split()), timeout=10, what="the refusal on screen")
        assert "WARNING" not in terminal.raw()
    finally:
        assert terminal.close() == 0
