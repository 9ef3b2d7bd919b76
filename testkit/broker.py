"""A real mosquitto for tests and benches: the project's config, the test logins, a free
port and a folder of its own."""

from __future__ import annotations

import shutil
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
from yl_core import protocol
from yl_status.dev_broker import DevBroker


class BrokerMissingError(RuntimeError):
    """mosquitto is not installed (``.ci/run`` installs it)."""


def broker_users() -> dict[str, str]:
    users = dict.fromkeys(NODE_USERS, NODE_PASSWORD)
    users[BRIDGE_USER] = BRIDGE_PASSWORD
    users[protocol.bridge_status_identity(BRIDGE_USER)] = BRIDGE_PASSWORD
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
    instance = DevBroker(workdir, users=users, message_size_limit=TEST_MESSAGE_LIMIT,
                         extra_acl=acl, settings=settings)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
