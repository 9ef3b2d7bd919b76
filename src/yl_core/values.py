"""Type checks on untrusted data (YAML config, JSON payloads) that Python's ``isinstance``
gets wrong for this purpose: ``True`` is an ``int``, and ``float('nan')`` is a float."""

from __future__ import annotations

import math


def is_kind(value: object, kinds: tuple[type, ...]) -> bool:
    """``isinstance(value, kinds)``, except that a bool is a number only when ``bool`` is
    one of ``kinds``."""
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def is_finite(value: object) -> bool:
    """False only for a float that is NaN or infinite."""
    return not isinstance(value, float) or math.isfinite(value)
