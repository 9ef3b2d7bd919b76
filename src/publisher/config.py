"""The yl-status configuration: one YAML schema, loaded and validated once.

The layout is the original ``config/monitor_config.yaml`` (``monitor:``, ``local_server:``,
``logging:``) plus ``mqtt:`` and ``bridge:``. Every value is checked; an unknown key, a wrong
type or a bad value raises ``ConfigError`` naming the key and the file. Relative paths are
taken relative to the config file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from publisher import protocol
from publisher.errors import ConfigError, ProtocolError

ENV_CONFIG_PATH: Final = "YL_STATUS_CONFIG"
SECRET_KEYS: Final = frozenset({"password", "token", "mqtt_password"})
_MASK = "********"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PROFILES = ("auto", "nodes-api", "v1")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.:\[\]-]{1,253}")


@dataclass(frozen=True)
class StatusValues:
    online: str = "online"
    offline: str = "offline"


@dataclass(frozen=True)
class MonitorConfig:
    url: str = "http://localhost:5500"
    node_id: str = "user-gui"
    node_name: str = "User GUI Application"
    report_interval: float = 30.0
    timeout: float = 5.0
    max_retries: int = 3
    retry_delay: float = 5.0
    enabled: bool = True
    token: str | None = None
    ca_file: str | None = None
    profile: str = "auto"
    status_values: StatusValues = field(default_factory=StatusValues)


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def enabled(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: TlsConfig = field(default_factory=TlsConfig)
    keepalive: int = 10
    topic_root: str = protocol.DEFAULT_TOPIC_ROOT

    @property
    def topics(self) -> protocol.Topics:
        return protocol.Topics(self.topic_root)


@dataclass(frozen=True)
class LocalServerConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 5502
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    trusted_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to read the endpoints, besides the monitor's own."""


@dataclass(frozen=True)
class BridgeConfig:
    client_id: str = "yl-bridge"
    outbox_path: str = "yl-bridge-outbox.sqlite3"
    outbox_url: str | None = None
    """A ``postgresql://`` URL: the outbox lives there instead of ``outbox_path``, shared by
    any number of instances of which one is active (the others stand by)."""
    instance: str | None = None
    """This instance's name among those sharing ``outbox_url`` (default: the host name)."""
    lease: float = 3.0
    """Seconds a standby waits for a silent active instance before taking over."""
    http_concurrency: int = 4
    metrics: str = "127.0.0.1:9108"
    session_expiry: int = 86400
    max_nodes: int = 100_000

    @property
    def instance_name(self) -> str:
        if self.instance:
            return self.instance
        import socket  # noqa: PLC0415

        name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).strip("-_")[:64]
        return name or "bridge"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    file: str | None = None


@dataclass(frozen=True)
class Config:
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    local_server: LocalServerConfig = field(default_factory=LocalServerConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = "<defaults>"

    def viewer_login(self) -> tuple[str | None, str | None]:
        """The status app's broker login, ``local_server.mqtt_username`` and its password
        (None: anonymous). The broker ties a connection to its login, so the node's or the
        bridge's login would take their connection over: that is a config error."""
        username = self.local_server.mqtt_username
        taken = {self.mqtt.username or self.monitor.node_id: "the node",
                 self.bridge.client_id: "the bridge",
                 f"{self.bridge.client_id}-status": "the bridge"}
        if username is not None and username in taken:
            raise ConfigError(
                f"{username!r} is {taken[username]}'s login: the status app would take its "
                "broker connection over; give the status app a viewer login of its own "
                "(add-user.sh viewer NAME)", key="local_server.mqtt_username",
                source=self.source)
        return username, self.local_server.mqtt_password if username is not None else None

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """The effective configuration as plain data, secrets masked by default."""
        return {
            section: _as_dict(getattr(self, section), mask_secrets)
            for section in ("monitor", "mqtt", "local_server", "bridge", "logging")
        }


def _as_dict(obj: Any, mask: bool) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        out: dict[str, Any] = {}
        for f in fields(obj):
            value = getattr(obj, f.name)
            if mask and f.name in SECRET_KEYS and value is not None:
                out[f.name] = _MASK
            elif mask and f.name == "outbox_url" and value is not None:
                out[f.name] = mask_url(value)
            else:
                out[f.name] = _as_dict(value, mask)
        return out
    if isinstance(obj, tuple):
        return list(obj)
    return obj


# --- validation ---------------------------------------------------------------------------

Check = Callable[[Any, str, str], Any]


def _kind(value: Any, kinds: tuple[type, ...], key: str, source: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"expected {_kind_names(kinds)}, got a boolean", key=key, source=source)
    if not isinstance(value, kinds):
        raise ConfigError(f"expected {_kind_names(kinds)}, got {type(value).__name__} "
                          f"{_preview(value)}", key=key, source=source)


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping", type(None): "nothing"}
    if int in kinds and float in kinds:
        kinds = tuple(k for k in kinds if k is not int)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text(*, optional: bool = False, pattern: re.Pattern[str] | None = None,
         choices: tuple[str, ...] | None = None) -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        if value is None and optional:
            return None
        _kind(value, (str,), key, source)
        if not value and not optional:
            raise ConfigError("must not be empty", key=key, source=source)
        if choices is not None and value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}, got {value!r}",
                              key=key, source=source)
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(f"invalid value {_preview(value)}", key=key, source=source)
        return value
    return check


def number(*, integer: bool = False, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        _kind(value, (int,) if integer else (int, float), key, source)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"must be a finite number, got {value!r}", key=key, source=source)
        bad_low = low is not None and (value <= low if low_open else value < low)
        if bad_low or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
            hi = "" if high is None else f"<= {high:g}"
            raise ConfigError(f"must be {' and '.join(p for p in (lo, hi) if p)}, got {value!r}",
                              key=key, source=source)
        return value if integer else float(value)
    return check


def boolean() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        _kind(value, (bool,), key, source)
        return value
    return check


def node_id(*, optional: bool = False) -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        if value is None and optional:
            return None
        _kind(value, (str,), key, source)
        try:
            return protocol.check_node_id(value)
        except ProtocolError as exc:
            raise ConfigError(str(exc), key=key, source=source) from exc
    return check


def bridge_id() -> Check:
    """A node-id-like name with room for the ``-status`` suffix of the second session."""
    base = node_id()

    def check(value: Any, key: str, source: str) -> Any:
        base(value, key, source)
        if len(value) > 57:
            raise ConfigError("must be at most 57 characters (the bridge also uses "
                              f"'{value}-status')", key=key, source=source)
        return value
    return check


def url() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        _kind(value, (str,), key, source)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"must be an http:// or https:// URL, got {_preview(value)}",
                              key=key, source=source)
        try:
            parts.port  # noqa: B018
        except ValueError as exc:
            raise ConfigError(f"bad port in URL {_preview(value)}", key=key, source=source) \
                from exc
        return value.rstrip("/")
    return check


def database_url() -> Check:
    """A ``postgresql://`` URL (libpq's form), or None."""
    def check(value: Any, key: str, source: str) -> Any:
        if value is None:
            return None
        _kind(value, (str,), key, source)
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError("must be a postgresql:// URL (for an SQLite outbox, set "
                              f"bridge.outbox_path instead), got {_preview(mask_url(value))}",
                              key=key, source=source)
        try:
            parts.port  # noqa: B018
        except ValueError as exc:
            raise ConfigError(f"bad port in URL {_preview(mask_url(value))}", key=key,
                              source=source) from exc
        return value
    return check


def mask_url(value: str) -> str:
    """A URL with its password masked."""
    parts = urlsplit(value)
    if parts.password is None:
        return value
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:{_MASK}@{host}").geturl()


def topic_root() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        _kind(value, (str,), key, source)
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
        _kind(value, (str,), key, source)
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
        _kind(value, (str,), key, source)
        if value == "":
            return value
        hostpart, _, port = value.rpartition(":")
        if not hostpart or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"must be HOST:PORT or empty to disable, got {_preview(value)}",
                              key=key, source=source)
        return value
    return check


def hosts_list() -> Check:
    def check(value: Any, key: str, source: str) -> Any:
        _kind(value, (list,), key, source)
        for i, item in enumerate(value):
            host()(item, f"{key}[{i}]", source)
        return tuple(value)
    return check


def origins_list() -> Check:
    """Web origins (``scheme://host[:port]``); never ``*``."""
    def check(value: Any, key: str, source: str) -> Any:
        _kind(value, (list,), key, source)
        origins = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            _kind(item, (str,), where, source)
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
                                  f"{_preview(item)}", key=where, source=source)
            origins.append(origin_of(item))
        return tuple(origins)
    return check


def origin_of(address: str) -> str:
    """The web origin of an http(s) URL: scheme, host and port as a browser sends them."""
    parts = urlsplit(address)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme.lower()}://{host}{port}"


_STATUS_VALUES: dict[str, Check] = {"online": text(), "offline": text()}
_TLS: dict[str, Check] = {
    "ca_file": path(must_exist=True), "cert_file": path(must_exist=True),
    "key_file": path(must_exist=True),
}
_SCHEMA: dict[str, tuple[type, dict[str, Any]]] = {
    "monitor": (MonitorConfig, {
        "url": url(), "node_id": node_id(), "node_name": text(),
        "report_interval": number(low=0.1, high=3600), "timeout": number(low=0, low_open=True,
                                                                          high=300),
        "max_retries": number(integer=True, low=0, high=1000),
        "retry_delay": number(low=0, high=3600), "enabled": boolean(),
        "token": text(optional=True), "ca_file": path(must_exist=True),
        "profile": text(choices=_PROFILES),
        "status_values": (StatusValues, _STATUS_VALUES),
    }),
    "mqtt": (MqttConfig, {
        "host": host(), "port": number(integer=True, low=1, high=65535),
        "username": text(optional=True), "password": text(optional=True),
        "tls": (TlsConfig, _TLS), "keepalive": number(integer=True, low=1, high=65535),
        "topic_root": topic_root(),
    }),
    "local_server": (LocalServerConfig, {
        "enabled": boolean(), "host": host(), "port": number(integer=True, low=1, high=65535),
        "mqtt_username": text(optional=True), "mqtt_password": text(optional=True),
        "trusted_hosts": hosts_list(), "cors_origins": origins_list(),
    }),
    "bridge": (BridgeConfig, {
        "client_id": bridge_id(), "outbox_path": path(optional=False),
        "outbox_url": database_url(), "instance": node_id(optional=True),
        "lease": number(low=1.5, high=300),
        "http_concurrency": number(integer=True, low=1, high=64),
        "metrics": listen_address(),
        "session_expiry": number(integer=True, low=60, high=2**32 - 1),
        "max_nodes": number(integer=True, low=1, high=10_000_000),
    }),
    "logging": (LoggingConfig, {
        "level": text(choices=_LOG_LEVELS), "file": path(),
    }),
}


def _build(cls: type, schema: dict[str, Any], data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    _kind(data, (dict,), prefix, source)
    values: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}"
        if not isinstance(key, str) or key not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"unknown key (known: {known})", key=full, source=source)
        rule = schema[key]
        if isinstance(rule, tuple):
            values[key] = _build(rule[0], rule[1], value, full, source)
        else:
            values[key] = rule(value, full, source)
    return cls(**values)


def _ascii_int(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(raw)
    return int(raw)


_ENV: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "YL_MONITOR_URL": ("monitor", "url", str),
    "USER_GUI_NODE_ID": ("monitor", "node_id", str),
    "YL_MQTT_HOST": ("mqtt", "host", str),
    "YL_MQTT_PORT": ("mqtt", "port", _ascii_int),
    "YL_MQTT_USERNAME": ("mqtt", "username", str),
    "YL_MQTT_PASSWORD": ("mqtt", "password", str),
}


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    for var, (section, key, convert) in _ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        source = f"${var}"
        try:
            value = convert(raw)
        except ValueError as exc:
            raise ConfigError(f"expected an integer, got {_preview(raw)}",
                              key=f"{section}.{key}", source=source) from exc
        checked = _SCHEMA[section][1][key](value, f"{section}.{key}", source)
        config = replace(config, **{section: replace(getattr(config, section),
                                                     **{key: checked})})
    return config


def parse_config(data: Any, source: str) -> Config:
    """Validate already-parsed YAML data (a mapping of sections) into a ``Config``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got "
                          f"{type(data).__name__}", source=source)
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _SCHEMA:
            raise ConfigError(f"unknown section (known: {', '.join(_SCHEMA)})", key=str(key),
                              source=source)
        cls, schema = _SCHEMA[key]
        sections[key] = _build(cls, schema, value, key, source)
    return Config(**sections, source=source)


def _refuse_repeated_keys(node: yaml.Node | None, prefix: str, source: str) -> None:
    """YAML takes the last of two equal keys without a word; a config must not."""
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            full = f"{prefix}.{key}" if prefix else str(key)
            if key in seen:
                raise ConfigError(f"appears more than once (line {key_node.start_mark.line + 1})",
                                  key=full, source=source)
            seen.add(key)
            _refuse_repeated_keys(value_node, full, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_repeated_keys(item, f"{prefix}[{i}]", source)


CONFIG_NAME: Final = Path("config") / "monitor_config.yaml"


def find_config(cwd: Path | None = None, *, env: Mapping[str, str] | None = None
                ) -> Path | None:
    """The config file to use when none is named: ``$YL_STATUS_CONFIG``, else
    ``config/monitor_config.yaml`` under the working directory, else next to the package;
    None if there is none (the defaults apply)."""
    explicit = (os.environ if env is None else env).get(ENV_CONFIG_PATH)
    if explicit:
        return Path(explicit)
    for base in (cwd or Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None) -> Config:
    """Load, validate and apply environment overrides.

    Without ``path`` the file is found by ``find_config``; with none, the defaults are used.
    ``env`` defaults to ``os.environ`` (read at call time, never at import).
    """
    environ = os.environ if env is None else env
    if path is None:
        path = find_config(env=environ)
    if path is None:
        config = Config()
    else:
        source = str(path)
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError("config file does not exist", source=source) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file: {exc}", source=source) from exc
        try:
            _refuse_repeated_keys(yaml.compose(raw, Loader=yaml.SafeLoader), "", source)
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", source=source) from exc
        config = parse_config(data, source)
    return _apply_env(config, environ)
