"""A real mosquitto for tests and benches: the project's config, the test logins, a free
port and a folder of its own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from testkit.support import (
    BRIDGE_PASSWORD,
    BRIDGE_USER,
    NODE_PASSWORD,
    NODE_USERS,
    READER_USER,
    RECORDER_USER,
    TEST_ACL,
    TEST_PASSWORD,
    VIEWER_PASSWORD,
    VIEWER_USER,
    WATCHER_USER,
)
from yl_status.dev_broker import DevBroker, free_port


class BrokerMissingError(RuntimeError):
    """mosquitto is not installed (``.ci/run`` installs it)."""


def broker_users() -> dict[str, str]:
    users = dict.fromkeys(NODE_USERS, NODE_PASSWORD)
    users[BRIDGE_USER] = BRIDGE_PASSWORD
    users[VIEWER_USER] = VIEWER_PASSWORD
    users[RECORDER_USER] = TEST_PASSWORD
    users[READER_USER] = TEST_PASSWORD
    users[WATCHER_USER] = TEST_PASSWORD
    return users


TEST_MESSAGE_LIMIT = 2 * 1024 * 1024
"""Above the protocol's 64 KiB, so oversized payloads reach the components that must refuse
them."""
INTRUDER_ACL = TEST_ACL + "\nuser intruder\ntopic write yl/ar/nodes/#\n"


def running_broker(workdir: Path, users: dict[str, str], acl: str = TEST_ACL,
                   settings: dict[str, str] | None = None) -> Iterator[DevBroker]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        raise BrokerMissingError("mosquitto is not installed (.ci/run installs it)")
    instance = DevBroker(workdir, users=users, max_packet_size=TEST_MESSAGE_LIMIT,
                         extra_acl=acl, settings=settings)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


class DefaultMosquitto:
    """mosquitto with its own defaults, as someone else's broker may run: one loopback
    listener on a free port and anonymous access (which 2.0 turns off once a listener is
    named), nothing else: no ACL, no persistence, a queue of 1000 messages per client."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\n")
        self.log_path = workdir / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> DefaultMosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([binary, "-c", str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise BrokerMissingError(f"mosquitto did not start: "
                                             f"{self.log_path.read_text()[-500:]}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
