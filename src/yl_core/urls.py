"""What yl-status needs of URLs beyond ``urllib.parse``: a masked form for logs, and the
web origin a browser sends."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

MASK: Final = "********"
"""What a secret is shown as, in logs and in ``check-config``."""


def mask_url(value: str) -> str:
    """A URL with its password masked."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:{MASK}@{host}").geturl()


def origin_of(address: str) -> str:
    """The web origin of an http(s) URL: scheme, host and port as a browser sends them."""
    parts = urlsplit(address)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme.lower()}://{host}{port}"
