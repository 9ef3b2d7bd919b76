"""The checks a config schema is built from: each takes ``(value, key, source)`` and returns
the value to keep, or raises ``ConfigError`` naming the key and the file."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from yl_core import protocol
from yl_core.errors import ConfigError, ProtocolError
from yl_core.urls import mask_url, origin_of
from yl_core.values import is_finite, is_kind

log = logging.getLogger(__name__)

_HOSTNAME: Final = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,253}")

Check = Callable[[Any, str, str], Any]
DROPPED: Final = object()
"""What the check of a deprecated key returns: the key is accepted and not kept."""


def kind(value: Any, kinds: tuple[type, ...], key: str, source: str) -> None:
    """Raise unless ``value`` is one of ``kinds`` (a bool is not a number)."""
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"expected {_kind_names(kinds)}, got a boolean", key=key, source=source)
    if not is_kind(value, kinds):
        raise ConfigError(f"expected {_kind_names(kinds)}, got {type(value).__name__} "
                          f"{preview(value)}", key=key, source=source)


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping", type(None): "nothing"}
    if int in kinds and float in kinds:
        kinds = tuple(k for k in kinds if k is not int)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text(*, optional: bool = False, pattern: re.Pattern[str] | None = None,
         choices: tuple[str, ...] | None = None) -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        if value is None and optional:
            return None
        kind(value, (str,), key, source)
        if not value and not optional:
            raise ConfigError("must not be empty", key=key, source=source)
        if choices is not None and value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}",
                              key=key, source=source)
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(f"invalid value {preview(value)}", key=key, source=source)
        return value
    return check


def deprecated(why: str) -> Check:
    """A key that is still accepted, with a warning, and no longer used."""
    def check(value: Any, key: str, source: str) -> Any:
        log.warning("%s in %s is deprecated and ignored: %s", key, source, why)
        return DROPPED
    return check


def number(*, integer: bool = False, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (int,) if integer else (int, float), key, source)
        if not is_finite(value):
            raise ConfigError(f"must be a finite number, got {value!r}", key=key, source=source)
        bad_low = low is not None and (value <= low if low_open else value < low)
        if bad_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise ConfigError(f"must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}",
                              key=key, source=source)
        return value if integer else float(value)
    return check


def zero_or(check: Check) -> Check:
    """0 (off), or what ``check`` accepts."""
    def zero(value: Any, key: str, source: str) -> Any:
        if is_kind(value, (int, float)) and value == 0:
            return 0.0
        return check(value, key, source)
    return zero


def boolean() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (bool,), key, source)
        return value
    return check


def node_id(*, optional: bool = False) -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        if value is None and optional:
            return None
        kind(value, (str,), key, source)
        try:
            return protocol.check_node_id(value)
        except ProtocolError as exc:
            raise ConfigError(str(exc), key=key, source=source) from exc
    return check


def url() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (str,), key, source)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"must be an http:// or https:// URL, got {preview(value)}",
                              key=key, source=source)
        try:
            parts.port  # noqa: B018
        except ValueError as exc:
            raise ConfigError(f"bad port in URL {preview(value)}", key=key, source=source) \
                from exc
        return value.rstrip("/")
    return check


def database_url() -> Check:
    """A ``postgresql://`` URL (libpq's form), or None."""
    def check(value: Any, key: str, source: str) -> Any:
        if value is None:
            return None
        kind(value, (str,), key, source)
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError("must be a postgresql:// URL (for an SQLite outbox, set "
                              f"bridge.outbox_path instead), got {preview(mask_url(value))}",
                              key=key, source=source)
        try:
            parts.port  # noqa: B018
        except ValueError as exc:
            raise ConfigError(f"bad port in URL {preview(mask_url(value))}", key=key,
                              source=source) from exc
        return value
    return check


def topic_root() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (str,), key, source)
        try:
            protocol.Topics(value)
        except ProtocolError as exc:
            raise ConfigError(str(exc), key=key, source=source) from exc
        return value
    return check


def host() -> Check:
    return text(pattern=_HOSTNAME)


def path(*, optional: bool = True, must_exist: bool = False) -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        if value is None and optional:
            return None
        kind(value, (str,), key, source)
        if not value:
            raise ConfigError("must not be empty", key=key, source=source)
        resolved = Path(value).expanduser()
        if not resolved.is_absolute() and source not in ("<defaults>",) and \
                not source.startswith("$"):
            resolved = Path(source).resolve().parent / resolved
        if must_exist and not resolved.is_file():
            raise ConfigError(f"file {str(resolved)!r} does not exist", key=key, source=source)
        return str(resolved)
    return check


def listen_address() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (str,), key, source)
        if value == "":
            return value
        hostpart, _, port = value.rpartition(":")
        if not hostpart or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
            raise ConfigError(f"must be HOST:PORT or empty to disable, got {preview(value)}",
                              key=key, source=source)
        return value
    return check


def periods() -> Check:
    """A mapping of names (GUI flag names) to seconds (0.05 to 3600)."""
    seconds = number(low=0.05, high=3600)

    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (dict,), key, source)
        if len(value) > protocol.MAX_GUI_FLAGS:
            raise ConfigError(f"at most {protocol.MAX_GUI_FLAGS} entries", key=key,
                              source=source)
        out = {}
        for name, period in value.items():
            if not protocol.is_valid_flag_name(name):
                raise ConfigError("must be an identifier (letters, digits, _)",
                                  key=f"{key}.{name}", source=source)
            out[name] = seconds(period, f"{key}.{name}", source)
        return out
    return check


def hosts_list() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (list,), key, source)
        for i, item in enumerate(value):
            host()(item, f"{key}[{i}]", source)
        return tuple(value)
    return check


def origins_list() -> Check:
    """Web origins (``scheme://host[:port]``); never ``*``."""
    def check(value: Any, key: str, source: str) -> Any:
        kind(value, (list,), key, source)
        origins = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            kind(item, (str,), where, source)
            if item.strip() == "*":
                raise ConfigError("'*' would let every web page read the node's status; "
                                  "list the origins", key=where, source=source)
            parts = urlsplit(item)
            try:
                parts.port  # noqa: B018
            except ValueError:
                parts = urlsplit("")
            if parts.scheme not in ("http", "https") or not parts.hostname or \
                    parts.path not in ("", "/") or parts.query or parts.fragment or \
                    parts.username is not None:
                raise ConfigError("must be an origin like http://monitor.example:5500, got "
                                  f"{preview(item)}", key=where, source=source)
            origins.append(origin_of(item))
        return tuple(origins)
    return check
