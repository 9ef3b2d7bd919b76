"""JSON read at orjson's speed with the standard library's answers: the same values, the
same errors. The bridge's side only: a GUI that embeds the publisher loads no orjson."""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from yl_core import protocol

_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
_UNREAD: Final = object()


def _read_fast(raw: bytes) -> Any:
    """orjson's reading of ``raw`` where it is the standard library's, else ``_UNREAD``:
    a number of 19 digits or more (orjson reads integers beyond 64 bits as floats) or
    anything orjson refuses (the standard library then reads it, or says why not)."""
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _UNREAD


def decode_json(raw: bytes) -> Any:
    """JSON as ``json.loads`` reads it."""
    value = _read_fast(raw)
    return json.loads(raw) if value is _UNREAD else value


def load_json(payload: bytes) -> dict[str, Any]:
    """``protocol.load_json``: the same object, or the same ``ProtocolError``."""
    if len(payload) <= protocol.MAX_PAYLOAD_BYTES:
        data = _read_fast(payload)
        if isinstance(data, dict):
            return data
    return protocol.load_json(payload)
