"""The yl-status configuration: one YAML schema, loaded and validated once.

The layout is the original ``config/monitor_config.yaml`` (``monitor:``, ``local_server:``,
``logging:``) plus ``mqtt:`` and ``bridge:``. Every value is checked; an unknown key, a wrong
type or a bad value raises ``ConfigError`` naming the key and the file. Relative paths are
taken relative to the config file.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

import yaml

from yl_core import protocol
from yl_core.checks import (
    DROPPED,
    Check,
    boolean,
    database_url,
    deprecated,
    host,
    hosts_list,
    kind,
    listen_address,
    node_id,
    number,
    origins_list,
    path,
    periods,
    preview,
    text,
    topic_root,
    url,
    zero_or,
)
from yl_core.errors import ConfigError
from yl_core.urls import MASK, mask_url

log = logging.getLogger(__name__)

ENV_CONFIG_PATH: Final = "YL_STATUS_CONFIG"
SECRET_KEYS: Final = frozenset({"password", "token", "mqtt_password"})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PROFILES = ("auto", "nodes-api", "v1")


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
    retry_delay: float = 5.0
    enabled: bool = True
    token: str | None = None
    ca_file: str | None = None
    profile: str = "auto"
    status_values: StatusValues = field(default_factory=StatusValues)
    v1_refresh: float = 1.0
    """Seconds between heartbeats repeated for a node that is up at a v1 monitor (0: never);
    its own process scan marks a GUI it cannot see offline every 10 s."""
    look_interval: float = 30.0
    """Seconds between two reads of the monitor's node list while all is well: each read
    also tells a node the monitor forgot, or shows otherwise than it was told, its current
    truth again."""
    gui_hang_after: float = 5.0
    """Seconds without a turn of a watched main loop after which the GUI is not responding
    (where desktops call a window "Not Responding")."""
    pipelines: Mapping[str, float] = field(default_factory=dict)
    """Expected seconds between ``StatusPublisher.beat(name)`` calls, per pipeline name."""


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
    mqtt_username: str | None = None
    """The bridge's broker login, so that one file can serve every component; without it,
    ``mqtt.username`` (a file of the bridge's own), else ``client_id``."""
    mqtt_password: str | None = None
    session_expiry: int = 86400
    max_nodes: int = 100_000
    status_receiver: str = "process"
    """Where the bridge's broker session runs: ``process`` (a child process: paho's per-message work
    does not share the bridge's interpreter lock, and a hung one is killed and replaced) or
    ``thread`` (in the bridge's process: one process fewer, for small sites)."""

    @property
    def instance_name(self) -> str:
        if self.instance:
            return self.instance
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

    def bridge_login(self) -> tuple[str, str | None]:
        """The bridge's broker login:
        ``bridge.mqtt_username`` and ``bridge.mqtt_password``; else ``mqtt.username`` and
        ``mqtt.password`` (a config file of the bridge's own, as before); else
        ``bridge.client_id`` with ``mqtt.password`` (what ``add-user.sh bridge`` writes)."""
        if self.bridge.mqtt_username is not None:
            return self.bridge.mqtt_username, self.bridge.mqtt_password
        if self.mqtt.username is not None:
            return self.mqtt.username, self.mqtt.password
        return self.bridge.client_id, self.bridge.mqtt_password or self.mqtt.password

    def viewer_login(self) -> tuple[str | None, str | None]:
        """The status app's broker login, ``local_server.mqtt_username`` and its password
        (None: anonymous). The broker ties a connection to its login, so the node's or the
        bridge's login would take their connection over: that is a config error."""
        username = self.local_server.mqtt_username
        bridge = self.bridge_login()[0]
        bridges = (self.bridge.client_id, bridge)
        taken = dict.fromkeys(bridges, "the bridge")
        taken[self.mqtt.username or self.monitor.node_id] = "the node"
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
                out[f.name] = MASK
            elif mask and f.name == "outbox_url" and value is not None:
                out[f.name] = mask_url(value)
            else:
                out[f.name] = _as_dict(value, mask)
        return out
    if isinstance(obj, tuple):
        return list(obj)
    return obj


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
        "max_retries": deprecated("the bridge retries until the monitor takes the message; "
                                  "retry_delay caps its backoff"),
        "retry_delay": number(low=0, high=3600), "enabled": boolean(),
        "token": text(optional=True), "ca_file": path(must_exist=True),
        "profile": text(choices=_PROFILES),
        "status_values": (StatusValues, _STATUS_VALUES),
        "gui_hang_after": number(low=1, high=600),
        "v1_refresh": zero_or(number(low=0.2, high=3600)),
        "look_interval": number(low=1, high=3600),
        "pipelines": periods(),
    }),
    "mqtt": (MqttConfig, {
        "host": host(), "port": number(integer=True, low=1, high=65535),
        "username": text(optional=True), "password": text(optional=True),
        "tls": (TlsConfig, _TLS), "keepalive": number(integer=True, low=1, high=65535),
        "topic_root": topic_root(),
    }),
    "local_server": (LocalServerConfig, {
        "enabled": boolean(), "host": host(), "port": number(integer=True, low=0, high=65535),
        "mqtt_username": text(optional=True), "mqtt_password": text(optional=True),
        "trusted_hosts": hosts_list(), "cors_origins": origins_list(),
    }),
    "bridge": (BridgeConfig, {
        "client_id": node_id(), "outbox_path": path(optional=False),
        "outbox_url": database_url(), "instance": node_id(optional=True),
        "lease": number(low=1.5, high=300),
        "http_concurrency": number(integer=True, low=1, high=64),
        "metrics": listen_address(),
        "session_expiry": number(integer=True, low=60, high=2**32 - 1),
        "mqtt_username": node_id(optional=True), "mqtt_password": text(optional=True),
        "max_nodes": number(integer=True, low=1, high=10_000_000),
        "status_receiver": text(choices=("process", "thread")),
    }),
    "logging": (LoggingConfig, {
        "level": text(choices=_LOG_LEVELS), "file": path(),
    }),
}


def schema_defaults() -> dict[str, Any]:
    """Every key the schema accepts (``section.key``, ``section.sub.key``) with its default
    as plain data (``to_dict``'s form); a deprecated key's default is ``DROPPED``."""
    defaults = Config().to_dict(mask_secrets=False)
    out: dict[str, Any] = {}

    def walk(schema: dict[str, Any], values: dict[str, Any], prefix: str) -> None:
        for key, rule in schema.items():
            if isinstance(rule, tuple):
                walk(rule[1], values[key], f"{prefix}{key}.")
            else:
                out[prefix + key] = values.get(key, DROPPED)

    for section, (_, schema) in _SCHEMA.items():
        walk(schema, defaults[section], section + ".")
    return out


def _build(cls: type, schema: dict[str, Any], data: Any, prefix: str, source: str) -> Any:
    if data is None:
        data = {}
    kind(data, (dict,), prefix, source)
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
            checked = rule(value, full, source)
            if checked is not DROPPED:
                values[key] = checked
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
            raise ConfigError(f"expected an integer, got {preview(raw)}",
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
    return _found_config(cwd, env)[0]


def _found_config(cwd: Path | None, env: Mapping[str, str] | None
                  ) -> tuple[Path | None, str]:
    """``find_config``'s answer and why, in words."""
    explicit = (os.environ if env is None else env).get(ENV_CONFIG_PATH)
    if explicit:
        return Path(explicit), f"named by ${ENV_CONFIG_PATH}"
    places = ((cwd or Path.cwd(), "under the working directory"),
              (Path(__file__).resolve().parent.parent, "next to the package"))
    for base, where in places:
        candidate = base / CONFIG_NAME
        if candidate.is_file():
            return candidate, f"found {where} (${ENV_CONFIG_PATH} is not set)"
    looked = " and ".join(str(base / CONFIG_NAME) for base, _ in places)
    return None, f"${ENV_CONFIG_PATH} is not set and there is no {looked}"


def load_config(path: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None) -> Config:
    """Load, validate and apply environment overrides.

    Without ``path`` the file is found by ``find_config``; with none, the defaults are used.
    ``env`` defaults to ``os.environ`` (read at call time, never at import).
    """
    environ = os.environ if env is None else env
    if path is None:
        path, why = _found_config(None, environ)
        if path is None:
            log.warning("no config file: %s; using the built-in defaults (broker %s:%d, no "
                        "login)", why, MqttConfig.host, MqttConfig.port)
        else:
            log.info("config file %s: %s", path, why)
    original = False
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
        original = isinstance(data, dict) and {"monitor", "local_server"} <= data.keys() and \
            not {"mqtt", "bridge"} & data.keys()
    config = _apply_env(config, environ)
    if original and path is not None:
        _warn_original_layout(config, Path(path))
    return config


def _warn_original_layout(config: Config, path: Path) -> None:
    """The original ``monitor_config.yaml`` (``monitor:`` and ``local_server:``, neither
    ``mqtt:`` nor ``bridge:``) is read as is; say what it does not say."""
    login = "" if config.mqtt.password else (
        "; it gives no broker login: a broker with anonymous access off (the project's) "
        "refuses it until mqtt.username and mqtt.password are added")
    where = (f"logging.file ({config.logging.file}) is written by the yl-status services, "
             "not by a GUI that embeds the publisher") if config.logging.file else \
        "logging.file is not set"
    log.warning("%s has the original layout (no mqtt: section): the broker is %s:%d%s; "
                "relative paths are taken from the file's folder %s (%s), not from the "
                "working directory", path, config.mqtt.host, config.mqtt.port, login,
                path.resolve().parent, where)
