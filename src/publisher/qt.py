"""Qt adapter: a ``StatusReporter`` QObject for a PyQt5 or PySide6 main window.

It owns a ``StatusPublisher``, starts it when the window is first shown (or on ``start()``),
stops it when the window closes, and turns the publisher's background notifications into Qt
signals, delivered on the GUI thread by Qt's queued connections. No paho callback ever
touches a widget: slots connected to these signals run on the thread of their receiver.

The binding the host application already imported is used; otherwise PySide6, then PyQt5.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any

from publisher.config import Config
from publisher.status_publisher import StatusPublisher
from publisher.version import PACKAGE_VERSION

_BINDINGS = ("PySide6", "PyQt5")


def _load_qt() -> tuple[ModuleType, Any]:
    already = [name for name in _BINDINGS if name in sys.modules]
    for name in [*already, *_BINDINGS]:
        try:
            core = importlib.import_module(f"{name}.QtCore")
        except ImportError:
            continue
        return core, getattr(core, "Signal", None) or core.pyqtSignal
    raise ImportError("the yl-status Qt adapter needs PySide6 or PyQt5: "
                      "pip install 'yl-status[qt]'")


QtCore, Signal = _load_qt()
BINDING = QtCore.__name__.split(".")[0]


class StatusReporter(QtCore.QObject):  # type: ignore[misc,name-defined]
    """Reports a window's GUI state; emits ``linkChanged(connected, reason)`` when the broker
    link goes up or down, ``publishFailed(message)`` when a report could not be published,
    and ``stopped()`` after the final ``disconnected`` state was sent."""

    linkChanged = Signal(bool, str)  # noqa: N815
    publishFailed = Signal(str)  # noqa: N815
    stopped = Signal()

    def __init__(self, config: Config, window: Any = None, *, node_id: str | None = None,
                 version: str = PACKAGE_VERSION, stop_timeout: float = 2.0) -> None:
        super().__init__(window)
        self.stop_timeout = stop_timeout
        self._relay = _Relay(self)
        self.publisher = StatusPublisher(config, node_id=node_id, version=version,
                                         on_link_change=self._relay.link_changed,
                                         on_error=self._relay.publish_failed)
        self.destroyed.connect(self._relay.cut)
        self._window = window
        self._started = False
        self._stopped = False
        if window is not None:
            window.installEventFilter(self)

    def start(self) -> StatusReporter:
        if not self._started:
            self._started = True
            self.publisher.start()
        return self

    def update_gui_status(self, **flags: Any) -> None:
        """Cheap and non-blocking; see ``StatusPublisher.update_gui_status``."""
        self.publisher.update_gui_status(**flags)

    def stop(self) -> None:
        """Publish ``disconnected`` (waiting at most ``stop_timeout`` s) and disconnect."""
        if self._stopped:
            return
        self._stopped = True
        self.publisher.stop(self.stop_timeout)
        self._relay.cut()
        self.stopped.emit()

    @property
    def connected(self) -> bool:
        return self.publisher.connected

    def eventFilter(self, watched: Any, event: Any) -> bool:  # noqa: N802
        # Qt may call this while __init__ is still running (the parent gets ChildAdded).
        if watched is getattr(self, "_window", None):
            kind = event.type()
            if kind == QtCore.QEvent.Type.Show:
                self.start()
            elif kind == QtCore.QEvent.Type.Close:
                self.stop()
        return False


class _Relay:
    """Carries the publisher's notifications (from its threads) to the reporter's signals,
    until the reporter stops or is destroyed: a late notification is dropped instead of
    reaching a deleted Qt object."""

    def __init__(self, reporter: StatusReporter) -> None:
        self._lock = threading.Lock()
        self._reporter: StatusReporter | None = reporter

    def cut(self, *_: Any) -> None:
        with self._lock:
            self._reporter = None

    def link_changed(self, connected: bool, reason: str) -> None:
        with self._lock:
            if self._reporter is not None:
                self._reporter.linkChanged.emit(connected, reason)

    def publish_failed(self, message: str) -> None:
        with self._lock:
            if self._reporter is not None:
                self._reporter.publishFailed.emit(message)
