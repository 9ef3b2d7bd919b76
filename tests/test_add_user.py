"""The shipped add-user.sh writes users the shipped ACL and broker accept."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    assert users == ["gui-1", "b2", "v2", "ops"]
    acl = (tmp_path / "acl").read_text()
    assert "user b2\ntopic read yl/ar/nodes/+/state\ntopic read yl/ar/nodes/+/status\n" \
        "topic write yl/ar/nodes/+/cmd/#" in acl
    assert "\n" + node_acl("gui-1") in acl
    assert "user ops\ntopic read yl/ar/nodes/+/state\ntopic read yl/ar/nodes/+/status" in acl
    assert not [line for line in acl.splitlines() if line.startswith("pattern")]
    assert run(tmp_path, "bridge", "b2").returncode == 0
    assert (tmp_path / "acl").read_text().count("user b2\n") == 1


@pytest.mark.parametrize(("role", "name"), [("node", "../x"), ("bridge", "b" * 65),
                                            ("admin", "x")])
def test_bad_names_and_roles_are_refused(tmp_path: Path, role: str, name: str) -> None:
    shutil.copy(SCRIPT.parent / "acl", tmp_path / "acl")
    result = run(tmp_path, role, name)
    assert result.returncode == 2
    assert not (tmp_path / "passwd").exists()


@pytest.mark.integration
def test_a_broker_set_up_as_readme_says_serves_each_kind_of_login(tmp_path: Path) -> None:
    """The shipped folder, users added with add-user.sh, the shipped mosquitto.conf."""
    import subprocess as sp
    from types import SimpleNamespace

    from testkit.support import retained, wait_until

    from tests.test_broker_acl import close, connect, publish_reason
    from yl_status.dev_broker import free_port, render_config

    shutil.copy(SCRIPT.parent / "acl", tmp_path / "acl")
    for role, name in (("node", "gui-1"), ("bridge", "yl-bridge"), ("viewer", "yl-viewer"),
                       ("watcher", "ops")):
        assert run(tmp_path, role, name).returncode == 0
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(render_config(
        (SCRIPT.parent / "mosquitto.conf").read_text(), port=port, workdir=tmp_path))
    broker: Any = SimpleNamespace(host="127.0.0.1", port=port)
    process = sp.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")],
                       stdout=sp.DEVNULL, stderr=sp.DEVNULL)
    try:
        wait_until(lambda: _listening(port), timeout=10, what="broker listening")
        node, rc = connect(broker, "gui-1", "pw")
        assert rc == 0
        assert publish_reason(node, "yl/ar/nodes/gui-1/state", b'{"ok":1}') < 128
        assert publish_reason(node, "yl/ar/nodes/gui-2/state", b'{"ok":1}') == 135
        close(node)
        for login in ("yl-viewer", "ops"):
            watcher, rc = connect(broker, login, "pw")
            assert rc == 0
            assert publish_reason(watcher, f"yl/ar/nodes/{login}/state", b"{}") == 135
            close(watcher)
        bridge, rc = connect(broker, "yl-bridge", "pw")
        assert rc == 0
        assert publish_reason(bridge, "yl/ar/nodes/gui-1/cmd/rebirth", b"") < 128
        close(bridge)
        assert retained(broker.host, port, "yl/ar/nodes/gui-1/state",
                        login=("ops", "pw")) == {"ok": 1}
    finally:
        process.terminate()
        process.wait(10)


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _in_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0 or not _in_group("mosquitto"),
                    reason="needs root and Debian's mosquitto user")
def test_as_root_the_password_file_is_the_brokers_to_read_and_nobody_elses() -> None:
    """Run as root, as README's steps are on a server; mosquitto started as root drops to
    its own user and must still read the password file."""
    import grp
    import pwd
    import subprocess as sp
    import tempfile

    from testkit.support import wait_until

    from tests.test_broker_acl import close, connect
    from yl_status.dev_broker import free_port, render_config

    folder = Path(tempfile.mkdtemp(prefix="yl-add-user-", dir="/tmp"))
    try:
        folder.chmod(0o755)  # the broker's user reaches the files, as under /etc/mosquitto
        shutil.copy(SCRIPT.parent / "acl", folder / "acl")
        (folder / "acl").chmod(0o644)
        assert run(folder, "node", "gui-1").returncode == 0
        info = (folder / "passwd").stat()
        assert info.st_mode & 0o777 == 0o640
        assert grp.getgrgid(info.st_gid).gr_name == "mosquitto"
        assert info.st_uid == 0
        data = folder / "data"
        data.mkdir()
        mosquitto = pwd.getpwnam("mosquitto")
        os.chown(data, mosquitto.pw_uid, mosquitto.pw_gid)
        port = free_port()
        config = render_config((SCRIPT.parent / "mosquitto.conf").read_text(), port=port,
                               workdir=folder)
        changed = {"user": None, "pid_file": None, "log_dest": "log_dest stderr",
                   "persistence_location": f"persistence_location {data}/"}
        lines = [changed.get(line.split(" ", 1)[0], line) for line in config.splitlines()]
        (folder / "mosquitto.conf").write_text(
            "".join(f"{line}\n" for line in lines if line is not None))
        process = sp.Popen(["mosquitto", "-c", str(folder / "mosquitto.conf")],
                           stdout=sp.DEVNULL, stderr=(folder / "stderr.log").open("wb"))
        try:
            wait_until(lambda: _listening(port) or process.poll() is not None, timeout=10,
                       what="broker listening or ended")
            assert process.poll() is None, (folder / "stderr.log").read_text()
            broker: Any = SimpleNamespace(host="127.0.0.1", port=port)
            node, rc = connect(broker, "gui-1", "pw")
            assert rc == 0
            close(node)
        finally:
            process.terminate()
            process.wait(10)
    finally:
        shutil.rmtree(folder)


def test_a_bridge_block_written_for_two_logins_gains_the_status_line(tmp_path: Path) -> None:
    """Before 2026-12-08 the bridge read statuses on a second login (``NAME-status``); its
    block read the states only. Adding the bridge again gives the block the line it lacks,
    once, and keeps the rest."""
    old = ("user b2\ntopic read yl/ar/nodes/+/state\ntopic write yl/ar/nodes/+/cmd/#\n"
           "topic readwrite yl/ar/bridges/b2/#\n\nuser b2-status\n"
           "topic read yl/ar/nodes/+/status\n")
    (tmp_path / "acl").write_text(old)
    first = run(tmp_path, "bridge", "b2")
    assert first.returncode == 0, first.stderr
    assert "'topic read yl/ar/nodes/+/status' added under 'user b2'" in first.stdout
    again = run(tmp_path, "bridge", "b2")
    assert again.returncode == 0
    assert "added under" not in again.stdout
    acl = (tmp_path / "acl").read_text()
    block = acl.split("user b2\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert sorted(block) == ["topic read yl/ar/nodes/+/state",
                             "topic read yl/ar/nodes/+/status",
                             "topic readwrite yl/ar/bridges/b2/#",
                             "topic write yl/ar/nodes/+/cmd/#"]
    assert acl.count("user b2\n") == 1
    assert "user b2-status\ntopic read yl/ar/nodes/+/status" in acl


def test_upgrade_gives_every_bridge_of_two_logins_the_status_line_without_a_password(
        tmp_path: Path) -> None:
    """``deploy/install.sh`` runs it on an existing ACL: no password asked, a bridge without
    a second login (written by this release) and the other blocks left as they are."""
    old = ("user b2\ntopic read yl/ar/nodes/+/state\ntopic write yl/ar/nodes/+/cmd/#\n\n"
           "user b2-status\ntopic read yl/ar/nodes/+/status\n\n"
           "user b3\ntopic read yl/ar/nodes/+/state\ntopic read yl/ar/nodes/+/status\n\n"
           "user v1\ntopic read yl/ar/nodes/+/state\n")
    (tmp_path / "acl").write_text(old)
    result = subprocess.run(["bash", str(SCRIPT), "upgrade", str(tmp_path)],
                            capture_output=True, text=True, check=False,
                            env={k: v for k, v in os.environ.items() if k != "YL_PASSWORD"},
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    acl = (tmp_path / "acl").read_text()
    assert acl == old.replace("user b2\n", "user b2\ntopic read yl/ar/nodes/+/status\n")
    assert not (tmp_path / "passwd").exists()
    assert subprocess.run(["bash", str(SCRIPT), "upgrade", str(tmp_path / "none")],
                          capture_output=True, check=False).returncode == 2
