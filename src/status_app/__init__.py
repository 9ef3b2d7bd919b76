"""The status app: local ``/health``, ``/status``, ``/stats`` and a live view, from the
latest retained MQTT messages."""

from status_app.app import create_app
from status_app.node_view import NodeView
from status_app.server import StatusServer, start_in_background

__all__ = ["NodeView", "StatusServer", "create_app", "start_in_background"]
