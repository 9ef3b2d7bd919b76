"""A plain install from the wheel, in a fresh virtualenv, runs every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from testkit.support import answers, wait_until, write_config

from yl_status.dev_broker import free_port

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parent.parent


def run(args: list[str | Path], *, cwd: Path, timeout: float = 300.0
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("YL_", "USER_GUI_", "PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel built from this tree, and nothing else of ours."""
    root = tmp_path_factory.mktemp("install")
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", root / "dist",
                 PROJECT], cwd=root)
    assert built.returncode == 0, built.stderr
    wheels = list((root / "dist").glob("yl_status-*.whl"))
    assert len(wheels) == 1
    venv = root / "venv"
    assert run([sys.executable, "-m", "venv", venv], cwd=root).returncode == 0
    done = run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheels[0]], cwd=root)
    assert done.returncode == 0, done.stderr
    return venv


def test_every_command_runs_from_a_plain_install(installed: Path, tmp_path: Path) -> None:
    bin_dir = installed / "bin"
    assert run([bin_dir / "yl-status", "--help"], cwd=tmp_path).returncode == 0
    checked = run([bin_dir / "yl-status", "check-config"], cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    where = run([bin_dir / "python", "-m", "yl_status.dev_broker", "--where"], cwd=tmp_path)
    shipped = Path(where.stdout.strip())
    assert shipped.is_relative_to(installed)
    assert {"mosquitto.conf", "tls.conf", "acl", "add-user.sh"} <= \
        {p.name for p in shipped.iterdir()}
    light = run([bin_dir / "python", "-c",
                 "import sys, publisher; print(sorted(m for m in ('flask', 'httptools', "
                 "'orjson', 'granian', 'waitress') if m in sys.modules))"], cwd=tmp_path)
    assert light.stdout.strip() == "[]", light.stderr


def test_the_demo_runs_node_bridge_and_status_app_from_the_install(
        installed: Path, tmp_path: Path) -> None:
    demo = run([installed / "bin" / "python", "-m", "yl_status.demo", "--duration", "8"],
               cwd=tmp_path, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "is_online=True" in demo.stdout
    assert "-> 200 healthy" in demo.stdout
    assert (tmp_path / "var" / "demo").is_dir()


def test_alerts_and_ack_from_the_install(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    with open(tmp_path / "monitor.log", "wb") as log:
        monitor = subprocess.Popen([installed / "bin" / "python", "-m",
                                    "yl_status.monitor_double", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(url + "/api/health"), timeout=15, what="monitor double")
        config = write_config(tmp_path / "ops.yaml", {"monitor": {"url": url}})
        alerts = run([installed / "bin" / "yl-status", "alerts", "-c", config], cwd=tmp_path)
        assert alerts.returncode == 0, alerts.stderr
        assert "3 alert(s)" in alerts.stdout
        ack = run([installed / "bin" / "yl-status", "ack", "1", "--user", "ops", "-c", config],
                  cwd=tmp_path)
        assert ack.returncode == 0, ack.stderr
        assert "acknowledged by ops" in ack.stdout
    finally:
        monitor.terminate()
        monitor.wait(10)

