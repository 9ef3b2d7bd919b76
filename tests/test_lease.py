"""The lease that picks the active bridge, on a real PostgreSQL: who takes it, when, and that
an instance never counts itself active once another may."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from testkit.postgres import PostgresServer
from testkit.support import incoming, wait_until

from bridge.database import session_names
from bridge.incoming import Received
from bridge.lease import ACTIVE, MARGIN, RENEW_EVERY, STANDBY, Lease
from bridge.outbox import NotActiveError, Outbox, OutboxError
from bridge.service import Bridge
from yl_core.config import parse_config
from yl_core.protocol import ReporterCounters, Resources, StateMessage, StatusMessage, encode

DURATION = MARGIN + RENEW_EVERY + 0.3
SESSION = "000000000010-aaaaaaaaaaaa"


@pytest.fixture
def url(module_postgres: PostgresServer) -> str:
    return module_postgres.new_database()


@pytest.fixture
def leases(url: str) -> Iterator[list[Lease]]:
    made: list[Lease] = []
    yield made
    for lease in made:
        lease.stop(release=False)


def lease(leases: list[Lease], url: str, name: str) -> Lease:
    made = Lease(url, name, duration=DURATION)
    leases.append(made)
    return made


def test_the_first_instance_takes_a_free_lease_and_the_next_stands_by(
        url: str, leases: list[Lease]) -> None:
    a, b = lease(leases, url, "a"), lease(leases, url, "b")
    a.step()
    b.step()
    assert (a.role, a.epoch, a.valid()) == (ACTIVE, 1, True)
    assert (b.role, b.holder, b.valid()) == (STANDBY, "a", False)


def test_a_standby_never_takes_over_from_an_instance_that_renews(
        url: str, leases: list[Lease]) -> None:
    a, b = lease(leases, url, "a"), lease(leases, url, "b")
    a.step()
    until = time.monotonic() + 3 * DURATION
    while time.monotonic() < until:
        a.step()
        b.step()
        assert b.role == STANDBY
        assert a.valid()
        time.sleep(RENEW_EVERY / 2)  # the renewal period under test, not a wait for a result


def test_a_standby_takes_over_only_once_the_silent_instance_no_longer_counts_itself_active(
        url: str, leases: list[Lease]) -> None:
    a, b = lease(leases, url, "a"), lease(leases, url, "b")
    a.step()
    b.step()
    silent_since = time.monotonic()

    def b_took_over() -> bool:
        b.step()
        if b.role == ACTIVE:
            assert not a.valid(), "two instances counted themselves active at once"
            return True
        return False

    wait_until(b_took_over, timeout=3 * DURATION, interval=0.02, what="b takes over")
    assert time.monotonic() - silent_since >= DURATION
    assert b.epoch == 2
    with pytest.raises(psycopg.OperationalError, match="terminating connection"):
        a.step()  # it wakes up: b ended its database sessions before taking over
    a.step()  # connected again, its renewal finds the new epoch
    assert (a.role, a.valid()) == (STANDBY, False)


def test_writes_of_a_superseded_instance_never_commit(url: str, leases: list[Lease]) -> None:
    a, b = lease(leases, url, "a"), lease(leases, url, "b")
    a.step()
    assert a.epoch is not None
    box = Outbox(url, epoch=a.epoch)
    ready = StateMessage(state="ready", session="000000000010-aaaaaaaaaaaa",
                         since="2026-01-01T00:00:00Z", node_name="n", version="1",
                         interval_s=30.0)
    box.record([incoming("n1", ready, 1.0)])
    b.step()
    def b_took_over() -> bool:
        b.step()
        return b.role == ACTIVE

    wait_until(b_took_over, timeout=3 * DURATION, interval=0.02,
               what="b takes over")
    lost = StateMessage(state="lost", session=ready.session, since=ready.since,
                        node_name="n", version="1", interval_s=30.0)
    with pytest.raises(NotActiveError, match="took the lease over"):
        box.record([incoming("n1", lost, 2.0)])
    box.close(flush=False)
    fresh = Outbox(url, epoch=b.epoch)
    try:
        item = fresh.next_item("n1")
        assert item is not None
        assert item.state == "ready"
        fresh.done(item)
        assert fresh.next_item("n1") is None
    finally:
        fresh.close()


def test_a_released_lease_is_taken_at_once(url: str, leases: list[Lease]) -> None:
    a, b = lease(leases, url, "a"), lease(leases, url, "b")
    a.step()
    b.step()
    a.stop(release=True)
    b.step()
    assert (b.role, b.epoch) == (ACTIVE, 2)


class _NoAcks:
    def acknowledge(self, connection: int, messages: list[tuple[int, int]]) -> None:
        raise AssertionError("nothing refused may be acknowledged")


def test_a_bridge_whose_outbox_refuses_a_write_gives_the_lease_up(
        url: str, leases: list[Lease], tmp_path: Path) -> None:
    """The fencing gate in the bridge's writer: once the outbox refuses a write for the
    epoch (a takeover committed), the instance stops counting itself active."""
    a, b = lease(leases, url, "a"), lease(leases, url, "b")
    a.step()
    config = parse_config({"bridge": {"outbox_url": url, "instance": "a", "metrics": ""},
                           "logging": {"level": "WARNING"}}, str(tmp_path / "bridge.yaml"))
    bridge = Bridge(config, lease=a)
    bridge.writer.acknowledger = _NoAcks()
    bridge.writer.start()
    try:
        b.step()

        def b_took_over() -> bool:
            b.step()
            return b.role == ACTIVE

        wait_until(b_took_over, timeout=3 * DURATION, interval=0.02, what="b takes over")
        assert a.role == ACTIVE, "a has not noticed yet: it renews only when stepped"
        ready = StateMessage(state="ready", session="s1", since="2026-01-01T00:00:00Z",
                             node_name="n", version="1", interval_s=30.0)
        message = Received(1, 1, 1, config.mqtt.topics.state("n1"), encode(ready),
                           time.time())

        def a_gave_up() -> bool:
            # The takeover ended a's database sessions: a write fails on its connection
            # first; the broker redelivers, and the next write, on a new connection, is
            # refused for its epoch.
            bridge.writer.put(message)
            return a.role == STANDBY

        wait_until(a_gave_up, timeout=10, interval=0.2, what="a gives the lease up")
    finally:
        bridge.writer.stop(5)
        bridge.outbox.close(flush=False)
    assert not bridge.writer.alive


def test_a_write_cut_at_any_moment_fails_alone_and_loses_nothing_acknowledged(
        url: str, leases: list[Lease]) -> None:
    """An active instance's write is one pipeline (the lease check, the batch, the commit); a
    connection cut anywhere in it fails that write only: the next one commits, on a new
    connection, whatever state the cut left the old one in (pipeline mode with results it
    never gets is one), and what a fresh outbox holds is the newest status acknowledged."""
    a = lease(leases, url, "a")
    a.step()
    box = Outbox(url, epoch=a.epoch, name=session_names("a")[0])
    killer = psycopg.connect(url, autocommit=True)
    chance = random.Random(18)
    nodes = [f"n{i}" for i in range(30)]
    kept: dict[str, int] = {}
    cut = 0

    def batch(seq: int) -> list[Received]:
        return [incoming(node, StatusMessage(
            node_id=node, node_name="GUI", timestamp="2026-01-01T00:00:00.000Z",
            status="running", version="1", uptime=1.0, resources=Resources(1.0, 1.0, 1),
            gui={}, reporter=ReporterCounters(0, 0, None), session=SESSION, seq=seq,
            interval_s=30.0), float(seq)) for node in nodes]

    def terminate() -> None:
        killer.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                       "application_name = %s", (session_names("a")[0],))

    try:
        for turn in range(1, 81):
            timer = threading.Timer(chance.uniform(0.0, 0.004), terminate)
            timer.start()
            try:
                box.record(batch(2 * turn - 1))
            except OutboxError:
                cut += 1
            else:
                kept.update(dict.fromkeys(nodes, 2 * turn - 1))
            timer.join()
            try:
                box.record(batch(2 * turn))
            except OutboxError:  # cut between two writes: the next one finds out
                box.record(batch(2 * turn))
            kept.update(dict.fromkeys(nodes, 2 * turn))
    finally:
        box.close(flush=False)
        killer.close()
    assert cut >= 8, f"only {cut} of 80 writes were cut: the test cuts too late"
    fresh = Outbox(url, epoch=a.epoch)
    try:
        for node in nodes:
            item = fresh.next_item(node)
            assert item is not None
            assert (item.kind, item.seq) == ("status", kept[node]), node
    finally:
        fresh.close(flush=False)
