"""The Qt adapter and the example window, offscreen, against a real mosquitto."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication
from testkit.support import make_config, retained, wait_until

from yl_status.dev_broker import DevBroker

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ar_app.py"
STATE = "yl/ar/nodes/node-1/state"
STATUS = "yl/ar/nodes/node-1/status"


@pytest.fixture(scope="module")
def qapp() -> QApplication:
    app = QApplication.instance() or QApplication([])
    assert isinstance(app, QApplication)
    return app


@pytest.fixture(scope="module")
def ar_app_module() -> Any:
    spec = importlib.util.spec_from_file_location("ar_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def window(qapp: QApplication, ar_app_module: Any, broker: DevBroker) -> Iterator[Any]:
    win = ar_app_module.ARApp(make_config(broker, monitor={"report_interval": 30}))
    win.show()
    yield win
    win.close()
    qapp.processEvents()


def pump(qapp: QApplication, predicate: Callable[[], Any], timeout: float = 10.0,
         what: str = "condition") -> Any:
    def check() -> Any:
        qapp.processEvents()
        return predicate()
    return wait_until(check, timeout, what)


def test_clicking_the_camera_button_reaches_the_retained_status(
        qapp: QApplication, window: Any, broker: DevBroker) -> None:
    pump(qapp, lambda: window.status.connected, what="connected")
    window.buttons["start_camera"].click()
    pump(qapp, lambda: (retained(broker.host, broker.port, STATUS) or {})
         .get("gui", {}).get("video_running") is True, what="video_running in the status")
    assert "camera started" in window.log.toPlainText()


def test_closing_the_window_publishes_disconnected(
        qapp: QApplication, ar_app_module: Any, broker: DevBroker) -> None:
    win = ar_app_module.ARApp(make_config(broker))
    stopped: list[bool] = []
    win.status.stopped.connect(lambda: stopped.append(True))
    win.show()
    pump(qapp, lambda: win.status.connected, what="connected")
    win.close()
    assert stopped == [True]
    assert retained(broker.host, broker.port, STATE)["state"] == "disconnected"


def test_flags_set_in_close_event_are_the_sessions_last_word(
        qapp: QApplication, ar_app_module: Any, broker: DevBroker) -> None:
    """AR Live Studio's ``closeEvent`` stops its camera: the retained status says so."""
    class Closing(ar_app_module.ARApp):  # type: ignore[misc]
        def closeEvent(self, event: Any) -> None:  # noqa: N802
            self.stop_camera()
            event.accept()

    win = Closing(make_config(broker))
    win.show()
    pump(qapp, lambda: win.status.connected, what="connected")
    win.start_camera()
    pump(qapp, lambda: (retained(broker.host, broker.port, STATUS) or {})
         .get("gui", {}).get("video_running") is True, what="camera running published")
    win.close()
    assert retained(broker.host, broker.port, STATE)["state"] == "disconnected"
    assert retained(broker.host, broker.port, STATUS)["gui"]["video_running"] is False


def test_window_active_follows_the_window_unless_the_application_sets_it(
        qapp: QApplication, ar_app_module: Any, broker: DevBroker) -> None:
    win = ar_app_module.ARApp(make_config(broker))

    def published_active() -> Any:
        return (retained(broker.host, broker.port, STATUS) or {}).get("gui", {}) \
            .get("window_active")

    try:
        win.show()
        pump(qapp, lambda: published_active() is True, what="active once shown")
        win.showMinimized()
        pump(qapp, lambda: published_active() is False, what="inactive when minimised")
        win.showNormal()
        pump(qapp, lambda: published_active() is True, what="active again")
        win.status.update_gui_status(window_active=False)
        pump(qapp, lambda: published_active() is False, what="the application's word")
        win.showMinimized()
        win.showNormal()
        qapp.processEvents()
        assert win.status.publisher.gui_status()["window_active"] is False
    finally:
        win.close()
        qapp.processEvents()


def test_the_indicator_follows_the_broker_on_the_gui_thread(
        qapp: QApplication, window: Any, broker: DevBroker) -> None:
    threads: list[int] = []
    window.status.linkChanged.connect(lambda *_: threads.append(threading.get_ident()))
    pump(qapp, lambda: window.indicator.text() == "monitoring: connected", what="connected")
    broker.stop()
    pump(qapp, lambda: window.indicator.text().startswith("monitoring: reconnecting"),
         what="reconnecting shown")
    broker.start()
    pump(qapp, lambda: window.indicator.text() == "monitoring: connected", timeout=20,
         what="connected again")
    assert threads
    assert set(threads) == {threading.main_thread().ident}


def test_publish_failures_reach_the_gui_as_a_signal(
        qapp: QApplication, ar_app_module: Any, broker: DevBroker) -> None:
    from yl_core.config import parse_config
    from yl_status.dev_broker import free_port

    config = parse_config({"monitor": {"node_id": "node-1"},
                           "mqtt": {"host": "127.0.0.1", "port": free_port()}}, "<test>")
    win = ar_app_module.ARApp(config)
    failures: list[str] = []
    win.status.publishFailed.connect(failures.append)
    win.show()
    try:
        pump(qapp, lambda: failures, what="a failure signal")
        assert "cannot reach broker" in failures[0]
        assert "reconnecting" in win.indicator.text()
    finally:
        win.status.stop_timeout = 0.5
        win.close()
        qapp.processEvents()


def readme_block(heading: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_qt_snippet_works_as_written(
        qapp: QApplication, broker: DevBroker, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from PySide6.QtWidgets import QLabel, QMainWindow, QPlainTextEdit
    from testkit.support import config_dict, write_config

    monkeypatch.delenv("YL_STATUS_CONFIG", raising=False)
    (tmp_path / "config").mkdir()
    write_config(tmp_path / "config" / "monitor_config.yaml", config_dict(broker, "node-1"))
    monkeypatch.chdir(tmp_path)
    window = QMainWindow()
    window.indicator = QLabel(window)  # type: ignore[attr-defined]
    window.log = QPlainTextEdit(window)  # type: ignore[attr-defined]
    exec(readme_block("### In a Qt window"), {"self": window})  # noqa: S102
    try:
        window.show()
        pump(qapp, lambda: window.indicator.text() == "monitoring: connected",  # type: ignore[attr-defined]
             what="the indicator says connected")
        pump(qapp, lambda: (retained(broker.host, broker.port, STATUS) or {})
             .get("gui", {}).get("video_running") is True, what="video_running published")
    finally:
        window.close()
        qapp.processEvents()
    assert retained(broker.host, broker.port, STATE)["state"] == "disconnected"
