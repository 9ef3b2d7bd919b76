"""Config loading and validation: every error names the key and the file."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest
import yaml

from yl_core import protocol
from yl_core.config import Config, load_config, parse_config
from yl_core.errors import ConfigError
from yl_status.cli import main

ORIGINAL_LAYOUT = """
monitor:
  url: "http://monitor.local:5500"
  node_id: "user-gui-007"
  node_name: "AR Live Studio GUI"
  report_interval: 15
  timeout: 10
  max_retries: 5
  retry_delay: 2.5
  enabled: true
local_server:
  enabled: true
  host: "127.0.0.1"
  port: 5503
logging:
  level: "DEBUG"
  file: "logs/monitor.log"
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.monitor.report_interval == 30.0
    assert config.mqtt.topic_root == "yl/ar/nodes"


def test_the_original_layout_is_read_with_every_value_in_place(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL_LAYOUT)
    config = load_config(path, env={})
    assert config.monitor.url == "http://monitor.local:5500"
    assert config.monitor.node_id == "user-gui-007"
    assert config.monitor.report_interval == 15.0
    assert config.local_server.port == 5503
    assert config.logging.level == "DEBUG"
    assert config.logging.file == str(tmp_path / "logs" / "monitor.log")
    assert config.source == str(path)


@pytest.mark.parametrize(("text", "key", "needle"), [
    ("monitor:\n  nod_id: x\n", "monitor.nod_id", "unknown key"),
    ("monitr:\n  node_id: x\n", "monitr", "unknown section"),
    ("monitor:\n  report_interval: fast\n", "monitor.report_interval", "expected a number"),
    ("monitor:\n  report_interval: 0\n", "monitor.report_interval", "must be >= 0.1"),
    ("monitor:\n  enabled: 'yes'\n", "monitor.enabled", "true or false"),
    ("monitor:\n  node_id: ../etc\n", "monitor.node_id", "invalid node id"),
    ("monitor:\n  node_id: 'a/b'\n", "monitor.node_id", "invalid node id"),
    ("monitor:\n  url: ftp://x\n", "monitor.url", "http:// or https://"),
    ("monitor:\n  profile: v2\n", "monitor.profile", "nodes-api, v1"),
    ("monitor:\n  status_values: {online: running, busy: x}\n",
     "monitor.status_values.busy", "unknown key"),
    ("mqtt:\n  port: 70000\n", "mqtt.port", "<= 65535"),
    ("mqtt:\n  port: true\n", "mqtt.port", "boolean"),
    ("mqtt:\n  keepalive: 1.5\n", "mqtt.keepalive", "integer"),
    ("mqtt:\n  topic_root: 'a/#'\n", "mqtt.topic_root", "invalid topic root"),
    ("mqtt:\n  tls: {ca_file: missing-ca.crt}\n", "mqtt.tls.ca_file", "does not exist"),
    ("local_server:\n  port: -1\n", "local_server.port", ">= 0"),
    ("bridge:\n  client_id: 'b#1'\n", "bridge.client_id", "invalid node id"),
    ("bridge:\n  http_concurrency: 0\n", "bridge.http_concurrency", ">= 1"),
    ("bridge:\n  metrics: 'nohost'\n", "bridge.metrics", "HOST:PORT"),
    ("bridge:\n  outbox_url: 'mysql://u:pw@db/x'\n", "bridge.outbox_url", "postgresql://"),
    ("bridge:\n  outbox_url: 'postgresql://db:99999/x'\n", "bridge.outbox_url", "bad port"),
    ("bridge:\n  instance: 'a b'\n", "bridge.instance", "invalid node id"),
    ("bridge:\n  lease: 1\n", "bridge.lease", ">= 1.5"),
    ("bridge:\n  status_receiver: fork\n", "bridge.status_receiver", "process, thread"),
    ("logging:\n  level: LOUD\n", "logging.level", "DEBUG, INFO"),
    ("monitor: [1, 2]\n", "monitor", "a mapping"),
    ("monitor:\n  report_interval: .nan\n", "monitor.report_interval", "finite"),
    ("monitor:\n  timeout: .nan\n", "monitor.timeout", "finite"),
    ("monitor:\n  retry_delay: .inf\n", "monitor.retry_delay", "finite"),
    ("monitor:\n  node_id: a\n  node_id: b\n", "monitor.node_id", "more than once"),
    ("monitor:\n  node_id: a\nmonitor:\n  node_id: b\n", "monitor", "more than once"),
])
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, key: str,
                                              needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.key == key
    assert err.value.source == str(path)
    assert key in str(err.value)
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_config(tmp_path / "nope.yaml", env={})
    assert err.value.source == str(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "monitor: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}).monitor == Config().monitor


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL_LAYOUT)
    env = {"YL_MONITOR_URL": "https://m.example:8443/", "USER_GUI_NODE_ID": "gui-9",
           "YL_MQTT_HOST": "broker.local", "YL_MQTT_PORT": "8883",
           "YL_MQTT_USERNAME": "gui-9", "YL_MQTT_PASSWORD": "s3cret"}
    config = load_config(path, env=env)
    assert config.monitor.url == "https://m.example:8443"
    assert config.monitor.node_id == "gui-9"
    assert (config.mqtt.host, config.mqtt.port) == ("broker.local", 8883)
    assert (config.mqtt.username, config.mqtt.password) == ("gui-9", "s3cret")


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGINAL_LAYOUT)
    assert load_config(env={"YL_STATUS_CONFIG": str(path)}).monitor.node_id == "user-gui-007"


@pytest.mark.parametrize(("var", "value", "key"), [
    ("YL_MQTT_PORT", "eighty", "mqtt.port"),
    ("YL_MQTT_PORT", "0", "mqtt.port"),
    ("USER_GUI_NODE_ID", "a/b", "monitor.node_id"),
    ("YL_MONITOR_URL", "localhost:5500", "monitor.url"),
    ("YL_MQTT_PORT", "\u0661\u0668\u0668\u0663", "mqtt.port"),
    ("YL_MQTT_PORT", " 1883", "mqtt.port"),
])
def test_bad_environment_values_name_the_variable(var: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={var: value})
    assert err.value.source == f"${var}"
    assert err.value.key == key


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(AttributeError):
        config.monitor.node_id = "x"  # type: ignore[misc]


def test_check_config_prints_effective_settings_with_secrets_masked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every secret the schema has, each with a value of its own, from the file and from
    the environment."""
    path = write(tmp_path, ORIGINAL_LAYOUT.replace("  enabled: true\nlocal_server:", (
        "  enabled: true\n  token: secret-token\nlocal_server:\n"
        "  mqtt_username: viewer\n  mqtt_password: secret-viewer")) +
        "mqtt:\n  password: secret-file\n  username: gui\n  port: 1884\n"
        "bridge:\n  outbox_url: postgresql://bridge:secret-db@db.example/yl\n")
    monkeypatch.setattr("yl_core.config.os.environ",
                        {"YL_MONITOR_URL": "http://override:1", "YL_MQTT_PASSWORD": "secret-env"})
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "secret-" not in out
    data = yaml.safe_load(out)
    assert data["monitor"]["token"] == "********"
    assert data["mqtt"]["password"] == "********"
    assert data["local_server"]["mqtt_password"] == "********"
    assert data["bridge"]["outbox_url"] == "postgresql://bridge:********@db.example/yl"
    assert data["mqtt"]["port"] == 1884
    assert data["local_server"]["mqtt_username"] == "viewer"
    assert data["monitor"]["url"] == "http://override:1"


def test_check_config_exits_non_zero_naming_key_and_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "mqtt:\n  port: nope\n")
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.port" in err
    assert str(path) in err


def test_node_refuses_a_bad_node_id_before_any_network(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "mqtt:\n  port: 1\n")
    assert main(["node", "-c", str(path), "--node-id", "../x"]) == 2
    assert "--node-id" in capsys.readouterr().err


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "monitor_config.example.yaml"
    config = load_config(example, env={})
    assert config.monitor.profile == "auto"
    assert config.bridge.outbox_path == "/var/lib/yl-status/outbox.sqlite3"
    assert config.viewer_login() == ("yl-viewer", "change-me-too")


def test_get_reporter_is_process_wide_and_follows_the_config_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import publisher

    path = write(tmp_path, ORIGINAL_LAYOUT)
    monkeypatch.setenv("YL_STATUS_CONFIG", str(path))
    monkeypatch.setattr(publisher, "_reporter", None)
    first = publisher.get_reporter()
    assert first.node_id == "user-gui-007"
    assert publisher.get_reporter() is first


def test_find_config_looks_under_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import publisher

    monkeypatch.delenv("YL_STATUS_CONFIG", raising=False)
    (tmp_path / "config").mkdir()
    write(tmp_path / "config", ORIGINAL_LAYOUT, "monitor_config.yaml")
    assert publisher.find_config(tmp_path) == tmp_path / "config" / "monitor_config.yaml"


def test_load_config_without_a_path_finds_the_same_file_as_get_reporter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YL_STATUS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_config().monitor.node_id == "user-gui"
    (tmp_path / "config").mkdir()
    write(tmp_path / "config", ORIGINAL_LAYOUT, "monitor_config.yaml")
    assert load_config().monitor.node_id == "user-gui-007"
    other = write(tmp_path, "monitor:\n  node_id: from-env\n", "other.yaml")
    monkeypatch.setenv("YL_STATUS_CONFIG", str(other))
    assert load_config().monitor.node_id == "from-env"


def test_the_defaults_are_the_monitors_seed() -> None:
    monitor = Config().monitor
    assert (monitor.node_id, monitor.node_name) == ("user-gui", "User GUI Application")


def test_a_log_file_that_cannot_be_written_is_a_config_error(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    path = write(tmp_path, f"logging:\n  file: {blocker}/yl.log\nmonitor:\n  node_id: n-1\n")
    assert main(["node", "-c", str(path), "--duration", "0"]) == 2
    err = capsys.readouterr().err
    assert "logging.file" in err
    assert "Traceback" not in err


def test_a_log_file_in_a_missing_folder_gets_its_folder(tmp_path: Path) -> None:
    from yl_core.service import configure_logging

    target = tmp_path / "logs" / "deeper" / "yl.log"
    configure_logging(load_config(write(tmp_path, f"logging:\n  file: {target}\n"),
                                  env={}).logging)
    try:
        assert target.parent.is_dir()
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)


def test_monitor_disabled_reports_nothing(tmp_path: Path) -> None:
    from publisher import StatusPublisher

    config = load_config(write(tmp_path, "monitor:\n  enabled: false\n  node_id: n-1\n"),
                         env={})
    publisher = StatusPublisher(config).start()
    publisher.update_gui_status(video_running=True)
    assert publisher.stats()["running"] is False
    assert not [t for t in threading.enumerate() if t.name.endswith("-n-1")]
    publisher.stop()


def test_local_server_disabled_serves_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "local_server:\n  enabled: false\n  port: 1\n")
    try:
        assert main(["serve", "-c", str(path)]) == 0
    finally:
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)


@pytest.mark.parametrize(("value", "message"), [
    ("*", "every web page"), ("mon.example", "must be an origin"),
    ("http://mon.example/path", "must be an origin"), ("ftp://mon", "must be an origin"),
    ("http://user@mon", "must be an origin"), ("http://mon:99999", "must be an origin")])
def test_cors_origins_are_origins_and_never_everyone(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config({"local_server": {"cors_origins": [value]}}, "<test>")
    assert "local_server.cors_origins[0]" in str(caught.value)


@pytest.mark.parametrize(("section", "login", "whose"), [
    ({}, "user-gui", "the node"), ({"mqtt": {"username": "gui-login"}}, "gui-login", "the node"),
    ({}, "yl-bridge", "the bridge")])
def test_a_status_app_may_not_log_in_as_the_node_or_the_bridge(
        section: dict[str, dict[str, str]], login: str, whose: str) -> None:
    config = parse_config({**section, "local_server": {"mqtt_username": login}}, "<test>")
    with pytest.raises(ConfigError, match=f"is {whose}'s login") as caught:
        config.viewer_login()
    assert "local_server.mqtt_username" in str(caught.value)


def test_a_status_app_without_a_login_connects_anonymously_not_as_the_node() -> None:
    config = parse_config({"mqtt": {"username": "gui-login", "password": "pw"}}, "<test>")
    assert config.viewer_login() == (None, None)
    viewer = parse_config({"local_server": {"mqtt_username": "v", "mqtt_password": "p"}},
                          "<test>")
    assert viewer.viewer_login() == ("v", "p")


def test_serve_with_the_nodes_login_is_a_config_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "monitor:\n  node_id: gui-7\nlocal_server:\n"
                           "  mqtt_username: gui-7\n  port: 1\n")
    assert main(["serve", "-c", str(path)]) == 2
    assert "local_server.mqtt_username" in capsys.readouterr().err


def test_an_outbox_url_is_shown_with_its_password_masked(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    path = write(tmp_path, "bridge:\n  outbox_url: 'postgresql://yl:s3cret@db.example/yl'\n"
                           "  instance: bridge-a\n")
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    data = yaml.safe_load(out.split("\n", 1)[1])
    assert data["bridge"]["outbox_url"] == "postgresql://yl:********@db.example/yl"
    assert data["bridge"]["instance"] == "bridge-a"


def test_an_instance_name_defaults_to_a_usable_form_of_the_host_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "bridge-1.site.example.com")
    name = Config().bridge.instance_name
    assert name == "bridge-1-site-example-com"
    assert protocol.check_node_id(name) == name


def test_max_retries_is_accepted_with_a_warning_and_not_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, ORIGINAL_LAYOUT)
    with caplog.at_level("WARNING", logger="yl_core.checks"):
        config = load_config(path, env={})
    assert "monitor.max_retries" in caplog.text
    assert "deprecated and ignored" in caplog.text
    assert str(path) in caplog.text
    assert "max_retries" not in config.to_dict()["monitor"]


def test_the_original_layout_is_read_with_a_warning_saying_where_paths_lead(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config").mkdir()
    path = write(tmp_path / "config", ORIGINAL_LAYOUT, name="monitor_config.yaml")
    with caplog.at_level("WARNING", logger="yl_core.config"):
        config = load_config(path, env={})
    said = [r.getMessage() for r in caplog.records if r.name == "yl_core.config"]
    assert len(said) == 1
    assert str(path) in said[0]
    assert "original layout" in said[0]
    assert f"from the file's folder {tmp_path / 'config'}" in said[0]
    assert config.logging.file == str(tmp_path / "config" / "logs" / "monitor.log")
    assert config.logging.file in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="yl_core.config"):
        load_config(write(tmp_path, ORIGINAL_LAYOUT + "mqtt:\n  port: 1884\n"), env={})
    assert not [r for r in caplog.records if r.name == "yl_core.config"]
