from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from testkit.bridge_process import BridgeProcess
from testkit.broker import INTRUDER_ACL, broker_users, running_broker
from testkit.postgres import PostgresServer, running_postgres
from testkit.support import (
    TEST_ACL,
    answers,
    restart_receive_times,
    serve_config,
    start_process,
    stop_process,
    wait_until,
    write_config,
)

from yl_status.dev_broker import DevBroker, free_port
from yl_status.monitor_double import MonitorDouble

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _extra_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def _extra_children(before: set[int]) -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(autouse=True)
def receive_times() -> None:
    restart_receive_times()


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """Commands run in-process configure logging for their own stderr (a test's capture):
    put the root logger back, so no later test logs into a closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread or a child process behind."""
    threads_before = set(threading.enumerate())
    children_before = {c.pid for c in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5.0
    while (_extra_threads(threads_before) or _extra_children(children_before)) and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    threads = _extra_threads(threads_before)
    children = _extra_children(children_before)
    described = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            described.append(child.cmdline())
            child.kill()
    assert not threads, f"test leaked threads: {[t.name for t in threads]}"
    assert not children, f"test leaked processes: {described}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DevBroker]:
    """A real mosquitto with the project's config on a free port, users pre-created."""
    yield from running_broker(tmp_path / "broker", broker_users(), TEST_ACL)


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[DevBroker]:
    """The project's broker config plus one over-privileged user, to inject hostile input."""
    users = broker_users()
    users["intruder"] = "intruder-secret"
    yield from running_broker(tmp_path / "open-broker", users, INTRUDER_ACL)


@pytest.fixture
def served(tmp_path: Path, broker: DevBroker) -> Iterator[str]:
    """``yl-status serve`` as a real process for node-1 on a free port; its base URL."""
    port = free_port()
    config = write_config(tmp_path / "serve.yaml", serve_config(broker, port))
    process = start_process(["serve", "-c", str(config)], log_path=tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(base + "/nodes"), timeout=15, what="status app listening")
        yield base
    finally:
        assert stop_process(process) == 0


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """A CA (``ca.crt``), another CA, and ``broker.crt``/``broker.key`` for 127.0.0.1 and
    localhost signed by the first."""
    folder = tmp_path / "certs"
    folder.mkdir()
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "broker.key", "-out", "broker.csr", cwd=folder)
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "broker.crt",
            cwd=folder)
    return folder


@pytest.fixture
def double() -> Iterator[MonitorDouble]:
    """The YL-monitor double (SPEC §4) on a free port."""
    d = MonitorDouble().start()
    yield d
    d.down()


@pytest.fixture
def bridge(tmp_path: Path, broker: DevBroker, double: MonitorDouble) -> Iterator[BridgeProcess]:
    """``yl-status bridge`` as a real process between ``broker`` and ``double``."""
    b = BridgeProcess(tmp_path, broker, double).start()
    yield b
    assert b.stop() == 0


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server of its own, in a temporary folder, as an unprivileged user."""
    yield from running_postgres()


@pytest.fixture(scope="module")
def module_postgres() -> Iterator[PostgresServer]:
    """One such server for a module's tests (each takes a ``new_database()``)."""
    yield from running_postgres()
