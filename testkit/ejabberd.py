"""A real two-node ejabberd cluster (Debian's package, ``mod_mqtt``) for one test, in
temporary folders, run by ejabberd's own unprivileged user through ``ejabberdctl``."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from yl_status.dev_broker import free_port

EJABBERDCTL = "/usr/sbin/ejabberdctl"
HOST = "localhost"

_CONFIG = """\
hosts:
  - {host}
loglevel: info
log_rotate_count: 0
listen:
  -
    port: {port}
    ip: "127.0.0.1"
    module: mod_mqtt
    backlog: 1000
auth_method: [internal]
modules:
  mod_mqtt:
    max_queue: 100000
    session_expiry: 86400
"""


class EjabberdNode:
    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.port = free_port()
        for part in ("conf", "spool", "logs"):
            (folder / part).mkdir(parents=True)
        (folder / "conf" / "ejabberd.yml").write_text(_CONFIG.format(host=HOST, port=self.port))
        (folder / "conf" / "ejabberdctl.cfg").write_text(
            f"ERLANG_NODE={name}\nEJABBERD_CONFIG_PATH={folder / 'conf' / 'ejabberd.yml'}\n")
        (folder / "conf" / "inetrc").write_text("")
        user = pwd.getpwnam("ejabberd")
        for path in (folder, *folder.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)

    def ctl(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        conf = self.folder / "conf"
        result = subprocess.run(
            [EJABBERDCTL, "--config-dir", str(conf), "--ctl-config",
             str(conf / "ejabberdctl.cfg"), "--spool", str(self.folder / "spool"), "--logs",
             str(self.folder / "logs"), "--node", self.name, *args],
            capture_output=True, text=True, timeout=timeout, cwd=self.folder, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"ejabberdctl {' '.join(args)} on {self.name} failed "
                               f"({result.returncode}): {result.stdout}{result.stderr}"
                               f"{self.log()}")
        return result

    def start(self) -> EjabberdNode:
        self.ctl("start")
        self.ctl("started")
        return self

    def stop(self) -> None:
        """Stop the node if it runs (each ``ejabberdctl`` call starts an Erlang VM: no
        ``status`` call first)."""
        if self.ctl("stop", check=False).returncode == 0:
            self.ctl("stopped", check=False)

    def log(self) -> str:
        try:
            return (self.folder / "logs" / "ejabberd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class EjabberdCluster:
    """Two ejabberd nodes joined in one cluster, each with an MQTT listener."""

    def __init__(self) -> None:
        if not Path(EJABBERDCTL).exists():
            raise RuntimeError("ejabberd is not installed (README's set-up installs it)")
        if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "ejabberd":
            raise RuntimeError("ejabberdctl runs only as root or as the ejabberd user")
        self.folder = Path(tempfile.mkdtemp(prefix="yl-ejabberd-"))
        user = pwd.getpwnam("ejabberd")
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        tag = secrets.token_hex(3)
        self.nodes = [EjabberdNode(f"yl{i}x{tag}@localhost", self.folder / f"n{i}")
                      for i in (1, 2)]

    def start(self) -> EjabberdCluster:
        first, second = self.nodes
        starting = threading.Thread(target=first.start)
        starting.start()
        second.start()
        starting.join()
        second.ctl("join_cluster", first.name)
        second.ctl("started")
        listed = first.ctl("list_cluster").stdout
        assert second.name in listed, listed
        return self

    def register(self, users: dict[str, str]) -> None:
        """Accounts are in the cluster's shared database: registered once, valid on both."""
        for user, password in users.items():
            self.nodes[0].ctl("register", user, HOST, password)

    def stop(self) -> None:
        stopping = [threading.Thread(target=node.stop) for node in self.nodes]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        shutil.rmtree(self.folder, ignore_errors=True)
