"""A local mosquitto started with the project's own configuration.

Used by the tests, the benchmarks and the demo: ``mosquitto/mosquitto.conf``, with
``mosquitto/conf.d/yl-status.conf`` in place of its ``include_dir``, is rendered with a free
port and a private folder for the password file, ACL, persistence and log; nothing else is
changed, so what is tested is what is shipped.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

BROKER_CONFIG_DIR = Path(__file__).resolve().parent / "mosquitto"
"""The shipped broker configuration (``mosquitto.conf``, ``tls.conf``, ``acl``,
``add-user.sh``), installed with the package."""


def node_acl(node_id: str, topic_root: str = "yl/ar/nodes") -> str:
    """A node's ACL block, as ``add-user.sh node`` writes it."""
    return (f"user {node_id}\ntopic readwrite {topic_root}/{node_id}/state\n"
            f"topic write {topic_root}/{node_id}/status\n"
            f"topic read {topic_root}/{node_id}/cmd/#\n")


class BrokerError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def password_line(username: str, password: str, iterations: int = 101) -> str:
    """A mosquitto 2.x password-file line (PBKDF2-SHA512, as ``mosquitto_passwd`` writes)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f"{username}:$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def inline_includes(template: str, config_dir: Path = BROKER_CONFIG_DIR) -> str:
    """The standalone config with its ``include_dir`` replaced by the shipped ``conf.d``
    files' text (what mosquitto reads, in its order)."""
    out: list[str] = []
    for line in template.splitlines():
        words = line.split()
        if words[:1] == ["include_dir"]:
            out.extend(path.read_text() for path in sorted((config_dir / "conf.d").glob("*.conf")))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def render_config(template: str, *, port: int, workdir: Path,
                  max_packet_size: int | None = None,
                  settings: Mapping[str, str] | None = None) -> str:
    """Point the project's broker config (its includes inlined) at ``workdir`` and ``port``;
    keep everything else but ``settings`` (e.g. a broker left at mosquitto's defaults)."""
    settings = dict(settings or {})
    out = []
    replaced: set[str] = set()
    for original in inline_includes(template).splitlines():
        line = original
        words = line.split()
        key = words[0] if words and not line.startswith("#") else ""
        if key == "listener" and "listener" not in replaced:
            line = f"listener {port} 127.0.0.1"
        elif key == "password_file":
            line = f"password_file {workdir / 'passwd'}"
        elif key == "acl_file":
            line = f"acl_file {workdir / 'acl'}"
        elif key == "persistence_location":
            line = f"persistence_location {workdir}/"
        elif key == "log_dest":
            line = f"log_dest file {workdir / 'mosquitto.log'}"
        elif key == "max_packet_size" and max_packet_size is not None:
            line = f"max_packet_size {max_packet_size}"
        elif key in settings:
            line = f"{key} {settings.pop(key)}"
        replaced.add(key)
        out.append(line)
    missing = {"listener", "password_file", "acl_file", "persistence_location"} - replaced
    if missing:
        raise BrokerError(f"broker config lacks {', '.join(sorted(missing))}")
    out.extend(f"{key} {value}" for key, value in settings.items())
    out.append(f"user {getpass.getuser()}")
    out.append(f"pid_file {workdir / 'mosquitto.pid'}")
    return "\n".join(out) + "\n"


def render_tls(template: str, *, port: int, certs: Path) -> str:
    """The project's TLS listener on a loopback ``port`` with certificates from ``certs``."""
    files = {"cafile": "ca.crt", "certfile": "broker.crt", "keyfile": "broker.key"}
    out = []
    for line in template.splitlines():
        key = line.split()[0] if line.strip() and not line.startswith("#") else ""
        if key == "listener":
            line = f"listener {port} 127.0.0.1"  # noqa: PLW2901
        elif key in files:
            line = f"{key} {certs / files[key]}"  # noqa: PLW2901
        out.append(line)
    return "\n".join(out) + "\n"


class DevBroker:
    """A mosquitto process on a free loopback port with the project's config."""

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None,
                 port: int | None = None, max_packet_size: int | None = None,
                 extra_acl: str = "", tls_certs: Path | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        """``tls_certs``: a folder with ``ca.crt``, ``broker.crt`` and ``broker.key``; adds the
        project's TLS listener (``mosquitto/tls.conf``) on another free port."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.users: dict[str, str] = dict(users or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        template = (BROKER_CONFIG_DIR / "mosquitto.conf").read_text()
        self.config_path = self.workdir / "mosquitto.conf"
        rendered = render_config(template, port=self.port, workdir=self.workdir,
                                 max_packet_size=max_packet_size, settings=settings)
        self.tls_port: int | None = None
        if tls_certs is not None:
            self.tls_port = free_port()
            rendered += render_tls((BROKER_CONFIG_DIR / "tls.conf").read_text(),
                                   port=self.tls_port, certs=Path(tls_certs))
        self.config_path.write_text(rendered)
        self._extra_acl = extra_acl
        self._write_passwords()

    def _write_acl(self) -> None:
        """The shipped ACL, ``extra_acl``, and a node block for every user without a block
        of its own (as ``add-user.sh node`` adds them)."""
        text = (BROKER_CONFIG_DIR / "acl").read_text()
        if self._extra_acl:
            text += "\n" + self._extra_acl + "\n"
        named = {line.split(None, 1)[1].strip() for line in text.splitlines()
                 if line.startswith("user ")}
        text += "".join("\n" + node_acl(u) for u in self.users if u not in named)
        (self.workdir / "acl").write_text(text)

    def _write_passwords(self) -> None:
        self._write_acl()
        path = self.workdir / "passwd"
        lines = [password_line(u, p) for u, p in self.users.items()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    def add_users(self, users: Mapping[str, str]) -> None:
        """Add users (those without an ACL block are nodes); a running broker reloads its
        password file and ACL."""
        self.users.update(users)
        self._write_passwords()
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> DevBroker:
        if self.running:
            return self
        log = open(self.workdir / "stderr.log", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen([self.binary, "-c", str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: "
                                  f"{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its database and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("stderr.log", "mosquitto.log"):
            path = self.workdir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> DevBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:

    parser = argparse.ArgumentParser(description="the shipped broker configuration")
    parser.add_argument("--where", action="store_true",
                        help="print the folder with mosquitto.conf, tls.conf, acl, add-user.sh")
    args = parser.parse_args()
    if args.where:
        print(BROKER_CONFIG_DIR)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
