"""Qt adapter: a ``StatusReporter`` QObject for a PyQt5, PyQt6, PySide2 or PySide6 window.

It owns a ``StatusPublisher``, starts it when the window is first shown (or on ``start()``),
stops it when a close of the window is accepted, when the window is destroyed or when the
application quits, and turns the publisher's background notifications into Qt signals,
delivered on the GUI thread by Qt's queued connections. No paho callback ever touches a
widget: slots connected to these signals run on the thread of their receiver.

While it runs, a timer on the GUI thread tells the publisher every ``LOOP_TICK_MS`` that the
event loop turns (``StatusPublisher.loop_turned``); the publisher's own thread judges it, so
a GUI thread blocked for ``monitor.gui_hang_after`` seconds is reported *not responding*
while the process and its network go on. A modal dialog runs a nested event loop, which
turns the timer too: it is no hang.

The binding is the window's own, whatever was imported first: a reporter is a QObject of
the binding its window's class comes from (without a window: a binding already imported,
else the first of ``BINDINGS`` installed). QtPy was weighed for this and does not serve: it
fixes one binding per process when it is first imported, so an adapter imported before the
application's own binding would pick another one than the window's.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any

from publisher.status_publisher import StatusPublisher
from yl_core.config import Config
from yl_core.version import PACKAGE_VERSION

BINDINGS = ("PySide6", "PyQt6", "PyQt5", "PySide2")
LOOP_TICK_MS = 500
"""How often the reporter's timer tells the publisher that the GUI's event loop turns."""
_classes: dict[str, type] = {}
_classes_lock = threading.Lock()


def binding_of(window: Any) -> str | None:
    """The Qt binding ``window``'s class comes from (None if it is not a Qt object)."""
    for cls in type(window).__mro__:
        top = cls.__module__.split(".")[0]
        if top in BINDINGS:
            return top
    return None


def default_binding() -> str:
    """A binding already imported by the application, else the first one installed."""
    for name in [*(b for b in BINDINGS if b in sys.modules), *BINDINGS]:
        try:
            importlib.import_module(f"{name}.QtCore")
        except ImportError:
            continue
        return name
    raise ImportError("the yl-status Qt adapter needs PySide6, PyQt6, PyQt5 or PySide2: "
                      "pip install 'yl-status[pyside6]' (or the extra of your binding)")


def StatusReporter(config: Config, window: Any = None, *,  # noqa: N802
                   node_id: str | None = None, version: str = PACKAGE_VERSION,
                   stop_timeout: float = 2.0, watch_loop: bool = True) -> Any:
    """A reporter for ``window`` (a QObject of the window's binding; see the module).
    ``watch_loop``: report the GUI as not responding when its event loop stops turning.

    It emits ``linkChanged(connected, reason)`` when the broker link goes up or down,
    ``publishFailed(message)`` when a report could not be published, and ``stopped()`` after
    the final ``disconnected`` state was sent. ``binding`` names its Qt binding."""
    binding = (binding_of(window) if window is not None else None) or default_binding()
    return reporter_class(binding)(config, window, node_id=node_id, version=version,
                                   stop_timeout=stop_timeout, watch_loop=watch_loop)


def reporter_class(binding: str) -> type:
    """The reporter QObject class of one binding (made once)."""
    with _classes_lock:
        found = _classes.get(binding)
        if found is None:
            core = importlib.import_module(f"{binding}.QtCore")
            found = _classes[binding] = _make_class(binding, core)
        return found


def _make_class(binding: str, core: ModuleType) -> type:
    signal = getattr(core, "Signal", None) or core.pyqtSignal
    show, hide, close = (core.QEvent.Type.Show, core.QEvent.Type.Hide, core.QEvent.Type.Close)
    state_change = core.QEvent.Type.WindowStateChange

    def __init__(self: Any, config: Config, window: Any = None, *,  # noqa: N807
                 node_id: str | None = None, version: str = PACKAGE_VERSION,
                 stop_timeout: float = 2.0, watch_loop: bool = True) -> None:
        core.QObject.__init__(self, window)
        self.stop_timeout = stop_timeout
        self._relay = _Relay(self)
        self.publisher = StatusPublisher(config, node_id=node_id, version=version,
                                         on_link_change=self._relay.link_changed,
                                         on_error=self._relay.publish_failed)
        self.destroyed.connect(self._relay.cut)
        self._window = window
        self._window_active_by_app = False
        self._loop_timer = None
        if watch_loop:
            self._loop_timer = core.QTimer(self)
            self._loop_timer.setInterval(LOOP_TICK_MS)
            self._loop_timer.timeout.connect(self.publisher.loop_turned)
        self._started = False
        self._stopped = False
        self._closing = False
        if window is not None:
            window.installEventFilter(self)
            publisher = self.publisher
            # The reporter may already be gone (a child of the window) when this fires.
            window.destroyed.connect(lambda *_: publisher.stop(stop_timeout))
        app = core.QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop)

    def start(self: Any) -> Any:
        if not self._started:
            self._started = True
            self.publisher.start()
            if self._loop_timer is not None:
                self.publisher.loop_turned()
                self._loop_timer.start()
        return self

    def beat(self: Any, name: str, period: float | None = None) -> None:
        """See ``StatusPublisher.beat``: one sign of life of a pipeline, from any thread."""
        self.publisher.beat(name, period)

    def update_gui_status(self: Any, **flags: Any) -> None:
        """Cheap and non-blocking; see ``StatusPublisher.update_gui_status``. Setting
        ``window_active`` here takes it over from the reporter, which otherwise keeps it true
        while the window is shown and not minimised."""
        if "window_active" in flags:
            self._window_active_by_app = True
        self.publisher.update_gui_status(**flags)

    def _follow_window(self: Any) -> None:
        window = self._window
        if window is not None and not self._window_active_by_app:
            self.publisher.update_gui_status(
                window_active=bool(window.isVisible() and not window.isMinimized()))

    def stop(self: Any) -> None:
        """Publish ``disconnected`` (waiting at most ``stop_timeout`` s) and disconnect."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop_timer is not None:
            self._loop_timer.stop()
        self.publisher.stop(self.stop_timeout)
        self._relay.cut()
        self.stopped.emit()

    def connected(self: Any) -> bool:
        return bool(self.publisher.connected)

    def eventFilter(self: Any, watched: Any, event: Any) -> bool:  # noqa: N802
        # Qt may call this while __init__ is still running (the parent gets ChildAdded).
        if watched is getattr(self, "_window", None):
            kind = event.type()
            if kind in (show, hide, state_change):
                self._follow_window()
            if kind == show:
                self.start()
            elif kind == close:
                # The window's own closeEvent runs after this filter and may refuse the
                # close ("unsaved changes?"): stop only once the window is hidden by it.
                self._closing = True
                core.QTimer.singleShot(0, self._close_settled)
            elif kind == hide and self._closing:
                self._closing = False
                self.stop()
        return False

    def _close_settled(self: Any) -> None:
        self._closing = False
        window = self._window
        if window is not None and not window.isVisible():
            self.stop()

    namespace = {
        "__doc__": StatusReporter.__doc__, "__module__": __name__, "binding": binding,
        "linkChanged": signal(bool, str), "publishFailed": signal(str), "stopped": signal(),
        "__init__": __init__, "start": start, "update_gui_status": update_gui_status,
        "beat": beat,
        "stop": stop, "connected": property(connected), "eventFilter": eventFilter,
        "_close_settled": _close_settled, "_follow_window": _follow_window,
    }
    return type("StatusReporter", (core.QObject,), namespace)


class _Relay:
    """Carries the publisher's notifications (from its threads) to the reporter's signals,
    until the reporter stops or is destroyed: a late notification is dropped instead of
    reaching a deleted Qt object."""

    def __init__(self, reporter: Any) -> None:
        self._lock = threading.Lock()
        self._reporter: Any = reporter

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
