"""The forwarder on a real outbox against the monitor double over a socket: requests in
flight across nodes, one per node, kept-alive connections the monitor closes, a monitor that
accepts connections and never answers."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.support import incoming, received, wait_until

from bridge.forwarder import Forwarder
from bridge.metrics import Metrics
from bridge.outbox import Outbox
from tests.test_outbox import state, status, status_message
from yl_core import timestamps
from yl_core.config import Config, parse_config
from yl_status.monitor_double import MonitorDouble


def config_for(url: str, tmp_path: Path, **monitor: object) -> Config:
    return parse_config({"monitor": {"url": url, "timeout": 0.5, "retry_delay": 0.5, **monitor},
                         "bridge": {"outbox_path": str(tmp_path / "outbox.sqlite3"),
                                    "http_concurrency": 4}}, "<test>")


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


@contextlib.contextmanager
def forwarding(config: Config, outbox: Outbox) -> Iterator[Forwarder]:
    forwarder = Forwarder(config, outbox, Metrics()).start()
    try:
        yield forwarder
    finally:
        forwarder.stop(5.0)
        assert not forwarder._thread.is_alive()


def test_several_nodes_at_once_never_two_requests_for_one_node(
        tmp_path: Path, outbox: Outbox) -> None:
    """Workers deliver for several nodes at once, one request per node at a time, also for
    a node notified again while its request is in flight (it waits for that answer)."""
    double = MonitorDouble(delay=0.02).start()
    try:
        nodes = [f"n{i}" for i in range(12)]
        outbox.record([status(seq, node=node) for node in nodes for seq in (1, 2)])
        outbox.record([state("ready", node=node) for node in nodes])
        with forwarding(config_for(double.url, tmp_path), outbox) as forwarder:
            wait_until(lambda: outbox.depth() == (0, 0), timeout=10, what="outbox drained")
            assert forwarder.reachable
            for seq in range(3, 13):
                forwarder.notify(outbox.record([status(seq)])[1])
                wait_until(lambda: double.in_flight() > 0, timeout=5, what="a request")
                forwarder.notify(["n1"])
                forwarder.notify(outbox.record([status(seq + 100)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=10, what="n1 delivered")
        assert double.peak_in_flight >= 2
        assert double.peak_in_flight <= 4
        assert double.peak_in_flight_one_node == 1
        for node in nodes:
            sent = [(h.reason, h.body["gui"]) for h in double.history(node)]
            assert sent[-1] == (("ready", {"seq": 112}) if node == "n1" else
                                ("ready", {"seq": 2})), node
    finally:
        double.down()


def test_a_kept_alive_connection_the_monitor_closed_is_replaced(
        tmp_path: Path, outbox: Outbox) -> None:
    double = MonitorDouble().start()
    try:
        with forwarding(config_for(double.url, tmp_path), outbox) as forwarder:
            forwarder.notify(outbox.record([status(1)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="first delivery")
            double.drop_connections()
            forwarder.notify(outbox.record([status(2)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="second delivery")
            assert forwarder.reachable
            assert b"\nyl_bridge_retries_total 0.0\n" in forwarder.metrics.render()
        assert double.history("n1")[-1].body["gui"] == {"seq": 2}
    finally:
        double.down()


@pytest.fixture
def silent_monitor() -> Iterator[str]:
    """The URL of a monitor that accepts connections and never answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"
    finally:
        silent.close()


def test_a_monitor_that_never_answers_times_out_and_nothing_is_lost(
        tmp_path: Path, outbox: Outbox, silent_monitor: str) -> None:
    outbox.record([status(1, node=f"n{i}") for i in range(6)])
    with forwarding(config_for(silent_monitor, tmp_path), outbox) as forwarder:
        wait_until(lambda: not forwarder.reachable, timeout=5, what="monitor unreachable")
        assert forwarder.last_problem == "timed out"
    assert outbox.depth() == (0, 6)


def test_integers_beyond_64_bits_reach_the_monitor_intact(tmp_path: Path, outbox: Outbox) -> None:
    double = MonitorDouble().start()
    try:
        message = dataclasses.replace(status_message(1), gui={
            "frames": 10**30, "ratio": 0.5, "fine": 0.1234567890123456789})
        outbox.record([incoming("n1", message, received())])
        with forwarding(config_for(double.url, tmp_path), outbox):
            wait_until(lambda: outbox.depth() == (0, 0), timeout=5, what="delivered")
        assert double.history("n1")[-1].body["gui"] == {"frames": 10**30, "ratio": 0.5,
                                                        "fine": 0.1234567890123456789}
    finally:
        double.down()


def test_https_to_a_monitor_with_its_own_ca(tmp_path: Path, outbox: Outbox,
                                            certs: Path) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs / "broker.crt", certs / "broker.key")
    double = MonitorDouble(host="localhost", tls=tls).start()
    try:
        with forwarding(config_for(double.url, tmp_path, ca_file=str(certs / "ca.crt")),
                        outbox) as forwarder:
            forwarder.notify(outbox.record([status(1)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=10, what="delivered")
            assert forwarder.reachable
        assert double.history("n1")[-1].body["gui"] == {"seq": 1}
        with forwarding(config_for(double.url, tmp_path,
                                   ca_file=str(certs / "other-ca.crt")), outbox) as untrusting:
            untrusting.notify(outbox.record([status(2)])[1])
            wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in untrusting.last_problem,
                       timeout=10, what="a monitor certificate from another CA refused")
        assert outbox.depth() == (0, 1)
    finally:
        double.down()


@pytest.fixture
def silent_server() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """Accepts TCP connections and never says a word (no TLS handshake, no answer)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield server, accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_a_delivery_loop_asked_before_it_runs_is_not_taken_for_stalled(
        tmp_path: Path, outbox: Outbox) -> None:
    """``/healthz`` may ask before the loop runs: that ask is not one the loop could miss.
    Broken by counting it: the loop never answers it, and the watchdog stops the bridge."""
    forwarder = Forwarder(config_for("http://127.0.0.1:9", tmp_path), outbox, Metrics())
    assert forwarder.stalled_for() == 0.0
    assert forwarder.stalled_for() == 0.0
    forwarder.start()
    try:
        wait_until(lambda: forwarder._loop is not None, timeout=5, what="the loop running")
        wait_until(lambda: forwarder.stalled_for() == 0.0 and forwarder.stalled_for() < 1.0,
                   timeout=5, what="the loop answering")
    finally:
        forwarder.stop(5.0)
    assert not forwarder.alive


def test_a_monitor_that_never_completes_tls_holds_up_nothing_else(
        tmp_path: Path, outbox: Outbox,
        silent_server: tuple[socket.socket, list[socket.socket]]) -> None:
    server, accepted = silent_server
    port = server.getsockname()[1]
    config = config_for(f"https://127.0.0.1:{port}", tmp_path, timeout=3.0)
    with forwarding(config, outbox) as forwarder:
        forwarder.notify(outbox.record([status(1, node=f"n{i}") for i in range(3)])[1])
        wait_until(lambda: accepted, timeout=5, what="a connection")
        for _ in range(25):  # the delivery loop keeps going while a handshake hangs
            assert forwarder.stalled_for() < 1.5
            time.sleep(0.1)
        wait_until(lambda: forwarder.last_problem == "timed out", timeout=5,
                   what="the handshake timed out")
        assert outbox.depth() == (0, 3)


def test_a_one_megabyte_chunked_answer(tmp_path: Path, outbox: Outbox) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    body = b"x" * 2**20
    done = threading.Event()

    def answer() -> None:
        """Every request (the v1 node list, then the heartbeat) gets the same answer."""
        while not done.is_set():
            conn, _ = server.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, rest = request.partition(b"\r\n\r\n")
                length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), b"0"))
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                             b"Content-Type: text/plain\r\nConnection: close\r\n\r\n")
                for start in range(0, len(body), 65536):
                    chunk = body[start:start + 65536]
                    conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                conn.sendall(b"0\r\n\r\n")
                if head.startswith(b"POST"):
                    done.set()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        config = config_for(f"http://127.0.0.1:{server.getsockname()[1]}", tmp_path,
                            profile="v1")
        with forwarding(config, outbox) as forwarder:
            forwarder.notify(outbox.record([status(1)])[1])
            wait_until(lambda: outbox.depth() == (0, 0), timeout=10, what="delivered")
            assert forwarder.reachable
        assert done.is_set()
    finally:
        thread.join(5)
        server.close()


def test_workers_wait_quietly_while_a_probe_is_in_flight(
        tmp_path: Path, outbox: Outbox, silent_monitor: str) -> None:
    """While the monitor is down only one probe goes out; the other workers sleep until it
    answers instead of spinning."""
    import psutil

    outbox.record([status(1, node=f"n{i}") for i in range(6)])
    config = config_for(silent_monitor, tmp_path, timeout=3.0, retry_delay=0.5,
                        profile="nodes-api")
    with forwarding(config, outbox) as forwarder:
        wait_until(lambda: not forwarder.reachable, timeout=10, what="monitor unreachable")
        wait_until(lambda: forwarder._looking, timeout=5, what="a probe in flight")
        before = psutil.Process().cpu_times()
        started = time.monotonic()
        while time.monotonic() - started < 1.5 and forwarder._looking:
            time.sleep(0.05)
        after = psutil.Process().cpu_times()
        watched = time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.5, f"{used:.2f} s of CPU in {watched:.2f} s"


def _node_heartbeats(double: MonitorDouble, node: str) -> int:
    return double.request_count(f"/api/ar/nodes/{node}/heartbeat")


def _looks(double: MonitorDouble) -> int:
    with double.lock:
        return sum(1 for method, target, *_ in double.requests
                   if method == "GET" and target == "/api/ar/nodes")


@pytest.mark.parametrize("register_route", [True, False],
                         ids=["register route", "no register route"])
def test_a_monitor_that_forgets_and_keeps_the_connection_is_told_the_end_within_one_look(
        tmp_path: Path, outbox: Outbox, register_route: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """The monitor loses its nodes behind a proxy that keeps the bridge's connection open;
    the node then stops: its ``offline`` registers it there and is not recorded. The next
    look sees the node shown otherwise than told and tells it again, once. (A worker whose
    connection is new asks for the node before a transition and introduces it at once
    instead: then no look has to.)"""
    double = MonitorDouble(register_route=register_route).start()
    try:
        config = config_for(double.url, tmp_path, look_interval=1)
        with forwarding(config, outbox) as forwarder:
            forwarder.notify(outbox.record([state("ready"), status(1)])[1])
            wait_until(lambda: double.is_online("n1") and outbox.depth() == (0, 0),
                       timeout=10, what="n1 online")
            double.forget(keep_connections=True)
            forwarder.notify(outbox.record([status(2), state("lost")])[1])
            wait_until(lambda: (double.node_view("n1") or {}).get("status") == "offline",
                       timeout=10, what="n1 offline at the monitor that forgot it")
            told = double.history("n1")[-1]
            assert (told.reason, told.body["gui"]) == ("lost", {"seq": 2})
            sent = _node_heartbeats(double, "n1")
            looks = _looks(double)
            wait_until(lambda: _looks(double) >= looks + 2, timeout=10, what="two more looks")
            assert _node_heartbeats(double, "n1") == sent, "told again although shown right"
            retold = forwarder.metrics.registry.get_sample_value("yl_bridge_retold_total")
            asked = sum("no longer knows node n1" in r.getMessage() for r in caplog.records)
            assert (retold, asked) in ((1, 0), (0, 1)), "told the end once more, one way"
    finally:
        double.down()


@pytest.mark.parametrize("wrong", ["deleted", "shown offline"])
def test_a_node_the_monitor_shows_otherwise_is_told_its_current_truth(
        tmp_path: Path, outbox: Outbox, wrong: str) -> None:
    """A node deleted in the monitor's UI, or shown offline there while it is up: told
    again within one look, with its newest snapshot and the current time."""
    double = MonitorDouble(register_route=False).start()
    try:
        config = config_for(double.url, tmp_path, look_interval=1)
        with forwarding(config, outbox) as forwarder:
            forwarder.notify(outbox.record([state("ready"), status(1), status(2)])[1])
            wait_until(lambda: double.is_online("n1") and outbox.depth() == (0, 0),
                       timeout=10, what="n1 online")
            before, recorded = time.time(), len(double.history("n1"))
            if wrong == "deleted":
                double.forget(keep_connections=True, node_id="n1")
            else:
                with double.lock:
                    double.nodes["n1"].status = "offline"
            wait_until(lambda: double.is_online("n1") and
                       len(double.history("n1")) > recorded,
                       timeout=10, what="n1 told it is up again")
            told = double.history("n1")[-1]
            assert (told.reason, told.body["gui"]) == ("ready", {"seq": 2})
            assert timestamps.epoch_from_iso(told.body["timestamp"]) >= before - 0.002
    finally:
        double.down()
