"""Feeds a ``NodeView`` from the broker: read-only, retained snapshot on every connect."""

from __future__ import annotations

import logging
import secrets

import paho.mqtt.client as mqtt

from status_app.node_view import NodeView
from yl_core import protocol
from yl_core.config import Config
from yl_core.link import Link, LinkDown, options_from_config

log = logging.getLogger(__name__)


class ViewSubscriber:
    """Keeps ``view`` current, logged in as ``local_server.mqtt_username`` (a viewer; without
    one, anonymously), never as the node: a node's login would take the node's connection
    over (``Config.viewer_login`` refuses it)."""

    def __init__(self, config: Config, view: NodeView, *,
                 login: tuple[str | None, str | None] | None = None,
                 name: str = "yl-status-app") -> None:
        """``login``: (username, password) instead of the status app's own."""
        self.view = view
        self._topics = config.mqtt.topics
        username, password = login if login is not None else config.viewer_login()
        client_id = username or f"{name}-{secrets.token_hex(4)}"
        self._link = Link(
            options_from_config(config.mqtt, client_id, source=config.source, username=username,
                                password=password),
            on_connect=self._on_connect,
            on_message=self._on_message,
            on_down=self._on_down,
            name=f"{name}-link",
        )

    def start(self) -> ViewSubscriber:
        self._link.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._link.stop(timeout)
        self.view.set_broker(False, "stopped")

    def _on_connect(self, client: mqtt.Client, session_present: bool) -> None:
        client.subscribe([(self._topics.all_states, protocol.MQTT_QOS),
                          (self._topics.all_statuses, protocol.MQTT_QOS)])
        self.view.set_broker(True, "connected")

    def _on_message(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        self.view.ingest(message.topic, bytes(message.payload), retained=bool(message.retain),
                         expiry_left=getattr(message.properties, "MessageExpiryInterval", None))

    def _on_down(self, event: LinkDown) -> None:
        self.view.set_broker(False, event.reason)
