"""``bridge.fast_json``: orjson's speed, the standard library's answers. Pure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge import fast_json
from yl_core import protocol
from yl_core.errors import ProtocolError


@pytest.mark.parametrize("text", [
    '{"a": 1, "b": [1.5, -2, "x\\u00e9"], "c": null, "d": true}',
    '{"big": 123456789012345678901234567890, "neg": -9223372036854775809}',
    '{"long": 0.12345678901234567890123, "exp": 1e300, "u64": 18446744073709551615}',
    '{"surrogate": "\\ud800", "dup": 1, "dup": 2}',
])
def test_decode_json_reads_what_the_standard_library_reads(text: str) -> None:
    expected = json.loads(text)
    decoded = fast_json.decode_json(text.encode())
    assert decoded == expected
    assert [type(v) for v in decoded.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize("payload", [
    b"\xef\xbb\xbf{}", b'{"a": NaN}', b'{"a": 1e400, "b": -Infinity}', b"[" * 5000 + b"]" * 5000,
    b'{"a": "\xff"}', b'{"a": "\x01"}', b'{"a": 1,}', b'{"seq": 123456789012345678901}', b"[1]",
])
def test_load_json_takes_and_refuses_what_the_protocol_does(payload: bytes) -> None:
    """The fast path changes no answer: the same object, or the same error."""
    def answer(read: Any) -> object:
        try:
            return read(payload)
        except ProtocolError as exc:
            return (exc.reason, str(exc))
    assert answer(fast_json.load_json) == answer(protocol.load_json)
