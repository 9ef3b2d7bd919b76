"""The shipped add-user.sh writes users the shipped ACL and broker accept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from yl_status.dev_broker import BROKER_CONFIG_DIR, node_acl

SCRIPT = BROKER_CONFIG_DIR / "add-user.sh"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, YL_PASSWORD="pw")
    return subprocess.run(["bash", str(SCRIPT), *args, str(tmp_path)], capture_output=True,
                          text=True, env=env, check=False)


def test_roles_get_users_and_acl_entries(tmp_path: Path) -> None:
    shutil.copy(SCRIPT.parent / "acl", tmp_path / "acl")
    for role, name in (("node", "gui-1"), ("bridge", "b2"), ("viewer", "v2"),
                       ("watcher", "ops")):
        assert run(tmp_path, role, name).returncode == 0
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert users == ["gui-1", "b2", "b2-status", "v2", "ops"]
    acl = (tmp_path / "acl").read_text()
    assert "user b2\ntopic read yl/ar/nodes/+/state\ntopic write yl/ar/nodes/+/cmd/#" in acl
    assert "user b2-status\ntopic read yl/ar/nodes/+/status" in acl
    assert "\n" + node_acl("gui-1") in acl
    assert "user ops\ntopic read yl/ar/nodes/+/state\ntopic read yl/ar/nodes/+/status" in acl
    assert not [line for line in acl.splitlines() if line.startswith("pattern")]
    assert run(tmp_path, "bridge", "b2").returncode == 0
    assert (tmp_path / "acl").read_text().count("user b2\n") == 1


@pytest.mark.parametrize(("role", "name"), [("node", "../x"), ("bridge", "b" * 58),
                                            ("admin", "x")])
def test_bad_names_and_roles_are_refused(tmp_path: Path, role: str, name: str) -> None:
    shutil.copy(SCRIPT.parent / "acl", tmp_path / "acl")
    result = run(tmp_path, role, name)
    assert result.returncode == 2
    assert not (tmp_path / "passwd").exists()
