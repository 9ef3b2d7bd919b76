"""Times as the protocol writes them: ISO-8601 UTC with milliseconds and a ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone

from yl_core.errors import ProtocolError


def utc_now_iso() -> str:
    """Now as ISO-8601 UTC with milliseconds and a ``Z`` suffix."""
    return iso_from_epoch(datetime.now(timezone.utc).timestamp())


def iso_from_epoch(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_from_iso(text: str) -> float:
    """Parse an ISO-8601 time; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProtocolError("schema", f"not an ISO-8601 time: {text[:40]!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
