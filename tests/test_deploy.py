"""Deployed as the docs say: ``deploy/install.sh`` into a scratch root makes what the units
need, and the units pass ``systemd-analyze verify``; Debian's mosquitto, started as its
service starts it, with its stock config and our ``conf.d`` snippet, or with our standalone
config, serves a node, the bridge and the status app from one config file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parent.parent
UNITS = ("yl-status-bridge.service", "yl-status-serve.service")
CONFIG = "/etc/yl-status/yl-status.yaml"


def test_the_units_and_readme_speak_of_one_config_file() -> None:
    for unit in UNITS:
        text = (PROJECT / "deploy" / unit).read_text()
        named = set(re.findall(r"/etc/yl-status/\S+", text))
        assert named == {CONFIG}, (unit, named)
    assert CONFIG in (PROJECT / "README.md").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (./run.sh setup installs it)")
def test_install_into_a_scratch_root_makes_what_the_units_need(tmp_path: Path) -> None:
    """Over a broker folder of a release before 2026-12-08, whose ACL gave the bridge's
    statuses a second login: the install upgrades that ACL and keeps the rest of it."""
    root = tmp_path / "root"
    acl = root / "etc/mosquitto/yl-status/acl"
    acl.parent.mkdir(parents=True)
    acl.write_text("user yl-bridge\ntopic read yl/ar/nodes/+/state\n"
                   "topic write yl/ar/nodes/+/cmd/#\n\nuser yl-bridge-status\n"
                   "topic read yl/ar/nodes/+/status\n\nuser gui-1\n"
                   "topic readwrite yl/ar/nodes/gui-1/state\n")
    done = subprocess.run(["bash", PROJECT / "deploy" / "install.sh", "--root", root,
                           "--broker", "stock"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert acl.read_text().startswith("user yl-bridge\ntopic read yl/ar/nodes/+/status\n"
                                      "topic read yl/ar/nodes/+/state\n")
    assert "user gui-1\ntopic readwrite yl/ar/nodes/gui-1/state\n" in acl.read_text()
    assert (root / CONFIG.lstrip("/")).is_file()
    assert (root / "etc/mosquitto/conf.d/yl-status.conf").is_file()
    assert (root / "etc/mosquitto/yl-status/add-user.sh").stat().st_mode & 0o111
    installed = root / "opt/yl-status/.venv/bin/yl-status"
    checked = subprocess.run([installed, "check-config", "-c", root / CONFIG.lstrip("/")],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    # systemd's own units, for the dependencies every service has (sysinit.target, ...).
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                             *(root / "etc/systemd/system" / unit for unit in UNITS)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def may_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or \
            not Path("/etc/mosquitto/mosquitto.conf").is_file():
        return False
    return subprocess.run(["unshare", "--mount", "--net", "--fork", "true"],
                          capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not may_unshare(), reason="needs root, unshare and Debian's mosquitto "
                                              "package (CI has them)")
@pytest.mark.parametrize("mode", ["stock", "own"])
def test_debian_s_mosquitto_as_its_service_starts_it_serves_node_bridge_and_app(
        mode: str, tmp_path: Path) -> None:
    work = tmp_path / "host"
    work.mkdir(mode=0o755)
    done = subprocess.run(["unshare", "--mount", "--net", "--fork", "--", sys.executable,
                           "-m", "testkit.stock_host", mode, work], cwd=PROJECT,
                          capture_output=True, text=True, timeout=180, check=False)
    seen = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    assert done.returncode == 0, (seen.get("error"), done.stderr[-2000:])
    assert seen["broker_user"] == "mosquitto"
    assert seen["health_up"][0] == 200
    assert seen["monitor_reason"] == "lost"
    assert (seen["health_down"][0], seen["health_down"][1]["reason"]) == (503, "lost")
    log = seen["broker_log"]
    assert "Loading config file /etc/mosquitto/" in log or mode == "stock"
    assert "Error" not in log
    assert "message_size_limit" not in (work / "mosquitto.out").read_text() + log
