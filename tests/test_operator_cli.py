"""``yl-status alerts`` and ``yl-status ack`` against the monitor double."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from yl_status.cli import main
from yl_status.monitor_double import MonitorDouble


@pytest.fixture
def double() -> Iterator[MonitorDouble]:
    d = MonitorDouble(token="t0ken").start()
    yield d
    d.down()


def config(tmp_path: Path, double: MonitorDouble, token: str = "t0ken") -> str:
    path = tmp_path / "ops.yaml"
    path.write_text(f"monitor:\n  url: {double.url}\n  token: {token}\n  timeout: 2\n")
    return str(path)


@pytest.mark.parametrize("wrapped", [False, True])
def test_alerts_table_from_either_list_shape(tmp_path: Path, double: MonitorDouble,
                                             capsys: pytest.CaptureFixture[str],
                                             wrapped: bool) -> None:
    double.wrap_alerts = wrapped
    assert main(["alerts", "-c", config(tmp_path, double)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["ID", "LEVEL", "STATUS"]
    assert "cpu above 80 %" in out
    assert "3 alert(s)" in out


def test_alerts_filters_and_json(tmp_path: Path, double: MonitorDouble,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "-c", config(tmp_path, double), "--status", "active", "--level",
                 "critical", "--json"]) == 0
    alerts = json.loads(capsys.readouterr().out)
    assert [a["id"] for a in alerts] == ["2"]


def test_ack_marks_the_alert(tmp_path: Path, double: MonitorDouble,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ack", "1", "--user", "ops", "-c", config(tmp_path, double)]) == 0
    assert "acknowledged by ops" in capsys.readouterr().out
    assert double.alerts[0]["acknowledged_by"] == "ops"


def test_ack_of_an_unknown_alert_fails_clearly(tmp_path: Path, double: MonitorDouble,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ack", "404", "--user", "ops", "-c", config(tmp_path, double)]) == 1
    assert "no alert with id 404" in capsys.readouterr().out


def test_ack_rejects_a_hostile_id_before_any_request(tmp_path: Path, double: MonitorDouble,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ack", "../nodes", "--user", "ops", "-c", config(tmp_path, double)]) == 2
    assert "ALERT_ID" in capsys.readouterr().err
    assert double.request_count() == 0


def test_a_wrong_token_is_reported_not_leaked(tmp_path: Path, double: MonitorDouble,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "-c", config(tmp_path, double, token="wrong-secret")]) == 1
    captured = capsys.readouterr()
    assert "HTTP 401" in captured.out
    assert "wrong-secret" not in captured.out + captured.err


def test_an_unreachable_monitor_is_reported(tmp_path: Path, double: MonitorDouble,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, double)
    double.down()
    assert main(["alerts", "-c", path]) == 1
    assert "connection refused" in capsys.readouterr().out
