"""The Qt adapter in a real offscreen window of each binding, in a process of its own: the
window's binding is used whatever was imported first; a refused close keeps monitoring;
an accepted close, or the application quitting, publishes ``disconnected``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from testkit.support import config_dict, retained, write_config

from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration

SCRIPT = r"""
import importlib, json, sys, time

binding, order, config_path = sys.argv[1:4]
other = {"PyQt5": "PySide6", "PySide6": "PyQt5", "PyQt6": "PyQt5"}[binding]
if order == "adapter-first":
    import publisher.qt
importlib.import_module(other + ".QtCore")  # another binding loaded as well
widgets = importlib.import_module(binding + ".QtWidgets")
from publisher import load_config
from publisher.qt import StatusReporter


class Window(widgets.QMainWindow):
    allow_close = False

    def closeEvent(self, event):  # an "unsaved changes?" dialog answered No, then Yes
        if self.allow_close:
            event.accept()
        else:
            event.ignore()


def pump(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    return predicate()


app = widgets.QApplication([])
window = Window()
reporter = StatusReporter(load_config(config_path), window)
stopped = []
reporter.stopped.connect(lambda: stopped.append(True))
window.show()
result = {"binding": reporter.binding, "connected": pump(lambda: reporter.connected)}
window.close()
pump(lambda: not reporter._closing, timeout=5)
result["refused_close_kept"] = (window.isVisible(), reporter.connected, list(stopped))
window.allow_close = True
if sys.argv[4] == "close":
    window.close()
else:
    from importlib import import_module
    core = import_module(binding + ".QtCore")
    core.QTimer.singleShot(50, app.quit)
    app.exec()
result["stopped"] = stopped
print(json.dumps(result))
"""


def run_window(tmp_path: Path, broker: DevBroker, binding: str, order: str, end: str
               ) -> dict[str, Any]:
    config = write_config(tmp_path / "gui.yaml", config_dict(broker, "node-3"))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    run = subprocess.run([sys.executable, "-c", SCRIPT, binding, order, str(config), end],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("order", ["adapter-first", "binding-first"])
@pytest.mark.parametrize("binding", ["PyQt5", "PySide6", "PyQt6"])
def test_the_windows_binding_is_used_and_a_refused_close_keeps_monitoring(
        tmp_path: Path, broker: DevBroker, binding: str, order: str) -> None:
    result = run_window(tmp_path, broker, binding, order, "close")
    assert result == {"binding": binding, "connected": True,
                      "refused_close_kept": [True, True, []], "stopped": [True]}
    assert retained(broker.host, broker.port, "yl/ar/nodes/node-3/state")["state"] == \
        "disconnected"


@pytest.mark.parametrize("binding", ["PyQt5", "PySide6"])
def test_quitting_the_application_publishes_disconnected(
        tmp_path: Path, broker: DevBroker, binding: str) -> None:
    result = run_window(tmp_path, broker, binding, "binding-first", "quit")
    assert result["stopped"] == [True]
    assert retained(broker.host, broker.port, "yl/ar/nodes/node-3/state")["state"] == \
        "disconnected"
