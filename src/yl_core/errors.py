"""The exception family every yl-status component raises."""

from __future__ import annotations


class YLStatusError(Exception):
    """Base class of every error yl-status raises on purpose."""


class ConfigError(YLStatusError):
    """The configuration is missing, unreadable or invalid.

    ``key`` names the offending setting (``monitor.node_id``) and ``source`` the file or
    environment variable it came from, so the message can be shown to an operator as is.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.key = key
        self.source = source
        where = []
        if key:
            where.append(key)
        if source:
            where.append(f"in {source}")
        prefix = " ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ProtocolError(YLStatusError):
    """An MQTT topic or payload does not follow protocol version 1.

    ``reason`` is a short machine-friendly word (``json``, ``schema``, ``too_large``,
    ``node_id``, ``version``) used to count rejections.
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


class SessionTakenOverError(YLStatusError):
    """Another client connected with this node's id; this one stopped instead of fighting."""
