"""The Qt adapter picks the binding the application already imported: PyQt5 here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import config_dict, retained, write_config
from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration

SCRIPT = r"""
import json, sys, time
from PyQt5.QtWidgets import QApplication, QMainWindow
from publisher import load_config
from publisher.qt import BINDING, StatusReporter

app = QApplication([])
window = QMainWindow()
reporter = StatusReporter(load_config(sys.argv[1]), window)
events = []
reporter.linkChanged.connect(lambda up, why: events.append(up))
window.show()
deadline = time.monotonic() + 15
while True not in events and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
window.close()
print(json.dumps({"binding": BINDING, "events": events, "stopped": reporter._stopped}))
"""


def test_pyqt5_window_reports_and_stops(tmp_path: Path, broker: DevBroker) -> None:
    config = write_config(tmp_path / "gui.yaml", config_dict(broker, "node-3"))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(config)], capture_output=True,
                         text=True, env=env, timeout=60, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"binding": "PyQt5", "events": [True], "stopped": True}
    assert retained(broker.host, broker.port, "yl/ar/nodes/node-3/state")["state"] == \
        "disconnected"
