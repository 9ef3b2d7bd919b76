"""``yl-status bridge`` with an outbox it cannot use: one line naming the path, exit 2."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit.support import fill_disk, write_config

from bridge.outbox import Outbox, OutboxError
from yl_status.cli import main


def bridge_config(tmp_path: Path, outbox: Path) -> Path:
    return write_config(tmp_path / "bridge.yaml", {
        "bridge": {"outbox_path": str(outbox), "metrics": ""},
        "mqtt": {"port": 1}})


def run_bridge(tmp_path: Path, outbox: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["bridge", "-c", str(bridge_config(tmp_path, outbox))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "bridge.outbox_path" in err
    assert str(outbox) in err
    return err


def test_a_file_that_is_not_a_database(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "outbox.sqlite3"
    garbage.write_bytes(os.urandom(8192))
    assert "not a database" in run_bridge(tmp_path, garbage, capsys)


def test_a_folder_that_cannot_be_made(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    run_bridge(tmp_path, blocker / "outbox.sqlite3", capsys)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled up (needs root, as CI runs)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        fill_disk(mount / "filler")
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk(tmp_path: Path, full_disk: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    run_bridge(tmp_path, full_disk / "outbox.sqlite3", capsys)


def test_a_damaged_file_is_reported_at_start(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO transitions (node_id, session, state, snapshot, received) "
                       "VALUES (?, 's', 'ready', ?, 0)",
                       [(f"n{i}", os.urandom(300)) for i in range(200)])
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page + 100:3 * page + 600] = random.Random(7).randbytes(500)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="bridge.outbox"), \
            contextlib.suppress(OutboxError):  # opening may also fail, naming the path
        Outbox(path).close()
    assert any("damaged" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)


def test_an_outbox_of_schema_2_counts_its_ready_nodes_as_told_up(tmp_path: Path) -> None:
    """So that a node that fell silent while the older release was stopped is reported."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE nodes (node_id TEXT PRIMARY KEY, node_name TEXT NOT NULL DEFAULT '',"
            " session TEXT, seq INTEGER, state TEXT, state_session TEXT, snapshot BLOB,"
            " registered INTEGER NOT NULL DEFAULT 0, ended TEXT NOT NULL DEFAULT '',"
            " interval_s REAL, ahead_session TEXT, ahead_seq INTEGER);"
            "INSERT INTO nodes (node_id, session, seq, state, state_session, interval_s)"
            " VALUES ('up-1', 's1', 3, 'ready', 's1', 30.0),"
            " ('gone-1', 's2', 1, 'lost', 's2', 30.0);"
            "PRAGMA user_version = 2;")
    box = Outbox(path)
    try:
        assert (box.marks["up-1"].told, box.marks["gone-1"].told) == ("up", "")
        box.caught_up(0.0)
        assert box.record_silences(time.monotonic() + 91) == ["up-1"]
    finally:
        box.close()


def test_an_outbox_of_a_newer_release_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("CREATE TABLE kept (x INTEGER); PRAGMA user_version = 99;")
    with pytest.raises(OutboxError, match="schema version 99 is newer than this bridge's"):
        Outbox(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert tables == {"kept"}
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99
